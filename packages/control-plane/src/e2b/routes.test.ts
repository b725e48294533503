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
