import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { filesystemPb } from "@firebreak/protocol";
import { type Agent, startAgent, USER_UID } from "./harness.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const isCode = (code: Code) => (e: unknown) => e instanceof ConnectError && e.code === code;

describe("filesystem service and /files", () => {
  let agent: Agent;
  before(async () => {
    agent = await startAgent();
    assert.equal((await agent.init()).type, "ack");
  });
  after(() => agent.stop());

  const headers = () => ({ "X-Access-Token": agent.token });

  test("10 MiB binary upload (octet-stream) and download keep their sha256; file is owned by the user", async () => {
    const data = randomBytes(10 * 1024 * 1024);
    const up = await fetch(`${agent.baseUrl}/files?path=big/blob.bin`, {
      method: "POST",
      headers: { ...headers(), "content-type": "application/octet-stream" },
      body: data,
    });
    assert.equal(up.status, 200);
    const path = join(agent.home, "big/blob.bin");
    assert.deepEqual(await up.json(), [{ path, name: "blob.bin", type: "file" }]);
    const st = await stat(path);
    assert.equal(st.uid, USER_UID);
    assert.equal((await stat(join(agent.home, "big"))).uid, USER_UID);

    const down = await fetch(`${agent.baseUrl}/files?path=${encodeURIComponent(path)}`, {
      headers: headers(),
    });
    assert.equal(down.status, 200);
    assert.equal(down.headers.get("content-type"), "application/octet-stream");
    const got = new Uint8Array(await down.arrayBuffer());
    assert.equal(got.length, data.length);
    assert.equal(sha256(got), sha256(data));
  });

  test("multipart upload, with the path from the query or from the part filename", async () => {
    const form = new FormData();
    form.append("file", new Blob([Buffer.from("hello multipart")]), "ignored-name");
    const up = await fetch(`${agent.baseUrl}/files?path=/tmp/${process.pid}-mp.txt&username=root`, {
      method: "POST",
      headers: headers(),
      body: form,
    });
    assert.equal(up.status, 200);
    assert.equal(await readFile(`/tmp/${process.pid}-mp.txt`, "utf8"), "hello multipart");
    assert.equal((await stat(`/tmp/${process.pid}-mp.txt`)).uid, 0);
    await rm(`/tmp/${process.pid}-mp.txt`);

    const multi = new FormData();
    multi.append("file", new Blob(["one"]), "multi/one.txt");
    multi.append("file", new Blob(["two"]), "multi/two.txt");
    const up2 = await fetch(`${agent.baseUrl}/files`, { method: "POST", headers: headers(), body: multi });
    assert.equal(up2.status, 200);
    const entries = (await up2.json()) as Array<{ path: string }>;
    assert.deepEqual(
      entries.map((e) => e.path),
      [join(agent.home, "multi/one.txt"), join(agent.home, "multi/two.txt")],
    );
    assert.equal(await readFile(join(agent.home, "multi/two.txt"), "utf8"), "two");
  });

  test("multipart upload of a 'file' part without a filename (a form field) writes its text, as envd does", async () => {
    const form = new FormData();
    form.append("file", "file content");
    const up = await fetch(`${agent.baseUrl}/files?path=field.txt`, {
      method: "POST",
      headers: headers(),
      body: form,
    });
    assert.equal(up.status, 200);
    assert.deepEqual(await up.json(), [
      { path: join(agent.home, "field.txt"), name: "field.txt", type: "file" },
    ]);
    assert.equal(await readFile(join(agent.home, "field.txt"), "utf8"), "file content");
    // Without a path there is nowhere to write it.
    const none = new FormData();
    none.append("file", "x");
    const bad = await fetch(`${agent.baseUrl}/files`, { method: "POST", headers: headers(), body: none });
    assert.equal(bad.status, 400);
  });

  test("download of a missing file is a 404 with a JSON error", async () => {
    const res = await fetch(`${agent.baseUrl}/files?path=/no/such/file`, { headers: headers() });
    assert.equal(res.status, 404);
    const body = (await res.json()) as { code: number; message: string };
    assert.equal(body.code, 404);
    assert.match(body.message, /\/no\/such\/file/);
  });

  test("stat, makeDir, listDir with depth, move, remove", async () => {
    const fs = agent.filesystem();
    const made = await fs.makeDir({ path: "proj/src" });
    assert.equal(made.entry?.path, join(agent.home, "proj/src"));
    assert.equal(made.entry?.type, filesystemPb.FileType.DIRECTORY);
    assert.equal(made.entry?.owner, "user");
    await assert.rejects(fs.makeDir({ path: "proj/src" }), isCode(Code.AlreadyExists));

    await writeFile(join(agent.home, "proj/src/a.txt"), "abc");
    await writeFile(join(agent.home, "proj/readme"), "r");
    await symlink("readme", join(agent.home, "proj/link"));

    const st = await fs.stat({ path: "proj/src/a.txt" });
    assert.equal(st.entry?.name, "a.txt");
    assert.equal(st.entry?.size, 3n);
    assert.equal(st.entry?.type, filesystemPb.FileType.FILE);
    assert.match(st.entry?.permissions ?? "", /^-rw/);
    assert.ok((st.entry?.modifiedTime?.seconds ?? 0n) > 0n);

    const shallow = await fs.listDir({ path: "proj", depth: 1 });
    assert.deepEqual(shallow.entries.map((e) => e.name).sort(), ["link", "readme", "src"]);
    const link = shallow.entries.find((e) => e.name === "link");
    // envd resolves symlink targets to absolute paths; the type is the target's.
    assert.equal(link?.symlinkTarget, join(agent.home, "proj/readme"));
    assert.equal(link?.type, filesystemPb.FileType.FILE);
    assert.equal(link?.permissions, "Lrwxrwxrwx");
    const deep = await fs.listDir({ path: "proj", depth: 2 });
    assert.ok(deep.entries.some((e) => e.path === join(agent.home, "proj/src/a.txt")));

    const moved = await fs.move({ source: "proj/src/a.txt", destination: "proj/dst/b.txt" });
    assert.equal(moved.entry?.path, join(agent.home, "proj/dst/b.txt"));
    await assert.rejects(fs.stat({ path: "proj/src/a.txt" }), isCode(Code.NotFound));

    await fs.remove({ path: "proj" });
    await assert.rejects(fs.stat({ path: "proj" }), (e) => {
      assert.ok(e instanceof ConnectError && e.code === Code.NotFound);
      assert.match(e.message, /proj' does not exist/);
      return true;
    });
  });

  test("not_found for missing paths on every call but remove", async () => {
    const fs = agent.filesystem();
    await assert.rejects(fs.listDir({ path: "/definitely/missing", depth: 1 }), isCode(Code.NotFound));
    // Removing a missing path succeeds, as with envd (rm -rf).
    await fs.remove({ path: "/definitely/missing" });
    await assert.rejects(
      fs.move({ source: "/definitely/missing", destination: "/tmp/x" }),
      isCode(Code.NotFound),
    );
    await assert.rejects(
      fs.watchDir({ path: "/definitely/missing" })[Symbol.asyncIterator]().next(),
      isCode(Code.NotFound),
    );
  });

  test("watchDir streams create events; polled watchers return them too", async () => {
    const fs = agent.filesystem();
    const dir = join(agent.home, "watched");
    await mkdir(dir);
    const { watcherId } = await fs.createWatcher({ path: dir, recursive: false });

    const controller = new AbortController();
    const stream = fs.watchDir({ path: dir }, { signal: controller.signal })[Symbol.asyncIterator]();
    const first = await stream.next();
    assert.equal(first.value.event.case, "start");
    await writeFile(join(dir, "new.txt"), "x");
    let seen: filesystemPb.FilesystemEvent | undefined;
    for (let r = await stream.next(); !r.done; r = await stream.next()) {
      if (r.value.event.case === "filesystem") {
        seen = r.value.event.value;
        break;
      }
    }
    controller.abort();
    assert.equal(seen?.name, "new.txt");
    assert.equal(seen?.type, filesystemPb.EventType.CREATE);

    const polled = await fs.getWatcherEvents({ watcherId });
    assert.ok(polled.events.some((e) => e.name === "new.txt"));
    await fs.removeWatcher({ watcherId });
    await assert.rejects(fs.getWatcherEvents({ watcherId }), isCode(Code.NotFound));
  });
});
