import assert from "node:assert/strict";
import { test } from "node:test";
import { kernelCmdlineIp } from "./guest-addressing.ts";
import { renderRuleset } from "./nft-ruleset.ts";

test("kernel ip= argument for static guest networking", () => {
  assert.equal(kernelCmdlineIp(), "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off");
});

test("the ruleset DNATs the namespace address to the guest and denies guest egress", () => {
  const rs = renderRuleset({ hostAddress: "10.211.0.6", sandboxAddress: "10.211.0.7" });
  assert.match(rs, /^table inet firebreak \{/);
  assert.match(rs, /iifname "eth0" ip daddr 10\.211\.0\.7 ct mark set 5 dnat ip to 169\.254\.0\.21/);
  assert.match(rs, /iifname "eth0" ct state new ip saddr != 10\.211\.0\.6 counter name uplink_dropped drop/);
  assert.match(rs, /iifname "eth0" ct state new ip saddr @peers ip daddr 10\.211\.0\.7 accept/);
  assert.match(rs, /chain forward \{\n\s+type filter hook forward priority filter; policy drop;/);
  assert.match(rs, /iifname "tap0" ip saddr != 169\.254\.0\.21 counter name spoof_dropped drop/);
  assert.equal((rs.match(/# SECURITY:/g) ?? []).length, 8);
  // Walls come before the first policy rule in the forward chain.
  const forward = rs.slice(rs.indexOf("chain forward {"));
  assert.ok(forward.indexOf("@walls") < forward.indexOf("jump policy_egress"));
  assert.ok(forward.indexOf("@walls") > 0);
});

test("only canonical IPv4 addresses are interpolated", () => {
  assert.throws(() =>
    renderRuleset({ hostAddress: "10.211.0.6; flush ruleset", sandboxAddress: "10.211.0.7" }),
  );
  assert.throws(() => renderRuleset({ hostAddress: "10.211.0.6", sandboxAddress: "::1" }));
});
