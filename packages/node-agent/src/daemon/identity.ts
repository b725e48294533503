// The node's identity: a stable id and the node credential, kept root-only in
// the state dir (`node.json`). Made on first start; the credential is also the
// TLS-PSK key of a TCP listener and the bearer token on every request.
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import type { NodeConfig } from "../config.ts";
import { writeFileAtomic } from "../host/safe-fs.ts";

export interface NodeIdentity {
  /** `n-` and 12 hex digits unless given. */
  nodeId: string;
  /** 64 hex digits (256 bits). */
  secret: string;
  /** Set once a control plane has accepted this node (join). */
  controlPlane?: string;
}

export function identityFile(config: NodeConfig): string {
  return path.join(config.stateDir, "node.json");
}

/** Reads the node's identity, creating it on first start. */
export async function loadIdentity(config: NodeConfig, wantId?: string): Promise<NodeIdentity> {
  const file = identityFile(config);
  try {
    const id = JSON.parse(await fs.readFile(file, "utf8")) as NodeIdentity;
    if (/^[a-z0-9-]{1,40}$/.test(id.nodeId) && /^[0-9a-f]{64}$/.test(id.secret)) return id;
  } catch {
    // create below
  }
  const id: NodeIdentity = {
    nodeId: wantId ?? `n-${randomBytes(6).toString("hex")}`,
    secret: randomBytes(32).toString("hex"),
  };
  await fs.mkdir(config.stateDir, { recursive: true, mode: 0o755 });
  // SECURITY: root-only; it authenticates every call to this node.
  await writeFileAtomic(file, `${JSON.stringify(id, null, 2)}\n`, 0o600);
  return id;
}

export async function saveIdentity(config: NodeConfig, id: NodeIdentity): Promise<void> {
  await writeFileAtomic(identityFile(config), `${JSON.stringify(id, null, 2)}\n`, 0o600);
}

/**
 * The local listener of the node that owns a state dir: a root-only unix
 * socket in the run dir, named after the state dir (several state dirs may
 * share a host, as the test suites do).
 */
export function defaultSocket(config: NodeConfig): string {
  const tag = createHash("sha256").update(path.resolve(config.stateDir)).digest("hex").slice(0, 12);
  return path.join(config.runDir, "nodes", `${tag}.sock`);
}
