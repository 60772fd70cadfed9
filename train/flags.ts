// Command-line flags for the entry points (train.ts, predict.ts, report.ts, the task scripts):
// a small strict parser with one-line errors that name the flag and suggest the closest known
// one, and runMain, which turns any failure into one line on stderr and exit code 1 (2 for a
// command refused as typed: a FlagError).
//
// The rules, the same in every entry point:
// - flags are `--name value` or `--name=value`; a single dash (`-lr`) is an error that suggests
//   the double-dash form;
// - an unknown flag is an error naming the closest known flag (`--stratgy` → `--strategy`,
//   `--max_steps` → `--max-steps`, `--shuffle` → `--no-shuffle`);
// - a switch (a boolean flag) takes no value: `--resume=yes` is an error;
// - a flag that takes a value needs one: `--out` at the end, `--out --resume` (a value that
//   starts with `--`; write `--out=--odd-name` to mean it) and `--out=` (empty) are errors; a
//   value may start with one dash (`--lr -1` reaches the number check, which names the range);
// - a flag given twice: the last one wins (`--lr 1e-5 ... --lr 2e-5` trains at 2e-5), so an
//   override can be appended to a saved command line;
// - positionals are errors, except in report.ts (its run folders), where `--` ends the flags;
// - `--debug` (anywhere before a `--`) is runMain's: the stack follows the one-line error.

import { isDirectory, lockFolder, parentOf, writtenPath } from "../model/atomic_write.ts";
import { autotuneOffInEnv } from "../kernels/matmul_autotune.ts";

/**
 * A command refused as typed: a flag (or the library option behind it) that is unknown,
 * malformed, out of range or contradicts another; the programs exit 2 for it. Fix the command:
 * retrying it will not help.
 */
export class FlagError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

/**
 * --revision with a --model that is a local folder: refused as typed (a revision means nothing
 * there), before any work.
 */
export function checkRevisionTarget(model: string, revision: string | null | undefined): void {
  if (revision === null || revision === undefined) return;
  let folder = false;
  try {
    folder = Deno.statSync(model).isDirectory;
  } catch { /* not a path here: a hub id */ }
  if (folder) {
    throw new FlagError(
      `--revision ${revision}: --model ${model} is a local folder; a revision applies only to ` +
        `hub ids`,
    );
  }
}

/**
 * The folder `dir` takes a file: one is made there and removed at once (a read-only mount, a
 * folder without write permission), else a FlagError starting with `what`.
 */
export async function checkWritable(dir: string, what: string): Promise<void> {
  // Not a temporary file's name (model/atomic_write.ts): another process cleaning those up in
  // its own folder must not take it for one of its own.
  const name = `${dir}/.ehft-write-check-${crypto.randomUUID().slice(0, 8)}`;
  try {
    (await Deno.open(name, { write: true, createNew: true })).close();
    await Deno.remove(name);
  } catch (e) {
    throw new FlagError(`${what}: cannot write in ${dir}: ${(e as Error).message}`);
  }
}

/**
 * An output path whose missing folders are made only when it is written (a failed run leaves
 * none): checks before any work that they can be, i.e. that the nearest existing part of its
 * folder is a folder. Errors are FlagErrors naming `flag` and the path. With `probe`, that
 * folder must also take a file (a read-only mount, a folder without write permission): one is
 * made there and removed at once, so that a long job does not find out at its end.
 */
export async function checkFoldersCanBeMade(
  path: string,
  flag: string,
  probe = false,
): Promise<void> {
  const canWrite = async (dir: string) => {
    if (probe) await checkWritable(dir, `${flag} ${path}`);
  };
  // A link is written through (writeFileAtomic): its target's folder takes the file.
  const target = probe ? await writtenPath(path) : path;
  if (target !== path) return await canWrite(parentOf(target));
  for (let dir = parentOf(path);; dir = parentOf(dir)) {
    if (dir === "." || dir === "/") return await canWrite(dir);
    let found: Deno.FileInfo;
    try {
      found = await Deno.stat(dir);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) continue;
      throw new FlagError(
        `${flag} ${path}: cannot check its folder ${dir}: ${(e as Error).message}`,
      );
    }
    if (found.isDirectory) return await canWrite(dir);
    throw new FlagError(`${flag} ${path}: ${dir} is a file, not a folder`);
  }
}

/**
 * --out: a folder, or a path whose missing folders can be made; else one line naming --out. The
 * file system's root and the home folder are refused: a run writes its files into --out itself
 * (run.json, model/, log.jsonl, ...), beside whatever is there.
 */
export async function checkRunFolder(out: string): Promise<void> {
  if ((await isDirectory(out)) === false) {
    throw new FlagError(`--out ${out} is a file, not a folder: give a folder for the run`);
  }
  const real = await Deno.realPath(out).catch(() => null);
  const home = Deno.env.get("HOME");
  const homeReal = home ? await Deno.realPath(home).catch(() => null) : null;
  if (real !== null && (real === "/" || real === homeReal)) {
    throw new FlagError(
      `--out ${out} is ${real === "/" ? "the file system's root" : "your home folder"}: give ` +
        `the run a folder of its own (e.g. runs/<task>)`,
    );
  }
  await checkFoldersCanBeMade(out, "--out");
}

/**
 * --out of a run that will write (a new run, or one resumed that has not finished): probed with
 * a file made and removed, so that a read-only folder is found before the model and data (or a
 * pretraining corpus) are read, not at the first write minutes later. A finished run resumed
 * writes nothing and is not probed: its results can be read from a read-only copy.
 */
export async function probeRunFolder(out: string): Promise<void> {
  if ((await isDirectory(out)) === true) await checkWritable(out, `--out ${out}`);
  else await checkFoldersCanBeMade(out, "--out", true);
}

const unlockableNoted = new Set<string>();

/**
 * Locks the run folder `--out` for this process (lockFolder): null where folders cannot be locked
 * (said in one line, but on Windows); an error naming --out and `program` when another process
 * holds it.
 */
export async function lockOutFolder(out: string, program: string): Promise<Deno.FsFile | null> {
  const lock = await lockFolder(out, (why) => {
    // Said once: a run tries again once it has made the folder.
    if (unlockableNoted.has(out)) return;
    unlockableNoted.add(out);
    console.error(
      `note: --out ${out} cannot be locked here (${why}): nothing keeps another ${program} from ` +
        "running in it at the same time",
    );
  });
  if (lock === "held") {
    // Not a FlagError (exit status 2): the command is right, and will do once the other ends.
    throw new Error(
      `--out ${out} is in use: another ${program} is running in it (wait for it to end, or ` +
        `choose another --out)`,
    );
  }
  return lock;
}

export type FlagSpec = Record<string, { type: "string" | "boolean"; default?: string | boolean }>;

type FlagValues<S extends FlagSpec> = {
  [K in keyof S]: S[K]["type"] extends "boolean" ? boolean : string | undefined;
};

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length];
}

/** The known flag closest to `name`, if it is close enough to be a likely typo. */
export function closestFlag(name: string, known: readonly string[]): string | undefined {
  const normal = name.toLowerCase().replaceAll("_", "-");
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = k === normal ? 0.5 : editDistance(name, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** The error for an unknown flag `--name` (or `-name`, `dashes` 1): with a hint when one fits. */
function unknownFlag(spec: FlagSpec, name: string, dashes = 2): FlagError {
  const shown = `${"-".repeat(dashes)}${name}`;
  const known = Object.keys(spec);
  if (name === "") return new FlagError(`unknown flag ${shown}=: a flag needs a name`);
  if (dashes === 1 && Object.hasOwn(spec, name)) {
    return new FlagError(`unknown flag ${shown} (flags take two dashes: --${name})`);
  }
  if (dashes === 1 && name.length < 3) {
    return new FlagError(`unknown flag ${shown} (flags take two dashes, like --${known[0]})`);
  }
  if (name.startsWith("no-") && spec[name.slice(3)]?.type === "boolean") {
    return new FlagError(`unknown flag ${shown} (--${name.slice(3)} is off unless given)`);
  }
  if (spec[`no-${name}`]?.type === "boolean") {
    return new FlagError(`unknown flag ${shown} (did you mean --no-${name}?)`);
  }
  const hint = closestFlag(name, known);
  return new FlagError(`unknown flag ${shown}${hint ? ` (did you mean --${hint}?)` : ""}`);
}

/**
 * Parses `args` against `spec` and also returns the positionals; with `positionals: false` any
 * positional is an error. Flags absent from `args` get their spec's default, or undefined.
 */
export function parseFlagsAndPositionals<S extends FlagSpec>(
  spec: S,
  args: readonly string[],
  options: { positionals: boolean },
): { values: FlagValues<S>; positionals: string[] } {
  const values: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      if (!options.positionals) {
        throw new FlagError(`unexpected "--": this command takes only flags`);
      }
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const inline = eq < 0 ? undefined : arg.slice(eq + 1);
      if (name === "debug" && !Object.hasOwn(spec, name)) {
        // runMain's switch (it takes `--debug` out before the entry point parses its flags).
        if (inline !== undefined) throw new FlagError(`--debug takes no value (got "${inline}")`);
        continue;
      }
      if (!Object.hasOwn(spec, name)) throw unknownFlag(spec, name);
      if (spec[name].type === "boolean") {
        if (inline !== undefined) {
          throw new FlagError(`--${name} takes no value (got "${inline}"): give it alone`);
        }
        values[name] = true;
        continue;
      }
      let value = inline;
      if (value === undefined) {
        const next = args[i + 1];
        if (next === undefined) throw new FlagError(`--${name}: expected a value`);
        if (next.startsWith("--")) {
          throw new FlagError(
            `--${name}: expected a value, got the flag ${next.split("=")[0]} (write ` +
              `--${name}=VALUE for a value that starts with --)`,
          );
        }
        value = next;
        i++;
      }
      if (value.trim() === "") throw new FlagError(`--${name}: expected a value, got "${value}"`);
      values[name] = value;
      continue;
    }
    if (arg.startsWith("-") && arg.length > 1 && !/^-[\d.]/.test(arg)) {
      throw unknownFlag(spec, arg.slice(1).split("=")[0], 1);
    }
    if (!options.positionals) {
      throw new FlagError(
        `unexpected argument "${arg}": every value follows its flag (--flag value)`,
      );
    }
    positionals.push(arg);
  }
  for (const [name, { default: fallback }] of Object.entries(spec)) {
    if (values[name] === undefined && fallback !== undefined) values[name] = fallback;
  }
  return { values: values as FlagValues<S>, positionals };
}

/** Parses `args` against `spec`: unknown flags, missing values and positionals are errors. */
export function parseFlags<S extends FlagSpec>(spec: S, args: readonly string[]): FlagValues<S> {
  return parseFlagsAndPositionals(spec, args, { positionals: false }).values;
}

/**
 * The GEMM autotune's flags, shared by train.ts (and the task scripts) and predict.ts:
 * `--no-autotune` (or EHFT_NO_AUTOTUNE=1) keeps the built-in variant choice, `--retune` times the
 * GEMM variants again instead of reusing the cached choice, `--tune-cache FILE` (or
 * EHFT_TUNE_CACHE) names the cache file (kernels/matmul_autotune.ts).
 */
export const TUNE_FLAGS = {
  "no-autotune": { type: "boolean" },
  retune: { type: "boolean" },
  "tune-cache": { type: "string" },
} as const;

/** The autotune flags' values, as kernels/matmul_autotune.ts's `tuneRequest` takes them. */
export interface TuneFlags {
  /** `--no-autotune`. */
  noAutotune: boolean;
  /** `--retune`. */
  retune: boolean;
  /** `--tune-cache FILE`. */
  tuneCache?: string;
}

/** Reads the TUNE_FLAGS out of parsed flags; `--retune` with `--no-autotune` is an error. */
export function tuneFlags(
  f: { "no-autotune"?: boolean; retune?: boolean; "tune-cache"?: string },
): TuneFlags {
  const noAutotune = f["no-autotune"] ?? false;
  const retune = f.retune ?? false;
  if (noAutotune && retune) throw new FlagError("--retune and --no-autotune: choose one");
  if (retune && autotuneOffInEnv()) {
    throw new FlagError("--retune with EHFT_NO_AUTOTUNE set, which turns the tune off: choose one");
  }
  if (f["tune-cache"] !== undefined && f["tune-cache"].trim() === "") {
    throw new FlagError("--tune-cache: expected a file name");
  }
  return { noAutotune, retune, tuneCache: f["tune-cache"] };
}

/** A required string flag. */
export function requireFlag(name: string, value: string | undefined): string {
  if (value === undefined || value.trim() === "") throw new FlagError(`--${name} is required`);
  return value;
}

/** An integer flag within [min, max]. */
export function intFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  min = 1,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  // A leading "+" is accepted as number flags accept it ("--lr +1e-5"): the sign is plain text.
  if (!/^[+-]?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`;
    throw new FlagError(`--${name}: expected an integer ${range}, got "${value}"`);
  }
  return n;
}

/** A flag whose value must be one of `allowed`. */
export function choiceFlag<T extends string>(
  name: string,
  value: string,
  allowed: readonly T[],
): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new FlagError(`--${name}: "${value}" is not one of ${allowed.join(", ")}`);
}

/**
 * What a thrown value says, as one line: an Error's message (its name when the message is
 * empty), a string as it is, anything else as Deno.inspect shows it; line breaks and other
 * control characters folded into single spaces.
 */
export function errorLine(e: unknown): string {
  let text: string;
  try {
    if (e instanceof Error) text = e.message || e.name;
    else if (typeof e === "string") text = e;
    else if (
      typeof e === "object" && e !== null && typeof (e as { message?: unknown }).message ===
        "string"
    ) {
      text = (e as { message: string }).message;
    } else text = Deno.inspect(e, { colors: false });
  } catch {
    text = "";
  }
  // deno-lint-ignore no-control-regex
  const folded = text.replace(/[\x00-\x1f\x7f]+/g, " ").replace(/ {2,}/g, " ").trim();
  return folded || "failed (an error without a message)";
}

/**
 * Runs an entry point: any error — thrown by `main`, or escaping from a callback (an uncaught
 * exception in a timer, an unhandled promise rejection) — becomes one line `<name>: <message>`
 * on stderr and exit code 1, or 2 when it is a FlagError (the command refused as typed: a flag,
 * its value, or the folder or file it names, before any work; the convention of getopt and
 * argparse, so a scheduler or a script can tell a command to fix from a run that failed); with
 * `--debug` (anywhere before a `--`) the stack follows the line.
 * With `help`, `--help` or `-h` (anywhere before a `--`) prints it instead of running `main`.
 * `flagsOnly`: a command `deno task` runs that takes flags alone (train.ts, the task scripts,
 * pretrain.ts): a leading `--` (npm's way of passing flags to a script, `deno task rte --
 * --max-steps 2`) is dropped.
 */
export async function runMain(
  name: string,
  main: (args: string[]) => Promise<void>,
  help?: string,
  options: { flagsOnly?: boolean } = {},
) {
  const args = [...Deno.args];
  // `deno task rte -- --max-steps 2`, as npm scripts are given flags: for a command that takes
  // only flags the "--" means nothing (report.ts's says what follows are folders).
  if (options.flagsOnly && args[0] === "--") args.shift();
  const end = args.indexOf("--");
  const flags = end < 0 ? args : args.slice(0, end);
  const wantsHelp = help !== undefined && (flags.includes("--help") || flags.includes("-h"));
  const debug = flags.includes("--debug");
  const rest = [...flags.filter((a) => a !== "--debug"), ...(end < 0 ? [] : args.slice(end))];
  let failed = false;
  const fail = (e: unknown): never => {
    if (!failed) {
      failed = true;
      console.error(`${name}: ${errorLine(e)}`);
      if (debug) {
        console.error(
          e instanceof Error ? Deno.inspect(e, { colors: false }) : `(thrown: ${Deno.inspect(e)})`,
        );
      }
    }
    Deno.exit(e instanceof FlagError ? 2 : 1);
  };
  globalThis.addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    fail(event.reason);
  });
  globalThis.addEventListener("error", (event) => {
    event.preventDefault();
    fail(event.error ?? event.message);
  });
  try {
    // Inside: a stdout that cannot take it (>/dev/full) is one line too, not a stack trace.
    if (wantsHelp) console.log(help);
    else await main(rest);
  } catch (e) {
    fail(e);
  }
}
