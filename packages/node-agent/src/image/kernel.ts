// The guest kernel: Debian's linux-image-cloud-amd64, downloaded as a .deb
// (never installed on the host), its vmlinuz unpacked to the uncompressed ELF
// vmlinux that QEMU boots through PVH, and the few virtio modules the
// initramfs loads.
import { createHash } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { type NodeConfig, paths } from "../config.ts";
import { FirebreakError } from "../errors.ts";
import { run } from "../host/exec.ts";

export const KERNEL_META_PACKAGE = "linux-image-cloud-amd64";

/** Modules the initramfs loads, in dependency order. */
export const GUEST_MODULES = [
  "kernel/drivers/virtio/virtio_ring.ko",
  "kernel/drivers/virtio/virtio.ko",
  "kernel/drivers/virtio/virtio_mmio.ko",
  "kernel/drivers/block/virtio_blk.ko",
  "kernel/net/core/failover.ko",
  "kernel/drivers/net/net_failover.ko",
  "kernel/drivers/net/virtio_net.ko",
  "kernel/drivers/char/virtio_console.ko",
  "kernel/drivers/char/hw_random/virtio-rng.ko",
  "kernel/drivers/virtio/virtio_balloon.ko",
] as const;

export interface KernelManifest {
  /** Debian package that provided the kernel, e.g. linux-image-6.1.0-56-cloud-amd64 */
  package: string;
  /** Exact Debian version, e.g. 6.1.192-2 */
  version: string;
  /** Kernel release (uname -r) */
  release: string;
  vmlinuxSha256: string;
  /** Absolute paths */
  vmlinux: string;
  modules: string[];
}

const LZ4_LEGACY_MAGIC = Buffer.from([0x02, 0x21, 0x4c, 0x18]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** Returns the prepared kernel, preparing it first when missing. */
export async function ensureKernel(
  config: NodeConfig,
  log: (line: string) => void = () => {},
): Promise<KernelManifest> {
  const dir = paths.kernelDir(config);
  const current = path.join(dir, "current.json");
  try {
    const manifest = JSON.parse(await fs.readFile(current, "utf8")) as KernelManifest;
    await fs.access(manifest.vmlinux);
    const have = new Set(manifest.modules.map((m) => path.basename(m)));
    if (GUEST_MODULES.every((m) => have.has(path.basename(m)))) return manifest;
    log("the guest module list changed; preparing the kernel again");
  } catch {
    // not prepared yet
  }
  return prepareKernel(config, log);
}

export async function prepareKernel(
  config: NodeConfig,
  log: (line: string) => void = () => {},
): Promise<KernelManifest> {
  const dir = paths.kernelDir(config);
  await fs.mkdir(dir, { recursive: true });
  const pkg = await resolveKernelPackage();
  const work = await fs.mkdtemp(path.join(dir, ".prepare-"));
  try {
    log(`downloading ${pkg} (Debian)`);
    const dl = await run("apt-get", ["download", pkg], { cwd: work, allowFailure: true, timeoutMs: 300_000 });
    if (dl.exitCode !== 0) {
      throw new FirebreakError(
        "KERNEL_MISSING",
        `could not download the guest kernel package ${pkg}: ${dl.stderr.trim().split("\n").pop()}. ` +
          "Run `apt-get update` (the package lists may be stale) and scripts/setup.sh, then try again.",
      );
    }
    const deb = (await fs.readdir(work)).find((f) => f.endsWith(".deb"));
    if (!deb) throw new FirebreakError("KERNEL_MISSING", `apt-get download ${pkg} produced no .deb`);
    const version = (await run("dpkg-deb", ["-f", path.join(work, deb), "Version"])).stdout.trim();
    const tree = path.join(work, "tree");
    await run("dpkg-deb", ["-x", path.join(work, deb), tree], { timeoutMs: 300_000 });
    const release = pkg.replace(/^linux-image-/, "");
    const vmlinuz = path.join(tree, "boot", `vmlinuz-${release}`);
    log(`extracting vmlinux from ${path.basename(vmlinuz)}`);
    const vmlinux = await extractVmlinux(await fs.readFile(vmlinuz));
    const out = path.join(dir, `${release}_${version}`);
    await fs.rm(out, { recursive: true, force: true });
    await fs.mkdir(path.join(out, "modules"), { recursive: true });
    await fs.writeFile(path.join(out, "vmlinux"), vmlinux, { mode: 0o644 });
    const modules: string[] = [];
    for (const m of GUEST_MODULES) {
      const src = path.join(tree, "lib", "modules", release, m);
      const dst = path.join(out, "modules", path.basename(m));
      await fs.copyFile(src, dst);
      modules.push(dst);
    }
    const manifest: KernelManifest = {
      package: pkg,
      version,
      release,
      vmlinuxSha256: createHash("sha256").update(vmlinux).digest("hex"),
      vmlinux: path.join(out, "vmlinux"),
      modules,
    };
    await fs.writeFile(path.join(out, "manifest.json"), JSON.stringify(manifest, null, 2));
    const tmp = path.join(dir, `current.json.${process.pid}`);
    await fs.writeFile(tmp, JSON.stringify(manifest, null, 2));
    await fs.rename(tmp, path.join(dir, "current.json"));
    log(`kernel ready: ${pkg} ${version}`);
    return manifest;
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

async function resolveKernelPackage(): Promise<string> {
  const res = await run("apt-cache", ["depends", KERNEL_META_PACKAGE], { allowFailure: true });
  const m = /Depends: (linux-image-\S+-cloud-amd64)/.exec(res.stdout);
  if (!m?.[1]) {
    throw new FirebreakError(
      "KERNEL_MISSING",
      `cannot resolve ${KERNEL_META_PACKAGE} to a kernel package. Run \`apt-get update\` and try again.`,
    );
  }
  return m[1];
}

/**
 * Finds the compressed payload inside a bzImage and decompresses it. Debian's
 * cloud kernel uses lz4 (legacy frame); zstd is handled too.
 */
export async function extractVmlinux(bzImage: Buffer): Promise<Buffer> {
  for (const [magic, tool, args] of [
    [LZ4_LEGACY_MAGIC, "lz4", ["-dc"]],
    [ZSTD_MAGIC, "zstd", ["-dcq"]],
  ] as const) {
    let at = bzImage.indexOf(magic);
    while (at >= 0) {
      const res = await run(tool, args, {
        input: bzImage.subarray(at),
        allowFailure: true,
        timeoutMs: 120_000,
      });
      const out = res.stdoutBytes;
      if (isElf(out)) return out;
      at = bzImage.indexOf(magic, at + 1);
    }
  }
  throw new FirebreakError("KERNEL_MISSING", "no lz4 or zstd payload with an ELF kernel found in vmlinuz");
}

export function isElf(b: Buffer): boolean {
  return b.length > 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}
