// The initramfs: static busybox, the virtio modules and guest-init.sh. Built
// once per kernel and cached by content hash.
import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { run } from "../host/exec.ts";
import type { KernelManifest } from "./kernel.ts";

const INIT_SCRIPT = fileURLToPath(new URL("./guest-init.sh", import.meta.url));
const BUSYBOX = "/bin/busybox";

export async function ensureInitramfs(config: NodeConfig, kernel: KernelManifest): Promise<string> {
  const init = await fs.readFile(INIT_SCRIPT);
  const busybox = await fs.readFile(BUSYBOX).catch(() => {
    throw new FirebreakError(
      "KERNEL_MISSING",
      `${BUSYBOX} is missing; run scripts/setup.sh (busybox-static)`,
    );
  });
  const hash = createHash("sha256")
    .update(init)
    .update(busybox)
    .update(kernel.vmlinuxSha256)
    .digest("hex")
    .slice(0, 16);
  const dir = paths.initramfsDir(config);
  const out = path.join(dir, `${hash}.cpio`);
  try {
    await fs.access(out);
    return out;
  } catch {
    // build below
  }
  await fs.mkdir(dir, { recursive: true });
  const tree = await fs.mkdtemp(path.join(dir, ".build-"));
  try {
    for (const d of ["bin", "dev", "proc", "sys", "newroot", "lib/modules"]) {
      await fs.mkdir(path.join(tree, d), { recursive: true });
    }
    await fs.writeFile(path.join(tree, "bin", "busybox"), busybox, { mode: 0o755 });
    await fs.writeFile(path.join(tree, "init"), init, { mode: 0o755 });
    for (const m of kernel.modules) await fs.copyFile(m, path.join(tree, "lib", "modules", path.basename(m)));
    const list = (await run("find", ["."], { cwd: tree })).stdout;
    const cpio = await run("cpio", ["-o", "-H", "newc", "--quiet", "--reproducible"], {
      cwd: tree,
      input: list,
    });
    const tmp = `${out}.${process.pid}.tmp`;
    await fs.writeFile(tmp, cpio.stdoutBytes, { mode: 0o644 });
    await fs.rename(tmp, out);
    return out;
  } finally {
    await fs.rm(tree, { recursive: true, force: true });
  }
}
