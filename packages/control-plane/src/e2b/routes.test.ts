// E2B routes read JSON bodies with a limit: a larger body is refused
// (413, E2B's error shape) without being buffered whole.
import assert from "node:assert/strict";
import { test } from "node:test";
import { inProcess } from "../testing/in-process.ts";

test("an E2B create with a body over the JSON limit answers 413 and creates nothing", async () => {
  const ip = await inProcess({ maxJsonBytes: 1024 });
  try {
    const t = await ip.tenant();
    const e2bKey = t.key.replace(/^fb_/, "e2b_");
    const big = JSON.stringify({ templateID: "base", metadata: { pad: "x".repeat(4096) } });
    const res = await ip.app.fetch(
      new Request("http://in-process/sandboxes", {
        method: "POST",
        headers: { "x-api-key": e2bKey, "content-type": "application/json" },
        body: big,
      }),
    );
    assert.equal(res.status, 413);
    assert.deepEqual(await res.json(), { code: 413, message: "JSON bodies are limited to 1024 bytes" });
    assert.equal(ip.node.sandboxes.size, 0);
    // A body within the limit still works, and answers the ingress token as trafficAccessToken.
    const ok = await ip.app.fetch(
      new Request("http://in-process/sandboxes", {
        method: "POST",
        headers: { "x-api-key": e2bKey, "content-type": "application/json" },
        body: JSON.stringify({ templateID: "base" }),
      }),
    );
    assert.equal(ok.status, 201);
    const created = (await ok.json()) as { sandboxID: string; trafficAccessToken: string };
    assert.equal(created.trafficAccessToken, ip.ingressTokens.tokenFor(created.sandboxID));
  } finally {
    await ip.close();
  }
});

/** An E2B API call through the in-process app with a tenant's key in E2B's shape. */
function e2bCaller(ip: Awaited<ReturnType<typeof inProcess>>, key: string) {
  return (method: string, path: string, body?: unknown) =>
    ip.app.fetch(
      new Request(`http://in-process${path}`, {
        method,
        headers: { "x-api-key": key.replace(/^fb_/, "e2b_"), "content-type": "application/json" },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      }),
    );
}

test("an autoPause sandbox past its timeout is paused to E2B while the reaper saves it; connect then resumes it", async () => {
  // The reaper does not run here on its own: the test runs its pass.
  const ip = await inProcess();
  try {
    const t = await ip.tenant();
    const call = e2bCaller(ip, t.key);
    const state = async (id: string) =>
      ((await (await call("GET", `/sandboxes/${id}`)).json()) as { state: string }).state;
    const create = async (autoPause: boolean) => {
      const res = await call("POST", "/v2/sandboxes", { templateID: "base", timeout: 1, autoPause });
      assert.equal(res.status, 201);
      return ((await res.json()) as { sandboxID: string }).sandboxID;
    };
    const pausing = await create(true);
    const killing = await create(false);
    assert.equal(await state(pausing), "running");
    await new Promise((r) => setTimeout(r, 1_100));
    // Timed out, not yet paused by the reaper: paused to E2B; one that will be killed is not.
    assert.equal((await ip.store.getSandbox(pausing))?.state, "running");
    assert.equal(await state(pausing), "paused");
    assert.equal(await state(killing), "running");
    // Connect before the reaper's pause began: it stays running, its timeout extended.
    const early = await call("POST", `/v2/sandboxes/${pausing}/connect`, { timeout: 60 });
    assert.equal(early.status, 200, await early.clone().text());
    assert.equal(await state(pausing), "running");
    // Past its timeout again and paused by the reaper: connect resumes it (201).
    await call("POST", `/sandboxes/${pausing}/timeout`, { timeout: 1 });
    await new Promise((r) => setTimeout(r, 1_100));
    await ip.sandboxes.reap();
    assert.equal((await ip.store.getSandbox(pausing))?.state, "paused");
    assert.equal(await state(pausing), "paused");
    const resumed = await call("POST", `/v2/sandboxes/${pausing}/connect`, { timeout: 60 });
    assert.equal(resumed.status, 201, await resumed.clone().text());
    assert.equal(await state(pausing), "running");
  } finally {
    await ip.close();
  }
});

test("a filesystem-only pause (memory: false, autoPauseMemory: false) reaches the node; connect resumes it cold", async () => {
  const ip = await inProcess();
  try {
    const t = await ip.tenant();
    const call = e2bCaller(ip, t.key);
    const create = async (body: Record<string, unknown>) => {
      const res = await call("POST", "/v2/sandboxes", { templateID: "base", ...body });
      assert.equal(res.status, 201, await res.clone().text());
      return ((await res.json()) as { sandboxID: string }).sandboxID;
    };
    const onNode = async (id: string) =>
      ip.node.sandboxes.get((await ip.store.getSandbox(id))!.nodeSandboxId!);
    // By request.
    const byRequest = await create({ timeout: 300 });
    assert.equal((await call("POST", `/sandboxes/${byRequest}/pause`, { memory: false })).status, 204);
    assert.equal((await onNode(byRequest))?.pausedMemory, false);
    assert.equal((await call("POST", `/v2/sandboxes/${byRequest}/connect`, { timeout: 60 })).status, 201);
    const events = await ip.store.listEvents(byRequest);
    assert.ok(
      events.some((e) => JSON.stringify(e.detail).includes("filesystem only")),
      "the pause says what it kept",
    );
    // A plain pause keeps memory.
    assert.equal((await call("POST", `/sandboxes/${byRequest}/pause`, {})).status, 204);
    assert.equal((await onNode(byRequest))?.pausedMemory, true);
    // On timeout (the reaper's pause).
    const onTimeout = await create({ timeout: 1, autoPause: true, autoPauseMemory: false });
    await new Promise((r) => setTimeout(r, 1_100));
    await ip.sandboxes.reap();
    assert.equal((await ip.store.getSandbox(onTimeout))?.state, "paused");
    assert.equal((await onNode(onTimeout))?.pausedMemory, false);
    // A filesystem-only auto-pause cannot be woken by traffic: refused as E2B's SDK refuses it.
    const refused = await call("POST", "/v2/sandboxes", {
      templateID: "base",
      autoPause: true,
      autoPauseMemory: false,
      autoResume: { enabled: true },
    });
    assert.equal(refused.status, 400);
    assert.match(((await refused.json()) as { message: string }).message, /autoResume/);
  } finally {
    await ip.close();
  }
});
