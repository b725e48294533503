// TLS in front of the control plane for scripts/e2b-sdk-suite.sh (domain
// mode): E2B's SDK and suite reach https://api.<domain>, https://<port>-<id>.<domain>
// and https://49983-<id>.<domain> on port 443, as they do against E2B. Every
// connection is decrypted and piped, bytes unchanged, to the control plane.
//   node e2b-suite-front.mjs <listen address> <cert.pem> <key.pem> <http://control plane>
import fs from "node:fs";
import net from "node:net";
import tls from "node:tls";

const [listenHost, certFile, keyFile, target] = process.argv.slice(2);
const up = new URL(target);
const server = tls.createServer(
  { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), ALPNProtocols: ["http/1.1"] },
  (client) => {
    const cp = net.connect(Number(up.port), up.hostname);
    const close = () => {
      client.destroy();
      cp.destroy();
    };
    for (const s of [client, cp]) {
      s.on("error", close);
      s.on("close", close);
    }
    client.pipe(cp);
    cp.pipe(client);
  },
);
server.on("tlsClientError", () => {});
server.listen(443, listenHost, () => process.stdout.write("ready\n"));
