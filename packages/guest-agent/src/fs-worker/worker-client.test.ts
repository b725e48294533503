/**
 * The agent's side of the worker pipe against scripted fake workers: the pipe
 * is pull-based both ways, and a worker that breaks the protocol is stopped
 * and fails its calls instead of leaving them hanging.
 */
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { FsOpError } from "../filesystem/fs-op-error.ts";
import { CHUNK_BYTES } from "./frames.ts";
import { FsWorker, READ_WINDOW_CHUNKS, WRITE_WINDOW_CHUNKS } from "./worker-client.ts";

const FRAMES = new URL("./frames.ts", import.meta.url).href;
const FILE_CHUNKS = 10;

const FAKE = `
import { appendFileSync } from "node:fs";
import { FrameDecoder, FrameKind, encodeJson, encodeFrame, encodeCount, decodeCount } from ${JSON.stringify(FRAMES)};
const mode = process.env.FAKE_MODE;
const arg = (k) => Number(process.argv[process.argv.indexOf(k) + 1]);
const log = (o) => appendFileSync(process.env.FAKE_LOG, JSON.stringify(o) + "\\n");
const send = (b) => process.stdout.write(b);
const chunk = Buffer.alloc(${CHUNK_BYTES}, 7);
let sent = 0;
send(encodeJson(FrameKind.Hello, 0, { pid: process.pid, uid: mode === "bad-hello" ? 12345 : arg("--uid"), gid: arg("--gid") }));
const d = new FrameDecoder((kind, id, payload) => {
  if (kind === FrameKind.Call) {
    if (mode === "oversized") {
      const h = Buffer.alloc(9); h.writeUInt32BE(2 << 20, 0); h.writeUInt32BE(id, 4); h.writeUInt8(FrameKind.Chunk, 8);
      send(h);
      return;
    }
    const req = JSON.parse(payload.toString());
    log({ call: req.op });
    if (req.op === "read") {
      send(encodeJson(FrameKind.Result, id, { size: ${FILE_CHUNKS * CHUNK_BYTES} }));
      if (mode === "push") for (let i = 0; i < 3; i++) send(encodeFrame(FrameKind.Chunk, id, chunk));
    }
  } else if (kind === FrameKind.Credit) {
    const n = decodeCount(payload);
    log({ credit: n });
    for (let i = 0; i < n && sent < ${FILE_CHUNKS}; i++, sent++) send(encodeFrame(FrameKind.Chunk, id, chunk));
    if (sent === ${FILE_CHUNKS}) { sent++; send(encodeJson(FrameKind.Done, id, {})); }
  } else if (kind === FrameKind.Data) {
    log({ data: payload.length });
    if (mode !== "no-ack") send(encodeCount(FrameKind.Ack, id, 1));
  } else if (kind === FrameKind.End) {
    send(encodeJson(FrameKind.Done, id, { metadata: { a: "b" } }));
  }
});
process.stdin.on("data", (c) => d.push(c));
process.stdin.on("end", () => process.exit(0));
`;

let dir: string;
let entry: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "fb-fake-worker-"));
  entry = join(dir, "fake-worker.mjs");
  await writeFile(entry, FAKE);
});
after(() => rm(dir, { recursive: true, force: true }));

const user = { name: "fake", uid: process.getuid!(), gid: process.getgid!(), home: "/", shell: "/bin/sh" };

async function fake(
  mode: string,
): Promise<{ worker: FsWorker; log: () => Promise<Array<Record<string, number | string>>> }> {
  const logFile = join(dir, `${mode}-${Math.random()}.log`);
  await writeFile(logFile, "");
  const worker = new FsWorker(
    user,
    [user.gid],
    { entry, env: { PATH: process.env["PATH"], FAKE_MODE: mode, FAKE_LOG: logFile } },
    () => {},
  );
  const log = async () =>
    (await readFile(logFile, "utf8"))
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, number | string>);
  return { worker, log };
}

const isWorkerError = (pattern: RegExp) => (e: unknown) =>
  e instanceof FsOpError && e.code === "FB_WORKER" && pattern.test(e.message);

test("downloads are pulled: an unread stream holds at most the credit window", async () => {
  const { worker, log } = await fake("normal");
  try {
    const { size, stream } = await worker.openRead("/f");
    assert.equal(size, FILE_CHUNKS * CHUNK_BYTES);
    await sleep(300);
    const credits = (await log()).reduce((n, l) => n + (Number(l["credit"]) || 0), 0);
    assert.ok(credits <= READ_WINDOW_CHUNKS, `credited ${credits} chunks to a stream nobody reads`);
    let bytes = 0;
    for await (const c of stream) bytes += (c as Buffer).length;
    assert.equal(bytes, FILE_CHUNKS * CHUNK_BYTES);
  } finally {
    worker.stop();
  }
});

test("uploads wait for acknowledgements: a worker that stops acking stops the flow", async () => {
  const { worker, log } = await fake("no-ack");
  try {
    const body = Readable.from(
      (function* () {
        for (let i = 0; i < 3 * WRITE_WINDOW_CHUNKS; i++) yield Buffer.alloc(CHUNK_BYTES, i);
      })(),
    );
    const done = worker.writeFile("/f", body, undefined);
    await sleep(300);
    const sent = (await log()).filter((l) => l["data"] !== undefined).length;
    assert.ok(sent <= WRITE_WINDOW_CHUNKS, `sent ${sent} unacknowledged chunks`);
    worker.stop();
    await assert.rejects(done, isWorkerError(/exited|killed/));
  } finally {
    worker.stop();
  }
});

test("uploads complete and return the metadata the worker reports", async () => {
  const { worker, log } = await fake("normal");
  try {
    const body = Readable.from([Buffer.alloc(3 * CHUNK_BYTES + 5, 1)]);
    assert.deepEqual(await worker.writeFile("/f", body, { k: "v" }), { a: "b" });
    assert.equal((await log()).filter((l) => l["data"] !== undefined).length, 4);
  } finally {
    worker.stop();
  }
});

test("a chunk sent without credit is a protocol violation: the worker is stopped, the read fails", async () => {
  const { worker } = await fake("push");
  const { stream } = await worker.openRead("/f");
  // Nothing reads the stream, so the agent has given no credit at all.
  const failed = new Promise<Error>((resolve) => stream.once("error", resolve));
  assert.ok(isWorkerError(/broke protocol \(sent a chunk it had no credit for\)/)(await failed));
  assert.equal(worker.exited, true);
});

test("an oversized frame is a protocol violation that fails the call", async () => {
  const { worker } = await fake("oversized");
  await assert.rejects(worker.stat("/x"), isWorkerError(/exceeds the 1048576-byte limit/));
  assert.equal(worker.exited, true);
});

test("a worker whose hello shows another uid is refused before any call", async () => {
  const { worker } = await fake("bad-hello");
  await assert.rejects(worker.ready(), isWorkerError(/expected uid and gid/));
  await assert.rejects(worker.stat("/x"), isWorkerError(/broke protocol/));
});
