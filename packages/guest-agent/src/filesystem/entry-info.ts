import type { MessageInitShape } from "@bufbuild/protobuf";
import type { filesystemPb } from "@firebreak/protocol";
import type { EntryRecord } from "./entry-record.ts";

export type EntryInfoInit = MessageInitShape<typeof filesystemPb.EntryInfoSchema>;

/** The wire EntryInfo for an entry record. */
export function toEntryInfo(r: EntryRecord): EntryInfoInit {
  return {
    name: r.name,
    type: r.type,
    path: r.path,
    size: BigInt(r.size),
    mode: r.mode,
    permissions: r.permissions,
    owner: r.owner,
    group: r.group,
    modifiedTime: { seconds: BigInt(r.mtimeSeconds), nanos: r.mtimeNanos },
    ...(r.symlinkTarget !== undefined ? { symlinkTarget: r.symlinkTarget } : {}),
    ...(r.metadata ? { metadata: r.metadata } : {}),
  };
}
