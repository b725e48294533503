// /v1/nodes in-process: who may mint join tokens, what a token admits, and
// that a join cannot take over a node that already joined.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { inProcess } from "../../testing/in-process.ts";

type Env = Awaited<ReturnType<typeof inProcess>>;

const SECRET_A = "a".repeat(64);
const SECRET_B = "b".repeat(64);

describe("node join", () => {
  let env: Env;
  let admin: Awaited<ReturnType<Env["tenant"]>>;
  before(async () => {
    env = await inProcess();
    admin = await env.tenant({}, ["admin"]);
  });
  after(() => env.close());

  async function joinToken(): Promise<string> {
    const r = await admin.api.post("/v1/nodes/join-tokens", {});
    assert.equal(r.status, 201);
    assert.match(r.json.token, /^fbj_/);
    return r.json.token;
  }
  function join(token: string | undefined, nodeId: string, secret: string) {
    return env.api.withKey(undefined).call("POST", "/v1/nodes/join", {
      json: { nodeId, address: "https://10.0.0.9:7070", secret },
      ...(token ? { headers: { authorization: `Bearer ${token}` } } : {}),
    });
  }

  test("only an admin key mints join tokens", async () => {
    const user = await env.tenant({}, ["sandboxes"]);
    const r = await user.api.post("/v1/nodes/join-tokens", {});
    assert.equal(r.status, 403);
    assert.equal(r.json.error.code, "FORBIDDEN");
  });

  test("a join token admits one node once; no token or a used one is 401", async () => {
    assert.equal((await join(undefined, "n-one", SECRET_A)).status, 401);
    assert.equal((await join(`fbj_${"0".repeat(64)}`, "n-one", SECRET_A)).status, 401);
    const t = await joinToken();
    const ok = await join(t, "n-one", SECRET_A);
    assert.equal(ok.status, 201, ok.text);
    assert.equal(ok.json.id, "n-one");
    assert.equal("secret" in ok.json, false, "the node's credential is never answered");
    const again = await join(t, "n-two", SECRET_A);
    assert.equal(again.status, 401);
    assert.equal(await env.store.getNode("n-two"), undefined);
  });

  test("a join cannot take over a node id joined with another credential; the same node may rejoin", async () => {
    assert.equal((await join(await joinToken(), "n-held", SECRET_A)).status, 201);
    const takeover = await join(await joinToken(), "n-held", SECRET_B);
    assert.equal(takeover.status, 409, takeover.text);
    assert.equal(takeover.json.error.code, "CONFLICT");
    assert.match(takeover.json.error.message, /DELETE \/v1\/nodes\/n-held/);
    assert.equal((await env.store.getNode("n-held"))?.secret, SECRET_A, "the credential is unchanged");
    const rejoin = await join(await joinToken(), "n-held", SECRET_A);
    assert.equal(rejoin.status, 201, rejoin.text);
  });
});
