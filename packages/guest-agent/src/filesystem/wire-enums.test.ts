import assert from "node:assert/strict";
import { test } from "node:test";
import { filesystemPb } from "@firebreak/protocol";
import { EventTypeValue, FileTypeValue } from "./wire-enums.ts";

test("the worker's enum values are the generated proto values", () => {
  assert.equal(FileTypeValue.UNSPECIFIED, filesystemPb.FileType.UNSPECIFIED);
  assert.equal(FileTypeValue.FILE, filesystemPb.FileType.FILE);
  assert.equal(FileTypeValue.DIRECTORY, filesystemPb.FileType.DIRECTORY);
  assert.equal(FileTypeValue.SYMLINK, filesystemPb.FileType.SYMLINK);
  assert.equal(EventTypeValue.CREATE, filesystemPb.EventType.CREATE);
  assert.equal(EventTypeValue.WRITE, filesystemPb.EventType.WRITE);
  assert.equal(EventTypeValue.REMOVE, filesystemPb.EventType.REMOVE);
  assert.equal(EventTypeValue.RENAME, filesystemPb.EventType.RENAME);
  assert.equal(EventTypeValue.CHMOD, filesystemPb.EventType.CHMOD);
});
