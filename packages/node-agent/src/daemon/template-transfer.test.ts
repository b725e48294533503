import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import { loadConfig, type NodeConfig, paths } from "../config.ts";
import { getTemplate } from "../image/template-store.ts";
import {
  exportTemplate,
  HEADER_KEY,
  HEADER_MANIFEST,
  HEADER_SHA256,
  imageSha256,
  importTemplate,
} from "./template-transfer.ts";

const KEY = "0123456789abcdef0123456789abcdef";
let from: NodeConfig;
let to: NodeConfig;
let root: string;
const SIZE = 8 * 1024 * 1024;

before(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "fb-transfer-"));
  from = loadConfig({ FIREBREAK_STATE_DIR: path.join(root, "a") });
  to = loadConfig({ FIREBREAK_STATE_DIR: path.join(root, "b") });
  // A sparse image: some data at the start and the end, holes between.
  const dir = path.join(paths.imagesDir(from), KEY);
  await fs.mkdir(dir, { recursive: true });
  const fh = await fs.open(path.join(dir, "rootfs.ext4"), "w");
  await fh.write(Buffer.from("superblock"), 0, 10, 1024);
  await fh.write(Buffer.from("tail"), 0, 4, SIZE - 4);
  await fh.close();
  const manifest = {
    key: KEY,
    name: "tiny",
    spec: {
      name: "tiny",
      debian: { release: "bookworm", packages: [] },
      files: [],
      run: [],
      env: {},
      user: "user",
    },
    lock: { release: "bookworm", packages: {} },
    builderVersion: 1,
    nodeVersion: "v24",
    builtAt: new Date(0).toISOString(),
    buildMs: 1,
    imageBytes: SIZE,
  };
  await fs.writeFile(path.join(dir, "manifest.json"), JSON.stringify(manifest));
  await fs.mkdir(paths.templatesDir(from), { recursive: true });
  await fs.writeFile(path.join(paths.templatesDir(from), "tiny.json"), JSON.stringify({ key: KEY }));
});

after(() => fs.rm(root, { recursive: true, force: true }));

/** Serves exportTemplate of `from` and returns the response of a GET. */
async function exported(name: string): Promise<{ res: http.IncomingMessage; close: () => void }> {
  const server = http.createServer((req, res) => void exportTemplate(from, name, res));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as { port: number };
  const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
    http.get({ host: "127.0.0.1", port, path: "/" }, resolve).on("error", reject),
  );
  return { res, close: () => server.close() };
}

test("an exported image installs on another node under the same key, verified, still sparse", async () => {
  const { res, close } = await exported("tiny");
  try {
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers[HEADER_KEY], KEY);
    const r = await importTemplate(to, "tiny", res);
    assert.deepEqual(r, { name: "tiny", key: KEY, installed: true });
  } finally {
    close();
  }
  const t = await getTemplate(to, "tiny");
  assert.equal(t?.key, KEY);
  const st = await fs.stat(t!.imagePath);
  assert.equal(st.size, SIZE);
  assert.ok(st.blocks * 512 < SIZE / 4, `zero blocks stayed holes (${st.blocks * 512} bytes on disk)`);
  assert.equal(st.mode & 0o777, 0o444);
  assert.equal(await imageSha256(to, KEY), await imageSha256(from, KEY));
  const again = await exported("tiny");
  try {
    assert.equal((await importTemplate(to, "tiny", again.res)).installed, false, "a second import only tags");
  } finally {
    again.close();
  }
});

function fakeUpload(body: Buffer, headers: Record<string, string>): http.IncomingMessage {
  const r = Readable.from([body]) as unknown as http.IncomingMessage;
  r.headers = { "content-length": String(body.length), ...headers };
  return r;
}

test("a tampered image, a wrong length or a manifest for another key installs nothing", async () => {
  const other = loadConfig({ FIREBREAK_STATE_DIR: path.join(root, "c") });
  const body = Buffer.alloc(SIZE);
  body.write("tampered", 1024);
  const manifest = JSON.parse(
    await fs.readFile(path.join(paths.imagesDir(from), KEY, "manifest.json"), "utf8"),
  ) as Record<string, unknown>;
  const good = {
    [HEADER_KEY]: KEY,
    [HEADER_SHA256]: await imageSha256(from, KEY),
    [HEADER_MANIFEST]: Buffer.from(JSON.stringify(manifest)).toString("base64url"),
  };
  await assert.rejects(importTemplate(other, "tiny", fakeUpload(body, good)), /sha256/);
  await assert.rejects(
    importTemplate(other, "tiny", fakeUpload(Buffer.alloc(10), good)),
    /does not describe|bytes/,
  );
  const wrongKey = {
    ...good,
    [HEADER_MANIFEST]: Buffer.from(JSON.stringify({ ...manifest, key: "f".repeat(32) })).toString(
      "base64url",
    ),
  };
  await assert.rejects(importTemplate(other, "tiny", fakeUpload(body, wrongKey)), /does not describe/);
  await assert.rejects(importTemplate(other, "../x", fakeUpload(body, good)), /needs a name/);
  assert.equal(await getTemplate(other, "tiny"), undefined);
  const left = await fs.readdir(paths.imagesDir(other)).catch(() => []);
  assert.deepEqual(left, [], "no staging directory is left behind");
  assert.equal(
    createHash("sha256").update(body).digest("hex") === good[HEADER_SHA256],
    false,
    "the tampered body really differs",
  );
});
