// Template builder: a declarative spec becomes a read-only, content-addressed
// root image.
//
//   spec -> key (spec + file contents + package lock + agent + node) -> cache hit? done
//        -> debootstrap (Debian packages, host side, trusted archive)
//        -> customize (files, user, agent, init: file copies only, nothing executed)
//        -> mkfs.ext4 -d (no mount) -> run steps inside a build microVM (untrusted)
//        -> manifest -> atomic rename into images/<key> -> tag templates/<name>
//
// SECURITY: run steps are untrusted. They never execute on the host: they run
// as root inside a microVM booted from the image being built, with no network.
// Debian maintainer scripts do run on the host (in debootstrap's chroot); they
// come from the Debian archive, which the operator already trusts for the host.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { HOST_PATH, run } from "../host/exec.ts";
import type { NodeRuntime, TemplateImage } from "../sandbox/node-runtime.ts";
import { REQUIRED_PACKAGES, type TemplateSpec } from "./template-spec.ts";

/** Bumped when the image layout changes, so old cache entries are not reused. */
export const BUILDER_VERSION = 2;

/**
 * PID 1 of the root filesystem (the initramfs execs it): tini reaps orphans and
 * runs the guest agent. Part of every image's content address.
 * --single-threaded: no V8 worker threads competing for the one vCPU (boot
 * measured ~0.4 s faster under TCG).
 */
export const ROOTFS_INIT = [
  "#!/bin/sh",
  "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8",
  "exec /usr/bin/tini -g -- /opt/firebreak/node/bin/node --single-threaded --max-old-space-size=64 /opt/firebreak/agent/agent.mjs --control /dev/virtio-ports/fb.control",
  "",
].join("\n");
const GUEST_USER_UID = 1000;
const MIN_FREE_MIB = Number(process.env["FIREBREAK_MIN_FREE_MIB"] ?? 2048);

export interface BuildProgress {
  step: string;
  index: number;
  total: number;
  /** A line of output from the current step, when there is one. */
  detail?: string;
}

export interface BuildOptions {
  /** Resolve package versions afresh instead of reusing the lock. */
  refresh?: boolean;
  onProgress?: (p: BuildProgress) => void;
  /** Boots the build VM for run steps; only called when the spec has run steps. */
  runtime?: () => Promise<NodeRuntime>;
  /** The guest agent bundle (directory with agent.mjs) and the Node binary to ship. */
  agent: { bundleDir: string; nodeBinary: string };
  /**
   * Firebreak components a spec may name in `components` (name -> a directory
   * the caller built, copied to /opt/firebreak/<name>).
   */
  components?: Record<string, string>;
}

export interface TemplateManifest {
  key: string;
  name: string;
  spec: TemplateSpec;
  lock: PackageLock;
  builderVersion: number;
  nodeVersion: string;
  builtAt: string;
  buildMs: number;
  imageBytes: number;
}

export interface PackageLock {
  release: string;
  /** package -> exact version, as installed in the image */
  packages: Record<string, string>;
  /** npm packages (the spec's and their dependencies): node_modules path -> version. */
  npm?: Record<string, string>;
}

export interface BuiltTemplate extends TemplateImage {
  key: string;
  manifest: TemplateManifest;
  cached: boolean;
}

export function templateImageFromManifest(config: NodeConfig, m: TemplateManifest): BuiltTemplate {
  return {
    name: m.name,
    key: m.key,
    imagePath: path.join(paths.imagesDir(config), m.key, "rootfs.ext4"),
    env: m.spec.env,
    user: m.spec.user,
    workdir: m.spec.workdir,
    start: m.spec.start,
    ready: m.spec.ready,
    ...(m.spec.readyTimeoutMs !== undefined ? { readyTimeoutMs: m.spec.readyTimeoutMs } : {}),
    ...(m.spec.shape ? { shape: m.spec.shape } : {}),
    manifest: m,
    cached: true,
  };
}

/** Staging directories of builds in progress in this process (removed on interrupt). */
export const activeBuildDirs = new Set<string>();

export async function buildTemplate(
  config: NodeConfig,
  spec: TemplateSpec,
  specDir: string,
  opts: BuildOptions,
): Promise<BuiltTemplate> {
  const started = performance.now();
  const total = 6 + spec.run.length + (spec.npm ? 1 : 0);
  let index = 0;
  const progress = (step: string, detail?: string) => {
    if (!detail) index++;
    opts.onProgress?.({ step, index, total, ...(detail ? { detail } : {}) });
  };
  const imagesDir = paths.imagesDir(config);
  await fs.mkdir(imagesDir, { recursive: true, mode: 0o755 });
  await removeStaleBuilds(imagesDir);

  progress("resolve inputs");
  const lockFile = path.join(paths.templatesDir(config), `${spec.name}.lock.json`);
  const previousLock = opts.refresh ? undefined : await readJson<PackageLock>(lockFile);
  const components = resolveComponents(spec, opts.components ?? {});
  await checkAliases(config, spec);
  const inputs = await inputHash(spec, specDir, opts.agent, components);
  if (previousLock && previousLock.release === spec.debian.release) {
    const key = imageKey(inputs, previousLock);
    const hit = await readJson<TemplateManifest>(path.join(imagesDir, key, "manifest.json"));
    if (hit) {
      await tag(config, hit);
      return { ...templateImageFromManifest(config, hit), cached: true };
    }
  }

  await checkFreeSpace(config.stateDir, spec.diskMib);
  const staging = path.join(imagesDir, `.build-${process.pid}-${Date.now()}`);
  activeBuildDirs.add(staging);
  try {
    await fs.mkdir(staging, { mode: 0o755 });
    const rootfs = path.join(staging, "rootfs");

    const packages = [...new Set([...REQUIRED_PACKAGES, ...spec.debian.packages])].sort();
    progress(`debootstrap ${spec.debian.release} (${packages.join(", ")})`);
    const mirror = await debianMirror();
    const cacheDir = path.join(paths.cacheDir(config), "debs");
    await fs.mkdir(cacheDir, { recursive: true });
    const deb = await run(
      "debootstrap",
      [
        "--variant=minbase",
        `--include=${packages.join(",")}`,
        `--cache-dir=${cacheDir}`,
        spec.debian.release,
        rootfs,
        mirror,
      ],
      {
        allowFailure: true,
        timeoutMs: 30 * 60_000,
        onOutput: (chunk) => {
          for (const line of chunk.split("\n")) if (line.trim()) progress("debootstrap", line.trim());
        },
      },
    );
    if (deb.exitCode !== 0) {
      const why = (deb.stderr + deb.stdout).trim().split("\n").slice(-6).join("\n");
      // debootstrap reports a full disk as "Couldn't download ..."; the cause
      // (unxz/wget/dpkg: "No space left on device") is only in its own log.
      const log = await fs
        .readFile(path.join(rootfs, "debootstrap", "debootstrap.log"), "utf8")
        .catch(() => "");
      if (/No space left/.test(why) || /No space left/.test(log.slice(-4000))) throw noSpace(config.stateDir);
      throw new FirebreakError(
        "TEMPLATE_BUILD_FAILED",
        `debootstrap failed for ${spec.name} (packages: ${spec.debian.packages.join(", ") || "none"}):\n${why}\n` +
          "Check the package names (apt-cache policy NAME) and that the Debian mirror is reachable.",
      );
    }
    const lock = await readLock(rootfs, spec.debian.release);
    const npmDir = path.join(staging, "npm");
    if (spec.npm) {
      progress(`npm install ${spec.npm.packages.join(" ")}`);
      lock.npm = await installNpmPackages(spec.npm.packages, npmDir, (line) => progress("npm", line));
    }
    const key = imageKey(inputs, lock);
    const existing = await readJson<TemplateManifest>(path.join(imagesDir, key, "manifest.json"));
    if (existing) {
      await writeJsonAtomic(lockFile, lock);
      await tag(config, existing);
      return { ...templateImageFromManifest(config, existing), cached: true };
    }

    progress("install the guest agent, user and files");
    await customize(rootfs, spec, specDir, opts.agent);
    await installExtras(rootfs, spec.npm ? npmDir : undefined, components);

    progress(`make the root image (${spec.diskMib} MiB, ext4)`);
    const image = path.join(staging, "rootfs.ext4");
    const mk = await run(
      "mkfs.ext4",
      [
        "-q",
        "-F",
        "-L",
        "fbroot",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-E",
        "root_owner=0:0",
        "-d",
        rootfs,
        image,
        `${spec.diskMib}M`,
      ],
      { allowFailure: true, timeoutMs: 10 * 60_000 },
    );
    if (mk.exitCode !== 0) {
      if (/space|too small|Could not allocate/i.test(mk.stderr)) {
        throw new FirebreakError(
          /No space left/.test(mk.stderr) ? "NO_SPACE" : "TEMPLATE_BUILD_FAILED",
          `the root image does not fit: ${mk.stderr.trim().split("\n").pop()}. Raise diskMib in the spec or free disk space.`,
        );
      }
      throw new FirebreakError("TEMPLATE_BUILD_FAILED", `mkfs.ext4 failed: ${mk.stderr.trim()}`);
    }
    await fs.rm(rootfs, { recursive: true, force: true });

    if (spec.run.length > 0) {
      if (!opts.runtime)
        throw new FirebreakError("INTERNAL", "run steps need a runtime to boot the build VM");
      await runSteps(await opts.runtime(), spec, image, (step, detail) => progress(step, detail));
    }

    progress("finalize");
    await fs.chown(image, 0, 0);
    await fs.chmod(image, 0o444);
    const manifest: TemplateManifest = {
      key,
      name: spec.name,
      spec,
      lock,
      builderVersion: BUILDER_VERSION,
      nodeVersion: process.version,
      builtAt: new Date().toISOString(),
      buildMs: Math.round(performance.now() - started),
      imageBytes: (await fs.stat(image)).size,
    };
    await fs.writeFile(path.join(staging, "manifest.json"), JSON.stringify(manifest, null, 2));
    const final = path.join(imagesDir, key);
    // INVARIANT: images/<key> appears complete or not at all.
    await fs.rename(staging, final);
    await writeJsonAtomic(lockFile, lock);
    await tag(config, manifest);
    progress("done");
    return { ...templateImageFromManifest(config, manifest), cached: false };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOSPC") throw noSpace(config.stateDir);
    throw e;
  } finally {
    await removeBuildDir(staging);
    activeBuildDirs.delete(staging);
  }
}

async function runSteps(
  runtime: NodeRuntime,
  spec: TemplateSpec,
  image: string,
  progress: (step: string, detail?: string) => void,
): Promise<void> {
  const sb = await runtime.create({
    template: { name: `${spec.name} (build)`, imagePath: image, env: spec.env, user: "root" },
    shape: { vcpus: 1, memoryMib: 1024 },
    writableImage: true,
  });
  try {
    for (const [i, step] of spec.run.entries()) {
      progress(`run step ${i + 1}/${spec.run.length}: ${step.split("\n")[0]!.slice(0, 80)}`);
      let outputTail = "";
      const onOut = (b: Uint8Array) => {
        const text = Buffer.from(b).toString();
        outputTail = (outputTail + text).slice(-2000);
        for (const line of text.split("\n")) if (line.trim()) progress("run", line.trimEnd());
      };
      const { exitCode } = await sb.exec(["/bin/bash", "-e", "-o", "pipefail", "-c", step], {
        user: "root",
        cwd: spec.workdir ?? "/",
        onStdout: onOut,
        onStderr: onOut,
      });
      if (exitCode !== 0) {
        throw new FirebreakError(
          "TEMPLATE_BUILD_FAILED",
          `run step ${i + 1} of template ${spec.name} failed with exit code ${exitCode}: ${step}\n` +
            `last output:\n${outputTail.trimEnd().split("\n").slice(-10).join("\n")}\n` +
            "Fix the step in the spec and build again; nothing was cached.",
        );
      }
    }
    await sb.exec(["/bin/sync"], { user: "root" });
  } finally {
    await runtime.kill(sb.id, "template build finished");
  }
}

async function customize(
  rootfs: string,
  spec: TemplateSpec,
  specDir: string,
  agent: BuildOptions["agent"],
): Promise<void> {
  // The guest agent and the Node.js runtime it runs on.
  await fs.mkdir(path.join(rootfs, "opt/firebreak/node/bin"), { recursive: true });
  await fs.copyFile(agent.nodeBinary, path.join(rootfs, "opt/firebreak/node/bin/node"));
  await fs.chmod(path.join(rootfs, "opt/firebreak/node/bin/node"), 0o755);
  await fs.cp(agent.bundleDir, path.join(rootfs, "opt/firebreak/agent"), { recursive: true });
  await fs.writeFile(path.join(rootfs, "sbin/firebreak-init"), ROOTFS_INIT, { mode: 0o755 });

  // The default user (E2B: "user", home /home/user).
  if (spec.user !== "root") {
    const passwd = await fs.readFile(path.join(rootfs, "etc/passwd"), "utf8");
    if (!passwd.split("\n").some((l) => l.startsWith(`${spec.user}:`))) {
      const u = spec.user;
      await fs.appendFile(
        path.join(rootfs, "etc/passwd"),
        `${u}:x:${GUEST_USER_UID}:${GUEST_USER_UID}::/home/${u}:/bin/bash\n`,
      );
      await fs.appendFile(path.join(rootfs, "etc/group"), `${u}:x:${GUEST_USER_UID}:\n`);
      await fs.appendFile(path.join(rootfs, "etc/shadow"), `${u}:!:19000:0:99999:7:::\n`);
      const home = path.join(rootfs, "home", u);
      await fs.mkdir(home, { recursive: true, mode: 0o755 });
      for (const f of [".bashrc", ".profile"]) {
        await fs.copyFile(path.join(rootfs, "etc/skel", f), path.join(home, f)).catch(() => {});
      }
      await run("chown", ["-R", `${GUEST_USER_UID}:${GUEST_USER_UID}`, home]);
    }
  }
  await fs.writeFile(path.join(rootfs, "etc/hostname"), "sandbox\n");
  await fs.writeFile(
    path.join(rootfs, "etc/hosts"),
    "127.0.0.1 localhost\n127.0.1.1 sandbox\n::1 localhost\n",
  );
  // Identity is per sandbox, never baked into an image.
  await fs.writeFile(path.join(rootfs, "etc/machine-id"), "");
  await fs.mkdir(path.join(rootfs, "etc/firebreak"), { recursive: true });
  await fs.writeFile(
    path.join(rootfs, "etc/firebreak/template.json"),
    JSON.stringify({ name: spec.name, env: spec.env, user: spec.user, workdir: spec.workdir }, null, 2),
  );

  const specRoot = await fs.realpath(specDir);
  const rootReal = await fs.realpath(rootfs);
  for (const f of spec.files) {
    const src = await specSource(specRoot, f.src);
    const dest = await copyIntoRoot(src, specRoot, rootReal, f.dest);
    if (f.mode) await fs.chmod(dest, Number.parseInt(f.mode, 8));
  }

  // Smaller images: package caches are not needed at run time.
  for (const d of ["var/cache/apt/archives", "var/lib/apt/lists"]) {
    for (const e of await fs.readdir(path.join(rootfs, d)).catch(() => [] as string[])) {
      if (e.endsWith(".deb") || d.endsWith("lists"))
        await fs.rm(path.join(rootfs, d, e), { recursive: true, force: true });
    }
  }
}

async function readLock(rootfs: string, release: string): Promise<PackageLock> {
  // Host dpkg-query reading the image's database: no guest binary runs.
  const res = await run("dpkg-query", [
    `--admindir=${path.join(rootfs, "var/lib/dpkg")}`,
    "-W",
    "-f",
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format syntax
    "${Package}\t${Version}\n",
  ]);
  const packages: Record<string, string> = {};
  for (const line of res.stdout.trim().split("\n")) {
    const [p, v] = line.split("\t");
    if (p && v) packages[p] = v;
  }
  return { release, packages: Object.fromEntries(Object.entries(packages).sort()) };
}

async function inputHash(
  spec: TemplateSpec,
  specDir: string,
  agent: BuildOptions["agent"],
  components: Record<string, string>,
): Promise<string> {
  const h = createHash("sha256");
  h.update(JSON.stringify({ v: BUILDER_VERSION, spec, init: ROOTFS_INIT }));
  for (const [name, dir] of Object.entries(components)) {
    h.update(`component:${name}:`);
    await hashPath(h, dir);
  }
  const specRoot = spec.files.length ? await fs.realpath(specDir) : specDir;
  for (const f of spec.files) {
    h.update(`file:${f.src}:`);
    // Refused here, before anything is built, when it leaves the spec's directory.
    const src = await specSource(specRoot, f.src);
    for await (const e of walkSource(src, specRoot)) {
      if (e.kind === "dir-entry") h.update(`dir-entry:${e.name}`);
      else await hashFile(h, e.real);
    }
  }
  await hashPath(h, agent.bundleDir);
  const st = await fs.stat(agent.nodeBinary);
  h.update(`node:${process.version}:${st.size}`);
  return h.digest("hex");
}

/** Hashes a trusted tree (the agent bundle): names and contents, sorted. */
async function hashPath(h: ReturnType<typeof createHash>, p: string): Promise<void> {
  const st = await fs.stat(p);
  if (st.isDirectory()) {
    for (const e of (await fs.readdir(p)).sort()) {
      h.update(`dir-entry:${e}`);
      await hashPath(h, path.join(p, e));
    }
    return;
  }
  await hashFile(h, p);
}

async function hashFile(h: ReturnType<typeof createHash>, p: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    createReadStream(p)
      .on("data", (c) => h.update(c))
      .on("end", resolve)
      .on("error", reject);
  });
}

// ------------------------------------------------------------- spec files

const specInvalid = (msg: string) => new FirebreakError("TEMPLATE_SPEC_INVALID", msg);

/** `p` is `root` or below it (both real paths). */
function inside(p: string, root: string): boolean {
  return p === root || p.startsWith(root.endsWith("/") ? root : `${root}/`);
}

/**
 * SECURITY: a spec's `files[].src` is read by root on the host, so it must
 * stay inside the spec file's directory: relative, no `..`, and its real path
 * (every symlink resolved) inside the real path of that directory. A spec
 * sent over the API is written alone into an empty temporary directory, so it
 * has nothing to copy.
 */
export async function specSource(specRoot: string, rel: string): Promise<string> {
  if (rel.startsWith("/") || rel.split("/").includes("..")) {
    throw specInvalid(`files: ${rel} must be a path relative to the spec file's directory, without ..`);
  }
  let real: string;
  try {
    real = await fs.realpath(path.resolve(specRoot, rel));
  } catch {
    throw specInvalid(`files: ${rel} does not exist (resolved to ${path.resolve(specRoot, rel)})`);
  }
  if (!inside(real, specRoot)) {
    throw specInvalid(
      `files: ${rel} resolves to ${real}, outside the spec file's directory ${specRoot}; copy the file next to the spec instead of linking to it`,
    );
  }
  return real;
}

type SourceEntry =
  | { kind: "dir-entry"; name: string; rel: string }
  | { kind: "dir"; rel: string; real: string }
  | { kind: "file"; rel: string; real: string };

/**
 * Walks a checked source depth first, names sorted: a directory's entries as
 * `dir-entry` then what each is. Every symlink below it must resolve inside
 * `specRoot` too; a link back up (a cycle) and anything but files and
 * directories are refused.
 */
async function* walkSource(
  real: string,
  specRoot: string,
  rel = "",
  ancestors: ReadonlySet<string> = new Set(),
): AsyncGenerator<SourceEntry> {
  const st = await fs.stat(real);
  if (st.isFile()) {
    yield { kind: "file", rel, real };
    return;
  }
  if (!st.isDirectory()) throw specInvalid(`files: ${real} is neither a file nor a directory`);
  if (ancestors.has(real)) throw specInvalid(`files: ${real} links back to a directory above it`);
  yield { kind: "dir", rel, real };
  const below = new Set(ancestors).add(real);
  for (const name of (await fs.readdir(real)).sort()) {
    const childRel = rel ? `${rel}/${name}` : name;
    yield { kind: "dir-entry", name, rel: childRel };
    let child: string;
    try {
      child = await fs.realpath(path.join(real, name));
    } catch {
      throw specInvalid(`files: ${path.join(real, name)} is a dangling symlink`);
    }
    if (!inside(child, specRoot)) {
      throw specInvalid(
        `files: ${path.join(real, name)} resolves to ${child}, outside the spec file's directory ${specRoot}`,
      );
    }
    yield* walkSource(child, specRoot, childRel, below);
  }
}

/**
 * SECURITY: the host path a guest path is written at. Resolved inside the
 * image's root: its parent directories are created only below a real path
 * inside the root (a symlink in the image, such as an absolute one like
 * /var/run -> /run, would otherwise point at the host), and a symlink at the
 * final component is removed, never written through.
 */
async function guestTarget(rootReal: string, guestPath: string): Promise<string> {
  const rel = path.posix.normalize(guestPath).replace(/^\/+/, "");
  if (rel.split("/").includes("..")) throw specInvalid(`guest path ${guestPath} escapes the root filesystem`);
  if (rel === "" || rel === ".") return rootReal;
  const parts = rel.split("/");
  const base = parts.pop()!;
  // The deepest existing ancestor, then the missing directories below its real path.
  let existing = rootReal;
  let i = 0;
  for (; i < parts.length; i++) {
    const next = path.join(existing, parts[i]!);
    const st = await fs.lstat(next).catch(() => undefined);
    if (!st) break;
    existing = await fs.realpath(next);
    if (!inside(existing, rootReal)) {
      throw specInvalid(
        `guest path ${guestPath} escapes the root filesystem (through ${parts.slice(0, i + 1).join("/")})`,
      );
    }
  }
  for (; i < parts.length; i++) {
    existing = path.join(existing, parts[i]!);
    await fs.mkdir(existing);
  }
  const target = path.join(existing, base);
  const st = await fs.lstat(target).catch(() => undefined);
  if (st?.isSymbolicLink()) await fs.unlink(target);
  return target;
}

/**
 * Copies a checked source (from specSource) into the image at `guestDest`;
 * returns the host path of the copy. `specRoot` and `rootReal` are real paths.
 */
export async function copyIntoRoot(
  src: string,
  specRoot: string,
  rootReal: string,
  guestDest: string,
): Promise<string> {
  let top: string | undefined;
  for await (const e of walkSource(src, specRoot)) {
    if (e.kind === "dir-entry") continue;
    const dest = await guestTarget(rootReal, e.rel ? path.posix.join(guestDest, e.rel) : guestDest);
    top ??= dest;
    if (e.kind === "dir") {
      const st = await fs.lstat(dest).catch(() => undefined);
      if (!st) await fs.mkdir(dest);
      else if (!st.isDirectory())
        throw specInvalid(`files: ${guestDest}: ${dest} exists and is not a directory`);
    } else {
      await fs.copyFile(e.real, dest);
    }
  }
  return top!;
}

export function imageKey(inputs: string, lock: PackageLock): string {
  return createHash("sha256").update(inputs).update(JSON.stringify(lock)).digest("hex").slice(0, 32);
}

async function tag(config: NodeConfig, m: TemplateManifest): Promise<void> {
  await writeJsonAtomic(path.join(paths.templatesDir(config), `${m.name}.json`), {
    name: m.name,
    key: m.key,
  });
  // Aliases are tags to the same image; listing shows the template once.
  for (const alias of m.spec.aliases ?? []) {
    if (alias === m.name) continue;
    await writeJsonAtomic(path.join(paths.templatesDir(config), `${alias}.json`), {
      name: alias,
      key: m.key,
      aliasOf: m.name,
    });
  }
}

/**
 * SECURITY: an alias never takes over a name that another template answers
 * to (templates are shared by every tenant of the node).
 */
async function checkAliases(config: NodeConfig, spec: TemplateSpec): Promise<void> {
  for (const alias of spec.aliases ?? []) {
    if (alias === spec.name) continue;
    const existing = await readJson<{ key: string; aliasOf?: string }>(
      path.join(paths.templatesDir(config), `${alias}.json`),
    );
    if (!existing) continue;
    const owner =
      existing.aliasOf ??
      (await readJson<TemplateManifest>(path.join(paths.imagesDir(config), existing.key, "manifest.json")))
        ?.name ??
      alias;
    if (owner !== spec.name) {
      throw new FirebreakError(
        "TEMPLATE_SPEC_INVALID",
        `aliases: ${alias} is already the name of template ${owner}; choose another alias or delete ${owner} first`,
      );
    }
  }
}

/** The component directories a spec names, from those the caller offers. */
function resolveComponents(spec: TemplateSpec, offered: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of spec.components ?? []) {
    const dir = offered[name];
    if (!dir) {
      throw new FirebreakError(
        "TEMPLATE_SPEC_INVALID",
        `components: ${name} is not a Firebreak component; available: ${Object.keys(offered).join(", ") || "none"}`,
      );
    }
    out[name] = dir;
  }
  return out;
}

/** The npm CLI to run with this process's Node: FIREBREAK_NPM_CLI, else the npm on PATH. */
async function npmCli(): Promise<string> {
  const env = process.env["FIREBREAK_NPM_CLI"];
  if (env) return env;
  for (const dir of (process.env["PATH"] ?? HOST_PATH).split(":")) {
    const real = await fs.realpath(path.join(dir, "npm")).catch(() => undefined);
    if (real?.endsWith(".js")) return real;
  }
  throw new FirebreakError(
    "TEMPLATE_BUILD_FAILED",
    "npm is not installed on this host (needed for the spec's npm packages); run scripts/setup.sh or set FIREBREAK_NPM_CLI to npm-cli.js",
  );
}

/**
 * Installs exact npm packages into `dir/node_modules` on the host, for Linux
 * x64 and with this process's Node (the guest runs the same binary, so
 * prebuilt native addons work). Returns every installed package's version.
 * SECURITY: --ignore-scripts: a package's install scripts would run on the
 * host as root; packages that need them to work are not supported.
 */
async function installNpmPackages(
  packages: string[],
  dir: string,
  onLine: (line: string) => void,
): Promise<Record<string, string>> {
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(path.join(dir, "package.json"), JSON.stringify({ private: true }));
  const res = await run(
    process.execPath,
    [
      await npmCli(),
      "install",
      "--prefix",
      dir,
      "--ignore-scripts",
      "--no-audit",
      "--no-fund",
      "--save-exact",
      "--os=linux",
      "--cpu=x64",
      "--libc=glibc",
      "--loglevel=error",
      ...packages,
    ],
    {
      allowFailure: true,
      timeoutMs: 20 * 60_000,
      env: await npmEnv(),
      onOutput: (chunk) => {
        for (const line of chunk.split("\n")) if (line.trim()) onLine(line.trim());
      },
    },
  );
  if (res.exitCode !== 0) {
    throw new FirebreakError(
      "TEMPLATE_BUILD_FAILED",
      `npm install ${packages.join(" ")} failed:\n${(res.stderr + res.stdout).trim().split("\n").slice(-8).join("\n")}\n` +
        "Check the package names and versions (npm view NAME versions) and that the npm registry is reachable.",
    );
  }
  const hidden = await readJson<{ packages?: Record<string, { version?: string }> }>(
    path.join(dir, "node_modules", ".package-lock.json"),
  );
  const versions: Record<string, string> = {};
  for (const [p, info] of Object.entries(hidden?.packages ?? {})) {
    if (p && info.version) versions[p] = info.version;
  }
  await fs.rm(path.join(dir, "package-lock.json"), { force: true });
  return Object.fromEntries(Object.entries(versions).sort());
}

/**
 * The environment npm runs with: the host's registry settings (proxy, extra CA
 * certificates, npm_config_*), and Debian's /etc/npmrc, which npm would not
 * read when it runs on set-up's Node (its global config follows the Node prefix).
 */
async function npmEnv(): Promise<Record<string, string>> {
  const env: Record<string, string> = { PATH: `${path.dirname(process.execPath)}:${HOST_PATH}` };
  const pass = /^(HOME|NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|SSL_CERT_DIR|https?_proxy|no_proxy|npm_config_.*)$/i;
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && pass.test(k)) env[k] = v;
  const hasGlobal = Object.keys(env).some((k) => k.toLowerCase() === "npm_config_globalconfig");
  if (!hasGlobal && (await fs.stat("/etc/npmrc").catch(() => undefined))?.isFile()) {
    env["npm_config_globalconfig"] = "/etc/npmrc";
  }
  return env;
}

/** npm packages to /opt/firebreak/npm, components to /opt/firebreak/<name>: file copies only. */
async function installExtras(
  rootfs: string,
  npmDir: string | undefined,
  components: Record<string, string>,
): Promise<void> {
  const base = path.join(rootfs, "opt/firebreak");
  await fs.mkdir(base, { recursive: true });
  if (npmDir) await fs.cp(npmDir, path.join(base, "npm"), { recursive: true, verbatimSymlinks: true });
  for (const [name, dir] of Object.entries(components)) {
    await fs.cp(dir, path.join(base, name), { recursive: true, dereference: true });
    // Components run as the template's user: their root is readable whatever the source's mode.
    await fs.chmod(path.join(base, name), 0o755);
  }
}

async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(value, null, 2));
  await fs.rename(tmp, file);
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, "utf8")) as T;
  } catch {
    return undefined;
  }
}

/** The Debian mirror: FIREBREAK_DEBIAN_MIRROR, else the host's own apt source. */
export async function debianMirror(): Promise<string> {
  const env = process.env["FIREBREAK_DEBIAN_MIRROR"];
  if (env) return env;
  const candidates: string[] = [];
  const dir = "/etc/apt/sources.list.d";
  for (const f of (await fs.readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith(".sources"))) {
    const text = await fs.readFile(path.join(dir, f), "utf8");
    for (const block of text.split(/\n\s*\n/)) {
      const uris = /^URIs:\s*(\S+)/m.exec(block)?.[1];
      const suites = /^Suites:\s*(.+)$/m.exec(block)?.[1] ?? "";
      if (uris && /(^|\s)bookworm(\s|$)/.test(suites)) candidates.push(uris);
    }
  }
  const list = await fs.readFile("/etc/apt/sources.list", "utf8").catch(() => "");
  for (const m of list.matchAll(/^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/gm))
    if (m[1]) candidates.push(m[1]);
  const mirror = candidates[0];
  if (!mirror) {
    throw new FirebreakError(
      "TEMPLATE_BUILD_FAILED",
      "no Debian bookworm mirror found in the host's apt sources; set FIREBREAK_DEBIAN_MIRROR to a mirror URL",
    );
  }
  return mirror;
}

async function checkFreeSpace(dir: string, _diskMib: number): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  const st = await fs.statfs(dir);
  const freeMib = Math.floor((st.bavail * st.bsize) / (1024 * 1024));
  if (freeMib < MIN_FREE_MIB) throw noSpace(dir, freeMib);
}

function noSpace(dir: string, freeMib?: number): FirebreakError {
  return new FirebreakError(
    "NO_SPACE",
    `not enough free disk space in ${dir}${freeMib !== undefined ? ` (${freeMib} MiB free)` : ""}: a template build needs at least ${MIN_FREE_MIB} MiB. ` +
      "Free some space, remove unused templates (firebreak template delete NAME), or point FIREBREAK_STATE_DIR at a larger disk.",
  );
}

/** Removes staging directories of builds whose process is gone. */
async function removeStaleBuilds(imagesDir: string): Promise<void> {
  for (const e of await fs.readdir(imagesDir)) {
    const m = /^\.build-(\d+)-/.exec(e);
    if (!m) continue;
    const alive = await fs.access(`/proc/${m[1]}`).then(
      () => true,
      () => false,
    );
    if (!alive || Number(m[1]) === process.pid) {
      if (!activeBuildDirs.has(path.join(imagesDir, e))) await removeBuildDir(path.join(imagesDir, e));
    }
  }
}

/**
 * Removes a build's staging directory. A debootstrap that was killed leaves
 * its /proc (and maybe /sys) mounted inside the root it was making: those are
 * detached first (lazily: nothing of this build uses them any more), or the
 * removal fails with EBUSY and every later build of this state dir with it.
 */
export async function removeBuildDir(dir: string): Promise<void> {
  const prefix = `${path.resolve(dir)}/`;
  let mounts: string[] = [];
  try {
    mounts = (await fs.readFile("/proc/self/mounts", "utf8"))
      .split("\n")
      .map((l) => l.split(" ")[1] ?? "")
      // /proc/self/mounts escapes spaces and such as octal; a staging path has none.
      .filter((mp) => mp.startsWith(prefix));
  } catch {
    // no /proc: nothing can be mounted there by us either
  }
  // Deepest first.
  for (const mp of mounts.sort((a, b) => b.length - a.length)) {
    await run("umount", ["--lazy", mp], { allowFailure: true });
  }
  await fs.rm(dir, { recursive: true, force: true });
}
