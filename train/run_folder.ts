// A run's folder as train.ts finds it: which entries are a run's (what --overwrite removes, what
// --resume continues), the inputs that must lie outside it, and the checks that a --resume goes on
// with the settings, schedule, data, model and head the run started with.

import { FlagError } from "./flags.ts";
import {
  exists,
  isJsonObject,
  readJsonFile,
  removeStaleTemporaries,
} from "../model/atomic_write.ts";
import { createHash } from "node:crypto";
import { isAbsolute, join } from "node:path";
import { type TrainConfig, UNRECORDED_SETTINGS } from "./config.ts";
import { SUBMISSION_FORMATS } from "./submission.ts";
import { CHECKPOINT_FILE } from "./training_checkpoint.ts";
import { warmupSteps } from "./schedule.ts";
import { seedFolderNames } from "../model/load.ts";

/** Entries of a run folder that belong to a run (what --overwrite removes). */
const RUN_ENTRIES = [
  "log.jsonl",
  "metrics.json",
  "model",
  "stage1",
  "adapter",
  "analysis",
  CHECKPOINT_FILE,
  ...new Set(Object.values(SUBMISSION_FORMATS).map((f) => f.file)),
  "run.json",
];

/** The folders of RUN_ENTRIES: what the run writes into them is its own (temporaries included). */
export const RUN_FOLDERS = ["model", "stage1", "adapter", "analysis"];

/** The files of RUN_ENTRIES: the ones a run writes in its folder itself. */
export const RUN_FILES = RUN_ENTRIES.filter((name) => !RUN_FOLDERS.includes(name));

/** The run entries present in `dir` (seed-* folders included), sorted. */
export async function runEntries(dir: string): Promise<string[]> {
  const found: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (RUN_ENTRIES.includes(e.name) || /^seed-\d+$/.test(e.name)) found.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return found.sort();
}

/**
 * Whether a run of `config` writes into its folder, whose run entries are `entries` (runEntries):
 * --overwrite does, and a new run, and an unfinished one resumed; a finished run resumed writes
 * nothing (a read-only copy of it still reports), and one refused for holding a run is refused
 * as such. What decides whether --out is probed for a file before any work (probeRunFolder).
 */
export function writesIntoFolder(
  config: Pick<TrainConfig, "resume" | "overwrite">,
  entries: readonly string[],
): boolean {
  if (config.overwrite || entries.length === 0) return true;
  return config.resume && !entries.includes("metrics.json");
}

/**
 * --overwrite: the model, head and data must not lie in what it removes (they are read again
 * after the removal: the run would fail, or its end would).
 */
export async function checkInputsOutside(
  config: TrainConfig,
  out: string,
  entries: string[],
): Promise<void> {
  const inputs = [["--model", config.model], ["--head", config.head], ["--data", config.data]];
  for (const [flag, path] of inputs) {
    // A hub id, or a path that is not there (prepare says so), is not in the folder.
    const real = path ? await Deno.realPath(path).catch(() => null) : null;
    if (real === null) continue;
    for (const e of entries) {
      // A link is removed, not what it points at; a link to nowhere holds nothing.
      if ((await Deno.lstat(`${out}/${e}`)).isSymlink) continue;
      const entry = await Deno.realPath(`${out}/${e}`);
      if (real === entry || real.startsWith(`${entry}/`)) {
        throw new FlagError(
          `${flag} ${path} is ${real === entry ? "" : "inside "}the run's ${e} in ${out}, ` +
            `which --overwrite removes: copy it elsewhere first, or choose another --out`,
        );
      }
    }
  }
}

/** A run folder's JSON file (an object), or an error naming it when it is not one. */
export async function readRunJson(path: string): Promise<Record<string, unknown>> {
  const value = await readJsonFile(path);
  if (!isJsonObject(value)) {
    throw new Error(`${path}: not a JSON object (a run's ${path.split("/").pop()} is one)`);
  }
  return value as Record<string, unknown>;
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Settings that name a file or folder: one place however it is spelled. */
const PATH_SETTINGS = new Set(["model", "data", "head"]);

/**
 * Settings a resume may change: where the run folder is (a run moved to a bigger disk goes on
 * there; run.json keeps where it started).
 */
const MOVABLE_SETTINGS = new Set(["out"]);

/**
 * Whether two spellings of a path setting name one existing place (`./m/`, `/abs/m`). `a`'s real
 * path is `recorded` when run.json kept what it was at the start (the model's real_dir): the
 * working folder or a link may have changed since, and `a` would now name another place.
 */
async function samePlace(
  a: unknown,
  b: unknown,
  recorded?: unknown,
  cwd?: unknown,
): Promise<boolean> {
  if (typeof a !== "string" || typeof b !== "string") return false;
  try {
    // A relative path in run.json is relative to the working folder the run started in.
    const at = typeof cwd === "string" && !isAbsolute(a) ? join(cwd, a) : a;
    const was = typeof recorded === "string" ? recorded : await Deno.realPath(at);
    return was === await Deno.realPath(b);
  } catch {
    // Not both here (a hub id, a folder since removed): only the same spelling is the same.
    return false;
  }
}

/** A setting as its flag reads (`maxSteps` → `--max-steps`; `shuffle` is `--no-shuffle`'s). */
function settingText(key: string, value: unknown): string {
  if (key === "shuffle") return `--no-shuffle ${value === false ? "given" : "not given"}`;
  if (key === "f16Math") return `--f16-math ${value === true ? "given" : "not given"}`;
  const flag = `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  return `${flag} ${value === null || value === undefined ? "not given" : JSON.stringify(value)}`;
}

/** How a refused resume says a setting that differs: `--lr 0.00001 in run.json, 0.00002 now`. */
export function differenceText(key: string, before: unknown, now: unknown): string {
  return `${settingText(key, before)} in run.json, ${
    settingText(key, now).replace(/^\S+ /, "")
  } now`;
}

/** The first setting whose value differs (its key, and as an error message says it), or null. */
async function firstDifference(
  a: Record<string, unknown>,
  b: Record<string, unknown>,
  recorded: Record<string, unknown> = {},
  cwd?: unknown,
): Promise<{ key: string; text: string } | null> {
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (sameJson(a[k], b[k])) continue;
    if (MOVABLE_SETTINGS.has(k)) continue;
    if (PATH_SETTINGS.has(k) && await samePlace(a[k], b[k], recorded[k], cwd)) continue;
    return { key: k, text: differenceText(k, a[k], b[k]) };
  }
  return null;
}

/** JSON with every object's keys sorted, so that a fingerprint does not depend on their order. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/**
 * A fingerprint of a run's settings as a checkpoint records it (TrainingState.settingsSha256):
 * all but the paths, which may be spelled otherwise or moved (their contents have fingerprints of
 * their own in run.json), so that a resume from it under run.json's settings edited since (a
 * changed lr or step count would make the resumed run neither) is found.
 */
export function settingsFingerprint(settings: Record<string, unknown>): string {
  const kept = Object.fromEntries(
    Object.entries({ ...UNRECORDED_SETTINGS, ...settings }).filter(([k]) =>
      !PATH_SETTINGS.has(k) && !MOVABLE_SETTINGS.has(k)
    ),
  );
  return createHash("sha256").update(canonicalJson(kept)).digest("hex");
}

/**
 * The first setting in which `dir`'s run.json differs from `settings` (paths compared by where
 * they lead), as checkSameSettings says it; null when they agree or there is no run.json.
 */
export async function recordedDifference(
  dir: string,
  settings: Record<string, unknown>,
): Promise<{ key: string; text: string } | null> {
  const path = `${dir}/run.json`;
  if (!(await exists(path))) return null;
  const run = await readRunJson(path);
  const previous = { ...UNRECORDED_SETTINGS, ...run.settings as Record<string, unknown> };
  const resolved = run.resolved as { model?: { real_dir?: unknown }; cwd?: unknown } | undefined;
  const now = { ...UNRECORDED_SETTINGS, ...settings };
  return await firstDifference(previous, now, { model: resolved?.model?.real_dir }, resolved?.cwd);
}

/**
 * Checks that a folder's run.json was written with the same settings; a path given under another
 * spelling of the same place (the shipped model by the path a task script fills in, or as typed)
 * is the same setting.
 */
export async function checkSameSettings(
  dir: string,
  settings: Record<string, unknown>,
): Promise<void> {
  const diff = await recordedDifference(dir, settings);
  if (!diff) return;
  const now = { ...UNRECORDED_SETTINGS, ...settings };
  const message = `--resume: ${dir} was started with other settings (${diff.text})`;
  // A typed flag against the recorded one: the command's (exit status 2). A setting this ehft
  // does not know (run.json from another version, or edited) is the file's (1).
  if (Object.hasOwn(now, diff.key)) throw new FlagError(message);
  throw new Error(`${message}: run.json has a setting this ehft does not know`);
}

/**
 * --resume of a run whose schedule today's code would compute otherwise: a `--schedule constant`
 * run started before `constant` warmed up (its run.json's schedule has no constant_warmup), or one
 * started when a stage's warmup was the float64 product rounded down (no warmup_steps) where that
 * gave one step fewer (0.29 · 100 = 28.999999999999996). Today's rates would differ from those it
 * started with, so the result would be neither run's. Refused, unless nothing differs. `dir` is
 * the run (or seed) folder resumed; with several seeds every seed's run.json under `out` is read,
 * so that no seed resumes on rates its finished siblings did not have.
 */
export async function checkSameSchedule(
  dir: string,
  out: string,
  config: TrainConfig,
): Promise<void> {
  if (config.warmupRatio === 0) return;
  for (const d of await withSeedSiblings(dir, out)) {
    const path = `${d}/run.json`;
    if (!(await exists(path))) continue;
    const resolved = (await readRunJson(path)).resolved as Record<string, unknown> | undefined;
    const schedule = resolved?.schedule as Record<string, unknown> | undefined;
    if (!schedule) continue;
    if (config.schedule === "constant" && schedule.constant_warmup !== true) {
      throw new Error(
        `--resume: ${d} was started when --schedule constant had no warmup; it now warms up ` +
          `over --warmup-ratio ${config.warmupRatio} of each stage, so the resumed run would be ` +
          `neither (--overwrite to restart it)`,
      );
    }
    if ("warmup_steps" in schedule || !Array.isArray(resolved?.stages)) continue;
    for (const stage of resolved.stages as { steps?: unknown }[]) {
      const total = stage?.steps;
      if (typeof total !== "number") continue;
      const was = Math.floor(config.warmupRatio * total);
      const now = warmupSteps({
        name: config.schedule,
        lr: 0,
        total,
        warmupRatio: config.warmupRatio,
      });
      if (was !== now) {
        throw new Error(
          `--resume: ${d} was started when --warmup-ratio ${config.warmupRatio} gave its ` +
            `stage of ${total} steps ${was} warmup steps (a rounding error); it now gives ${now}, ` +
            `so the resumed run would be neither (--overwrite to restart it)`,
        );
      }
    }
  }
}

/** `dir`, and with several seeds (`dir` a seed folder of `out`) every other seed folder of `out`. */
async function withSeedSiblings(dir: string, out: string): Promise<string[]> {
  if (dir === out) return [dir];
  const seeds = (await seedFolderNames(out)).map((name) => `${out}/${name}`);
  return [dir, ...seeds.filter((seed) => seed !== dir)];
}

/**
 * A finished run's folder (or seed folder) as an uninterrupted run leaves it: a run killed between
 * writing metrics.json and removing its checkpoint left the checkpoint, one killed inside an
 * atomic write its temporary file.
 */
export async function clearFinishedLeftovers(dir: string): Promise<void> {
  await Deno.remove(`${dir}/${CHECKPOINT_FILE}`).catch(() => {});
  await removeStaleTemporaries(dir, RUN_FILES, RUN_FOLDERS);
}

/**
 * --resume: the data, the model and the --head must be what the run started on (a changed file
 * would continue the run on other examples or weights): the run folder `dir`'s run.json and, in a
 * multi-seed run (`out` holds the seed folders), every other seed's, so that the seeds still to
 * run use their finished siblings' inputs. Runs whose run.json predates a fingerprint are not
 * checked against it.
 */
export async function checkSameData(
  dir: string,
  out: string,
  resolved: Record<string, unknown>,
  data: string,
): Promise<void> {
  const dirs = await withSeedSiblings(dir, out);
  const now = resolved.task as Record<string, unknown>;
  const nowModel = resolved.model as Record<string, unknown>;
  for (const d of dirs) {
    const path = `${d}/run.json`;
    if (!(await exists(path))) continue;
    const was = (await readRunJson(path)).resolved as Record<string, unknown> | undefined;
    const before = was?.task as Record<string, unknown> | undefined;
    for (const split of ["train", "dev"] as const) {
      const key = `${split}_sha256`;
      if (before?.[key] !== undefined && before[key] !== now[key]) {
        throw new Error(
          `--resume: the ${now[`${split}_split`]} split in ${data} is not the data ${d} ` +
            `was started on (its examples changed; --overwrite to restart on it)`,
        );
      }
    }
    // Stage 2 reloads the pretrained weights, so a model changed in place would change the run.
    const model = was?.model as Record<string, unknown> | undefined;
    if (model?.sha256 !== undefined && model.sha256 !== nowModel.sha256) {
      throw new Error(
        `--resume: the model in ${nowModel.dir} is not the one ${d} was started on (its ` +
          `config, tokenizer or weights changed; --overwrite to restart on it)`,
      );
    }
    if (was?.head_sha256 !== undefined && was.head_sha256 !== resolved.head_sha256) {
      throw new Error(
        `--resume: the --head file is not the one ${d} was started on (it changed; ` +
          `--overwrite to restart on it)`,
      );
    }
    // A method of one's own (RunOptions.peft) is named only there: resumed by another, the
    // checkpoint's tensors would go to a method they were not trained for.
    if ((was?.peft_method ?? null) !== (resolved.peft_method ?? null)) {
      const name = (x: unknown) => x === undefined || x === null ? "config.peft's" : `"${x}"`;
      throw new Error(
        `--resume: ${d} was started with the PEFT method ${name(was?.peft_method)}, not ` +
          `${name(resolved.peft_method)} (RunOptions.peft)`,
      );
    }
  }
}
