// /v1/sandboxes/{id}/commands: run (streamed NDJSON or background), list, signal, stdin.
import { randomBytes } from "node:crypto";
import { ATTR, PhaseClock, tracer } from "@firebreak/node-agent";
import { processPb } from "@firebreak/protocol";
import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import { requireScope } from "../../auth/middleware.ts";
import { ApiError } from "../../errors.ts";
import type { AppEnv, Deps } from "../context.ts";
import { fromEnvd } from "../envd-errors.ts";
import { body, errors, json, noContent, security } from "../openapi-helpers.ts";
import {
  CommandBody,
  CommandEventSchema,
  CommandListSchema,
  PidParams,
  PidSchema,
  SandboxIdParam,
  SignalBody,
  StdinBody,
} from "../schemas.ts";

const tags = ["commands"];

function exitCodeOf(end: { exitCode: number; exited: boolean; status: string }): number {
  if (end.exited) return end.exitCode;
  const m = /signal: (\w+)/.exec(end.status);
  const signals: Record<string, number> = { hangup: 1, interrupt: 2, killed: 9, terminated: 15 };
  return 128 + (signals[m?.[1] ?? ""] ?? 9);
}

/** Events held before the command's `start` event (the agent sends `start` first). */
const MAX_EARLY_EVENTS = 64;

const pidSelector = (pid: number) => ({ selector: { case: "pid" as const, value: pid } });

/** Spans of commands run through the API. */
const cmdTracer = tracer("firebreak-control-plane");

export function commandRoutes(app: OpenAPIHono<AppEnv>, deps: Deps): void {
  const sb = deps.sandboxes;

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/commands",
      tags,
      security,
      summary: "Run a command",
      description:
        "Streams application/x-ndjson, one CommandEvent per line: start, stdout/stderr (base64), end. With background: true answers 201 {pid} once the command started.",
      request: { params: SandboxIdParam, ...body(CommandBody) },
      responses: {
        200: {
          description: "NDJSON stream of CommandEvent",
          content: { "application/x-ndjson": { schema: CommandEventSchema } },
        },
        201: json(PidSchema, "Started in the background"),
        ...errors,
      },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const b = c.req.valid("json");
      // The command's phases as spans (telemetry): connect (find the sandbox's
      // agent), start (until the agent's start event), run (until its end, or
      // the client goes; this span outlives the request's).
      const clock = new PhaseClock(cmdTracer, {
        [ATTR.tenantId]: caller.tenant.id,
        [ATTR.sandboxId]: c.req.valid("param").id,
      });
      clock.next("connect");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id, b.user).catch((e) => {
        clock.end(e);
        throw e;
      });
      clock.next("start");
      const [cmd, ...args] = b.cmd !== undefined ? ["/bin/bash", "-l", "-c", b.cmd] : b.argv!;
      const abort = new AbortController();
      // A client that goes away before the command started stops the wait.
      const clientGone = () => abort.abort();
      c.req.raw.signal.addEventListener("abort", clientGone, { once: true });
      const stream = envd.process.start(
        {
          process: { cmd: cmd!, args, envs: b.envVars ?? {}, ...(b.cwd ? { cwd: b.cwd } : {}) },
          stdin: b.stdin !== undefined,
          tag: `api-${randomBytes(6).toString("hex")}`,
        },
        { signal: abort.signal },
      );
      const it = stream[Symbol.asyncIterator]();
      // The first event is `start`: errors before it (bad cwd, unknown user) are HTTP errors.
      // SECURITY: the agent decides what comes first. At most MAX_EARLY_EVENTS
      // events are held before `start`, and `start` must come within
      // commandStartTimeoutMs, so a hostile agent cannot make the host buffer
      // or wait without bound.
      let pid: number | undefined;
      const early: processPb.ProcessEvent["event"][] = [];
      let startTimedOut = false;
      const startTimer = setTimeout(() => {
        startTimedOut = true;
        abort.abort();
      }, deps.config.commandStartTimeoutMs);
      try {
        while (pid === undefined) {
          const r = await it.next();
          if (r.done)
            throw new ApiError("AGENT_ERROR", "the agent closed the command stream before it started");
          const ev = r.value.event?.event;
          if (ev?.case === "start") pid = ev.value.pid;
          else if (ev && early.push(ev) > MAX_EARLY_EVENTS) {
            throw new ApiError(
              "GUEST_RESPONSE_INVALID",
              `the agent sent more than ${MAX_EARLY_EVENTS} events before the command's start event`,
            );
          }
        }
      } catch (e) {
        abort.abort();
        clock.end(e);
        if (startTimedOut) {
          throw new ApiError(
            "AGENT_ERROR",
            `the agent did not start the command within ${deps.config.commandStartTimeoutMs} ms`,
          );
        }
        throw fromEnvd(e, "starting the command failed");
      } finally {
        clearTimeout(startTimer);
      }
      const started = pid;
      if (b.stdin !== undefined) {
        const input = Buffer.from(b.stdin, "utf8");
        void (async () => {
          try {
            if (input.length) {
              await envd.process.sendInput({
                process: pidSelector(started),
                input: { input: { case: "stdin", value: input } },
              });
            }
            await envd.process.closeStdin({ process: pidSelector(started) });
          } catch {
            // the process may have exited before reading its input
          }
        })();
      }
      let timedOut = false;
      const timer =
        b.timeoutMs !== undefined
          ? setTimeout(() => {
              timedOut = true;
              void envd.process
                .sendSignal({ process: pidSelector(started), signal: processPb.Signal.SIGKILL })
                .catch(() => {});
            }, b.timeoutMs)
          : undefined;

      if (b.background) {
        clock.set("firebreak.command.background", true);
        clock.end();
        // The command outlives this request: the client's disconnect no longer stops it.
        c.req.raw.signal.removeEventListener("abort", clientGone);
        // Drain the stream so the agent never blocks on output nobody reads.
        void (async () => {
          try {
            for (;;) if ((await it.next()).done) break;
          } catch {
            // the sandbox ended
          } finally {
            clearTimeout(timer);
          }
        })();
        return c.json({ pid: started }, 201);
      }

      const enc = new TextEncoder();
      const line = (o: unknown) => enc.encode(`${JSON.stringify(o)}\n`);
      const toLine = (ev: NonNullable<processPb.ProcessEvent["event"]>): Uint8Array | undefined => {
        if (ev.case === "data") {
          const out = ev.value.output;
          if (out.case === "stdout" || out.case === "pty") {
            return line({ type: "stdout", data: Buffer.from(out.value).toString("base64") });
          }
          if (out.case === "stderr")
            return line({ type: "stderr", data: Buffer.from(out.value).toString("base64") });
        } else if (ev.case === "end") {
          const exitCode = exitCodeOf(ev.value);
          // The agent repeats its status as `error` (envd's "exit status N",
          // for E2B's SDK); the native API's `error` is only for what went
          // wrong beyond the exit itself.
          const agentError =
            ev.value.error && ev.value.error !== ev.value.status ? ev.value.error : undefined;
          const error = timedOut ? `timed out after ${b.timeoutMs} ms` : agentError;
          return line({ type: "end", exitCode, ...(error ? { error } : {}) });
        }
        return undefined;
      };
      // SECURITY: pull-based: the next event is read from the agent only when
      // the client has taken the last line (Hono writes with drain), so a fast
      // command behind a slow client holds at most one message here, and TCP
      // backpressure reaches the guest.
      const pending: Uint8Array[] = [line({ type: "start", pid: started })];
      for (const ev of early) {
        const l = ev && toLine(ev);
        if (l) pending.push(l);
      }
      let finished = false;
      clock.next("run", { "firebreak.command.pid": started });
      const finish = (controller: ReadableStreamDefaultController<Uint8Array>, last?: Uint8Array) => {
        finished = true;
        clock.end();
        clearTimeout(timer);
        try {
          if (last) controller.enqueue(last);
          controller.close();
        } catch {
          // the client went away (the stream was cancelled)
        }
      };
      const out = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            const next = pending.shift();
            if (next) return controller.enqueue(next);
            if (finished) return;
            try {
              for (;;) {
                const r = await it.next();
                if (r.done) {
                  return finish(
                    controller,
                    line({
                      type: "end",
                      exitCode: -1,
                      error: "the agent closed the stream without an end event",
                    }),
                  );
                }
                const ev = r.value.event?.event;
                if (!ev) continue;
                const l = toLine(ev);
                if (ev.case === "end") return finish(controller, l);
                if (l) return controller.enqueue(l);
              }
            } catch (e) {
              if (abort.signal.aborted) return finish(controller);
              return finish(
                controller,
                line({
                  type: "end",
                  exitCode: -1,
                  error: `stream failed: ${fromEnvd(e, "command").message}`,
                }),
              );
            }
          },
          cancel() {
            finished = true;
            clock.end();
            abort.abort();
            clearTimeout(timer);
          },
        },
        { highWaterMark: 1 },
      );
      return new Response(out, {
        status: 200,
        headers: { "content-type": "application/x-ndjson", "cache-control": "no-store" },
      }) as never;
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/v1/sandboxes/{id}/commands",
      tags,
      security,
      summary: "List running commands",
      request: { params: SandboxIdParam },
      responses: { 200: json(CommandListSchema), ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const envd = await sb.envd(caller.tenant.id, c.req.valid("param").id);
      const res = await envd.process.list({}).catch((e) => {
        throw fromEnvd(e, "listing commands failed");
      });
      return c.json(
        {
          commands: res.processes.map((p) => ({
            pid: p.pid,
            cmd: p.config?.cmd ?? "",
            args: p.config?.args ?? [],
            ...(p.tag ? { tag: p.tag } : {}),
          })),
        },
        200,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/commands/{pid}/signal",
      tags,
      security,
      summary: "Send a signal to a command",
      request: { params: PidParams, ...body(SignalBody) },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, pid } = c.req.valid("param");
      const envd = await sb.envd(caller.tenant.id, id);
      const signal =
        c.req.valid("json").signal === "SIGKILL" ? processPb.Signal.SIGKILL : processPb.Signal.SIGTERM;
      await envd.process.sendSignal({ process: pidSelector(pid), signal }).catch((e) => {
        throw fromEnvd(e, `signalling process ${pid} failed`);
      });
      return c.body(null, 204);
    },
  );

  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/sandboxes/{id}/commands/{pid}/stdin",
      tags,
      security,
      summary: "Write to a command's stdin (base64); eof closes it",
      request: { params: PidParams, ...body(StdinBody) },
      responses: { 204: noContent, ...errors },
    }),
    async (c) => {
      const caller = requireScope(c, "sandboxes");
      const { id, pid } = c.req.valid("param");
      const b = c.req.valid("json");
      const envd = await sb.envd(caller.tenant.id, id);
      try {
        const data = Buffer.from(b.data, "base64");
        if (data.length) {
          await envd.process.sendInput({
            process: pidSelector(pid),
            input: { input: { case: "stdin", value: data } },
          });
        }
        if (b.eof) await envd.process.closeStdin({ process: pidSelector(pid) });
      } catch (e) {
        throw fromEnvd(e, `writing to process ${pid} failed`);
      }
      return c.body(null, 204);
    },
  );
}
