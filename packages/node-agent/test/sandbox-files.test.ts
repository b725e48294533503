// Files in a real microVM: the agent's REST /files and the filesystem RPCs,
// reached from the host through the sandbox's network namespace.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { filesystemPb } from "@firebreak/protocol";
import type { Sandbox } from "../src/index.ts";
import {
  assertNoLeaks,
  assertNoLeftovers,
  exec,
  killSandbox,
  newSandbox,
  skipUnlessRoot,
} from "./helpers.ts";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Asserts a Connect NotFound whose message names the path. */
function notFound(path: string) {
  return (e: unknown) => {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
    assert.equal(e.code, Code.NotFound, `code ${Code[e.code]}: ${e.message}`);
    assert.ok(e.rawMessage.includes(path), `message does not name ${path}: ${e.rawMessage}`);
    return true;
  };
}

describe("files in a microVM", { skip: skipUnlessRoot }, () => {
  let sb: Sandbox;
  before(async () => {
    sb = await newSandbox();
  });
  after(async () => {
    await killSandbox(sb);
    if (sb) await assertNoLeftovers([sb.id]);
    await assertNoLeaks();
  });

  test("a 10 MiB random binary file uploaded and downloaded keeps its sha256", async () => {
    const data = randomBytes(10 * 1024 * 1024);
    const want = sha256(data);
    const up = await sb.envd().fetch("/files?path=/home/user/upload/blob.bin", {
      method: "POST",
      headers: { "content-type": "application/octet-stream" },
      body: data,
    });
    assert.equal(up.status, 200, await up.clone().text());
    assert.deepEqual(await up.json(), [
      { path: "/home/user/upload/blob.bin", name: "blob.bin", type: "file" },
    ]);

    // The bytes landed in the guest's own filesystem, owned by the user.
    const inGuest = await exec(sb, [
      "/bin/sh",
      "-c",
      "sha256sum upload/blob.bin; stat -c '%s %U' upload/blob.bin",
    ]);
    assert.equal(inGuest.stdout, `${want}  upload/blob.bin\n${data.length} user\n`);

    // Plain download.
    const down = await sb.envd().fetch("/files?path=/home/user/upload/blob.bin", {
      headers: { "accept-encoding": "identity" },
    });
    assert.equal(down.status, 200);
    const got = new Uint8Array(await down.arrayBuffer());
    assert.equal(got.length, data.length);
    assert.equal(sha256(got), want);

    // Gzip-encoded download (fetch decodes it) gives the same bytes.
    const gz = await sb
      .envd()
      .fetch("/files?path=upload/blob.bin", { headers: { "accept-encoding": "gzip" } });
    assert.equal(gz.status, 200);
    assert.equal(sha256(new Uint8Array(await gz.arrayBuffer())), want);
  });

  test("multipart upload writes where the query says", async () => {
    const form = new FormData();
    form.append("file", new Blob([Buffer.from("multipart body\n")]), "ignored.txt");
    const up = await sb.envd().fetch("/files?path=/tmp/multipart.txt", { method: "POST", body: form });
    assert.equal(up.status, 200, await up.clone().text());
    assert.equal((await exec(sb, ["cat", "/tmp/multipart.txt"])).stdout, "multipart body\n");
  });

  test("list, stat, move and remove through the filesystem RPCs", async () => {
    const fsc = sb.envd().filesystem;
    const dir = "/home/user/fs-rpc";
    await fsc.makeDir({ path: `${dir}/sub` });
    for (const [name, body] of [
      ["a.txt", "alpha"],
      ["b.bin", "bravo!!"],
    ] as const) {
      const r = await sb.envd().fetch(`/files?path=${dir}/${name}`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body,
      });
      assert.equal(r.status, 200);
    }

    const listed = await fsc.listDir({ path: dir, depth: 1 });
    const entries = listed.entries.map((e) => [e.name, e.type, e.path] as const).sort();
    assert.deepEqual(entries, [
      ["a.txt", filesystemPb.FileType.FILE, `${dir}/a.txt`],
      ["b.bin", filesystemPb.FileType.FILE, `${dir}/b.bin`],
      ["sub", filesystemPb.FileType.DIRECTORY, `${dir}/sub`],
    ]);

    const st = await fsc.stat({ path: `${dir}/b.bin` });
    assert.equal(st.entry?.name, "b.bin");
    assert.equal(st.entry?.type, filesystemPb.FileType.FILE);
    assert.equal(st.entry?.size, 7n);
    assert.equal(st.entry?.owner, "user");

    const moved = await fsc.move({ source: `${dir}/a.txt`, destination: `${dir}/sub/renamed.txt` });
    assert.equal(moved.entry?.path, `${dir}/sub/renamed.txt`);
    await assert.rejects(fsc.stat({ path: `${dir}/a.txt` }), notFound(`${dir}/a.txt`));
    assert.equal((await exec(sb, ["cat", `${dir}/sub/renamed.txt`])).stdout, "alpha");

    const deep = await fsc.listDir({ path: dir, depth: 2 });
    assert.ok(deep.entries.some((e) => e.path === `${dir}/sub/renamed.txt`));

    await fsc.remove({ path: `${dir}/b.bin` });
    await assert.rejects(fsc.stat({ path: `${dir}/b.bin` }), notFound(`${dir}/b.bin`));
    await fsc.remove({ path: dir });
    await assert.rejects(fsc.listDir({ path: dir, depth: 1 }), notFound(dir));
    assert.equal((await exec(sb, ["test", "-e", dir])).exitCode, 1);
  });

  test("a missing path gives a clear not-found error naming the path", async () => {
    const missing = "/home/user/no/such/file.txt";
    const fsc = sb.envd().filesystem;
    await assert.rejects(fsc.stat({ path: missing }), notFound(missing));
    await assert.rejects(fsc.listDir({ path: "/no/such/dir", depth: 1 }), notFound("/no/such/dir"));
    // As in E2B's envd: removing what is not there succeeds (rm -f).
    await fsc.remove({ path: missing });
    await assert.rejects(
      fsc.move({ source: missing, destination: "/home/user/elsewhere.txt" }),
      notFound(missing),
    );

    const res = await sb.envd().fetch(`/files?path=${encodeURIComponent(missing)}`);
    assert.equal(res.status, 404);
    const body = (await res.json()) as { code: number; message: string };
    assert.equal(body.code, 404);
    assert.ok(body.message.includes(missing), `message does not name the path: ${body.message}`);
  });

  test("files are owned by the acting user: `user` by default, `root` when requested", async () => {
    for (const [client, path, owner] of [
      [sb.envd(), "/tmp/owned-by-user.txt", "user"],
      [sb.envd("root"), "/tmp/owned-by-root.txt", "root"],
    ] as const) {
      const up = await client.fetch(`/files?path=${path}`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body: owner,
      });
      assert.equal(up.status, 200);
      assert.equal((await client.filesystem.stat({ path })).entry?.owner, owner);
      assert.equal((await exec(sb, ["stat", "-c", "%U", path])).stdout, `${owner}\n`);
    }
  });
});
