import { execFile } from "node:child_process";
import { cp, mkdir, readdir, rm, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const PTY_PACKAGE = "@lydell/node-pty";
const XATTR_PACKAGE = "@napi-rs/xattr";
/** Files of the PTY package that are only used on Windows or macOS. */
const NOT_FOR_LINUX = /^(windows|conpty|worker$|shared$)/;

export type BundleOptions = {
  /** Guest CPU architecture (Node's naming: "x64", "arm64"). Default: this host's. */
  arch?: string;
};

/**
 * Builds the guest agent for a VM image: `outDir/agent.mjs` and
 * `outDir/fs-worker.mjs` (minified ESM files, every dependency inlined) plus the
 * PTY and xattr libraries with their prebuilt native addons in
 * `outDir/node_modules/`, so `node outDir/agent.mjs` needs nothing else.
 * Those two stay external because they load `.node` files; the agent imports
 * them lazily to keep start-up light.
 */
export async function buildAgentBundle(
  outDir: string,
  opts: BundleOptions = {},
): Promise<{ files: string[] }> {
  const arch = opts.arch ?? process.arch;
  const here = dirname(fileURLToPath(import.meta.url));
  const { build } = await import("esbuild");
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  await build({
    // The agent, and the per-user file worker it starts (a separate, smaller file:
    // the worker loads none of the HTTP or Connect code).
    entryPoints: { agent: join(here, "main.ts"), "fs-worker": join(here, "fs-worker", "worker-main.ts") },
    outdir: outDir,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node24",
    minify: true,
    sourcemap: false,
    legalComments: "none",
    external: [PTY_PACKAGE, XATTR_PACKAGE],
    // Bundled CommonJS dependencies (busboy) call require() for Node built-ins.
    banner: {
      js: 'import{createRequire as __fbCreateRequire}from"node:module";const require=__fbCreateRequire(import.meta.url);',
    },
    logLevel: "warning",
    plugins: [builtinsViaRequire],
  });

  const require = createRequire(import.meta.url);
  const ptyDir = dirname(require.resolve(`${PTY_PACKAGE}/package.json`));
  const nativeName = `${PTY_PACKAGE}-linux-${arch}`;
  let nativeDir: string;
  try {
    nativeDir = dirname(createRequire(join(ptyDir, "package.json")).resolve(`${nativeName}/package.json`));
  } catch {
    throw new Error(
      `${nativeName} is not installed: run \`npm install --os=linux --cpu=${arch}\` (or add it as a dependency) to bundle for a ${arch} guest`,
    );
  }
  const destPty = join(outDir, "node_modules", PTY_PACKAGE);
  await mkdir(destPty, { recursive: true });
  for (const name of await readdir(ptyDir)) {
    if (NOT_FOR_LINUX.test(name) || name.endsWith(".d.ts") || name.endsWith(".md")) continue;
    await cp(join(ptyDir, name), join(destPty, name), { recursive: true });
  }
  const destNative = join(outDir, "node_modules", nativeName);
  await mkdir(destNative, { recursive: true });
  for (const name of ["package.json", "pty.node", "LICENSE"]) {
    const src = join(nativeDir, name);
    if (await stat(src).catch(() => undefined)) await cp(src, join(destNative, name));
  }
  // The xattr addon (file metadata): its loader and the prebuilt glibc binary.
  const xattrDir = dirname(require.resolve(`${XATTR_PACKAGE}/package.json`));
  const xattrNativeName = `${XATTR_PACKAGE}-linux-${arch}-gnu`;
  let xattrNativeDir: string;
  try {
    xattrNativeDir = dirname(
      createRequire(join(xattrDir, "package.json")).resolve(`${xattrNativeName}/package.json`),
    );
  } catch {
    throw new Error(
      `${xattrNativeName} is not installed: run \`npm install --os=linux --cpu=${arch}\` to bundle for a ${arch} guest`,
    );
  }
  const destXattr = join(outDir, "node_modules", XATTR_PACKAGE);
  await mkdir(destXattr, { recursive: true });
  for (const name of ["package.json", "index.js", "LICENSE"]) {
    const src = join(xattrDir, name);
    if (await stat(src).catch(() => undefined)) await cp(src, join(destXattr, name));
  }
  const destXattrNative = join(outDir, "node_modules", xattrNativeName);
  await mkdir(destXattrNative, { recursive: true });
  for (const name of await readdir(xattrNativeDir)) {
    if (name === "package.json" || name.endsWith(".node")) {
      await cp(join(xattrNativeDir, name), join(destXattrNative, name));
    }
  }
  // The privileged helper (clock, CRNG reseed): static, so it runs in any image.
  await mkdir(join(outDir, "bin"), { recursive: true });
  const helperSrc = join(here, "..", "native", "fb-guestctl.c");
  await new Promise<void>((resolve, reject) => {
    execFile(
      "gcc",
      ["-static", "-Os", "-s", "-Wall", "-o", join(outDir, "bin", "fb-guestctl"), helperSrc],
      { timeout: 120_000 },
      (err, _out, stderr) => {
        if (err)
          reject(
            new Error(
              `compiling fb-guestctl failed (is gcc installed? run scripts/setup.sh): ${stderr || err.message}`,
            ),
          );
        else resolve();
      },
    );
  });
  return { files: await listFiles(outDir, outDir) };
}

/**
 * Loads Node built-ins with require() instead of ESM import. An ESM import of
 * `node:http` or `node:crypto` materialises every lazy export of the module
 * (node:http pulls in all of undici, node:crypto all of WebCrypto): ~15 ms on the
 * host, far more under emulation. require() leaves the lazy getters alone.
 */
const builtinsViaRequire = {
  name: "builtins-via-require",
  setup(b: import("esbuild").PluginBuild) {
    b.onResolve({ filter: /^node:/ }, (args) =>
      // The require() inside the shim itself stays a real, external require.
      args.namespace === "builtin-cjs"
        ? { path: args.path, external: true }
        : { path: args.path, namespace: "builtin-cjs" },
    );
    b.onLoad({ filter: /.*/, namespace: "builtin-cjs" }, (args) => ({
      contents: `module.exports = require(${JSON.stringify(args.path)});`,
      loader: "js",
    }));
  },
};

async function listFiles(root: string, dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(root, p)));
    else out.push(p.slice(root.length + 1));
  }
  return out.sort();
}
