// docs/API.md must document every code of the catalog with its status.
import assert from "node:assert/strict";
import fs from "node:fs";
import { test } from "node:test";
import { API_ERRORS } from "./errors.ts";

const doc = fs.readFileSync(new URL("../../../docs/API.md", import.meta.url), "utf8");

test("every API error code is in docs/API.md with its status", () => {
  const missing: string[] = [];
  for (const [code, { status }] of Object.entries(API_ERRORS)) {
    if (!new RegExp(`\\|\\s*\`${code}\`\\s*\\|\\s*${status}\\s*\\|`).test(doc))
      missing.push(`${code} (${status})`);
  }
  assert.deepEqual(missing, [], `docs/API.md lacks rows for: ${missing.join(", ")}`);
});

test("docs/API.md names no code the catalog lacks", () => {
  const table = doc.slice(doc.indexOf("| code | status |"), doc.indexOf("Node errors"));
  const named = [...table.matchAll(/^\|\s*`([A-Z_]+)`/gm)].map((m) => m[1]!);
  assert.deepEqual(
    named.filter((c) => !(c in API_ERRORS)),
    [],
  );
});
