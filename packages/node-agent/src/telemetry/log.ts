// The node's structured log: records with fields (sandbox id, phase, ms, ...)
// and a message, as pino writes them. A pino logger fits this interface; a
// plain line callback (the CLI's FIREBREAK_LOG) is adapted by lineLogger.
export type LogFields = Record<string, unknown>;

export interface NodeLogger {
  debug(fields: LogFields, msg: string): void;
  info(fields: LogFields, msg: string): void;
  warn(fields: LogFields, msg: string): void;
  error(fields: LogFields, msg: string): void;
  /** A logger that adds `bindings` to every record. */
  child(bindings: LogFields): NodeLogger;
}

/** What the node's options take: a structured logger, or a function that prints lines. */
export type LogSink = NodeLogger | ((line: string) => void);

function fieldText(fields: LogFields): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    parts.push(`${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
  }
  return parts.join(" ");
}

/** A NodeLogger that prints `msg key=value ...` lines to `print`. */
export function lineLogger(print: (line: string) => void, bindings: LogFields = {}): NodeLogger {
  const emit = (level: string, fields: LogFields, msg: string) => {
    const text = fieldText({ ...bindings, ...fields });
    print(`${level === "info" ? "" : `${level}: `}${msg}${text ? ` (${text})` : ""}`);
  };
  return {
    debug: () => {},
    info: (f, m) => emit("info", f, m),
    warn: (f, m) => emit("warn", f, m),
    error: (f, m) => emit("error", f, m),
    child: (b) => lineLogger(print, { ...bindings, ...b }),
  };
}

export const silentLogger: NodeLogger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => silentLogger,
};

export function toNodeLogger(sink: LogSink | undefined): NodeLogger {
  if (!sink) return silentLogger;
  return typeof sink === "function" ? lineLogger(sink) : sink;
}
