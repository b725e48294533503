// The QEMU jailer (native/fb-launch.c), compiled on first use into the state
// dir's cache, keyed by the hash of its source. Root-owned, 0755.
import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { run } from "../host/exec.ts";

const SOURCE = path.join(import.meta.dirname, "..", "..", "native", "fb-launch.c");

/** Path of the compiled jailer for this source, building it if needed. */
export async function ensureLauncher(config: NodeConfig): Promise<string> {
  const source = await fs.readFile(SOURCE);
  const hash = createHash("sha256").update(source).digest("hex").slice(0, 16);
  const dir = path.join(paths.cacheDir(config), "host");
  const bin = path.join(dir, `fb-launch-${hash}`);
  try {
    const st = await fs.stat(bin);
    if (st.uid === 0 && (st.mode & 0o022) === 0) return bin;
  } catch {
    // build below
  }
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  const tmp = `${bin}.${process.pid}.tmp`;
  try {
    await run("gcc", ["-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, SOURCE], { timeoutMs: 120_000 });
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw new FirebreakError(
      "INTERNAL",
      `compiling the QEMU jailer (fb-launch) failed; gcc and libc6-dev come with scripts/setup.sh: ${(e as Error).message}`,
    );
  }
  await fs.chmod(tmp, 0o755);
  await fs.rename(tmp, bin);
  return bin;
}
