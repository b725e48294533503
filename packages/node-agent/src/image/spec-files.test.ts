// Spec files[] on the host: sources stay inside the spec's directory (no
// absolute path, no .., no symlink out), destinations stay inside the image
// (no symlink in the image leads a copy or a mkdir onto the host).
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { loadConfig } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { buildTemplate, copyIntoRoot, specSource } from "./builder.ts";
import { parseTemplateSpec } from "./template-spec.ts";

const invalid = (re: RegExp) => (e: unknown) =>
  e instanceof FirebreakError && e.code === "TEMPLATE_SPEC_INVALID" && re.test(e.message);

/** A spec dir, an image root and a stand-in for the host's own files, all real paths. */
async function layout(t: { after(fn: () => Promise<void>): void }) {
  const top = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), "fb-specfiles-")));
  t.after(() => fs.rm(top, { recursive: true, force: true }));
  const spec = path.join(top, "spec");
  const root = path.join(top, "rootfs");
  const host = path.join(top, "host");
  for (const d of [spec, root, host]) await fs.mkdir(d);
  await fs.writeFile(path.join(host, "secret"), "host secret\n");
  await fs.writeFile(path.join(spec, "app.conf"), "app\n");
  return { top, spec, root, host };
}

test("sources: absolute, .., and symlinks out of the spec's directory are refused; links inside are followed", async (t) => {
  const { spec, host } = await layout(t);
  await fs.symlink(path.join(host, "secret"), path.join(spec, "out-link"));
  await fs.symlink("app.conf", path.join(spec, "in-link"));
  await fs.mkdir(path.join(spec, "dir"));
  await fs.symlink(host, path.join(spec, "dir", "hostdir"));
  await assert.rejects(specSource(spec, "/etc/passwd"), invalid(/relative/));
  await assert.rejects(specSource(spec, "../host/secret"), invalid(/without \.\./));
  await assert.rejects(specSource(spec, "out-link"), invalid(/outside the spec file's directory/));
  await assert.rejects(specSource(spec, "missing"), invalid(/does not exist/));
  assert.equal(await specSource(spec, "in-link"), path.join(spec, "app.conf"));
  // A directory is fine to name, but a link out below it is refused when it is read.
  const dir = await specSource(spec, "dir");
  await assert.rejects(
    copyIntoRoot(dir, spec, await fs.realpath(path.join(spec, "..", "rootfs")), "/opt/dir"),
    invalid(/hostdir resolves to .*outside/),
  );
  // A link back up is a cycle, refused rather than copied forever.
  await fs.rm(path.join(spec, "dir", "hostdir"));
  await fs.rm(path.join(spec, "out-link"));
  await fs.mkdir(path.join(spec, "loop"));
  await fs.symlink("..", path.join(spec, "loop", "up"));
  await assert.rejects(
    copyIntoRoot(await specSource(spec, "loop"), spec, path.join(spec, "..", "rootfs"), "/opt/loop"),
    invalid(/links back to a directory above it/),
  );
  // The schema refuses the same before anything is read.
  assert.throws(
    () => parseTemplateSpec({ name: "x", files: [{ src: "/etc/shadow", dest: "/x" }] }, "s"),
    /files\.0\.src: must be relative/,
  );
  assert.throws(
    () => parseTemplateSpec({ name: "x", files: [{ src: "a/../../b", dest: "/x" }] }, "s"),
    /files\.0\.src: must not contain \.\./,
  );
  assert.throws(
    () => parseTemplateSpec({ name: "x", files: [{ src: "a", dest: "/../../etc/x" }] }, "s"),
    /files\.0\.dest: must not contain \.\./,
  );
});

test("destinations: an absolute symlink in the image neither receives the copy nor gets directories made on the host", async (t) => {
  const { spec, root, host } = await layout(t);
  // Like Debian's /var/run -> /run and /etc/localtime -> /usr/share/zoneinfo/...: absolute links.
  await fs.mkdir(path.join(root, "var"));
  await fs.symlink(host, path.join(root, "var", "run"));
  await fs.mkdir(path.join(root, "etc"));
  await fs.symlink(path.join(host, "secret"), path.join(root, "etc", "localtime"));
  const src = await specSource(spec, "app.conf");

  await assert.rejects(
    copyIntoRoot(src, spec, root, "/var/run/made/app.conf"),
    invalid(/escapes the root filesystem/),
  );
  assert.deepEqual(await fs.readdir(host), ["secret"], "no directory was made on the host");

  // The final component being a link: the link is replaced by the file, the host file is untouched.
  const dest = await copyIntoRoot(src, spec, root, "/etc/localtime");
  assert.equal(dest, path.join(root, "etc", "localtime"));
  assert.equal(await fs.readFile(path.join(host, "secret"), "utf8"), "host secret\n");
  assert.ok((await fs.lstat(dest)).isFile());
  assert.equal(await fs.readFile(dest, "utf8"), "app\n");

  // A directory copy into fresh directories, with relative links inside the image still honoured.
  await fs.mkdir(path.join(spec, "tree", "sub"), { recursive: true });
  await fs.writeFile(path.join(spec, "tree", "sub", "f"), "f\n");
  await fs.mkdir(path.join(root, "usr", "lib"), { recursive: true });
  await fs.symlink("usr/lib", path.join(root, "lib"));
  await copyIntoRoot(await specSource(spec, "tree"), spec, root, "/lib/tree");
  assert.equal(await fs.readFile(path.join(root, "usr", "lib", "tree", "sub", "f"), "utf8"), "f\n");
});

test("buildTemplate refuses a source that leaves the spec's directory before building anything", async (t) => {
  const { top, spec, host } = await layout(t);
  await fs.symlink(path.join(host, "secret"), path.join(spec, "sneaky"));
  const config = loadConfig({ FIREBREAK_STATE_DIR: path.join(top, "state") });
  const parsed = parseTemplateSpec({ name: "sneaky", files: [{ src: "sneaky", dest: "/etc/sneaky" }] }, "s");
  await assert.rejects(
    buildTemplate(config, parsed, spec, { agent: { bundleDir: spec, nodeBinary: process.execPath } }),
    invalid(/sneaky resolves to .*outside the spec file's directory/),
  );
  const images = await fs.readdir(path.join(top, "state", "images")).catch(() => []);
  assert.deepEqual(images, [], "no staging dir, no image");
});
