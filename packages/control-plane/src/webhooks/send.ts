// One delivery attempt: a POST to the webhook's URL, and nothing more.
// SECURITY: the receiver is untrusted. The connection goes only to addresses
// that pass the destination check (destination.ts, at connect time); a fresh
// connection per attempt (no pooled socket to an old address); redirects are
// not followed (a 3xx is a failure); at most `maxResponseBytes` of the answer
// are read, then the socket is dropped; the whole attempt (connect, headers,
// body) has one deadline. Every failure is a value, never a throw.
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { forbiddenAddress, forbiddenMessage, guardedLookup, urlHost } from "./destination.ts";

export interface SendOptions {
  url: string;
  headers: Record<string, string>;
  body: string;
  timeoutMs: number;
  allowPrivate: boolean;
  /** How much of the answer to read (kept for the error message). @default 4096 */
  maxResponseBytes?: number;
  /** Ends the attempt at once (the control plane is stopping). */
  signal?: AbortSignal;
}

export type SendResult = { ok: true; status: number } | { ok: false; status: number | null; error: string };

const DEFAULT_MAX_RESPONSE_BYTES = 4096;

export function sendWebhook(opts: SendOptions): Promise<SendResult> {
  const maxBytes = opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  return new Promise<SendResult>((resolve) => {
    let settled = false;
    let req: http.ClientRequest | undefined;
    const onAbort = () => finish({ ok: false, status: null, error: "aborted" });
    const finish = (r: SendResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // INVARIANT: nothing of this attempt stays on the worker's long-lived signal.
      opts.signal?.removeEventListener("abort", onAbort);
      req?.destroy();
      resolve(r);
    };
    // Set once the answer's head came (a non-2xx whose body is still being read).
    let headStatus: number | null = null;
    const timer = setTimeout(
      () =>
        finish(
          headStatus === null
            ? { ok: false, status: null, error: `no answer within ${opts.timeoutMs} ms` }
            : { ok: false, status: headStatus, error: `HTTP ${headStatus} (its body did not end in time)` },
        ),
      opts.timeoutMs,
    );
    if (opts.signal?.aborted) return finish({ ok: false, status: null, error: "aborted" });
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch {
      return finish({ ok: false, status: null, error: "the url does not parse" });
    }
    const host = urlHost(url);
    if (net.isIP(host) && !opts.allowPrivate) {
      // An address literal skips `lookup`: check it here.
      const why = forbiddenAddress(host);
      if (why) return finish({ ok: false, status: null, error: forbiddenMessage(host, why) });
    }
    const mod = url.protocol === "https:" ? https : url.protocol === "http:" ? http : undefined;
    if (!mod) return finish({ ok: false, status: null, error: `unsupported scheme ${url.protocol}` });
    try {
      req = mod.request(url, {
        method: "POST",
        headers: { ...opts.headers, "content-length": String(Buffer.byteLength(opts.body)) },
        agent: false,
        lookup: guardedLookup(opts.allowPrivate),
        // INVARIANT: nothing the receiver sends can grow without bound: a 16 KiB head at most.
        maxHeaderSize: 16 * 1024,
      });
    } catch (e) {
      return finish({ ok: false, status: null, error: `request failed: ${(e as Error).message}` });
    }
    req.on("error", (e: NodeJS.ErrnoException) =>
      finish({
        ok: false,
        status: null,
        error: e.code === "EWEBHOOKFORBIDDEN" ? e.message : `${e.code ?? "error"}: ${e.message}`,
      }),
    );
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      // A 2xx is the answer: delivered, whatever its body does next.
      if (status >= 200 && status < 300) return finish({ ok: true, status });
      headStatus = status;
      const chunks: Buffer[] = [];
      let got = 0;
      const done = () => {
        const text = Buffer.concat(chunks)
          .toString("utf8")
          .replace(/[^\x20-\x7e]+/g, " ")
          .slice(0, 200);
        if (status >= 300 && status < 400)
          finish({
            ok: false,
            status,
            error: `HTTP ${status}: redirects are not followed; give the final URL`,
          });
        else finish({ ok: false, status, error: `HTTP ${status}${text ? `: ${text}` : ""}` });
      };
      res.on("data", (b: Buffer) => {
        if (got < maxBytes) chunks.push(b.subarray(0, maxBytes - got));
        got += b.length;
        // Enough read: the answer's status is what counts; drop the rest.
        if (got >= maxBytes) done();
      });
      res.on("end", done);
      res.on("error", (e) => finish({ ok: false, status, error: `answer failed: ${e.message}` }));
    });
    req.end(opts.body);
  });
}
