// scripts/lib/npm-registry.sh, how set-up fetches Node.js and npm without npm:
// a tarball is unpacked only when its bytes match the sha512 integrity of the
// registry's metadata and it comes from that registry. Against a local fake
// registry; needs curl, tar and coreutils, no root.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

const LIB = fileURLToPath(new URL("../../../scripts/lib/npm-registry.sh", import.meta.url));
let dir: string;
let server: http.Server;
let registry: string;
let good: Buffer;
const routes = new Map<string, Buffer>();

const integrity = (b: Buffer) => `sha512-${createHash("sha512").update(b).digest("base64")}`;
const meta = (tarball: string, dist: Record<string, string>, spaced = false) =>
  Buffer.from(
    JSON.stringify({ name: "x", version: "1.0.0", dist: { ...dist, tarball } }, null, spaced ? 1 : 0),
  );

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-setup-downloads-"));
  fs.mkdirSync(path.join(dir, "src", "package", "bin"), { recursive: true });
  fs.writeFileSync(path.join(dir, "src", "package", "bin", "hello"), "hello\n");
  spawnSync("tar", ["-czf", path.join(dir, "good.tgz"), "-C", path.join(dir, "src"), "package"]);
  good = fs.readFileSync(path.join(dir, "good.tgz"));
  server = http.createServer((req, res) => {
    const body = routes.get(req.url ?? "");
    res.writeHead(body ? 200 : 404).end(body ?? "");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  registry = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const tgz = (name: string) => `${registry}/${name}/-/${name}-1.0.0.tgz`;
  routes.set("/good/1.0.0", meta(tgz("good"), { integrity: integrity(good) }));
  routes.set("/good/-/good-1.0.0.tgz", good);
  routes.set("/spaced/1.0.0", meta(tgz("spaced"), { integrity: integrity(good) }, true));
  routes.set("/spaced/-/spaced-1.0.0.tgz", good);
  const evil = Buffer.concat([good, Buffer.from("x")]);
  routes.set("/tampered/1.0.0", meta(tgz("tampered"), { integrity: integrity(good) }));
  routes.set("/tampered/-/tampered-1.0.0.tgz", evil);
  routes.set(
    "/sha1only/1.0.0",
    meta(tgz("sha1only"), { shasum: createHash("sha1").update(good).digest("hex") }),
  );
  routes.set("/sha1only/-/sha1only-1.0.0.tgz", good);
  routes.set(
    "/elsewhere/1.0.0",
    meta(`http://127.0.0.2:1/elsewhere/-/elsewhere-1.0.0.tgz`, { integrity: integrity(good) }),
  );
});
after(() => {
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function fetchVerified(name: string): Promise<{ code: number | null; stderr: string; dest: string }> {
  const dest = path.join(dir, "out", name);
  const work = fs.mkdtempSync(path.join(dir, "work-"));
  const child = spawn(
    "bash",
    [
      "-c",
      `source "$1"; REGISTRY="$2"; fetch_verified "$3" 1.0.0 "$4" "$5"`,
      "x",
      LIB,
      registry,
      name,
      dest,
      work,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  return { code, stderr, dest };
}

test("a tarball matching the registry's integrity is unpacked (compact or spaced metadata)", async () => {
  for (const name of ["good", "spaced"]) {
    const r = await fetchVerified(name);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.readFileSync(path.join(r.dest, "bin", "hello"), "utf8"), "hello\n");
  }
});

test("a tarball whose bytes differ from the registry's integrity is refused and nothing is unpacked", async () => {
  const r = await fetchVerified("tampered");
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /^error: tampered-1\.0\.0\.tgz does not match its registry integrity \(sha512-.*\); download refused$/m,
  );
  assert.equal(fs.existsSync(r.dest), false);
});

test("metadata without a sha512 integrity, or a tarball from another host, is refused", async () => {
  const sha1 = await fetchVerified("sha1only");
  assert.equal(sha1.code, 1);
  assert.match(sha1.stderr, /no sha512 integrity .* sha1only@1\.0\.0; download refused/);
  const elsewhere = await fetchVerified("elsewhere");
  assert.equal(elsewhere.code, 1);
  assert.match(elsewhere.stderr, /unexpected tarball URL for elsewhere@1\.0\.0: http:\/\/127\.0\.0\.2/);
  for (const r of [sha1, elsewhere]) assert.equal(fs.existsSync(r.dest), false);
});

test("an unknown version fails with the URL it tried", async () => {
  const r = await fetchVerified("missing");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot fetch http:\/\/127\.0\.0\.1:\d+\/missing\/1\.0\.0/);
});
