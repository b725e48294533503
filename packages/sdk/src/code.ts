// sandbox.code (and sandbox.runCode): stateful code execution in a
// code-interpreter sandbox. Each context is a kernel with its own state,
// language and working directory; without one, the language's default
// context runs the code, so variables survive between calls.
import { FirebreakApiError } from "./errors.ts";
import type { HttpClient } from "./http.ts";

export type CodeLanguage = "python" | "javascript" | "typescript" | "js" | "ts" | (string & {});

export interface CodeContext {
  id: string;
  language: string;
  cwd: string;
}

/** One rich result: the cell's value (isMainResult) or something it displayed (a plot). */
export interface CodeResult {
  isMainResult: boolean;
  text?: string;
  html?: string;
  markdown?: string;
  svg?: string;
  /** base64 */
  png?: string;
  /** base64 */
  jpeg?: string;
  pdf?: string;
  latex?: string;
  json?: unknown;
  javascript?: string;
  /** A pandas DataFrame's columns. */
  data?: Record<string, unknown[]>;
  /** A matplotlib figure's chart data (type, labels, ticks, elements). */
  chart?: Record<string, unknown>;
  /** Other MIME types, by type. */
  extra?: Record<string, unknown>;
}

/** An exception the code raised (a result, not an SDK error). */
export interface CodeError {
  name: string;
  value: string;
  traceback: string;
}

export interface Execution {
  results: CodeResult[];
  logs: { stdout: string[]; stderr: string[] };
  error?: CodeError;
  executionCount?: number;
  /** The main result's text, when there is one. */
  text?: string;
}

export interface RunCodeOptions {
  /** Run in the default context of this language. @default "python" (when no context is given) */
  language?: CodeLanguage;
  /** Run in this context (from createContext). Not together with `language`. */
  context?: CodeContext | string;
  /** Environment variables for this execution only. */
  envVars?: Record<string, string>;
  onStdout?: (text: string) => void;
  onStderr?: (text: string) => void;
  onResult?: (result: CodeResult) => void;
  onError?: (error: CodeError) => void;
  /** Interrupt the cell after this long (the execution gets a TimeoutError). @default no limit */
  timeoutMs?: number;
  signal?: AbortSignal;
}

type WireEvent = { type: string } & Record<string, unknown>;

const RESULT_FIELDS = [
  "text",
  "html",
  "markdown",
  "svg",
  "png",
  "jpeg",
  "pdf",
  "latex",
  "json",
  "javascript",
  "data",
  "chart",
  "extra",
] as const;

function toResult(ev: WireEvent): CodeResult {
  const r: CodeResult = { isMainResult: ev["is_main_result"] === true };
  for (const f of RESULT_FIELDS) {
    if (ev[f] !== undefined && ev[f] !== null) (r as unknown as Record<string, unknown>)[f] = ev[f];
  }
  return r;
}

const s = (v: unknown) => (typeof v === "string" ? v : "");

export class Code {
  readonly #http: HttpClient;
  readonly #base: string;

  /** @internal */
  constructor(http: HttpClient, sandboxId: string) {
    this.#http = http;
    this.#base = `/v1/sandboxes/${encodeURIComponent(sandboxId)}/code`;
  }

  /**
   * Runs code and resolves with everything it produced. An exception in the
   * code is `execution.error`, not a thrown error; output streams to the
   * callbacks while the cell runs.
   */
  async run(code: string, opts: RunCodeOptions = {}): Promise<Execution> {
    if (opts.context !== undefined && opts.language !== undefined) {
      throw new FirebreakApiError({
        code: "VALIDATION_FAILED",
        message: "give language or context, not both",
      });
    }
    const contextId = typeof opts.context === "string" ? opts.context : opts.context?.id;
    const body = {
      code,
      ...(opts.language !== undefined ? { language: opts.language } : {}),
      ...(contextId !== undefined ? { contextId } : {}),
      ...(opts.envVars ? { envVars: opts.envVars } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    };
    const execution: Execution = { results: [], logs: { stdout: [], stderr: [] } };
    let ended = false;
    for await (const ev of this.#http.stream<WireEvent>("POST", `${this.#base}/execute`, {
      json: body,
      ...(opts.signal ? { signal: opts.signal } : {}),
    })) {
      switch (ev.type) {
        case "stdout":
          execution.logs.stdout.push(s(ev["text"]));
          opts.onStdout?.(s(ev["text"]));
          break;
        case "stderr":
          execution.logs.stderr.push(s(ev["text"]));
          opts.onStderr?.(s(ev["text"]));
          break;
        case "result": {
          const r = toResult(ev);
          execution.results.push(r);
          if (r.isMainResult && r.text !== undefined) execution.text = r.text;
          opts.onResult?.(r);
          break;
        }
        case "error": {
          const e = { name: s(ev["name"]), value: s(ev["value"]), traceback: s(ev["traceback"]) };
          execution.error = e;
          opts.onError?.(e);
          break;
        }
        case "number_of_executions":
          if (typeof ev["execution_count"] === "number") execution.executionCount = ev["execution_count"];
          break;
        case "end_of_execution":
          ended = true;
          break;
      }
    }
    if (!ended) {
      throw new FirebreakApiError({
        code: "BAD_RESPONSE",
        message: "the execution stream ended early (the sandbox stopped or the connection broke)",
      });
    }
    return execution;
  }

  /** A new context (kernel) with its own state. @default language python, cwd the template's workdir */
  async createContext(opts: { language?: CodeLanguage; cwd?: string } = {}): Promise<CodeContext> {
    return this.#http.json<CodeContext>("POST", `${this.#base}/contexts`, {
      json: {
        ...(opts.language !== undefined ? { language: opts.language } : {}),
        ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      },
    });
  }

  /** Every context, the default ones included. */
  async listContexts(): Promise<CodeContext[]> {
    return (await this.#http.json<{ contexts: CodeContext[] }>("GET", `${this.#base}/contexts`)).contexts;
  }

  /** Restarts a context's kernel: its state is lost. */
  async restartContext(context: CodeContext | string): Promise<void> {
    const id = typeof context === "string" ? context : context.id;
    await this.#http.empty("POST", `${this.#base}/contexts/${encodeURIComponent(id)}/restart`);
  }

  /** Removes a context and stops its kernel. */
  async removeContext(context: CodeContext | string): Promise<void> {
    const id = typeof context === "string" ? context : context.id;
    await this.#http.empty("DELETE", `${this.#base}/contexts/${encodeURIComponent(id)}`);
  }
}
