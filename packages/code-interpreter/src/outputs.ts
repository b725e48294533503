// Jupyter iopub messages -> the NDJSON lines of E2B's /execute:
//
//   {"type":"number_of_executions","execution_count":N}
//   {"type":"stdout"|"stderr","text","timestamp"}
//   {"type":"result","text","html","markdown","svg","png","jpeg","pdf","latex","json","javascript","data","chart","extra","is_main_result"}
//   {"type":"error","name","value","traceback"}
//   {"type":"keepalive"}          (while nothing else is sent)
//   {"type":"end_of_execution"}   (last line)
import type { JupyterMessage } from "./jupyter/wire.ts";

export type OutputEvent =
  | { type: "number_of_executions"; execution_count: number }
  | { type: "stdout" | "stderr"; text: string; timestamp: string }
  | ({ type: "result"; is_main_result: boolean } & ResultFormats)
  | { type: "error"; name: string; value: string; traceback: string }
  | { type: "keepalive" }
  | { type: "end_of_execution" };

export interface ResultFormats {
  text?: string;
  html?: string;
  markdown?: string;
  svg?: string;
  png?: string;
  jpeg?: string;
  pdf?: string;
  latex?: string;
  json?: unknown;
  javascript?: string;
  data?: unknown;
  chart?: unknown;
  extra?: Record<string, unknown>;
}

/** MIME type -> E2B result field. Everything else goes to `extra`. */
const MIME_FIELDS: Record<string, keyof ResultFormats> = {
  "text/plain": "text",
  "text/html": "html",
  "text/markdown": "markdown",
  "image/svg+xml": "svg",
  "image/png": "png",
  "image/jpeg": "jpeg",
  "application/pdf": "pdf",
  "text/latex": "latex",
  "application/json": "json",
  "application/javascript": "javascript",
  "e2b/data": "data",
  "e2b/chart": "chart",
};

/** E2B shows a string result without its quotes: 'abc' and "abc" read as abc. */
function unquote(text: string): string {
  if (text.length >= 2) {
    const q = text[0];
    if ((q === "'" || q === '"') && text.endsWith(q)) return text.slice(1, -1);
  }
  return text;
}

export function resultFormats(data: Record<string, unknown>): ResultFormats {
  const out: ResultFormats = {};
  const extra: Record<string, unknown> = {};
  for (const [mime, value] of Object.entries(data)) {
    const field = MIME_FIELDS[mime];
    if (!field) {
      extra[mime] = value;
      continue;
    }
    if (field === "json" || field === "data" || field === "chart") {
      (out as Record<string, unknown>)[field] = value;
    } else if (typeof value === "string") {
      (out as Record<string, unknown>)[field] = field === "text" ? unquote(value) : value;
    } else if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
      // nbformat allows multi-line strings as lists of lines.
      (out as Record<string, unknown>)[field] = value.join("");
    }
  }
  if (Object.keys(extra).length > 0) out.extra = extra;
  return out;
}

const str = (v: unknown): string =>
  typeof v === "string" ? v : v === undefined || v === null ? "" : String(v);

export function errorEvent(content: Record<string, unknown>): OutputEvent {
  const tb = content["traceback"];
  return {
    type: "error",
    name: str(content["ename"]),
    value: str(content["evalue"]),
    traceback: Array.isArray(tb) ? tb.map(str).join("\n") : str(tb),
  };
}

/** The event for one iopub message of an execution, if it has one. */
export function toEvent(msg: JupyterMessage): OutputEvent | undefined {
  const c = msg.content;
  switch (msg.header.msg_type) {
    case "execute_input": {
      const n = c["execution_count"];
      return typeof n === "number" ? { type: "number_of_executions", execution_count: n } : undefined;
    }
    case "stream": {
      const name = c["name"] === "stderr" ? "stderr" : "stdout";
      return { type: name, text: str(c["text"]), timestamp: str(msg.header.date) };
    }
    case "execute_result":
    case "display_data": {
      const data = c["data"];
      if (!data || typeof data !== "object" || Array.isArray(data)) return undefined;
      return {
        type: "result",
        ...resultFormats(data as Record<string, unknown>),
        is_main_result: msg.header.msg_type === "execute_result",
      };
    }
    case "error":
      return errorEvent(c);
    default:
      return undefined;
  }
}
