// Host-side addressing: every sandbox gets a /31 carved from one pool, chosen
// by its slot number. Slot n owns pool offsets 2n (root-namespace end of the
// veth) and 2n+1 (namespace end, the address the host dials).
import { NetworkError } from "./errors.ts";

/** @default "10.211.0.0/16" (32,768 slots). */
export const DEFAULT_POOL = "10.211.0.0/16";

/** Prefix length of each slot's point-to-point link (RFC 3021 /31). */
export const SLOT_PREFIX_LENGTH = 31;

export interface ParsedPool {
  cidr: string;
  /** Network address as an unsigned 32-bit integer. */
  base: number;
  prefixLength: number;
  /** Number of /31 slots in the pool. */
  slotCount: number;
}

export interface SlotAddresses {
  /** Root-namespace end (`fbh-<slot>`). */
  hostAddress: string;
  /** Namespace end (`eth0` inside the namespace); the host dials this. */
  sandboxAddress: string;
}

export function parseIpv4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) throw new NetworkError("NETWORK_INVALID_POOL", `not an IPv4 address: ${text}`);
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) {
      throw new NetworkError("NETWORK_INVALID_POOL", `not an IPv4 address: ${text}`);
    }
    value = value * 256 + Number(part);
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

export function parsePool(cidr: string = DEFAULT_POOL): ParsedPool {
  const [addr, prefix] = cidr.split("/");
  const prefixLength = Number(prefix);
  if (!addr || !/^\d{1,2}$/.test(prefix ?? "") || prefixLength < 8 || prefixLength > 31) {
    throw new NetworkError(
      "NETWORK_INVALID_POOL",
      `pool ${cidr} must be an IPv4 CIDR with a prefix between /8 and /31, e.g. ${DEFAULT_POOL}`,
    );
  }
  const base = parseIpv4(addr);
  const size = 2 ** (32 - prefixLength);
  if (base % size !== 0) {
    throw new NetworkError(
      "NETWORK_INVALID_POOL",
      `pool ${cidr} is not aligned: use ${formatIpv4(base - (base % size))}/${prefixLength}`,
    );
  }
  return { cidr, base, prefixLength, slotCount: size / 2 };
}

export function slotAddresses(slot: number, pool: ParsedPool | string = DEFAULT_POOL): SlotAddresses {
  const p = typeof pool === "string" ? parsePool(pool) : pool;
  if (!Number.isInteger(slot) || slot < 0 || slot >= p.slotCount) {
    throw new NetworkError(
      "NETWORK_INVALID_SPEC",
      `slot ${slot} is outside pool ${p.cidr} (valid: 0..${p.slotCount - 1})`,
    );
  }
  const host = p.base + slot * 2;
  return { hostAddress: formatIpv4(host), sandboxAddress: formatIpv4(host + 1) };
}

/**
 * Hands out slot numbers. One allocator per node and pool; the process that
 * owns it is the only one creating sandbox networks.
 */
export class SlotAllocator {
  readonly slotCount: number;
  readonly #used = new Set<number>();
  #next = 0;

  constructor(pool: ParsedPool | string = DEFAULT_POOL) {
    this.slotCount = (typeof pool === "string" ? parsePool(pool) : pool).slotCount;
  }

  /** Lowest-numbered free slot after the last one handed out; throws when the pool is full. */
  allocate(): number {
    for (let i = 0; i < this.slotCount; i++) {
      const slot = (this.#next + i) % this.slotCount;
      if (!this.#used.has(slot)) {
        this.#used.add(slot);
        // Round-robin, so a just-released slot is not reused at once while the
        // kernel may still be tearing down its namespace.
        this.#next = (slot + 1) % this.slotCount;
        return slot;
      }
    }
    throw new NetworkError(
      "NETWORK_POOL_EXHAUSTED",
      `all ${this.slotCount} network slots are in use; destroy sandboxes or configure a larger pool`,
    );
  }

  /** Marks slots as taken (after a restart, from the networks found on the host). */
  reserve(slots: Iterable<number>): void {
    for (const slot of slots) {
      if (!Number.isInteger(slot) || slot < 0 || slot >= this.slotCount) {
        throw new NetworkError("NETWORK_INVALID_SPEC", `cannot reserve slot ${slot}: outside the pool`);
      }
      this.#used.add(slot);
    }
  }

  /** Returns false if the slot was not allocated (expected outcome, not an error). */
  release(slot: number): boolean {
    return this.#used.delete(slot);
  }

  isUsed(slot: number): boolean {
    return this.#used.has(slot);
  }

  get usedCount(): number {
    return this.#used.size;
  }
}
