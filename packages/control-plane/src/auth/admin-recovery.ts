// Admin keys made on the host, not over the API: the first start's key, and
// `firebreak admin-key`, root's way back in when every admin key is lost or
// revoked. Keys made here have no minter (nothing cascades onto them) and do
// not count against maxKeys.
import fs from "node:fs";
import { DEFAULT_LIMITS } from "../config.ts";
import { SqliteStore } from "../store/sqlite-store.ts";
import type { Store, TenantLimits } from "../store/store.ts";
import { newApiKey, newId } from "./keys.ts";

/** The tenant of the operator's admin keys. */
export const DEFAULT_TENANT_ID = "default";

export async function ensureDefaultTenant(
  store: Store,
  limits: TenantLimits = DEFAULT_LIMITS,
): Promise<void> {
  if (await store.getTenant(DEFAULT_TENANT_ID)) return;
  await store.createTenant({
    id: DEFAULT_TENANT_ID,
    name: "default",
    limits,
    createdAt: new Date().toISOString(),
  });
}

/** Stores a new admin key of the default tenant (its sha256 only) and returns the secret, once. */
export async function mintAdminKey(store: Store, name: string): Promise<{ id: string; key: string }> {
  const { key, hash } = newApiKey();
  const id = newId("key");
  await store.createKey({
    id,
    tenantId: DEFAULT_TENANT_ID,
    name,
    hash,
    scopes: ["admin"],
    createdAt: new Date().toISOString(),
    revokedAt: null,
    createdByKey: null,
  });
  return { id, key };
}

/**
 * Opens a control plane database directly and mints an admin key in it.
 * Works whether or not a server is running on it: the store uses WAL and a
 * busy timeout, and a running server reads keys from the database on every
 * request, so the new key works at once.
 * SECURITY: the database is root-only (0600); only root on the host can do this.
 */
export async function recoverAdminKey(opts: {
  dbFile: string;
  name: string;
}): Promise<{ id: string; key: string; tenantId: string }> {
  if (!fs.existsSync(opts.dbFile)) {
    throw new Error(
      `no control plane database at ${opts.dbFile}: start the control plane once (firebreak up; it prints an admin key on its first start), or pass the --state-dir it uses`,
    );
  }
  const store = new SqliteStore(opts.dbFile);
  try {
    await ensureDefaultTenant(store);
    const made = await mintAdminKey(store, opts.name);
    return { ...made, tenantId: DEFAULT_TENANT_ID };
  } finally {
    store.close();
  }
}
