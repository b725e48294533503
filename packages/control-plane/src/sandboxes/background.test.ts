// The control plane's background passes (sandboxes/service.ts start()): a
// pass that outlasts its interval is not started again over itself. Over two
// fake nodes, one of which lacks a template and imports it slowly.
import assert from "node:assert/strict";
import fs from "node:fs";
import type http from "node:http";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import pino from "pino";
import { defaultConfig } from "../config.ts";
import { StaticNodes } from "../node/directory.ts";
import { SqliteStore } from "../store/sqlite-store.ts";
import { FakeNode } from "../testing/fake-node.ts";
import { SandboxService } from "./service.ts";

/** A node whose imports take `ms` each, counting how many run at once. */
class SlowImportNode extends FakeNode {
  running = 0;
  maxRunning = 0;
  imports = 0;
  readonly ms: number;
  constructor(id: string, ms: number) {
    super(id);
    this.ms = ms;
  }
  override async importTemplate(name: string, image: http.IncomingMessage) {
    this.running++;
    this.imports++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    try {
      await new Promise((r) => setTimeout(r, this.ms));
      return await super.importTemplate(name, image);
    } finally {
      this.running--;
    }
  }
}

test("a template copy that outlasts the sync interval is not started again over itself", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "fb-bg-"));
  const store = new SqliteStore(path.join(dir, "cp.db"));
  const from = new FakeNode("has-it");
  from.templates.add("big");
  const to = new SlowImportNode("lacks-it", 400);
  to.templates.delete("base");
  const nodes = new StaticNodes([from, to], { intervalMs: 20 });
  await nodes.poll();
  nodes.start();
  const sandboxes = new SandboxService(
    store,
    nodes,
    { ...defaultConfig({}), templateSyncIntervalMs: 20 },
    pino({ level: "silent" }),
  );
  t.after(async () => {
    await sandboxes.close();
    await nodes.close();
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  sandboxes.start();
  const deadline = Date.now() + 10_000;
  while (!(to.templates.has("big") && to.templates.has("base")) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(to.templates.has("big") && to.templates.has("base"), "both templates reached the node");
  // Twenty ticks passed during each 400 ms import; one pass ran them one after
  // the other. (A pass right after a copy may copy again while the node's
  // report still lacks it: the node then only tags what it has.)
  assert.equal(to.maxRunning, 1, "never two imports at once");
  assert.ok(to.imports >= 2, `each template copied: ${to.imports} imports`);
});
