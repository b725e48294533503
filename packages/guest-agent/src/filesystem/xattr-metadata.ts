import { isUtf8 } from "node:buffer";
import { constants as osConstants } from "node:os";

/**
 * User-defined file metadata, stored as extended attributes like E2B's envd does
 * (envd >= 0.6.2): key `k` is the xattr `user.e2b.k`. Uploads set it from
 * `X-Metadata-<k>` headers; every EntryInfo reports it.
 */
export const METADATA_XATTR_PREFIX = "user.e2b.";
/** The kernel's xattr name limit (255) minus the prefix. */
export const MAX_METADATA_KEY_BYTES = 255 - METADATA_XATTR_PREFIX.length;
/** Keys (with the prefix) plus values, summed: what fits in one ext4 inode block. */
export const MAX_METADATA_TOTAL_BYTES = 4096;
const METADATA_HEADER_PREFIX = "x-metadata-";

export type Metadata = Record<string, string>;

type XattrModule = typeof import("@napi-rs/xattr");
let xattrModule: Promise<XattrModule | undefined> | undefined;

/**
 * Loads the xattr addon (@napi-rs/xattr, a prebuilt N-API module; Node has no
 * xattr API). Undefined when it cannot load: metadata is then unsupported and
 * reads report none. Its calls use the l*xattr syscalls (no symlink following).
 */
export function loadXattr(): Promise<XattrModule | undefined> {
  xattrModule ??= import("@napi-rs/xattr").then(
    (m) => ((m as { default?: XattrModule }).default ?? m) as XattrModule,
    (err: unknown) => {
      console.error("guest-agent: the xattr addon did not load; file metadata is off:", err);
      return undefined;
    },
  );
  return xattrModule;
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));

/** The addon reports errors as "... (os error N)": give them a Node-style errno code. */
export function xattrError(err: unknown): NodeJS.ErrnoException {
  const e = err instanceof Error ? err : new Error(String(err));
  const m = /\(os error (\d+)\)/.exec(e.message);
  const code = m ? errnoNames.get(Number(m[1])) : undefined;
  return Object.assign(e, { code: code ?? "EIO" }) as NodeJS.ErrnoException;
}

function unsupported(err: NodeJS.ErrnoException): boolean {
  return err.code === "ENOTSUP" || err.code === "EOPNOTSUPP";
}

function printableAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

/** Why a metadata set would be refused (envd's rules), or undefined when it is valid. */
export function metadataProblem(metadata: Metadata): string | undefined {
  let total = 0;
  for (const [k, v] of Object.entries(metadata)) {
    if (k === "") return "metadata key must not be empty";
    if (!printableAscii(k)) return `metadata key ${JSON.stringify(k)} must be printable US-ASCII`;
    if (k.length > MAX_METADATA_KEY_BYTES)
      return `metadata key ${JSON.stringify(k)} is longer than ${MAX_METADATA_KEY_BYTES} bytes`;
    if (!printableAscii(v)) return `metadata value for key ${JSON.stringify(k)} must be printable US-ASCII`;
    total += METADATA_XATTR_PREFIX.length + k.length + v.length;
  }
  if (total > MAX_METADATA_TOTAL_BYTES)
    return `metadata is ${total} bytes in total; at most ${MAX_METADATA_TOTAL_BYTES} fit on a file`;
  return undefined;
}

/**
 * `X-Metadata-<key>: <value>` request headers as metadata: keys lowercased, the
 * first value of a repeated header wins. Undefined when there is none.
 */
export function metadataFromHeaders(headers: Record<string, string[] | undefined>): Metadata | undefined {
  let out: Metadata | undefined;
  for (const [name, values] of Object.entries(headers)) {
    if (!name.startsWith(METADATA_HEADER_PREFIX) || !values || values.length === 0) continue;
    const key = name.slice(METADATA_HEADER_PREFIX.length).toLowerCase();
    if (key === "") continue;
    out ??= {};
    out[key] = values[0]!;
  }
  return out;
}

/**
 * The metadata on `path` (not following a symlink in the last component).
 * Undefined when there is none, the filesystem has no xattrs, or it cannot be
 * read: like envd, an entry lookup never fails because of its metadata. Values
 * that are not UTF-8 (set by other tools) are skipped.
 */
export async function readMetadata(path: string): Promise<Metadata | undefined> {
  const x = await loadXattr();
  if (!x) return undefined;
  let names: string[];
  try {
    names = await x.listAttributes(path);
  } catch {
    return undefined;
  }
  let out: Metadata | undefined;
  for (const name of names) {
    if (!name.startsWith(METADATA_XATTR_PREFIX)) continue;
    const value = await x.getAttribute(path, name).catch(() => null);
    if (value === null || !isUtf8(value)) continue;
    out ??= {};
    out[name.slice(METADATA_XATTR_PREFIX.length)] = value.toString("utf8");
  }
  return out;
}

/**
 * Replaces the metadata on `path` with `metadata` (none: clears it), as envd does
 * on every upload, so overwriting a file never keeps stale keys. A filesystem
 * without xattrs (procfs, sysfs) is not an error; other failures throw with a
 * Node-style errno code (ENOSPC when the inode has no room).
 */
export async function writeMetadata(path: string, metadata: Metadata | undefined): Promise<void> {
  const x = await loadXattr();
  if (!x) return;
  const wanted = metadata ?? {};
  try {
    for (const name of await x.listAttributes(path)) {
      if (!name.startsWith(METADATA_XATTR_PREFIX)) continue;
      if (Object.hasOwn(wanted, name.slice(METADATA_XATTR_PREFIX.length))) continue;
      await x.removeAttribute(path, name).catch((err: unknown) => {
        if (xattrError(err).code !== "ENODATA") throw err;
      });
    }
    for (const [k, v] of Object.entries(wanted)) await x.setAttribute(path, METADATA_XATTR_PREFIX + k, v);
  } catch (err) {
    const e = xattrError(err);
    if (unsupported(e)) return;
    throw e;
  }
}
