// Builds the code-interpreter component for a template image (spec
// `components: ["code-interpreter"]` puts it at /opt/firebreak/code-interpreter):
//
//   server.mjs                     the service, one ESM file (esbuild)
//   node_modules/zeromq/           its ZeroMQ binding: JS and the prebuilt Linux addon
//   node_modules/cmake-ts/         the addon loader zeromq uses
//   python/firebreak_ci/           the IPython extension (rich results, chart data, preload)
//   python/ipython_kernel_config.py
import { cp, mkdir, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const CODE_INTERPRETER_COMPONENT = "code-interpreter";

export async function buildCodeInterpreterBundle(
  outDir: string,
  opts: { arch?: string } = {},
): Promise<{ dir: string }> {
  const arch = opts.arch ?? process.arch;
  const here = dirname(fileURLToPath(import.meta.url));
  const { build } = await import("esbuild");
  await rm(outDir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  await build({
    entryPoints: [join(here, "main.ts")],
    outfile: join(outDir, "server.mjs"),
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node24",
    minify: true,
    legalComments: "none",
    external: ["zeromq"],
    logLevel: "warning",
  });

  const require = createRequire(import.meta.url);
  const zmqDir = dirname(require.resolve("zeromq/package.json"));
  // cmake-ts's exports do not include package.json: find it from the loader zeromq requires.
  const loaderDir = dirname(
    dirname(createRequire(join(zmqDir, "package.json")).resolve("cmake-ts/build/loader")),
  );
  const dest = join(outDir, "node_modules");
  await mkdir(join(dest, "zeromq", "build"), { recursive: true });
  await cp(join(zmqDir, "package.json"), join(dest, "zeromq", "package.json"));
  await cp(join(zmqDir, "lib"), join(dest, "zeromq", "lib"), {
    recursive: true,
    filter: (src) => !/\.(d\.ts|map|tsbuildinfo)$/.test(src),
  });
  await cp(join(zmqDir, "build", "manifest.json"), join(dest, "zeromq", "build", "manifest.json"));
  // Only this architecture's glibc addons (the guest is Debian).
  const addons = join(zmqDir, "build", "linux", arch, "node");
  for (const name of await readdir(addons)) {
    if (name.startsWith("musl")) continue;
    await cp(join(addons, name), join(dest, "zeromq", "build", "linux", arch, "node", name), {
      recursive: true,
    });
  }
  await mkdir(join(dest, "cmake-ts", "build"), { recursive: true });
  await cp(join(loaderDir, "package.json"), join(dest, "cmake-ts", "package.json"));
  await cp(join(loaderDir, "build", "loader.js"), join(dest, "cmake-ts", "build", "loader.js"));

  await cp(join(here, "..", "python"), join(outDir, "python"), {
    recursive: true,
    filter: (src) => !src.includes("__pycache__"),
  });
  return { dir: outDir };
}
