#!/usr/bin/env node
import { FirebreakError } from "@firebreak/node-agent";
import { FirebreakApiError } from "@firebreak/sdk";
// firebreak: the command-line interface. Without a server it drives the local
// node runtime directly (root needed); `sandbox`, `job`, `keys`, `webhook` and `usage` talk to a
// server (FIREBREAK_URL, FIREBREAK_API_KEY), and so do `run` and `template`
// when both are set.
import { Command, InvalidArgumentError, Option } from "commander";
import { adminKeyCommand } from "./commands/admin-key.ts";
import { useServer } from "./commands/api-client.ts";
import { benchCommand } from "./commands/bench.ts";
import { doctorCommand } from "./commands/doctor.ts";
import { downCommand } from "./commands/down.ts";
import {
  exitCodes,
  failureKinds,
  fileFlag,
  jobArtifacts,
  jobCancel,
  jobGet,
  jobList,
  jobLogs,
  jobRun,
  jobUsage,
} from "./commands/job.ts";
import { keysCreate, keysList, keysRevoke } from "./commands/keys.ts";
import {
  allowCidr,
  sandboxNetworkGet,
  sandboxNetworkSet,
  servicesCreate,
  servicesDelete,
  servicesList,
} from "./commands/network.ts";
import { nodeCommand } from "./commands/node.ts";
import { sandboxRepl } from "./commands/repl.ts";
import { runCommand } from "./commands/run.ts";
import {
  sandboxCreate,
  sandboxEvents,
  sandboxExec,
  sandboxFork,
  sandboxGet,
  sandboxKill,
  sandboxList,
  sandboxLogs,
  sandboxPause,
  sandboxResume,
  sandboxTimeout,
} from "./commands/sandbox.ts";
import { templateBuild, templateDelete, templateList } from "./commands/template.ts";
import { templateBuildApi, templateDeleteApi, templateListApi } from "./commands/template-api.ts";
import { upCommand } from "./commands/up.ts";
import { groupBy, isoTime, usageCommand } from "./commands/usage.ts";
import { webhookAdd, webhookDeliveries, webhookList, webhookRm } from "./commands/webhook.ts";
import { EXIT_USAGE } from "./output.ts";

function int(name: string, min: number, max: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

function keyValue(v: string, prev: Record<string, string> = {}) {
  const eq = v.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got ${v}`);
  return { ...prev, [v.slice(0, eq)]: v.slice(eq + 1) };
}

function list(v: string, prev: string[] = []) {
  return [...prev, ...v.split(",").filter(Boolean)];
}

/** The server version of a command when a server is configured, the local one otherwise. */
function serverOr<A extends unknown[]>(
  api: (...a: A) => Promise<void>,
  local: (...a: A) => Promise<void>,
): (...a: A) => Promise<void> {
  return (...a) => (useServer() ? api(...a) : local(...a));
}

/** The egress policy flags of `sandbox create` and `sandbox network set` (default: deny all). */
function withPolicyFlags(cmd: Command): Command {
  return cmd
    .option("--policy-file <file>", "egress policy JSON (the flags below add to it)")
    .option(
      "--allow-domain <name>",
      "a name the sandbox may resolve and reach: api.example.com, *.example.com (repeatable)",
      list,
    )
    .option(
      "--allow-cidr <CIDR[:PORTS]>",
      "addresses it may reach, e.g. 10.0.0.0/8:5432 (repeatable)",
      allowCidr,
    )
    .option("--internet", "allow the public internet")
    .option("--service <name>", "bind a private service (see: firebreak services list; repeatable)", list)
    .option("--network <name>", "join a sandbox network of your tenant (repeatable)", list);
}

const program = new Command()
  .name("firebreak")
  .description("Fast, isolated microVM sandboxes for AI workloads")
  .version("0.1.0")
  .showHelpAfterError()
  .configureOutput({ outputError: (s, write) => write(s) });

const template = program.command("template").description("build, list and delete sandbox templates");
template
  .command("build")
  .description("build a template from a built-in name (base) or a spec file")
  .argument("<name-or-spec>", "built-in template name, or path to a template.json")
  .option("--refresh", "resolve Debian package versions afresh instead of reusing the lock")
  .option("-v, --verbose", "print every line of build output")
  .option("--json", "print the built template as JSON")
  .action(serverOr(templateBuildApi, templateBuild));
template
  .command("list")
  .description("list built templates")
  .option("--json", "print JSON")
  .action(serverOr(templateListApi, templateList));
template
  .command("delete")
  .description("delete a built template (and its image when unused)")
  .argument("<name>")
  .action(serverOr(templateDeleteApi, templateDelete));

program
  .command("run")
  .description(
    "boot a sandbox, run a command in it with live output, tear it down; exits with the command's code",
  )
  .option("-t, --template <name>", "template to start from", "base")
  .addOption(
    new Option("--cpus <n>", "vCPUs (default: the template's, 1 for base)").argParser(int("--cpus", 1, 8)),
  )
  .addOption(
    new Option("--memory <MiB>", "guest memory in MiB (default: the template's, 256 for base)").argParser(
      int("--memory", 128, 16384),
    ),
  )
  .addOption(
    new Option("--disk <MiB>", "grow the root disk to this size (default: the template's)").argParser(
      int("--disk", 512, 262144),
    ),
  )
  .option("-u, --user <name>", "guest user to run as (default: the template's user)")
  .option("-w, --workdir <path>", "working directory in the guest")
  .option("-e, --env <KEY=VALUE>", "environment variable (repeatable)", keyValue)
  .option("--timing", "print the start path and its phase timings to stderr")
  .argument("<cmd...>", "command and arguments (put them after --)")
  .action(runCommand);

program
  .command("up")
  .description(
    "start the control plane here: API, local node and store; creates the admin key on first start (kept root-only in <state-dir>/admin-key)",
  )
  .option("--listen <host:port>", "address to listen on", "127.0.0.1:3000")
  .option("--state-dir <dir>", "state directory (default: FIREBREAK_STATE_DIR or /var/lib/firebreak)")
  .option(
    "--database <url>",
    "postgres://... to share the store with other control planes (default: FIREBREAK_DATABASE_URL, else SQLite in the state dir)",
  )
  .option(
    "--no-local-node",
    "run only the control plane: place sandboxes on nodes that joined it (firebreak node --join)",
  )
  .option(
    "-d, --detach",
    "run in the background and return once it listens (log: <state-dir>/firebreak-up.log; stop: firebreak down)",
  )
  .action(upCommand);

program
  .command("down")
  .description(
    "stop the running `firebreak up` (service, --detach or foreground): running sandboxes are killed and billed, paused ones kept",
  )
  .option("--state-dir <dir>", "state directory (default: FIREBREAK_STATE_DIR or /var/lib/firebreak)")
  .addOption(
    new Option("--timeout-ms <ms>", "how long to wait for it to stop")
      .argParser(int("--timeout-ms", 1000, 3600_000))
      .default(300_000),
  )
  .action(downCommand);

program
  .command("node")
  .description(
    "run this host's node daemon: owns its VMs, serves the node API on a root-only socket, and with --listen/--join serves a control plane elsewhere",
  )
  .option(
    "--listen <host:port>",
    "also serve the node API on TCP (TLS with the node credential as pre-shared key)",
  )
  .option("--advertise <url>", "the address control planes use (default: the --listen address)")
  .option("--join <url>", "register with the control plane at this URL")
  .option("--token <token>", "join token (POST /v1/nodes/join-tokens on the control plane)")
  .option("--node-id <id>", "this node's id on first start (default: n-<random>)")
  .option("--state-dir <dir>", "state directory (default: FIREBREAK_STATE_DIR or /var/lib/firebreak)")
  .action(nodeCommand);

program
  .command("admin-key")
  .description(
    "mint a new admin API key straight into the state dir's database (root; works with or without a running server); prints only the key",
  )
  .option("--state-dir <dir>", "state directory (default: FIREBREAK_STATE_DIR or /var/lib/firebreak)")
  .option("--name <name>", "the key's name", "admin (firebreak admin-key)")
  .action(adminKeyCommand);

const sandbox = program
  .command("sandbox")
  .description("create, list, inspect, run commands in and kill sandboxes on a server (FIREBREAK_URL)");
sandbox
  .command("create")
  .description("start a sandbox and print it, id included (--json: the whole sandbox)")
  .option("-t, --template <name>", "template to start from (default: base)")
  .addOption(
    new Option("--cpus <n>", "vCPUs (default: the template's, 1 for base)").argParser(int("--cpus", 1, 8)),
  )
  .addOption(
    new Option("--memory <MiB>", "guest memory in MiB (default: the template's, 256 for base)").argParser(
      int("--memory", 128, 16384),
    ),
  )
  .addOption(
    new Option("--timeout-ms <ms>", "lifetime before it is killed (default: 300000)").argParser(
      int("--timeout-ms", 1000, 30 * 24 * 3600_000),
    ),
  )
  .option("-e, --env <KEY=VALUE>", "environment variable for every command (repeatable)", keyValue)
  .option("--metadata <key=value>", "label for listing and usage (repeatable)", keyValue);
withPolicyFlags(sandbox.commands.at(-1)!).option("--json", "print the sandbox as JSON").action(sandboxCreate);
sandbox
  .command("list")
  .description("list your sandboxes, newest first")
  .option("--state <state>", "only these states (repeatable or comma-separated: running,paused)", list)
  .option("--metadata <key=value>", "only sandboxes with this label (repeatable; all must match)", keyValue)
  .addOption(new Option("--limit <n>", "at most this many").argParser(int("--limit", 1, 1_000_000)))
  .option("--json", "print JSON")
  .action(sandboxList);
sandbox
  .command("get")
  .description("show one sandbox")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(sandboxGet);
sandbox
  .command("exec")
  .description("run a command in a sandbox with live output; exits with the command's code")
  .argument("<id>")
  .argument("<cmd...>", "command and arguments (put them after --)")
  .option("-u, --user <name>", "guest user to run as (default: the template's user)")
  .option("-w, --workdir <path>", "working directory in the guest")
  .option("-e, --env <KEY=VALUE>", "environment variable (repeatable)", keyValue)
  .addOption(
    new Option("--timeout-ms <ms>", "kill the command after this long").argParser(
      int("--timeout-ms", 1, 30 * 24 * 3600_000),
    ),
  )
  .action(sandboxExec);
sandbox
  .command("kill")
  .description("kill a sandbox (exits 1 when there is no such sandbox)")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(sandboxKill);
sandbox
  .command("pause")
  .description("pause a running sandbox to disk")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(sandboxPause);
sandbox
  .command("resume")
  .description("resume a paused sandbox")
  .argument("<id>")
  .addOption(
    new Option("--timeout-ms <ms>", "new lifetime from now").argParser(
      int("--timeout-ms", 1000, 30 * 24 * 3600_000),
    ),
  )
  .option("--json", "print JSON")
  .action(sandboxResume);
sandbox
  .command("fork")
  .description("fork a running sandbox into N copies (disk and memory)")
  .argument("<id>")
  .addOption(new Option("--count <n>", "number of copies").argParser(int("--count", 1, 16)).default(1))
  .option("--json", "print JSON")
  .action(sandboxFork);
sandbox
  .command("timeout")
  .description("set a sandbox's remaining lifetime")
  .argument("<id>")
  .argument("<ms>", "milliseconds from now", int("<ms>", 1000, 30 * 24 * 3600_000))
  .action(sandboxTimeout);
sandbox
  .command("logs")
  .description("a sandbox's serial console (or its start command's output, --source start)")
  .argument("<id>")
  .addOption(
    new Option("--source <source>", "console or start").choices(["console", "start"]).default("console"),
  )
  .option("-f, --follow", "keep printing new output until the sandbox ends (Ctrl-C stops)")
  .action(sandboxLogs);
sandbox
  .command("events")
  .description("a sandbox's path through the platform: scheduling, start path, state changes, end")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(sandboxEvents);
sandbox
  .command("repl")
  .description(
    "run code cells from stdin in a code-interpreter sandbox (one per line; --multiline: cells end at a blank line); state is kept between cells; exits 1 if a cell raised",
  )
  .argument("<id>")
  .addOption(
    new Option("-l, --language <language>", "python, javascript (js) or typescript (ts)").default("python"),
  )
  .option("-c, --context <id>", "run in this code context instead of the language's default one")
  .option("--multiline", "a blank line ends each cell (for indented blocks)")
  .option("--json", "print each cell's execution as one JSON line")
  .action(sandboxRepl);

const network = sandbox.command("network").description("a sandbox's egress policy");
network
  .command("get")
  .description("show the egress policy in force")
  .argument("<id>")
  .option("--json", "print JSON ({ policy })")
  .action(sandboxNetworkGet);
withPolicyFlags(
  network
    .command("set")
    .description("replace the egress policy of a running sandbox (in force when the command returns)")
    .argument("<id>"),
)
  .option("--json", "print JSON ({ policy })")
  .action(sandboxNetworkSet);

const job = program
  .command("job")
  .description(
    "batch jobs on a server: run a command to completion over many inputs, each task in a sandbox of its own",
  );
withPolicyFlags(
  job
    .command("run")
    .description(
      "submit a job and wait for it: one task per --inputs line (or --input-file), each in its own sandbox; prints every task's result in order; exits 1 unless every task succeeded",
    )
    .argument(
      "<cmd...>",
      "command and arguments (put them after --); one argument with spaces is a shell line",
    )
    .option("-t, --template <name>", "template every task starts from (default: base)")
    .addOption(
      new Option("--parallel <n>", "tasks running at once (default: 4)").argParser(int("--parallel", 1, 64)),
    )
    .option(
      "--inputs <file.jsonl>",
      "one task per line, each a JSON value (in the task: $FIREBREAK_INPUT_FILE); - for stdin",
    )
    .option("--input-file <path>", "one task per file (in the task: input/<name>; repeatable)", list)
    .option(
      "--file <local[:remote]>",
      "copy a local file into every task's working directory (repeatable)",
      fileFlag,
    )
    .option("--no-auto-files", "do not ship command arguments that name local files")
    .option(
      "--output <path>",
      "path collected as artifacts after the command (repeatable; default: out)",
      list,
    )
    .addOption(new Option("--cpus <n>", "vCPUs per task (default: 1)").argParser(int("--cpus", 1, 8)))
    .addOption(
      new Option("--memory <MiB>", "memory per task in MiB (default: 256)").argParser(
        int("--memory", 128, 16384),
      ),
    )
    .option(
      "-e, --env <KEY=VALUE>",
      "environment variable (repeatable; stored with the job: not for secrets)",
      keyValue,
    )
    .option("--metadata <key=value>", "label for listing and usage (repeatable)", keyValue)
    .addOption(
      new Option("--timeout-ms <ms>", "kill a task's command after this long (default: 600000)").argParser(
        int("--timeout-ms", 1000, 24 * 3600_000),
      ),
    )
    .addOption(
      new Option("--retries <n>", "run a failed task again up to n times (default: 0)").argParser(
        int("--retries", 0, 9),
      ),
    )
    .addOption(
      new Option(
        "--retry-on <kinds>",
        "failures retried: exit_code, timeout, killed, infrastructure (default: infrastructure)",
      ).argParser(failureKinds),
    )
    .addOption(
      new Option("--retry-exit-code <codes>", "with --retry-on exit_code: only these codes").argParser(
        exitCodes,
      ),
    )
    .addOption(
      new Option(
        "--backoff-ms <ms>",
        "wait before the first retry, doubled each time (default: 1000)",
      ).argParser(int("--backoff-ms", 0, 3600_000)),
    )
    .addOption(
      new Option(
        "--max-log-bytes <n>",
        "output kept per attempt before the truncation marker (default: 1 MiB)",
      ).argParser(int("--max-log-bytes", 1024, 16 * 1024 * 1024)),
    )
    .option("-d, --detach", "print the job id and return without waiting"),
)
  .option("--json", "print the job and its tasks as JSON")
  .action(jobRun);
job
  .command("list")
  .description("list your jobs, newest first")
  .option("--state <state>", "only these states (repeatable or comma-separated: running,queued)", list)
  .addOption(new Option("--limit <n>", "at most this many").argParser(int("--limit", 1, 1_000_000)))
  .option("--json", "print JSON")
  .action(jobList);
job
  .command("get")
  .description("show a job and every task's result")
  .argument("<id>")
  .option("--json", "print JSON ({ job, tasks })")
  .action(jobGet);
job
  .command("logs")
  .description(
    "a task's stdout and stderr (the result attempt's, or --attempt); --follow streams while it runs",
  )
  .argument("<id>")
  .argument("[task]", "task index (default: 0)", int("[task]", 0, 1_000_000))
  .addOption(new Option("--attempt <n>", "this attempt (1-based)").argParser(int("--attempt", 1, 1_000_000)))
  .option("-f, --follow", "keep streaming until the task ends, through its retries")
  .option("--json", "print NDJSON events")
  .action(jobLogs);
job
  .command("cancel")
  .description("cancel a job: queued tasks at once, running ones killed")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(jobCancel);
job
  .command("artifacts")
  .description("list a job's artifacts (each task's result attempt), or --download them")
  .argument("<id>")
  .addOption(new Option("--task <n>", "only this task").argParser(int("--task", 0, 1_000_000)))
  .option("--download <dir>", "write them to <dir>/<task>/<path>")
  .option("--json", "print JSON")
  .action(jobArtifacts);
job
  .command("usage")
  .description("a job's cost: every task's attempts (retries labelled) and the total")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(jobUsage);

const services = program
  .command("services")
  .description("private services sandboxes bind by name (create and delete need an admin key)");
services
  .command("create")
  .description("declare or replace a private service")
  .argument("<name>", "the DNS name sandboxes use, e.g. postgres.internal")
  .requiredOption("--address <ipv4>", "address the node reaches the service at")
  .addOption(
    new Option("--port <n>", "service port").argParser(int("--port", 1, 65535)).makeOptionMandatory(),
  )
  .addOption(
    new Option("--protocol <p>", "tcp or http (default: http with --inject-header, else tcp)").choices([
      "tcp",
      "http",
    ]),
  )
  .option("--tenant <id>", "tenant allowed to bind it (repeatable; default: every tenant)", list)
  .option("--inject-header <name>", "http: header the node's proxy adds to every request")
  .option(
    "--inject-value-env <VAR>",
    "environment variable holding the header's value (never enters the guest)",
  )
  .option("--json", "print JSON (the credential redacted)")
  .action(servicesCreate);
services
  .command("list")
  .description("list private services")
  .option("--json", "print JSON")
  .action(servicesList);
services
  .command("delete")
  .description("remove a private service (exits 1 when there is no such service)")
  .argument("<name>")
  .option("--json", "print JSON")
  .action(servicesDelete);

const keys = program.command("keys").description("create, list and revoke API keys");
keys
  .command("create")
  .description("create an API key (the secret is printed once)")
  .argument("<name>")
  .option("--scope <scope>", "sandboxes, templates or admin (repeatable; default: sandboxes)", list)
  .option("--tenant <id>", "tenant the key belongs to (admin only; default: yours)")
  .option("--json", "print JSON")
  .action(keysCreate);
keys.command("list").description("list API keys").option("--json", "print JSON").action(keysList);
keys
  .command("revoke")
  .description("revoke an API key (exits 1 when there is no such key)")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(keysRevoke);

const webhook = program
  .command("webhook")
  .description("webhooks: sandbox events and final usage records POSTed to a URL, signed, at least once");
webhook
  .command("add")
  .description("subscribe a URL (the signing secret is printed once)")
  .argument("<url>")
  .option(
    "--event <type>",
    "*, sandbox.*, sandbox.<type> (e.g. sandbox.ended) or usage.final (repeatable; default: *)",
    list,
  )
  .option("--description <text>", "what it is for")
  .option("--json", "print JSON")
  .action(webhookAdd);
webhook.command("list").description("list webhooks").option("--json", "print JSON").action(webhookList);
webhook
  .command("rm")
  .description("delete a webhook, giving up its pending deliveries (exits 1 when there is no such webhook)")
  .argument("<id>")
  .option("--json", "print JSON")
  .action(webhookRm);
webhook
  .command("deliveries")
  .description("a webhook's deliveries, newest first: status, attempts, last error")
  .argument("<id>")
  .option("--limit <n>", "at most this many (default 100)")
  .option("--json", "print JSON")
  .action(webhookDeliveries);

program
  .command("usage")
  .description("usage totals by tenant, template, root sandbox or metadata key; --records for the ledger")
  .addOption(
    new Option("--group-by <key>", "tenant, template, root or metadata.KEY (default: tenant)").argParser(
      groupBy,
    ),
  )
  .addOption(new Option("--from <time>", "start of the range (ISO 8601)").argParser(isoTime))
  .addOption(new Option("--to <time>", "end of the range (ISO 8601)").argParser(isoTime))
  .option("--records", "per-sandbox usage records instead of totals")
  .option("--sandbox <id>", "with --records: only this sandbox")
  .addOption(
    new Option("--limit <n>", "with --records: at most this many").argParser(int("--limit", 1, 10_000)),
  )
  .option("--json", "print JSON")
  .action(usageCommand);

program
  .command("doctor")
  .description(
    "check every host requirement (root, tun, nftables, cgroups, namespaces, disk, QEMU, KVM or why TCG) and print the fix for each; exits 1 when a hard requirement is missing",
  )
  .option("--json", "print JSON")
  .action(doctorCommand);

program
  .command("bench")
  .description(
    "measure warm claim, snapshot restore and cold boot, concurrency, command round trip and memory; compare with bare QEMU and gVisor",
  )
  .addOption(new Option("--boots <n>", "cold boots (0: none)").argParser(int("--boots", 0, 1000)).default(3))
  .addOption(
    new Option("--restores <n>", "snapshot restores").argParser(int("--restores", 1, 1000)).default(20),
  )
  .addOption(new Option("--claims <n>", "warm pool claims").argParser(int("--claims", 1, 1000)).default(20))
  .addOption(
    new Option("--concurrent <n>", "concurrent creates").argParser(int("--concurrent", 1, 200)).default(20),
  )
  .addOption(new Option("--execs <n>", "command round trips").argParser(int("--execs", 1, 10000)).default(50))
  .addOption(
    new Option("--idle <n>", "idle sandboxes for the memory figures")
      .argParser(int("--idle", 1, 500))
      .default(5),
  )
  .addOption(
    new Option(
      "--density <n>",
      "also start up to n idle sandboxes and report how many the node holds",
    ).argParser(int("--density", 1, 1000)),
  )
  .addOption(new Option("--forks <n>", "forks measured").argParser(int("--forks", 1, 100)).default(3))
  .addOption(
    new Option("--fork-children <n>", "children per fork")
      .argParser(int("--fork-children", 1, 16))
      .default(4),
  )
  .option("--json", "print JSON")
  .action(benchCommand);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof FirebreakApiError) {
    const id = e.requestId ? ` (request ${e.requestId})` : "";
    process.stderr.write(`error [${e.code}]: ${e.message}${id}\n`);
    process.exit(e.code === "CONFIG_MISSING" || e.code === "VALIDATION_FAILED" ? EXIT_USAGE : 1);
  }
  if (e instanceof FirebreakError) {
    process.stderr.write(`error [${e.code}]: ${e.message}\n`);
    process.exit(e.code === "SHAPE_INVALID" || e.code === "TEMPLATE_SPEC_INVALID" ? EXIT_USAGE : 1);
  }
  process.stderr.write(`error: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
}
