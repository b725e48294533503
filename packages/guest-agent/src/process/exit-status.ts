const SIGNAL_WORDS: Record<string, string> = {
  SIGKILL: "killed",
  SIGTERM: "terminated",
  SIGINT: "interrupt",
  SIGHUP: "hangup",
  SIGQUIT: "quit",
  SIGPIPE: "broken pipe",
  SIGSEGV: "segmentation fault",
  SIGABRT: "aborted",
  SIGBUS: "bus error",
  SIGUSR1: "user defined signal 1",
  SIGUSR2: "user defined signal 2",
};

export type ExitInfo = { exitCode: number; exited: boolean; status: string; error?: string };

/**
 * Exit description in the shape E2B's envd (Go) reports: `exit status N` with
 * exited=true, or `signal: killed` with exitCode -1 and exited=false. Any exit
 * but a clean 0 also carries `error` = the status (Go's cmd.Wait() error text):
 * the SDK's CommandExitError takes its message from it.
 */
export function describeExit(code: number | null, signal: NodeJS.Signals | string | null): ExitInfo {
  if (signal) {
    const status = `signal: ${SIGNAL_WORDS[signal] ?? signal}`;
    return { exitCode: -1, exited: false, status, error: status };
  }
  const c = code ?? -1;
  const status = `exit status ${c}`;
  return c === 0
    ? { exitCode: c, exited: true, status }
    : { exitCode: c, exited: true, status, error: status };
}
