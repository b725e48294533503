#!/usr/bin/env node
import { FirebreakError } from "@firebreak/node-agent";
// firebreak: the command-line interface. Without a server it drives the local
// node runtime directly (root needed).
import { Command, InvalidArgumentError, Option } from "commander";
import { benchCommand } from "./commands/bench.ts";
import { doctorCommand } from "./commands/doctor.ts";
import { runCommand } from "./commands/run.ts";
import { templateBuild, templateDelete, templateList } from "./commands/template.ts";
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
  .action(templateBuild);
template
  .command("list")
  .description("list built templates")
  .option("--json", "print JSON")
  .action(templateList);
template
  .command("delete")
  .description("delete a built template (and its image when unused)")
  .argument("<name>")
  .action(templateDelete);

program
  .command("run")
  .description(
    "boot a sandbox, run a command in it with live output, tear it down; exits with the command's code",
  )
  .option("-t, --template <name>", "template to start from", "base")
  .addOption(new Option("--cpus <n>", "vCPUs").argParser(int("--cpus", 1, 8)).default(1))
  .addOption(
    new Option("--memory <MiB>", "guest memory in MiB").argParser(int("--memory", 128, 16384)).default(256),
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
  .command("doctor")
  .description("check the host: root, kernel, accelerator (KVM or TCG), QEMU, disk space")
  .option("--json", "print JSON")
  .action(doctorCommand);

program
  .command("bench")
  .description(
    "measure warm claim, snapshot restore and cold boot, concurrency, command round trip and memory; compare with bare QEMU and gVisor",
  )
  .addOption(new Option("--boots <n>", "cold boots").argParser(int("--boots", 1, 1000)).default(10))
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
  .option("--json", "print JSON")
  .action(benchCommand);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof FirebreakError) {
    process.stderr.write(`error [${e.code}]: ${e.message}\n`);
    process.exit(e.code === "SHAPE_INVALID" || e.code === "TEMPLATE_SPEC_INVALID" ? EXIT_USAGE : 1);
  }
  process.stderr.write(`error: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
}
