// The NodeClient contract: one suite of the observable behaviour of a node,
// run against the fake node the control-plane tests use (fake-node.test.ts)
// and against RemoteNode over a real node daemon with real VMs
// (test/node-contract.test.ts), so the two cannot drift. Like
// store/store.contract.ts for the stores.
//
// VMs are dear under TCG: the suite opens one node and walks a few sandboxes
// through their lives in order (each test continues where the last left
// off), so a real run boots one pool VM and forks one child.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { normalizePolicy } from "@firebreak/node-agent";
import type { NodeClient, NodeReport, NodeSandboxInfo } from "../node/node-client.ts";

export interface NodeContractSubject {
  node: NodeClient;
  /** Reads an environment variable as the sandbox's processes see it. */
  readEnv(id: string, name: string): Promise<string | undefined>;
  /** Makes the node stop answering (a stopped daemon; the fake's `down`). */
  stopAnswering(): Promise<void>;
  /** Releases everything the subject made. */
  close(): Promise<void>;
}

export interface NodeContractFactory {
  /** A node with the base template built (and its snapshot for its default shape). */
  open(): Promise<NodeContractSubject>;
}

const TENANT = "t-contract";
/** A tenant's policy: public ranges and domains only. */
const POLICY_1 = {
  internet: false,
  allow: [{ cidr: "8.8.8.0/24", ports: [443] }],
  allowDomains: ["example.com"],
};
const POLICY_2 = { internet: true, allowDomains: ["example.org"] };

/** A normalized policy as it crosses the node's wire (JSON: no undefined members). */
function enforced(p: unknown) {
  return JSON.parse(JSON.stringify(normalizePolicy(p)));
}

function errorCode(e: unknown): string | undefined {
  return (e as { code?: string }).code;
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal(errorCode(e), code, `expected ${code}, got ${errorCode(e)}: ${(e as Error).message}`);
    return true;
  });
}

function templateOf(r: NodeReport, name: string) {
  const t = r.templates.find((x) => x.name === name);
  assert.ok(t, `the report lists template ${name}`);
  return t;
}

export function nodeClientContract(name: string, factory: NodeContractFactory): void {
  describe(`NodeClient contract: ${name}`, () => {
    let s: NodeContractSubject;
    let node: NodeClient;
    let shape: { vcpus: number; memoryMib: number };
    let shapeKey: string;
    let base: NodeReport;
    /** The sandbox walked through create, pause, resume, fork, kill. */
    let a: NodeSandboxInfo;
    let child: NodeSandboxInfo;
    const made = new Set<string>();

    before(async () => {
      s = await factory.open();
      node = s.node;
    });
    after(async () => {
      if (!s) return;
      for (const id of made) await node.kill(id, "contract cleanup").catch(() => {});
      await s.close();
    });

    test("templates: listed with their key and default shape; the report agrees", async () => {
      const templates = await node.listTemplates();
      const t = templates.find((x) => x.name === "base");
      assert.ok(t, "base is built");
      assert.ok(t.key);
      assert.ok(t.shape, "a template says its default shape");
      shape = { vcpus: t.shape.vcpus, memoryMib: t.shape.memoryMib };
      shapeKey = `${shape.vcpus}x${shape.memoryMib}`;
      assert.deepEqual(t.aliases ?? [], t.aliases, "aliases is a list");
      assert.equal(await node.hasTemplate("base"), true);
      assert.equal(await node.hasTemplate("no-such-template"), false);
      base = await node.report();
      assert.equal(base.nodeId, node.id);
      assert.equal(base.draining, false);
      const r = templateOf(base, "base");
      assert.equal(r.key, t.key, "report and listTemplates name the same build");
      assert.equal(r.image, true);
      assert.equal(r.snapshot, true);
      assert.ok(r.snapshotShapes.includes(shapeKey), "the default shape's snapshot is listed");
      assert.equal(r.warm[shapeKey] ?? 0, 0, "no pool yet");
      assert.ok(base.vcpus > 0 && base.memoryMib > 0);
      assert.ok(base.committedVcpus >= 0 && base.committedMemoryMib >= 0);
    });

    test("errors: unknown template, bad shape, a tenant's private range, an unknown service, unknown ids", async () => {
      const req = { template: "base", ...shape, envVars: {} };
      await rejectsWith(node.create({ ...req, template: "no-such-template" }), "TEMPLATE_NOT_FOUND");
      await rejectsWith(node.create({ ...req, vcpus: 0 }), "SHAPE_INVALID");
      await rejectsWith(node.create({ ...req, memoryMib: 1 }), "SHAPE_INVALID");
      // SECURITY: who made a policy is the caller's flag, never what the policy says.
      await rejectsWith(
        node.create({
          ...req,
          network: { policy: { allow: [{ cidr: "10.0.0.0/8" }], grantedBy: "admin" }, tenant: TENANT },
        }),
        "EGRESS_CIDR_RESERVED",
      );
      await rejectsWith(
        node.create({ ...req, network: { policy: { services: ["no-such-service"] }, tenant: TENANT } }),
        "EGRESS_SERVICE_UNKNOWN",
      );
      await rejectsWith(node.pause("nosuchsandbox"), "SANDBOX_NOT_FOUND");
      await rejectsWith(node.resume("nosuchsandbox"), "SANDBOX_NOT_FOUND");
      await rejectsWith(node.fork("nosuchsandbox", 1), "SANDBOX_NOT_FOUND");
      await rejectsWith(node.updatePolicy("nosuchsandbox", {}, TENANT), "SANDBOX_NOT_FOUND");
      assert.equal(await node.accessToken("nosuchsandbox"), undefined);
      assert.equal(await node.usageSample("nosuchsandbox"), undefined);
      assert.equal((await node.status(["nosuchsandbox"])).get("nosuchsandbox")?.state, "gone");
      // Nothing was made by any of it.
      const r = await node.report();
      assert.equal(r.sandboxes, base.sandboxes);
      assert.equal(r.committedMemoryMib, base.committedMemoryMib);
    });

    test("drain: a draining node refuses creates (CAPACITY_EXHAUSTED) and says so in its report", async () => {
      await node.drain(true);
      try {
        assert.equal((await node.report()).draining, true);
        await rejectsWith(node.create({ template: "base", ...shape, envVars: {} }), "CAPACITY_EXHAUSTED");
      } finally {
        await node.drain(false);
      }
      assert.equal((await node.report()).draining, false);
    });

    test("pool: setPool fills warm VMs; they count as committed", async () => {
      await rejectsWith(node.setPool("no-such-template", 1, shape), "TEMPLATE_NOT_FOUND");
      await node.setPool("base", 1, shape);
      const r = await node.report();
      assert.equal(templateOf(r, "base").warm[shapeKey], 1, "setPool resolves when the pool is full");
      assert.equal(r.committedVcpus, base.committedVcpus + shape.vcpus);
      assert.equal(r.committedMemoryMib, base.committedMemoryMib + shape.memoryMib);
      assert.equal(r.sandboxes, base.sandboxes, "pool VMs are not sandboxes");
      assert.deepEqual(
        (await node.listSandboxes()).filter((x) => x.status.state !== "gone"),
        [],
        "pool VMs are not listed",
      );
      // Target 0: no refill after the next claim (the ready VM stays).
      await node.setPool("base", 0, shape);
    });

    test("create: takes the warm VM, with the shape, env and the tenant's policy (normalized)", async () => {
      a = await node.create({
        template: "base",
        ...shape,
        envVars: { CONTRACT_GREETING: "hello there" },
        network: { policy: POLICY_1, tenant: TENANT },
        platformId: "contract-a",
      });
      made.add(a.id);
      assert.equal(a.path, "warm");
      assert.ok(a.totalMs >= 0);
      assert.match(a.accessToken, /^[0-9a-f]{64}$/);
      assert.deepEqual(a.policy, enforced({ ...POLICY_1, grantedBy: "tenant" }));
      const r = await node.report();
      assert.equal(templateOf(r, "base").warm[shapeKey] ?? 0, 0, "the warm VM was claimed");
      assert.equal(r.sandboxes, base.sandboxes + 1);
      assert.equal(r.committedVcpus, base.committedVcpus + shape.vcpus);
      assert.equal(r.committedMemoryMib, base.committedMemoryMib + shape.memoryMib);
      assert.deepEqual([...(await node.status([a.id])).entries()], [[a.id, { state: "running" }]]);
      assert.deepEqual(
        (await node.listSandboxes()).map((x) => [x.id, x.status.state]),
        [[a.id, "running"]],
      );
      assert.equal(await s.readEnv(a.id, "CONTRACT_GREETING"), "hello there");
    });

    test("access token and envd: the token while it lives; the agent answers through the node", async () => {
      assert.equal(await node.accessToken(a.id), a.accessToken);
      const res = await node.envd(a.id).fetch("/health");
      assert.ok(res.ok, `the agent's /health answers ${res.status}`);
      await res.body?.cancel();
    });

    test("usage: a sample per running sandbox, none for an unknown one", async () => {
      const one = await node.usageSample(a.id);
      assert.ok(one);
      assert.ok(one.at > 0 && one.cpuNanos >= 0 && one.memoryBytes > 0);
      assert.ok(one.memoryPeakBytes >= one.memoryBytes);
      const many = await node.usage([a.id, "nosuchsandbox"]);
      assert.deepEqual([...many.keys()], [a.id]);
      assert.deepEqual(await node.usage([]), new Map());
    });

    test("updatePolicy: replaces the policy; a tenant may not reach private ranges", async () => {
      const p = await node.updatePolicy(a.id, POLICY_2, TENANT);
      assert.deepEqual(p, enforced({ ...POLICY_2, grantedBy: "tenant" }));
      await rejectsWith(
        node.updatePolicy(a.id, { allow: [{ cidr: "192.168.0.0/16" }], grantedBy: "admin" }, TENANT),
        "EGRESS_CIDR_RESERVED",
      );
      // An admin's may (private ranges; never the walls).
      const admin = await node.updatePolicy(
        a.id,
        { ...POLICY_2, allow: [{ cidr: "192.168.7.0/24" }] },
        TENANT,
        true,
      );
      assert.equal(admin.grantedBy, "admin");
      // Back to the tenant's policy for the fork below.
      await node.updatePolicy(a.id, POLICY_2, TENANT);
    });

    test("fork: a child with the parent's template, shape, env and enforced policy; the parent runs on", async () => {
      await rejectsWith(node.fork(a.id, 0), "SHAPE_INVALID");
      const before = await node.report();
      const children = await node.fork(a.id, 1);
      assert.equal(children.length, 1);
      child = children[0]!;
      made.add(child.id);
      assert.notEqual(child.id, a.id);
      assert.notEqual(child.accessToken, a.accessToken);
      // INVARIANT: what the child reports is what the parent enforced at the fork (POLICY_2, not POLICY_1).
      assert.deepEqual(child.policy, enforced({ ...POLICY_2, grantedBy: "tenant" }));
      const st = await node.status([a.id, child.id]);
      assert.equal(st.get(a.id)?.state, "running");
      assert.equal(st.get(child.id)?.state, "running");
      const r = await node.report();
      assert.equal(r.sandboxes, before.sandboxes + 1);
      assert.equal(r.committedMemoryMib, before.committedMemoryMib + shape.memoryMib);
      assert.equal(await node.accessToken(child.id), child.accessToken);
      assert.equal(await s.readEnv(child.id, "CONTRACT_GREETING"), "hello there");
      // The child's policy is its own: changing it leaves the parent's alone.
      await node.updatePolicy(child.id, POLICY_1, TENANT);
      const again = await node.fork(a.id, 1);
      made.add(again[0]!.id);
      assert.deepEqual(again[0]!.policy, enforced({ ...POLICY_2, grantedBy: "tenant" }));
      await node.kill(again[0]!.id, "contract");
    });

    test("pause and resume: state, usage, committed capacity, token kept; wrong states refused", async () => {
      await rejectsWith(node.resume(a.id), "SANDBOX_STATE_INVALID");
      const before = await node.report();
      const last = await node.pause(a.id);
      assert.ok(last, "pause returns the last sample");
      assert.ok(last.cpuNanos >= 0 && last.memoryBytes > 0);
      assert.equal((await node.status([a.id])).get(a.id)?.state, "paused");
      assert.equal(await node.usageSample(a.id), undefined, "a paused sandbox uses nothing");
      assert.equal(await node.accessToken(a.id), a.accessToken, "a paused sandbox keeps its token");
      const r = await node.report();
      assert.equal(r.sandboxes, before.sandboxes - 1);
      assert.equal(r.committedMemoryMib, before.committedMemoryMib - shape.memoryMib);
      assert.deepEqual((await node.listSandboxes()).find((x) => x.id === a.id)?.status, { state: "paused" });
      await rejectsWith(node.pause(a.id), "SANDBOX_STATE_INVALID");
      await rejectsWith(node.fork(a.id, 1), "SANDBOX_STATE_INVALID");
      await rejectsWith(node.updatePolicy(a.id, POLICY_1, TENANT), "SANDBOX_STATE_INVALID");
      const resumed = await node.resume(a.id);
      assert.equal(resumed.path, "snapshot");
      assert.ok(resumed.totalMs >= 0);
      assert.equal((await node.status([a.id])).get(a.id)?.state, "running");
      assert.equal((await node.report()).committedMemoryMib, before.committedMemoryMib);
      assert.equal(await s.readEnv(a.id, "CONTRACT_GREETING"), "hello there");
    });

    test("a filesystem-only pause: the resume boots afresh (path cold), same token and env", async () => {
      const before = await node.report();
      const last = await node.pause(a.id, { memory: false });
      assert.ok(last, "pause returns the last sample");
      assert.equal((await node.status([a.id])).get(a.id)?.state, "paused");
      assert.equal(await node.accessToken(a.id), a.accessToken, "a paused sandbox keeps its token");
      assert.equal((await node.report()).committedMemoryMib, before.committedMemoryMib - shape.memoryMib);
      const resumed = await node.resume(a.id);
      assert.equal(resumed.path, "cold", "no memory was kept: the resume boots");
      assert.equal((await node.status([a.id])).get(a.id)?.state, "running");
      assert.equal(await node.accessToken(a.id), a.accessToken);
      assert.equal((await node.report()).committedMemoryMib, before.committedMemoryMib);
      assert.equal(await s.readEnv(a.id, "CONTRACT_GREETING"), "hello there");
      // The next plain pause keeps memory again.
      await node.pause(a.id);
      assert.equal((await node.resume(a.id)).path, "snapshot");
    });

    test("kill: returns the last sample, the sandbox is gone everywhere; again and unknown ids are no-ops", async () => {
      const before = await node.report();
      const last = await node.kill(child.id, "contract");
      assert.ok(last, "kill of a running sandbox returns its last sample");
      assert.ok(last.memoryBytes > 0);
      assert.equal((await node.status([child.id])).get(child.id)?.state, "gone");
      assert.equal(await node.accessToken(child.id), undefined);
      assert.equal(await node.usageSample(child.id), undefined);
      await rejectsWith(node.envd(child.id).fetch("/health"), "SANDBOX_NOT_FOUND");
      assert.equal(await node.kill(child.id, "again"), undefined);
      assert.equal(await node.kill("nosuchsandbox", "unknown"), undefined);
      const r = await node.report();
      assert.equal(r.sandboxes, before.sandboxes - 1);
      assert.equal(r.committedMemoryMib, before.committedMemoryMib - shape.memoryMib);
      // A paused sandbox is killed too (no sample: it uses nothing).
      await node.pause(a.id);
      assert.equal(await node.kill(a.id, "contract"), undefined);
      assert.equal((await node.status([a.id])).get(a.id)?.state, "gone");
      assert.equal(await node.accessToken(a.id), undefined);
      assert.deepEqual(
        (await node.listSandboxes()).filter((x) => x.status.state !== "gone"),
        [],
      );
      const end = await node.report();
      assert.equal(end.sandboxes, base.sandboxes);
      assert.equal(end.committedMemoryMib, base.committedMemoryMib);
      made.clear();
    });

    test("a node that does not answer: calls fail with NODE_UNAVAILABLE", async () => {
      await s.stopAnswering();
      await rejectsWith(node.report(), "NODE_UNAVAILABLE");
      await rejectsWith(node.create({ template: "base", ...shape, envVars: {} }), "NODE_UNAVAILABLE");
      await rejectsWith(node.status(["x"]), "NODE_UNAVAILABLE");
      await rejectsWith(node.kill("x", "gone"), "NODE_UNAVAILABLE");
    });
  });
}
