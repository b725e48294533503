// The unprivileged account QEMU runs as.
import fs from "node:fs/promises";
import { FirebreakError } from "../errors.ts";

export interface VmUser {
  name: string;
  uid: number;
  gid: number;
}

export async function lookupVmUser(name: string): Promise<VmUser> {
  const passwd = await fs.readFile("/etc/passwd", "utf8");
  for (const line of passwd.split("\n")) {
    const f = line.split(":");
    if (f[0] === name && f[2] && f[3]) {
      const uid = Number(f[2]);
      if (uid === 0) throw new FirebreakError("INTERNAL", `VM user ${name} must not be root`);
      return { name, uid, gid: Number(f[3]) };
    }
  }
  throw new FirebreakError(
    "INTERNAL",
    `the unprivileged user ${name} that QEMU runs as does not exist; run scripts/setup.sh as root`,
  );
}
