// Template builds: cache hits, run steps that really run inside the build VM,
// a failing run step that leaves nothing behind, and the kernel extraction
// error path.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { extractVmlinux } from "../src/image/kernel.ts";
import {
  buildTemplate,
  deleteTemplate,
  FirebreakError,
  getTemplate,
  listTemplates,
  paths,
  readTemplateSpec,
  resolveSpecFile,
} from "../src/index.ts";
import {
  agentInputs,
  assertNoLeaks,
  config,
  createSandbox,
  exec,
  listDir,
  runtime,
  skipUnlessRoot,
  template,
} from "./helpers.ts";

/** A nonce in the spec gives it a fresh content address: the build really runs. */
const nonce = randomBytes(6).toString("hex");
let specDir: string;

async function writeSpec(name: string, spec: Record<string, unknown>): Promise<string> {
  const file = path.join(specDir, `${name}.json`);
  await fs.writeFile(file, JSON.stringify({ name, ...spec }, null, 2));
  return file;
}

async function build(file: string) {
  const { spec, dir } = await readTemplateSpec(file);
  return buildTemplate(config, spec, dir, { runtime, agent: await agentInputs() });
}

describe("template builds", { skip: skipUnlessRoot }, () => {
  before(async () => {
    specDir = await fs.mkdtemp(path.join(os.tmpdir(), "fb-specs-"));
  });
  after(async () => {
    await fs.rm(specDir, { recursive: true, force: true });
    await (await runtime()).close();
    await assertNoLeaks();
  });

  test("building base again is a cache hit", async () => {
    const first = await template("base");
    const st = await fs.stat(first.imagePath);
    const { spec, dir } = await readTemplateSpec(await resolveSpecFile("base"));
    const again = await buildTemplate(config, spec, dir, { runtime, agent: await agentInputs() });
    assert.equal(again.cached, true);
    assert.equal(again.key, first.key);
    assert.equal(again.imagePath, first.imagePath);
    // The image was not rewritten.
    assert.equal((await fs.stat(again.imagePath)).mtimeMs, st.mtimeMs);
    assert.equal((await getTemplate(config, "base"))?.key, first.key);
  });

  test("a run step runs inside the build VM, and its result is in the image", async (t) => {
    const name = `fbtest-steps-${nonce}`;
    t.after(() => deleteTemplate(config, name));
    const file = await writeSpec(name, {
      debian: { packages: [] },
      diskMib: 1024,
      env: { FB_BUILD_NONCE: nonce },
      run: [
        // Evidence of where the step ran: the kernel release and the machine.
        "uname -r > /etc/built-by-step",
        "id -u >> /etc/built-by-step",
        // Only a Firebreak microVM has the host control port.
        "ls /dev/virtio-ports/fb.control >> /etc/built-by-step",
        'echo "$FB_BUILD_NONCE" >> /etc/built-by-step',
      ],
    });
    const built = await build(file);
    assert.equal(built.cached, false);
    const rt = await runtime();

    const sb = await createSandbox(t, { template: built });
    const r = await exec(sb, ["cat", "/etc/built-by-step"]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, `${rt.kernel.release}\n0\n/dev/virtio-ports/fb.control\n${nonce}\n`);
    // The guest kernel is not the host's, and the host was not written to.
    const hostRelease = os.release();
    if (hostRelease !== rt.kernel.release) assert.notEqual(r.stdout.split("\n")[0], hostRelease);
    const hostFile = await fs.readFile("/etc/built-by-step", "utf8").catch(() => "");
    assert.ok(!hostFile.includes(nonce), "the run step wrote to the host's /etc");
    // A sandbox from the built template runs as its default user, unaffected by the root build step.
    assert.equal((await exec(sb, ["id", "-un"])).stdout, "user\n");

    // Built once: the same spec again is a cache hit.
    assert.equal((await build(file)).cached, true);
  });

  test("a failing run step names the step and its exit code, and leaves nothing", async (t) => {
    const name = `fbtest-fails-${nonce}`;
    t.after(() => deleteTemplate(config, name));
    const file = await writeSpec(name, {
      debian: { packages: [] },
      diskMib: 1024,
      env: { FB_BUILD_NONCE: nonce },
      run: ["echo hi", "exit 3"],
    });
    await assert.rejects(build(file), (e: unknown) => {
      assert.ok(e instanceof FirebreakError, String(e));
      assert.equal(e.code, "TEMPLATE_BUILD_FAILED");
      assert.match(e.message, /run step 2\b/);
      assert.match(e.message, /exit code 3\b/);
      assert.match(e.message, /exit 3/);
      assert.match(e.message, /Fix the step/);
      return true;
    });
    // No image of it and no staging dir of this process (other processes may build meanwhile).
    for (const e of await listDir(paths.imagesDir(config))) {
      assert.ok(!e.startsWith(`.build-${process.pid}-`), `staging dir left: ${e}`);
      const m = await fs
        .readFile(path.join(paths.imagesDir(config), e, "manifest.json"), "utf8")
        .catch(() => "{}");
      assert.notEqual((JSON.parse(m) as { name?: string }).name, name, `an image of the failed build: ${e}`);
    }
    assert.equal(await getTemplate(config, name), undefined);
    assert.ok(!existsSync(path.join(paths.templatesDir(config), `${name}.json`)));
    assert.ok(!existsSync(path.join(paths.templatesDir(config), `${name}.lock.json`)));
    // The build VM is gone with everything it had.
    assert.equal((await runtime()).list().length, 0);
    await assertNoLeaks();
  });

  test("npm packages and components land in /opt/firebreak, aliases resolve, the shape is the default", async (t) => {
    const name = `fbtest-extras-${nonce}`;
    const alias = `fbtest-alias-${nonce}`;
    const component = await fs.mkdtemp(path.join(os.tmpdir(), "fb-component-"));
    await fs.writeFile(path.join(component, "hello.txt"), `component ${nonce}\n`);
    t.after(async () => {
      await deleteTemplate(config, name);
      await fs.rm(component, { recursive: true, force: true });
    });
    const file = await writeSpec(name, {
      debian: { packages: [] },
      diskMib: 1024,
      npm: { packages: ["is-number@7.0.0"] },
      components: ["test-component"],
      aliases: [alias],
      shape: { vcpus: 1, memoryMib: 320 },
    });
    const { spec, dir } = await readTemplateSpec(file);
    const built = await buildTemplate(config, spec, dir, {
      runtime,
      agent: await agentInputs(),
      components: { "test-component": component },
    });
    assert.equal(built.manifest.lock.npm?.["node_modules/is-number"], "7.0.0");
    assert.deepEqual(built.shape, { vcpus: 1, memoryMib: 320 });

    // The alias is the same image; the template is listed once, under its name.
    assert.equal((await getTemplate(config, alias))?.key, built.key);
    assert.equal((await listTemplates(config)).filter((x) => x.key === built.key).length, 1);

    const sb = await createSandbox(t, { template: built });
    assert.deepEqual(sb.shape, { vcpus: 1, memoryMib: 320 }, "a create without a shape gets the template's");
    const pkg = await exec(sb, ["cat", "/opt/firebreak/npm/node_modules/is-number/package.json"]);
    assert.equal(JSON.parse(pkg.stdout).version, "7.0.0");
    assert.equal(
      (await exec(sb, ["cat", "/opt/firebreak/test-component/hello.txt"])).stdout,
      `component ${nonce}\n`,
    );

    // An alias never takes over another template's name; unknown components are refused.
    const thief = await writeSpec(`fbtest-thief-${nonce}`, { aliases: ["base"] });
    await assert.rejects(build(thief), /aliases: base is already the name of template base/);
    const unknown = await writeSpec(`fbtest-unknown-${nonce}`, { components: ["nope"] });
    await assert.rejects(build(unknown), /components: nope is not a Firebreak component/);

    // Deleting the template removes its aliases too.
    assert.equal(await deleteTemplate(config, name), true);
    assert.equal(await getTemplate(config, alias), undefined);
  });
});

describe("kernel extraction errors", () => {
  test("a vmlinuz without an ELF payload gives KERNEL_MISSING", async () => {
    // Random bytes with lz4 and zstd magics planted in them: candidates that decompress to nothing.
    const junk = randomBytes(64 * 1024);
    Buffer.from([0x02, 0x21, 0x4c, 0x18]).copy(junk, 1000);
    Buffer.from([0x28, 0xb5, 0x2f, 0xfd]).copy(junk, 5000);
    await assert.rejects(extractVmlinux(junk), (e: unknown) => {
      assert.ok(e instanceof FirebreakError);
      assert.equal(e.code, "KERNEL_MISSING");
      assert.match(e.message, /vmlinuz/);
      return true;
    });
  });
});
