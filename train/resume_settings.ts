// `--resume` needs no other flag than where the run is: the settings come from the run folder's
// run.json, so that `train.ts --out runs/rte/ehft-bitfit --resume` (or a task script's
// `deno task rte --resume`, its folder being the default one) goes on with the run as it was
// started. Flags typed with --resume still win over run.json's, and the run then refuses those
// that differ from it, naming the first (run_folder.ts checkSameSettings), as it always has.

import { isAbsolute, join } from "node:path";
import { exists, isJsonObject } from "../model/atomic_write.ts";
import {
  type ParsedTrainArgs,
  parseTrainArgs,
  type Recipe,
  runSettings,
  settingKey,
  settingsFlags,
  TRAIN_FLAGS,
} from "./config.ts";
import { FlagError, parseFlags } from "./flags.ts";
import { differenceText, readRunJson } from "./run_folder.ts";

/** A run's recorded settings as a recipe, and the run.json they came from. */
export interface RecordedSettings {
  /** The run.json read. */
  path: string;
  /**
   * Every recorded setting, and as `out` the folder read (a moved run goes on where it is now,
   * and one found as a default --out goes on there, whatever its settings' default would be).
   */
  recipe: Recipe;
  /** run.json's `requests` (RunOptions.requests: what the run's command does after it). */
  requests: Record<string, unknown>;
}

// Stands in for a model and data that only run.json names, to find the default --out.
const STAND_IN = "\0recorded";

/**
 * With --resume, the settings recorded in the run folder's run.json as a recipe that the typed
 * flags override; null without --resume, or when the folder holds no run.json yet (then the
 * flags alone start the run, as before). `recipe` is a task script's (its task and defaults):
 * it finds the default --out when none is typed. Throws a one-line error naming run.json for
 * settings that are not a train.ts run's, and a FlagError for a typed --task, or a task
 * script's, that is not the run's.
 */
export async function recordedSettings(
  args: readonly string[],
  recipe: Recipe = {},
): Promise<RecordedSettings | null> {
  const f = parseFlags(TRAIN_FLAGS, args);
  if (!f.resume) return null;
  const out = f.out ?? recipe.out ?? defaultOut(args, recipe);
  if (out === null) return null;
  const path = `${out}/run.json`;
  // Not a folder (a file at --out): checkRunFolder says so, in the words of --out.
  if (!(await exists(path).catch(() => false))) {
    // A folder of other things (a run whose run.json went): said now, not as a flag the
    // recorded settings would have given ("--task is required").
    const held: string[] = [];
    try {
      for await (const e of Deno.readDir(out)) held.push(e.name);
    } catch { /* no folder: a new run */ }
    if (held.length > 0 && f.task === undefined && recipe.task === undefined) {
      throw new FlagError(
        `--resume: ${out} holds ${held.sort().join(", ")} but no run.json, so there are no ` +
          `recorded settings to go on with (a run's run.json is written first): choose another ` +
          `--out`,
      );
    }
    return null;
  }
  const run = await readRunJson(path);
  const settings = run.settings;
  if (settings === null || typeof settings !== "object" || Array.isArray(settings)) {
    throw new Error(`${path}: no "settings" object (not a run.json written by train.ts)`);
  }
  const recorded = asRecipe(path, settings as Record<string, unknown>);
  await fromRecordedCwd(recorded, run.resolved);
  const task = f.task ?? recipe.task;
  if (task !== undefined && task !== recorded.task) {
    throw new FlagError(
      f.task !== undefined
        ? `--resume: ${out} was started with other settings (--task "${recorded.task}" in ` +
          `run.json, "${f.task}" now)`
        : `--resume: ${out} is a run of ${recorded.task}; this script trains ${recipe.task}`,
    );
  }
  const requests = isJsonObject(run.requests) ? run.requests : {};
  return { path, recipe: { ...recorded, out }, requests };
}

/**
 * parseTrainArgs over a run.json's settings: a typed flag that cannot go with them (--peft for a
 * run without a method, --grad-accum above its batch) is refused naming the file they came from.
 */
export function parseOverRecorded(
  args: string[],
  recipe: Recipe,
  recorded: RecordedSettings,
  taskData: (task: string) => string | undefined,
): ParsedTrainArgs {
  try {
    return parseTrainArgs(args, { ...recipe, ...recorded.recipe }, taskData);
  } catch (e) {
    if (!(e instanceof FlagError)) throw e;
    // A typed setting that is not the run's is the refusal to name (`--precision f32` on an f16
    // --f16-math run was said as --f16-math needing f16, a flag not typed).
    const typed = typedDifference(args, recorded.recipe);
    if (typed) {
      const dir = recorded.path.replace(/\/run\.json$/, "");
      throw new FlagError(`--resume: ${dir} was started with other settings (${typed})`);
    }
    throw new FlagError(
      `--resume: ${e.message} (the settings not typed are those in ${recorded.path})`,
    );
  }
}

/**
 * The first typed flag whose value is not the recorded one, as checkSameSettings says it; a typed
 * value its flag would not take (`--lr abc`) is left to the flag's own error.
 */
function typedDifference(args: readonly string[], recorded: Recipe): string | null {
  let typed: Record<string, unknown>;
  try {
    typed = parseFlags(TRAIN_FLAGS, args) as Record<string, unknown>;
  } catch {
    return null;
  }
  const was = recorded as Record<string, unknown>;
  for (const [flag, value] of Object.entries(typed)) {
    const key = settingKey(flag);
    // Paths may be spelled otherwise (the run compares where they lead); out is where it is.
    if (!(key in was) || ["model", "data", "head", "out"].includes(key)) continue;
    const before = was[key];
    const now = typeof before === "number" && typeof value === "string" ? Number(value) : value;
    if (typeof before !== typeof now || before === now) continue;
    if (typeof now === "number" && !Number.isFinite(now)) continue;
    return differenceText(key, before, now);
  }
  return null;
}

/**
 * A relative --model, --data or --head that run.json's settings keep is relative to the working
 * folder the run started in (`resolved.cwd`): taken from there, so that `--resume` works from any
 * folder (from another, the model's path was read as a hub id, and the data's as missing).
 */
async function fromRecordedCwd(recipe: Recipe, resolved: unknown): Promise<void> {
  const cwd = (resolved as { cwd?: unknown } | undefined)?.cwd;
  if (typeof cwd !== "string" || cwd === Deno.cwd()) return;
  const paths = recipe as Record<string, unknown>;
  for (const key of RELATIVE_TO_CWD) {
    const path = paths[key];
    if (typeof path !== "string" || isAbsolute(path)) continue;
    // A hub id is not a folder there; a path the run's folder no longer has stays as it was.
    if (await exists(join(cwd, path)).catch(() => false)) paths[key] = join(cwd, path);
  }
}

/** The settings naming files or folders, which a run may give relative to its working folder. */
const RELATIVE_TO_CWD = ["model", "data", "head"] as const;

/** The --out the flags and recipe give when none is typed, or null when they give none yet. */
function defaultOut(args: readonly string[], recipe: Recipe): string | null {
  try {
    const standIns = { model: recipe.model ?? STAND_IN, data: recipe.data ?? STAND_IN };
    return parseTrainArgs([...args], { ...recipe, ...standIns }).config.out;
  } catch {
    // The flags' own error comes when they are parsed for the run.
    return null;
  }
}

/**
 * run.json's settings read back as the flags that give them, checked as typed ones are (a value
 * edited by hand or written by another version is named with its file), and returned as a
 * recipe. Settings this version has no flag for are left out: checkSameSettings then names them.
 */
function asRecipe(path: string, settings: Record<string, unknown>): Recipe {
  const { out: _out, ...rest } = settings;
  const { flags, unused } = settingsFlags(
    rest,
    (key, value, flag) =>
      new Error(`${path}: settings.${key} is ${JSON.stringify(value)}, not a value of ${flag}`),
  );
  try {
    const { config } = parseTrainArgs(flags);
    const { out: _out, ...recipe } = runSettings(config);
    return { ...recipe, ...unused };
  } catch (e) {
    throw new Error(`${path}: its settings are not a run's: ${(e as Error).message}`);
  }
}
