// The error catalog and its documentation move together: every code the node
// can raise has a section in docs/ERRORS.md, and every section names a code.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import { test } from "node:test";
import { ERROR_CODES } from "./errors.ts";

const DOC = new URL("../../../docs/ERRORS.md", import.meta.url);
const NETWORK_ERRORS = new URL("./network/errors.ts", import.meta.url);

/** NetworkErrorCode is a type, so its members are read from the source. */
async function networkErrorCodes(): Promise<string[]> {
  const source = await fs.readFile(NETWORK_ERRORS, "utf8");
  const union = /export type NetworkErrorCode\s*=([^;]+);/.exec(source)?.[1];
  assert.ok(union, "NetworkErrorCode not found in network/errors.ts");
  const codes = [...union.matchAll(/"([A-Z0-9_]+)"/g)].map((m) => m[1]!);
  assert.ok(codes.length > 0, "NetworkErrorCode has no members");
  return codes;
}

/** Codes documented as `### CODE` headings. */
async function documentedCodes(): Promise<Set<string>> {
  const doc = await fs.readFile(DOC, "utf8");
  return new Set([...doc.matchAll(/^### ([A-Z0-9_]+)\s*$/gm)].map((m) => m[1]!));
}

test("every node and network error code has a section in docs/ERRORS.md", async () => {
  const documented = await documentedCodes();
  const codes = [...Object.keys(ERROR_CODES), ...(await networkErrorCodes())];
  const missing = codes.filter((c) => !documented.has(c));
  assert.deepEqual(missing, [], `add a "### CODE" section to docs/ERRORS.md for: ${missing.join(", ")}`);
});

test("docs/ERRORS.md documents no code that does not exist", async () => {
  const known = new Set([...Object.keys(ERROR_CODES), ...(await networkErrorCodes())]);
  const stale = [...(await documentedCodes())].filter((c) => !known.has(c));
  assert.deepEqual(stale, [], `remove or rename these sections of docs/ERRORS.md: ${stale.join(", ")}`);
});
