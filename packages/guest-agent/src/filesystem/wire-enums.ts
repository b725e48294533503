/**
 * Numeric values of the `filesystem` proto enums, for code that runs in the
 * per-user file worker: importing the generated descriptors there would load
 * protobuf-es at the worker's start for nothing. `wire-enums.test.ts` checks that
 * these match the generated code.
 */
export const FileTypeValue = { UNSPECIFIED: 0, FILE: 1, DIRECTORY: 2, SYMLINK: 3 } as const;
export type FileTypeValue = (typeof FileTypeValue)[keyof typeof FileTypeValue];

export const EventTypeValue = { CREATE: 1, WRITE: 2, REMOVE: 3, RENAME: 4, CHMOD: 5 } as const;
export type EventTypeValue = (typeof EventTypeValue)[keyof typeof EventTypeValue];
