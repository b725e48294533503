// Template names and tags are file names in the state dir: only a template
// name is ever looked up, and only a content address is ever removed.
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { loadConfig, paths } from "../config.ts";
import { deleteTemplate, getTemplate, resolveSpecFile } from "./template-store.ts";

test("names that are not template names read and remove nothing; a tag cannot point outside images/", async (t) => {
  const top = await fs.mkdtemp(path.join(os.tmpdir(), "fb-tstore-"));
  t.after(() => fs.rm(top, { recursive: true, force: true }));
  const config = loadConfig({ FIREBREAK_STATE_DIR: path.join(top, "state") });
  const victim = path.join(top, "victim");
  await fs.mkdir(victim);
  await fs.writeFile(
    path.join(victim, "manifest.json"),
    JSON.stringify({ key: "../../victim", name: "evil" }),
  );
  await fs.mkdir(paths.templatesDir(config), { recursive: true });
  // A tag whose key walks out of images/ (a tampered or hand-written tag).
  await fs.writeFile(
    path.join(paths.templatesDir(config), "evil.json"),
    JSON.stringify({ key: "../../victim" }),
  );
  await fs.writeFile(path.join(top, "outside.json"), JSON.stringify({ key: "0".repeat(32) }));

  assert.equal(await getTemplate(config, "evil"), undefined);
  assert.equal(await deleteTemplate(config, "evil"), false);
  for (const name of ["../outside", "../../outside", "a/b", "..", ""]) {
    assert.equal(await getTemplate(config, name), undefined, name);
    assert.equal(await deleteTemplate(config, name), false, name);
  }
  assert.deepEqual(await fs.readdir(victim), ["manifest.json"]);
  assert.ok(await fs.stat(path.join(top, "outside.json")));
  await assert.rejects(resolveSpecFile(".."), /no template named \.\./);
});
