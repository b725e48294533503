// The error catalog and its documentation move together: every code the node
// can raise has a section in docs/ERRORS.md, and every section names a code.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import { test } from "node:test";
import { ERROR_CODES } from "./errors.ts";

const DOC = new URL("../../../docs/ERRORS.md", import.meta.url);
const NETWORK_ERRORS = new URL("./network/errors.ts", import.meta.url);
const EGRESS_ERRORS = new URL("./egress/errors.ts", import.meta.url);

/** NetworkErrorCode and EgressErrorCode are types, so their members are read from the source. */
async function unionCodes(file: URL, typeName: string): Promise<string[]> {
  const source = await fs.readFile(file, "utf8");
  const union = new RegExp(`export type ${typeName}\\s*=([^;]+);`).exec(source)?.[1];
  assert.ok(union, `${typeName} not found in ${file.pathname}`);
  const codes = [...union.matchAll(/"([A-Z0-9_]+)"/g)].map((m) => m[1]!);
  assert.ok(codes.length > 0, `${typeName} has no members`);
  return codes;
}

async function allCodes(): Promise<string[]> {
  return [
    ...Object.keys(ERROR_CODES),
    ...(await unionCodes(NETWORK_ERRORS, "NetworkErrorCode")),
    ...(await unionCodes(EGRESS_ERRORS, "EgressErrorCode")),
  ];
}

/** Codes documented as `### CODE` headings. */
async function documentedCodes(): Promise<Set<string>> {
  const doc = await fs.readFile(DOC, "utf8");
  return new Set([...doc.matchAll(/^### ([A-Z0-9_]+)\s*$/gm)].map((m) => m[1]!));
}

test("every node, network and egress error code has a section in docs/ERRORS.md", async () => {
  const documented = await documentedCodes();
  const codes = await allCodes();
  const missing = codes.filter((c) => !documented.has(c));
  assert.deepEqual(missing, [], `add a "### CODE" section to docs/ERRORS.md for: ${missing.join(", ")}`);
});

test("docs/ERRORS.md documents no code that does not exist", async () => {
  const known = new Set(await allCodes());
  const stale = [...(await documentedCodes())].filter((c) => !known.has(c));
  assert.deepEqual(stale, [], `remove or rename these sections of docs/ERRORS.md: ${stale.join(", ")}`);
});
