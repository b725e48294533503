// Code contexts: each context is one kernel process with its own language,
// working directory and state. One default context per language answers
// requests that name only a language; the defaults of the preloaded
// languages start with the service (before the template snapshot is taken).
import { randomUUID } from "node:crypto";
import fs from "node:fs/promises";
import { Kernel, type KernelLaunch } from "./jupyter/kernel.ts";
import {
  type KernelFamily,
  LANGUAGES,
  normalizeLanguage,
  reseedSnippet,
  resetEnvSnippet,
  setEnvSnippet,
} from "./languages.ts";
import { errorEvent, type OutputEvent, toEvent } from "./outputs.ts";

export type KernelSpecs = Partial<Record<KernelFamily, Omit<KernelLaunch, "cwd">>>;

export interface ContextInfo {
  id: string;
  language: string;
  cwd: string;
}

/** An error with the HTTP status the server answers with. */
export class ContextError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export interface ContextsOptions {
  specs: KernelSpecs;
  /** Working directory of the default contexts. */
  workdir: string;
  /** Environment every kernel starts with (the spec's env is laid over it). */
  baseEnv: Record<string, string>;
  /** Fetches the sandbox's environment variables (the guest agent's /envs) with the caller's token. */
  globalEnv: (accessToken: string | undefined) => Promise<Record<string, string>>;
  startTimeoutMs?: number;
  maxContexts?: number;
  /** Executions waiting for a busy context, per context. */
  maxQueued?: number;
  keepaliveMs?: number;
}

class Context {
  readonly id: string;
  readonly language: string;
  readonly family: KernelFamily;
  readonly cwd: string;
  kernel: Kernel | undefined;
  /** The kernel being started (first start or restart). */
  starting: Promise<Kernel> | undefined;
  /** Set once the kernel instance ran its prelude (reseed, global env). */
  preludeFor: Kernel | undefined;
  /** Tail of the execution queue. */
  tail: Promise<void> = Promise.resolve();
  queued = 0;
  removed = false;
  /** Its kernels import the heavy libraries while starting. */
  preload = false;

  constructor(id: string, language: string, family: KernelFamily, cwd: string) {
    this.id = id;
    this.language = language;
    this.family = family;
    this.cwd = cwd;
  }

  info(): ContextInfo {
    return { id: this.id, language: this.language, cwd: this.cwd };
  }
}

export interface ExecuteRequest {
  code: string;
  contextId?: string | undefined;
  language?: string | undefined;
  envVars?: Record<string, string> | undefined;
  accessToken?: string | undefined;
}

export class Contexts {
  readonly #opts: Required<ContextsOptions>;
  readonly #contexts = new Map<string, Context>();
  readonly #defaults = new Map<string, Promise<Context>>();
  #globalEnv: Record<string, string> | undefined;

  constructor(opts: ContextsOptions) {
    this.#opts = {
      startTimeoutMs: 900_000,
      maxContexts: 32,
      maxQueued: 16,
      keepaliveMs: 5000,
      ...opts,
    };
  }

  #family(language: string): KernelFamily {
    const family = LANGUAGES[language];
    if (!family || !this.#opts.specs[family]) {
      const known = Object.entries(LANGUAGES)
        .filter(([, f]) => this.#opts.specs[f])
        .map(([l]) => l);
      throw new ContextError(
        400,
        `language ${language} is not supported here; use one of: ${known.join(", ")}`,
      );
    }
    return family;
  }

  /**
   * Starts the default contexts of these languages (before the service
   * reports healthy). Their kernels also import the heavy libraries up front
   * (FIREBREAK_CI_PRELOAD=1: numpy, pandas, matplotlib in Python); kernels
   * of later contexts start lighter.
   */
  async preload(languages: string[]): Promise<void> {
    await Promise.all(languages.map((l) => this.defaultContext(normalizeLanguage(l), true)));
  }

  list(): ContextInfo[] {
    return [...this.#contexts.values()].map((c) => c.info());
  }

  async create(languageIn: string | undefined, cwdIn: string | undefined): Promise<ContextInfo> {
    const ctx = await this.#create(normalizeLanguage(languageIn), cwdIn ?? this.#opts.workdir);
    return ctx.info();
  }

  async #create(language: string, cwd: string, preload = false): Promise<Context> {
    const family = this.#family(language);
    if (!cwd.startsWith("/")) throw new ContextError(400, `cwd ${cwd} must be an absolute path`);
    const st = await fs.stat(cwd).catch(() => undefined);
    if (!st?.isDirectory()) throw new ContextError(400, `cwd ${cwd} is not a directory in the sandbox`);
    if (this.#contexts.size >= this.#opts.maxContexts) {
      throw new ContextError(
        429,
        `this sandbox already has ${this.#contexts.size} contexts; remove some (DELETE /contexts/{id})`,
      );
    }
    const ctx = new Context(randomUUID(), language, family, cwd);
    ctx.preload = preload;
    this.#contexts.set(ctx.id, ctx);
    try {
      await this.#kernelOf(ctx);
    } catch (e) {
      this.#contexts.delete(ctx.id);
      throw e;
    }
    return ctx;
  }

  async defaultContext(language: string, preload = false): Promise<Context> {
    this.#family(language);
    let p = this.#defaults.get(language);
    if (!p) {
      p = this.#create(language, this.#opts.workdir, preload);
      this.#defaults.set(language, p);
      p.catch(() => this.#defaults.delete(language));
    }
    const ctx = await p;
    if (ctx.removed) {
      this.#defaults.delete(language);
      return this.defaultContext(language);
    }
    return ctx;
  }

  #get(id: string): Context {
    const ctx = this.#contexts.get(id);
    if (!ctx) throw new ContextError(404, `context ${id} not found`);
    return ctx;
  }

  /** The context's kernel, started (or restarted after it died) when needed. */
  async #kernelOf(ctx: Context): Promise<Kernel> {
    if (ctx.kernel?.alive) return ctx.kernel;
    ctx.starting ??= (async () => {
      try {
        const spec = this.#opts.specs[ctx.family]!;
        const kernel = await Kernel.start(
          {
            ...spec,
            cwd: ctx.cwd,
            env: {
              ...this.#opts.baseEnv,
              ...spec.env,
              ...(ctx.preload ? { FIREBREAK_CI_PRELOAD: "1" } : {}),
            },
          },
          { startTimeoutMs: this.#opts.startTimeoutMs },
        );
        if (ctx.removed) {
          await kernel.shutdown();
          throw new ContextError(404, `context ${ctx.id} was removed`);
        }
        ctx.kernel = kernel;
        return kernel;
      } catch (e) {
        if (e instanceof ContextError) throw e;
        throw new ContextError(500, `the ${ctx.language} kernel did not start: ${(e as Error).message}`);
      } finally {
        ctx.starting = undefined;
      }
    })();
    return ctx.starting;
  }

  async restart(id: string): Promise<void> {
    const ctx = this.#get(id);
    await this.#exclusive(ctx, async () => {
      const old = ctx.kernel;
      ctx.kernel = undefined;
      await old?.shutdown();
      await this.#kernelOf(ctx);
    });
  }

  async remove(id: string): Promise<void> {
    const ctx = this.#get(id);
    ctx.removed = true;
    this.#contexts.delete(id);
    for (const [lang, p] of this.#defaults) {
      if ((await p.catch(() => undefined)) === ctx) this.#defaults.delete(lang);
    }
    const k = ctx.kernel;
    ctx.kernel = undefined;
    await k?.interrupt();
    await k?.shutdown();
  }

  async close(): Promise<void> {
    await Promise.all([...this.#contexts.keys()].map((id) => this.remove(id).catch(() => {})));
  }

  /** Runs `fn` when the context's earlier work is done (executions are serialized). */
  async #exclusive<T>(ctx: Context, fn: () => Promise<T>): Promise<T> {
    if (ctx.queued >= this.#opts.maxQueued) {
      throw new ContextError(429, `context ${ctx.id} already has ${ctx.queued} executions waiting`);
    }
    ctx.queued++;
    const prev = ctx.tail;
    let release!: () => void;
    ctx.tail = new Promise((r) => {
      release = r;
    });
    try {
      await prev;
      return await fn();
    } finally {
      ctx.queued--;
      release();
    }
  }

  /** The context a request runs in (400/404 for bad requests, before any output is sent). */
  async resolve(req: ExecuteRequest): Promise<Context> {
    if (req.contextId && req.language) {
      throw new ContextError(400, "Only one of context_id or language can be provided");
    }
    if (req.contextId) return this.#get(req.contextId);
    return this.defaultContext(normalizeLanguage(req.language));
  }

  /**
   * Runs code in a context, sending events to `emit` (which applies
   * backpressure). `signal` aborts (the client went away): the cell is
   * interrupted. Resolves when the cell is done; the caller sends the end line.
   */
  async execute(
    ctx: Context,
    req: ExecuteRequest,
    emit: (e: OutputEvent) => Promise<void>,
    signal: AbortSignal,
  ) {
    await this.#exclusive(ctx, async () => {
      if (signal.aborted) return;
      const kernel = await this.#kernelOf(ctx);
      if (ctx.preludeFor !== kernel) {
        this.#globalEnv ??= await this.#opts.globalEnv(req.accessToken).catch(() => undefined);
        const prelude = [reseedSnippet(ctx.family), setEnvSnippet(ctx.family, this.#globalEnv ?? {})]
          .filter(Boolean)
          .join("\n");
        await this.#silent(kernel, prelude);
        ctx.preludeFor = kernel;
      }
      const envVars = req.envVars ?? {};
      const envKeys = Object.keys(envVars);
      if (envKeys.length) await this.#silent(kernel, setEnvSnippet(ctx.family, envVars));
      try {
        await this.#run(kernel, ctx, req.code, emit, signal);
      } finally {
        if (envKeys.length && kernel.alive) {
          await this.#silent(kernel, resetEnvSnippet(ctx.family, envKeys, this.#globalEnv ?? {}));
        }
      }
    });
  }

  async #silent(kernel: Kernel, code: string): Promise<void> {
    if (!code) return;
    const ex = kernel.execute(code, { silent: true });
    for await (const _ of ex.messages) {
      // outputs of internal snippets are not the caller's
    }
  }

  async #run(
    kernel: Kernel,
    ctx: Context,
    code: string,
    emit: (e: OutputEvent) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const ex = kernel.execute(code);
    const onAbort = () => void kernel.interrupt();
    signal.addEventListener("abort", onAbort, { once: true });
    // The client may have gone while the prelude ran: the listener would never fire.
    if (signal.aborted) onAbort();
    let errored = false;
    let lastSent = Date.now();
    const send = async (e: OutputEvent) => {
      lastSent = Date.now();
      if (!signal.aborted) await emit(e);
    };
    // Keepalive lines while the cell is silent: a client that went away is
    // noticed at the next write, and its cell is interrupted.
    const keepalive = setInterval(() => {
      if (Date.now() - lastSent >= this.#opts.keepaliveMs) void send({ type: "keepalive" }).catch(() => {});
    }, this.#opts.keepaliveMs);
    try {
      for await (const msg of ex.messages) {
        const ev = toEvent(msg);
        if (!ev) continue;
        if (ev.type === "error") {
          if (errored) continue;
          errored = true;
        }
        await send(ev);
      }
      if (ex.endedBy === "died") {
        await send({
          type: "error",
          name: "ContextRestarting",
          value: `the ${ctx.language} kernel exited during the execution; the context restarts with fresh state`,
          traceback: "",
        });
        return;
      }
      const reply = await ex.reply;
      if (!errored && reply?.content["status"] === "error") await send(errorEvent(reply.content));
      const status = reply?.content["status"];
      // "abort" is the protocol's old spelling, "aborted" the current one.
      if (!errored && (status === "abort" || status === "aborted")) {
        await send({
          type: "error",
          name: "ExecutionAborted",
          value: "Execution was aborted",
          traceback: "",
        });
      }
    } finally {
      clearInterval(keepalive);
      signal.removeEventListener("abort", onAbort);
    }
  }
}
