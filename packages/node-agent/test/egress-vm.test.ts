// Egress policy in real microVMs (few: TCG is slow). The fake world namespace
// plays the internet (DNS zone) and an internal HTTP API whose credential the
// node's proxy injects. Needs root and the base template.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { createFakeWorld, type FakeWorld } from "../src/egress/testing/fake-world.ts";
import { uniq } from "../src/network/testing/harness.ts";
import { assertNoEgressLeaks } from "./egress-leaks.ts";
import { assertNoLeaks, createdIds, createSandbox, exec, runtime, skipUnlessRoot } from "./helpers.ts";

describe("egress policy in a microVM", { skip: skipUnlessRoot }, () => {
  const tag = uniq();
  const secret = `Bearer vm-s3cret-${tag}`;
  const service = `api-${tag}.internal`;
  let world: FakeWorld;

  before(async () => {
    world = await createFakeWorld(tag);
    const rt = await runtime();
    rt.egress.upstream = world.upstream;
    await rt.egress.registry.put({
      name: service,
      address: world.internal.api,
      port: world.internal.apiPort,
      protocol: "http",
      tenants: ["acme"],
      inject: { header: "Authorization", value: secret },
    });
  });

  after(async () => {
    const rt = await runtime();
    await rt.egress.registry.remove(service);
    await world?.close();
    await assertNoEgressLeaks(tag);
    await assertNoLeaks([...createdIds]);
  });

  test("domain rule, private answer dropped, bound HTTP service with an injected credential the guest never sees (TRACE refused), live policy update", async (t) => {
    const rt = await runtime();
    const sb = await createSandbox(t, {
      network: {
        policy: { allowDomains: ["api.good.test", "db.good.test"], services: [service] },
        tenant: "acme",
      },
    });
    const script = `
import json, os, socket, subprocess, urllib.error, urllib.request
out = {"resolv": open("/etc/resolv.conf").read() if os.path.exists("/etc/resolv.conf") else ""}
def res(n):
    try: return socket.gethostbyname(n)
    except Exception as e: return type(e).__name__
def conn(h, p):
    try:
        s = socket.create_connection((h, p), timeout=2); s.sendall(b"ping"); d = s.recv(100).decode(); s.close(); return d
    except Exception as e: return type(e).__name__
out["good"] = res("api.good.test"); out["bad"] = res("api.bad.test"); out["svc"] = res("${service}")
out["private"] = res("db.good.test")
def trace():
    try:
        urllib.request.urlopen(urllib.request.Request("http://${service}:${world.internal.apiPort}/t", method="TRACE"), timeout=5); return "200"
    except urllib.error.HTTPError as e: return str(e.code)
    except Exception as e: return type(e).__name__
out["trace"] = trace()
out["goodConn"] = conn(out["good"], 443) if out["good"][0].isdigit() else "-"
out["badConn"] = conn("${world.internet.bad}", 443)
r = urllib.request.urlopen("http://${service}:${world.internal.apiPort}/hello", timeout=5)
out["http"] = json.loads(r.read())
out["env"] = "${tag}" in json.dumps(dict(os.environ))
g = subprocess.run(["grep", "-rIl", "--exclude-dir=proc", "--exclude-dir=sys", "--exclude-dir=dev", "vm-s3cret-${tag}", "/"], capture_output=True, text=True)
out["grep"] = g.stdout.strip()
print(json.dumps(out))
`;
    // The script's own text names the secret's marker, so grep looks for the full secret prefix only.
    const r = await exec(sb, ["python3", "-c", script.replace('"vm-s3cret-', '"vm-s3cr" "et-')], {
      user: "root",
    });
    assert.equal(r.exitCode, 0, r.stderr);
    const o = JSON.parse(r.stdout) as Record<string, unknown> & {
      http: { headers: Record<string, string>; url: string };
    };
    t.diagnostic(`guest resolv.conf: ${JSON.stringify(o["resolv"])}`);
    assert.equal(o["good"], world.internet.good);
    assert.equal(o["bad"], "gaierror");
    assert.match(String(o["svc"]), /^169\.254\.16\.\d+$/);
    assert.match(String(o["goodConn"]), /^good from /);
    assert.doesNotMatch(String(o["badConn"]), /^bad from /);
    assert.equal(o.http.headers["authorization"], secret, "the service got the credential");
    assert.equal(o.http.headers["host"], `${service}:${world.internal.apiPort}`, "the service's Host");
    assert.equal(o["private"], "gaierror", "an allowed name with a private address resolves to nothing");
    assert.equal(o["trace"], "405", "TRACE is refused by the proxy");
    assert.equal(o["env"], false, "the secret is not in the guest's environment");
    assert.equal(o["grep"], "", "the secret is in no guest file");

    // Live update: api.bad.test allowed within a second.
    const t0 = performance.now();
    await rt.updatePolicy(sb.id, { allowDomains: ["api.good.test", "api.bad.test"], services: [service] });
    const ms = performance.now() - t0;
    const r2 = await exec(sb, [
      "python3",
      "-c",
      `import socket; s = socket.create_connection((socket.gethostbyname("api.bad.test"), 443), timeout=2); s.sendall(b"x"); print(s.recv(100).decode())`,
    ]);
    assert.equal(r2.exitCode, 0, r2.stderr);
    assert.match(r2.stdout, /^bad from /);
    assert.ok(ms < 1_000, `update took ${ms} ms`);
    t.diagnostic(`policy update applied in ${ms.toFixed(1)} ms`);
    const traffic = await rt.traffic(sb.id);
    assert.ok(traffic.tx.service.bytes > 0 && traffic.tx.internet.bytes > 0, JSON.stringify(traffic.tx));
    assert.ok(traffic.rx.control.bytes > 0, "envd traffic is counted as control");
  });
});
