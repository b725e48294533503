import { AGENT_VERSION, type GuestToHostMessage } from "@firebreak/protocol/control";
import type { AgentState } from "../identity/agent-state.ts";
import { handleControlLine, type SystemOps } from "./control-handler.ts";
import { uptimeMs } from "./system.ts";
import type { ControlTransport } from "./transport.ts";

/** Longest accepted line; a longer one is dropped with an error. */
const MAX_LINE_BYTES = 1 << 20;

/**
 * Newline-delimited JSON over a transport. Sends `ready` on every connection, then
 * answers host requests one at a time, in order.
 */
export class ControlChannel {
  #transport: ControlTransport;
  #state: AgentState;
  #ops: SystemOps;
  #buffer = "";
  #chain: Promise<void> = Promise.resolve();

  constructor(transport: ControlTransport, state: AgentState, ops: SystemOps) {
    this.#transport = transport;
    this.#state = state;
    this.#ops = ops;
  }

  start(): void {
    this.#transport.start(
      (chunk) => this.#onData(chunk),
      () => {
        this.#buffer = "";
        void uptimeMs().then((ms) =>
          this.#send({ type: "ready", agentVersion: AGENT_VERSION, uptimeMs: ms }),
        );
      },
    );
  }

  close(): void {
    this.#transport.close();
  }

  #send(msg: GuestToHostMessage): void {
    this.#transport.write(JSON.stringify(msg) + "\n");
  }

  #onData(chunk: Buffer): void {
    this.#buffer += chunk.toString("utf8");
    for (let nl = this.#buffer.indexOf("\n"); nl !== -1; nl = this.#buffer.indexOf("\n")) {
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#chain = this.#chain.then(async () => {
        const reply = await handleControlLine(line, this.#state, this.#ops);
        if (reply) this.#send(reply);
      });
    }
    if (this.#buffer.length > MAX_LINE_BYTES) {
      this.#buffer = "";
      this.#send({ type: "error", id: 0, message: "control line too long" });
    }
  }
}
