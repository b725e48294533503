// Templates over the API: names validated on every route, no host files from
// API specs, and ownership (a tenant's templates are invisible to the others;
// operator templates are everyone's to boot and admins' to change).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FirebreakError } from "@firebreak/node-agent";
import { inProcess } from "../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

/** The lines of a build stream; the last one says done or error. */
const last = (r: { json: { type: string }[] }) => r.json.at(-1);

describe("templates", () => {
  let env: Env;
  const deleted: string[] = [];
  before(async () => {
    env = await inProcess();
    const del = env.node.deleteTemplate.bind(env.node);
    env.node.deleteTemplate = async (name: string) => {
      deleted.push(name);
      return del(name);
    };
  });
  after(() => env.close());

  test("template names are validated on every route, encoded slashes and dots included", async () => {
    const t = await env.tenant({}, ["sandboxes", "templates"]);
    const admin = await env.tenant({}, ["admin"]);
    for (const bad of ["..%2F..%2Fetc%2Fpasswd", "a%2Fb", "%2E%2E", "..", "A", "x".repeat(41), "%00"]) {
      for (const who of [t, admin]) {
        const r = await who.api.delete(`/v1/templates/${bad}`);
        assert.ok([400, 404].includes(r.status), `DELETE ${bad}: ${r.status} ${r.text}`);
        if (r.status === 404) assert.equal(r.json.error.code, "NOT_FOUND", `${bad} reached no route`);
        else assert.equal(r.json.error.code, "VALIDATION_FAILED", bad);
      }
    }
    for (const name of ["../x", "a/b", "..", "Base"]) {
      assert.equal((await admin.api.post("/v1/templates", { name })).status, 400, name);
      assert.equal((await admin.api.post("/v1/templates", { spec: { name } })).status, 400, name);
      assert.equal((await t.api.post("/v1/sandboxes", { template: name })).status, 400, name);
      const e2b = await env.app.request("/v2/sandboxes", {
        method: "POST",
        headers: { "x-api-key": t.key.replace(/^fb_/, "e2b_"), "content-type": "application/json" },
        body: JSON.stringify({ templateID: name }),
      });
      assert.equal(e2b.status, 400, `E2B templateID ${name}`);
    }
    assert.deepEqual(deleted, [], "the node was never asked to delete anything");
    assert.ok(env.node.templates.has("base"));
  });

  test("a spec over the API cannot copy files (absolute, .., or relative): 400 naming files; nothing built", async () => {
    const admin = await env.tenant({}, ["admin"]);
    for (const src of ["/etc/shadow", "../../etc/shadow", "notes.txt"]) {
      const r = await admin.api.post("/v1/templates", {
        spec: { name: "leaky", files: [{ src, dest: "/x" }] },
      });
      assert.equal(r.status, 400, `${src}: ${r.text}`);
      assert.equal(r.json.error.code, "VALIDATION_FAILED");
      assert.match(r.json.error.message, /files/);
    }
    assert.ok(!env.node.templates.has("leaky"));
    assert.equal(await env.store.getTemplateOwner("leaky"), undefined);
    // An invalid spec is a 400 too (not an error line in a stream).
    const bad = await admin.api.post("/v1/templates", {
      spec: { name: "ok", debian: { packages: ["no way"] } },
    });
    assert.equal(bad.status, 400);
    assert.match(bad.json.error.message, /debian\.packages\.0/);
  });

  test("a tenant cannot see, boot, overwrite or delete another tenant's template (404 like a missing one)", async () => {
    const a = await env.tenant({}, ["sandboxes", "templates"]);
    const b = await env.tenant({}, ["sandboxes", "templates"]);
    const admin = await env.tenant({}, ["admin"]);
    const built = await a.api.post("/v1/templates", { spec: { name: "a-private" } });
    assert.equal(last(built)?.type, "done", built.text);
    assert.equal(built.json.at(-1).template.tenantId, a.id);

    const listA = (await a.api.get("/v1/templates")).json.templates as {
      name: string;
      tenantId: string | null;
    }[];
    assert.deepEqual(
      listA.find((x) => x.name === "a-private"),
      { ...listA.find((x) => x.name === "a-private"), tenantId: a.id },
    );
    const listB = (await b.api.get("/v1/templates")).json.templates as { name: string }[];
    assert.ok(!listB.some((x) => x.name === "a-private"), "B does not see A's template");
    assert.ok(
      listB.some((x) => x.name === "base"),
      "B sees operator templates",
    );

    const missing = await b.api.post("/v1/sandboxes", { template: "nosuch-xyz" });
    const other = await b.api.post("/v1/sandboxes", { template: "a-private" });
    assert.equal(other.status, 404);
    assert.equal(other.json.error.code, "TEMPLATE_NOT_FOUND");
    assert.equal(other.json.error.message, missing.json.error.message.replaceAll("nosuch-xyz", "a-private"));
    const e2b = await env.app.request("/v2/sandboxes", {
      method: "POST",
      headers: { "x-api-key": b.key.replace(/^fb_/, "e2b_"), "content-type": "application/json" },
      body: JSON.stringify({ templateID: "a-private" }),
    });
    assert.equal(e2b.status, 404);

    const del = await b.api.delete("/v1/templates/a-private");
    assert.equal(del.status, 404);
    assert.equal(del.json.error.code, "TEMPLATE_NOT_FOUND");
    const overwrite = await b.api.post("/v1/templates", { spec: { name: "a-private", run: ["echo mine"] } });
    assert.equal(overwrite.status, 409, "names are shared: taken");
    assert.equal(overwrite.json.error.code, "CONFLICT");

    assert.ok(env.node.templates.has("a-private"));
    assert.equal((await env.store.getTemplateOwner("a-private"))?.tenantId, a.id);
    assert.equal((await b.api.post("/v1/sandboxes", {})).status, 201, "B still boots base");
    const mine = await a.api.post("/v1/sandboxes", { template: "a-private" });
    assert.equal(mine.status, 201);
    assert.equal((await a.api.delete(`/v1/sandboxes/${mine.json.id}`)).status, 204);

    // Admin keys see and manage every tenant's templates; a rebuild keeps the owner.
    assert.ok(
      ((await admin.api.get("/v1/templates")).json.templates as { name: string }[]).some(
        (x) => x.name === "a-private",
      ),
    );
    assert.equal(last(await admin.api.post("/v1/templates", { spec: { name: "a-private" } }))?.type, "done");
    assert.equal((await env.store.getTemplateOwner("a-private"))?.tenantId, a.id);
    assert.equal((await a.api.delete("/v1/templates/a-private")).status, 204);
    assert.equal(await env.store.getTemplateOwner("a-private"), undefined);
    assert.ok(!env.node.templates.has("a-private"));
  });

  test("operator templates: every tenant boots them; only admin keys build, rebuild or delete them", async () => {
    const a = await env.tenant({}, ["sandboxes", "templates"]);
    const admin = await env.tenant({}, ["admin"]);
    // base is on the node without an owner record (as after a local CLI build): the operator's.
    for (const [what, r] of [
      ["build base by name", await a.api.post("/v1/templates", { name: "base" })],
      ["spec named base", await a.api.post("/v1/templates", { spec: { name: "base" } })],
      ["delete base", await a.api.delete("/v1/templates/base")],
    ] as const) {
      assert.equal(r.status, 403, `${what}: ${r.text}`);
      assert.equal(r.json.error.code, "FORBIDDEN");
    }
    const made = await admin.api.post("/v1/templates", { spec: { name: "shared-tools" } });
    assert.equal(made.json.at(-1).template.tenantId, null);
    assert.equal((await a.api.post("/v1/sandboxes", { template: "shared-tools" })).status, 201);
    assert.equal((await a.api.post("/v1/templates", { spec: { name: "shared-tools" } })).status, 403);
    assert.equal((await a.api.delete("/v1/templates/shared-tools")).status, 403);
    // Built-in names are reserved even before they are built.
    env.node.templates.delete("base");
    assert.equal((await a.api.post("/v1/templates", { spec: { name: "base" } })).status, 403);
    assert.equal(last(await admin.api.post("/v1/templates", { name: "base" }))?.type, "done");
    // A name that is no built-in cannot be built "by name".
    assert.equal((await admin.api.post("/v1/templates", { name: "not-builtin" })).status, 404);
  });

  test("a failed build releases a new name; two builds of one name at once: 409", async () => {
    const a = await env.tenant({}, ["sandboxes", "templates"]);
    const b = await env.tenant({}, ["sandboxes", "templates"]);
    env.node.failNextBuild = new FirebreakError("TEMPLATE_BUILD_FAILED", "step 1 failed");
    const failed = await a.api.post("/v1/templates", { spec: { name: "flaky" } });
    assert.equal(last(failed)?.type, "error");
    assert.equal(await env.store.getTemplateOwner("flaky"), undefined);
    assert.equal(last(await b.api.post("/v1/templates", { spec: { name: "flaky" } }))?.type, "done");
    assert.equal((await env.store.getTemplateOwner("flaky"))?.tenantId, b.id);

    const slow = env.node.buildTemplate.bind(env.node);
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    env.node.buildTemplate = async (source, onProgress) => {
      await gate;
      return slow(source, onProgress);
    };
    try {
      const first = b.api.post("/v1/templates", { spec: { name: "slowpoke" } });
      await new Promise((r) => setTimeout(r, 20));
      const second = await b.api.post("/v1/templates", { spec: { name: "slowpoke" } });
      assert.equal(second.status, 409);
      release();
      assert.equal(last(await first)?.type, "done");
    } finally {
      env.node.buildTemplate = slow;
    }
  });
});
