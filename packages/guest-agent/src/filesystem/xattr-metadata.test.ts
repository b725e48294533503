import assert from "node:assert/strict";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  loadXattr,
  metadataFromHeaders,
  metadataProblem,
  readMetadata,
  writeMetadata,
  xattrError,
} from "./xattr-metadata.ts";

test("metadataProblem applies envd's rules", () => {
  assert.equal(metadataProblem({ author: "mish", "a.b-c_d~": "x y!" }), undefined);
  assert.match(metadataProblem({ "": "v" }) ?? "", /empty/);
  assert.match(metadataProblem({ k: "bad\nvalue" }) ?? "", /printable/);
  assert.match(metadataProblem({ ké: "v" }) ?? "", /printable/);
  assert.match(metadataProblem({ ["k".repeat(247)]: "v" }) ?? "", /longer than 246/);
  assert.equal(metadataProblem({ ["k".repeat(246)]: "v" }), undefined);
  assert.match(metadataProblem({ a: "v".repeat(4096) }) ?? "", /at most 4096/);
});

test("metadataFromHeaders lowercases keys and keeps the first of repeated headers", () => {
  assert.deepEqual(
    metadataFromHeaders({
      "x-metadata-author": ["Mish", "other"],
      "x-metadata-purpose": ["upload"],
      "x-metadata-": ["ignored"],
      "content-type": ["text/plain"],
    }),
    { author: "Mish", purpose: "upload" },
  );
  assert.equal(metadataFromHeaders({ "content-type": ["x"] }), undefined);
});

test("xattrError turns the addon's message into an errno code", () => {
  assert.equal(xattrError(new Error("Operation not supported (os error 95)")).code, "EOPNOTSUPP");
  assert.equal(xattrError(new Error("No such file or directory (os error 2)")).code, "ENOENT");
  assert.equal(xattrError(new Error("weird")).code, "EIO");
});

test("write replaces the whole set, read skips foreign xattrs and does not follow symlinks", async () => {
  const dir = await mkdtemp(join(tmpdir(), "fb-xattr-"));
  try {
    const f = join(dir, "f");
    await writeFile(f, "x");
    assert.equal(await readMetadata(f), undefined);
    await writeMetadata(f, { author: "mish", purpose: "upload" });
    const x = (await loadXattr())!;
    await x.setAttribute(f, "user.other", "kept");
    assert.deepEqual(await readMetadata(f), { author: "mish", purpose: "upload" });
    await writeMetadata(f, { author: "someone" });
    assert.deepEqual(await readMetadata(f), { author: "someone" });
    assert.deepEqual((await x.listAttributes(f)).sort(), ["user.e2b.author", "user.other"]);
    await symlink(f, join(dir, "link"));
    assert.equal(await readMetadata(join(dir, "link")), undefined);
    await writeMetadata(f, undefined);
    assert.equal(await readMetadata(f), undefined);
    assert.equal(await readMetadata(join(dir, "missing")), undefined);
    // procfs has no user xattrs: not an error.
    await writeMetadata("/proc/self/comm", { a: "b" });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
