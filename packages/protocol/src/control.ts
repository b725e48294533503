/**
 * Host <-> guest control channel.
 *
 * Newline-delimited JSON (one message per line, UTF-8) over a virtio-serial port
 * (`/dev/virtio-ports/fb.control` in the guest). It does not depend on the guest
 * network, so the host can initialise and re-initialise a guest (for example after
 * a snapshot restore) before any TCP traffic is possible.
 *
 * Every host request carries a numeric `id`; the guest answers with the same `id`.
 * `ready` is the only unsolicited guest message: sent once per agent start, after the
 * envd HTTP server listens.
 */

/** Name of the virtio-serial port the guest agent opens. */
export const CONTROL_PORT_NAME = "fb.control";
/** Path of that port inside the guest. */
export const CONTROL_DEVICE_PATH = `/dev/virtio-ports/${CONTROL_PORT_NAME}`;
/** Version string the guest agent reports in `ready`. */
export const AGENT_VERSION = "0.1.0";

/** guest -> host, once, when the envd server is listening. */
export type ReadyMessage = {
  type: "ready";
  agentVersion: string;
  /** Guest uptime from /proc/uptime, in milliseconds. */
  uptimeMs: number;
};

/**
 * host -> guest: set (or replace) the sandbox identity. Sent after boot and again
 * after every snapshot restore; a later `init` fully replaces the earlier one.
 */
export type InitMessage = {
  type: "init";
  id: number;
  sandboxId: string;
  /** Token every envd request must present in `X-Access-Token`. */
  accessToken: string;
  /** Environment added to every process the agent starts. */
  envVars: Record<string, string>;
  /** User commands run as when a request names none (E2B: "user"). */
  defaultUser: string;
  /** Working directory when a request names none (E2B: the user's home). */
  defaultWorkdir: string;
  /** Host wall clock, epoch milliseconds; the guest clock is set when it differs by > 50 ms. */
  wallClockMs?: number;
  /**
   * 64 random bytes, base64, credited to the guest kernel pool (and the CRNG
   * reseeded). Both this and wallClockMs may be omitted when the guest already
   * got its own (a warm-pool VM is reseeded when it enters the pool, so a claim
   * only swaps the identity).
   */
  entropy?: string;
};

/** host -> guest liveness probe. */
export type PingMessage = { type: "ping"; id: number };

/** guest -> host: `init` applied. */
export type AckMessage = { type: "ack"; id: number };
/** guest -> host: answer to `ping`. */
export type PongMessage = { type: "pong"; id: number };
/** guest -> host: a request failed; `id` is 0 when the request could not be parsed. */
export type ErrorMessage = { type: "error"; id: number; message: string };

export type HostToGuestMessage = InitMessage | PingMessage;
export type GuestToHostMessage = ReadyMessage | AckMessage | PongMessage | ErrorMessage;
