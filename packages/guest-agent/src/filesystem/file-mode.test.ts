import assert from "node:assert/strict";
import { test } from "node:test";
import { goModeString } from "./file-mode.ts";

test("goModeString matches Go's os.FileMode.String() for every file type", () => {
  assert.equal(goModeString(0o100644), "-rw-r--r--");
  assert.equal(goModeString(0o040755), "drwxr-xr-x");
  assert.equal(goModeString(0o041777), "dtrwxrwxrwx");
  assert.equal(goModeString(0o120777), "Lrwxrwxrwx");
  assert.equal(goModeString(0o020666), "Dcrw-rw-rw-");
  assert.equal(goModeString(0o060660), "Drw-rw----");
  assert.equal(goModeString(0o010644), "prw-r--r--");
  assert.equal(goModeString(0o140755), "Srwxr-xr-x");
  assert.equal(goModeString(0o104755), "urwxr-xr-x");
  assert.equal(goModeString(0o102755), "grwxr-xr-x");
  assert.equal(goModeString(0o042775), "dgrwxrwxr-x");
  assert.equal(goModeString(0o100000), "----------");
});
