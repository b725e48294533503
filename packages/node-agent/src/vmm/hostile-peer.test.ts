// A fake QMP peer and a fake guest on the control channel send junk: lines
// that are not JSON, JSON that is not an object, wrong types, objects whose
// conversion to a string throws, lines far longer than the cap, floods. The
// host side must drop all of it without throwing, without buffering more than
// its cap, and keep working for the well-formed messages that follow.
import assert from "node:assert/strict";
import net from "node:net";
import { test } from "node:test";
import { ControlChannel, MAX_CONTROL_LINE_BYTES, parseGuestMessage } from "./control-channel.ts";
import { LineSplitter } from "./line-splitter.ts";
import { MAX_QMP_LINE_BYTES, QmpClient } from "./qmp.ts";

/** A connected pair of sockets over a fresh unix socket server; `peer` plays QEMU or the guest. */
async function pair(): Promise<{ host: net.Socket; peer: net.Socket; close: () => void }> {
  const server = net.createServer();
  const sockPath = `/tmp/fb-hostile-peer-${process.pid}-${Math.random().toString(36).slice(2)}.sock`;
  await new Promise<void>((r) => server.listen(sockPath, r));
  const accepted = new Promise<net.Socket>((r) => server.once("connection", r));
  const peer = net.connect(sockPath);
  await new Promise((r) => peer.once("connect", r));
  const host = await accepted;
  server.close();
  return {
    host,
    peer,
    close: () => {
      host.destroy();
      peer.destroy();
    },
  };
}

/** Writes and waits until the other side has surely read it (a round trip through the event loop). */
async function send(sock: net.Socket, data: string | Buffer): Promise<void> {
  await new Promise<void>((r) => sock.write(data, () => r()));
  await new Promise((r) => setTimeout(r, 20));
}

const JUNK_LINES = [
  "not json",
  "null",
  "42",
  '"a string"',
  "[1,2,3]",
  "true",
  "{",
  '{"event": 5}',
  '{"event": null}',
  '{"id": "1", "return": {}}',
  '{"id": {"toString": 1}, "return": {}}',
  '{"id": 1e400, "return": {}}',
  '{"__proto__": {"QMP": 1}}',
  '{"type": {"toString": 1}}',
  '{"type": "ready"}',
  '{"type": "ready", "uptimeMs": "soon"}',
  '{"type": "ready", "uptimeMs": -1}',
  '{"type": "ack", "id": "1"}',
  '{"type": "ack", "id": 1.5}',
  '{"type": "error", "id": null, "message": "x"}',
  "\u0000\u0001\u0002",
  "",
];

test("QMP: junk lines, non-object JSON, wrong types and a flood never throw; commands still work", async () => {
  const { host, peer, close } = await pair();
  try {
    const qmp = new QmpClient(host);
    const gotEvents: unknown[] = [];
    qmp.on("event", (e) => gotEvents.push(e));
    // Commands the host sends, answered by our fake QEMU (one id at a time).
    const commands: { id: number; execute: string }[] = [];
    let buf = "";
    peer.on("data", (b) => {
      buf += b.toString();
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        commands.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    });
    await send(peer, `${JUNK_LINES.join("\n")}\n`);
    await send(peer, '{"QMP": {"version": {}}}\n');
    const hs = qmp.handshake();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(commands[0]?.execute, "qmp_capabilities");
    // An answer for an id nobody asked for, then junk errors, then the real answer.
    await send(peer, `{"id": 999, "return": {}}\n{"id": ${commands[0]!.id}, "return": {}}\n`);
    await hs;

    // error that is not an object, error with non-string fields
    const a = assert.rejects(qmp.execute("a"), /QMP GenericError: malformed error/);
    const b = assert.rejects(qmp.execute("b"), /QMP GenericError: malformed error/);
    await new Promise((r) => setTimeout(r, 20));
    await send(peer, `{"id": ${commands[1]!.id}, "error": null}\n`);
    await send(peer, `{"id": ${commands[2]!.id}, "error": {"class": {"toString": 1}, "desc": [1]}}\n`);
    await a;
    await b;

    // An event whose data is not an object, or whose status would throw when
    // made a string: listeners get `data` only when it is an object.
    const waited = qmp.waitEvent("MIGRATION", 5000, (e) => e.data?.["status"] === "completed");
    await send(
      peer,
      '{"event": "MIGRATION", "data": "x"}\n{"event": "MIGRATION", "data": {"status": {"toString": 1}}}\n',
    );
    // A flood of events: all parsed, none buffered beyond the line.
    const flood = '{"event": "NOISE", "data": {"n": 1}}\n'.repeat(20_000);
    await send(peer, flood);
    await send(peer, '{"event": "MIGRATION", "data": {"status": "completed"}}\n');
    assert.equal((await waited).data?.["status"], "completed");
    assert.equal(gotEvents.filter((e) => (e as { event: string }).event === "NOISE").length, 20_000);
    assert.ok(!gotEvents.some((e) => (e as { data?: unknown }).data === "x"), "non-object data is dropped");
    assert.ok(qmp.ignoredMessages >= JUNK_LINES.length - 4, `ignored ${qmp.ignoredMessages}`);

    // Still answers after all that.
    const c = qmp.execute<{ ok: boolean }>("c");
    await new Promise((r) => setTimeout(r, 20));
    await send(peer, `{"id": ${commands.at(-1)!.id}, "return": {"ok": true}}\n`);
    assert.deepEqual(await c, { ok: true });
    assert.equal(qmp.closed, false);
  } finally {
    close();
  }
});

test("QMP: a line longer than the cap is dropped whole, without buffering it, and its tail is not parsed", async () => {
  const { host, peer, close } = await pair();
  try {
    const qmp = new QmpClient(host);
    const events: string[] = [];
    qmp.on("event", (e) => events.push(e.event));
    // 8 MiB without a newline, in pieces: the tail looks like a valid event.
    const piece = Buffer.alloc(256 * 1024, 0x61);
    for (let i = 0; i < 32; i++) await new Promise<void>((r) => peer.write(piece, () => r()));
    await send(peer, '{"event": "TAIL"}\n{"event": "NEXT"}\n');
    assert.deepEqual(events, ["NEXT"]);
    assert.ok(MAX_QMP_LINE_BYTES < 8 * 1024 * 1024);
  } finally {
    close();
  }
});

test("control channel: junk, wrong types and huge lines are ignored; a pending request still resolves", async () => {
  const { host, peer, close } = await pair();
  try {
    const ch = new ControlChannel(host);
    const sent: { id: number; type: string }[] = [];
    let buf = "";
    peer.on("data", (b) => {
      buf += b.toString();
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        sent.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    });
    const ready = ch.waitReady(5000);
    const init = ch.request({ type: "init" }, 5000);
    const ping = assert.rejects(ch.request({ type: "ping" }, 5000), /guest agent: \(no message\)/);
    await new Promise((r) => setTimeout(r, 20));
    await send(peer, `${JUNK_LINES.join("\n")}\n`);
    // An error whose message would throw when made a string.
    await send(peer, `{"type": "error", "id": ${sent[1]!.id}, "message": {"toString": 1}}\n`);
    await ping;
    // A huge line whose tail is a valid ack: dropped whole.
    const huge = Buffer.concat([
      Buffer.alloc(MAX_CONTROL_LINE_BYTES * 4, 0x7b),
      Buffer.from(`{"type": "ack", "id": ${sent[0]!.id}}\n`),
    ]);
    await send(peer, huge);
    const settled = await Promise.race([
      init.then(() => "acked"),
      new Promise((r) => setTimeout(r, 50, "open")),
    ]);
    assert.equal(settled, "open", "the tail of an overlong line must not ack");
    // A very long error message is cut.
    const again = ch.request({ type: "ping" }, 5000).catch((e: Error) => e);
    await new Promise((r) => setTimeout(r, 20));
    await send(peer, `${JSON.stringify({ type: "error", id: sent[2]!.id, message: "e".repeat(10_000) })}\n`);
    const err = await again;
    assert.ok(err instanceof Error && err.message.length < 600, "error text is cut");
    // A flood of ready messages, then the real ack.
    await send(peer, `${'{"type": "ready", "agentVersion": "x", "uptimeMs": 5}\n'.repeat(10_000)}`);
    await send(peer, `{"type": "ack", "id": ${sent[0]!.id}}\n`);
    await init;
    assert.equal((await ready).uptimeMs, 5);
    assert.ok(ch.ignoredMessages >= JUNK_LINES.length, `ignored ${ch.ignoredMessages}`);
  } finally {
    close();
  }
});

test("parseGuestMessage keeps only well-typed messages", () => {
  assert.deepEqual(parseGuestMessage('{"type":"ready","agentVersion":"1","uptimeMs":3}'), {
    type: "ready",
    agentVersion: "1",
    uptimeMs: 3,
  });
  assert.deepEqual(parseGuestMessage('{"type":"ready","agentVersion":7,"uptimeMs":3}'), {
    type: "ready",
    agentVersion: "",
    uptimeMs: 3,
  });
  assert.deepEqual(parseGuestMessage('{"type":"pong","id":4,"extra":[1]}'), { type: "pong", id: 4 });
  for (const junk of JUNK_LINES) assert.equal(parseGuestMessage(junk), undefined, junk);
});

test("LineSplitter: lines split anywhere, CRLF, and the cap counts bytes, not characters", () => {
  const lines: string[] = [];
  const s = new LineSplitter(8, (l) => lines.push(l));
  for (const b of Buffer.from("ab\r\ncd\nééééé\nxy\n")) s.push(Buffer.from([b]));
  // "ééééé" is 10 bytes: over the cap of 8, dropped whole.
  assert.deepEqual(lines, ["ab", "cd", "xy"]);
  assert.equal(s.droppedLines, 1);
  s.push(Buffer.alloc(1_000_000, 0x61));
  assert.equal(s.bufferedBytes, 0);
  s.push(Buffer.from("\nok\n"));
  assert.deepEqual(lines.at(-1), "ok");
});
