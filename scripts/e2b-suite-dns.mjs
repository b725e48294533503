// Preloaded (node --import) by scripts/e2b-sdk-suite.sh in domain mode: names
// under E2B_DOMAIN resolve to the TLS front (E2B_SUITE_FRONT), as a wildcard
// DNS record would; every other name resolves as usual.
import dns from "node:dns";

const domain = process.env.E2B_DOMAIN;
const front = process.env.E2B_SUITE_FRONT;
if (domain && front) {
  const ours = (host) => host === domain || String(host).endsWith(`.${domain}`);
  const lookup = dns.lookup;
  dns.lookup = function patched(host, opts, cb) {
    if (typeof opts === "function") {
      cb = opts;
      opts = {};
    }
    if (!ours(host)) return lookup.call(this, host, opts, cb);
    if (typeof opts === "object" && opts?.all)
      return process.nextTick(cb, null, [{ address: front, family: 4 }]);
    return process.nextTick(cb, null, front, 4);
  };
  const plookup = dns.promises.lookup;
  dns.promises.lookup = (host, opts) =>
    ours(host)
      ? Promise.resolve(
          typeof opts === "object" && opts?.all
            ? [{ address: front, family: 4 }]
            : { address: front, family: 4 },
        )
      : plookup(host, opts);
}
