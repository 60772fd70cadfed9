// Command-line flags for the entry points (train.ts, predict.ts, task scripts): node:util's
// parseArgs, with one-line errors that name the flag and suggest the closest known one.

import { parseArgs } from "node:util";

export class FlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FlagError";
  }
}

export type FlagSpec = Record<string, { type: "string" | "boolean"; default?: string | boolean }>;

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
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

/** Parses `args` against `spec`; unknown flags, missing values and positionals are errors. */
export function parseFlags<S extends FlagSpec>(
  spec: S,
  args: string[],
): { [K in keyof S]: S[K]["type"] extends "boolean" ? boolean : string | undefined } {
  for (const arg of args) {
    if (!arg.startsWith("--")) continue;
    const name = arg.slice(2).split("=")[0];
    if (!(name in spec)) {
      const hint = closestFlag(name, Object.keys(spec));
      throw new FlagError(`unknown flag --${name}${hint ? ` (did you mean --${hint}?)` : ""}`);
    }
  }
  try {
    const { values } = parseArgs({ args, options: spec, strict: true, allowPositionals: false });
    // deno-lint-ignore no-explicit-any
    return values as any;
  } catch (e) {
    throw new FlagError((e as Error).message.split("\n")[0]);
  }
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
  noAutotune: boolean;
  retune: boolean;
  tuneCache?: string;
}

/** Reads the TUNE_FLAGS out of parsed flags; `--retune` with `--no-autotune` is an error. */
export function tuneFlags(
  f: { "no-autotune"?: boolean; retune?: boolean; "tune-cache"?: string },
): TuneFlags {
  const noAutotune = f["no-autotune"] ?? false;
  const retune = f.retune ?? false;
  if (noAutotune && retune) throw new FlagError("--retune and --no-autotune: choose one");
  if (f["tune-cache"] === "") throw new FlagError("--tune-cache: expected a file name");
  return { noAutotune, retune, tuneCache: f["tune-cache"] };
}

/** A required string flag. */
export function requireFlag(name: string, value: string | undefined): string {
  if (value === undefined || value === "") throw new FlagError(`--${name} is required`);
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
  if (!/^-?\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `≥ ${min}` : `in [${min}, ${max}]`;
    throw new FlagError(`--${name}: expected an integer ${range}, got "${value}"`);
  }
  return n;
}

/**
 * Runs an entry point: any error becomes one line on stderr (the stack only with --debug) and
 * exit code 1.
 */
export async function runMain(name: string, main: (args: string[]) => Promise<void>) {
  const args = [...Deno.args];
  const debug = args.includes("--debug");
  try {
    await main(args.filter((a) => a !== "--debug"));
  } catch (e) {
    const error = e as Error;
    console.error(`${name}: ${error?.message ?? String(e)}`.split("\n")[0]);
    if (debug && error?.stack) console.error(error.stack);
    Deno.exit(1);
  }
}
