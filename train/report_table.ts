// The results table of report.ts, laid out like the paper's Table 1: one row per method (the
// strategy and its PEFT method), one column per task in the paper's order, and their average.
//
// - Score: the BEST dev score of each run (metrics.json's "best"), as the paper reports it.
// - Main metric per task: accuracy for RTE, BoolQ, COPA, CB, WiC and QNLI; F1 for MRPC;
//   Matthews correlation for CoLA; Pearson for STS-B. One number per cell, so that the average
//   is a plain mean (results.json keeps every seed's value of that metric). The runs' other
//   metrics (CB's macro-F1, MRPC's accuracy, STS-B's Spearman: SuperGLUE's and GLUE's second
//   numbers) are summarized alike in results.json and results.csv (`Cell.also`), not the table.
// - A cell: mean ± standard deviation over seeds, × 100, one decimal. The standard deviation is
//   the population one (as train/run.ts's summarizeSeeds writes it); a cell of one seed has none.
//   Seeds come from a multi-seed run's metrics.json ("seeds") or from single runs, pooled: runs
//   of the same task, model, strategy and PEFT method are seeds of one cell (a note says so when
//   their other settings differ, or when a seed repeats).
// - Avg: the mean of the row's cell means over the tasks present; "(k/9)" after it when the row
//   has k < 9 tasks. A missing cell is "–".
// - Discovery: each path is a run folder, a multi-seed run folder, or a folder searched
//   recursively for run folders (run.json), inside run folders too (`--out runs/rte` beside
//   `deno task rte`'s runs/rte/ehft-bitfit/); the seed-<n> folders of a multi-seed run count
//   once, through their parent, which is not searched into them; a seed folder named directly
//   alongside its parent is dropped. Runs without metrics.json are unfinished: skipped (and
//   listed), a multi-seed run too until all its seeds have finished.
// - Model: runs are of one model when they trained on the same folder, not when their `--model`
//   reads the same: run.json's `resolved.model.real_dir` (the model folder's real path) decides, so
//   `./models/x`, `models/x/` and `/abs/models/x` are one model; a hub snapshot folder counts by
//   its id and commit, so one hub model is one model on every machine. A run.json older than
//   real_dir falls back to `--model` with `./`, repeated and trailing slashes taken out, and joins
//   the one model whose runs were given that --model, if one is. A model is named by its first
//   run's `--model` (a note lists the other spellings; two models named alike get their folder or
//   id@commit after the name).

import { seedFolderNames } from "../model/load.ts";
import { MAX_SEEDS, seedFolder, seedList, UNRECORDED_SETTINGS } from "./config.ts";
import { isJsonObject, readJsonFile, REMOVING_PREFIX } from "../model/atomic_write.ts";
import { describeRecord } from "./environment.ts";
import { RUN_FOLDERS } from "./run_folder.ts";
import { plural } from "../model/progress_text.ts";

/** A column of the table: a task, its title and the metric it shows. */
export interface TableColumn {
  /** The task's name (run.json's settings.task). */
  name: string;
  /** The column's heading. */
  title: string;
  /** The metric of the runs' best scores the column shows. */
  metric: string;
}

/** The table's columns: the nine tasks in the paper's order, with their main metric. */
export const TABLE_TASKS: readonly TableColumn[] = [
  { name: "rte", title: "RTE", metric: "accuracy" },
  { name: "boolq", title: "BoolQ", metric: "accuracy" },
  { name: "copa", title: "COPA", metric: "accuracy" },
  { name: "cb", title: "CB", metric: "accuracy" },
  { name: "wic", title: "WiC", metric: "accuracy" },
  { name: "mrpc", title: "MRPC", metric: "f1" },
  { name: "qnli", title: "QNLI", metric: "accuracy" },
  { name: "cola", title: "CoLA", metric: "mcc" },
  { name: "stsb", title: "STS-B", metric: "pearson" },
];

/** The table's row order: strategies, then PEFT methods within one. */
export const STRATEGY_ORDER = ["ft", "lp", "lpft", "peft", "ehft", "ehft-reserve"];
export const PEFT_ORDER = ["bitfit", "lora", "prefix"];
const PEFT_TITLES: Record<string, string> = { bitfit: "BitFit", lora: "LoRA", prefix: "Prefix" };
const STRATEGY_TITLES: Record<string, string> = {
  ft: "FT",
  lp: "LP",
  lpft: "LP-FT",
  ehft: "EH-FT",
  "ehft-reserve": "EH-FT-reserve",
};

/** The row title of a method: "FT", "LP-FT", "LoRA" (PEFT alone), "EH-FT (BitFit)", ... */
export function methodTitle(strategy: string, peft: string | null): string {
  const p = peft === null ? null : PEFT_TITLES[peft] ?? peft;
  if (strategy === "peft" && p) return p;
  const s = STRATEGY_TITLES[strategy] ?? strategy;
  return p ? `${s} (${p})` : s;
}

/** One seed's best dev metrics. */
export interface SeedResult {
  seed: number;
  best: Record<string, number | null>;
}

/** A finished run: a single run, or a multi-seed run with each seed's result. */
export interface FoundRun {
  path: string;
  task: string;
  strategy: string;
  peft: string | null;
  /** `--model` as this run was given it. */
  model: string;
  /**
   * What tells models apart (see the top of this file): `dir <real_dir>`, or for a run.json
   * older than real_dir `name <--model, tidied>`.
   */
  modelKey: string;
  /** run.json's settings. */
  settings: Record<string, unknown>;
  /**
   * What tells data sets apart: the train and dev splits' fingerprints (run.json's
   * resolved.task), so one folder under two spellings is one; null for a run.json older than them.
   */
  dataKey?: string | null;
  seeds: SeedResult[];
  /**
   * Where each seed ran (describeRecord: "A", or "A → B" for a run resumed elsewhere), in
   * `seeds`' order; null for a run.json from before it was recorded.
   */
  environments: (string | null)[];
}

export interface SkippedRun {
  path: string;
  reason: string;
}

export interface FoundRuns {
  runs: FoundRun[];
  skipped: SkippedRun[];
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function bestOf(path: string, metrics: unknown): Record<string, number | null> {
  if (!isJsonObject(metrics) || !isJsonObject(metrics.best)) {
    throw new Error(`${path}: no "best" metrics`);
  }
  const out: Record<string, number | null> = {};
  for (const [k, v] of Object.entries(metrics.best)) {
    if (v !== null && typeof v !== "number") throw new Error(`${path}: best.${k} is not a number`);
    // Undefined (NaN, written as null) only where a metric can be: r of constant predictions.
    if (v === null && !UNDEFINED_WHEN_CONSTANT.has(k)) {
      throw new Error(`${path}: best.${k} is null (only pearson and spearman can be undefined)`);
    }
    // Fractions, and correlations in [-1, 1] (a float64 r can pass 1 by an ulp): anything else
    // is no score train.ts wrote (the table would show 150.0).
    const [low, high] = CORRELATIONS.has(k) ? [-1, 1] : [0, 1];
    if (v !== null && !(v >= low - 1e-9 && v <= high + 1e-9)) {
      throw new Error(`${path}: best.${k} ${v} is outside [${low}, ${high}]`);
    }
    out[k] = v;
  }
  return out;
}

/** The metrics that are correlations (the others are fractions). */
const CORRELATIONS = new Set(["mcc", "pearson", "spearman"]);
// computeMetrics' NaN (constant predictions or labels; MCC is 0 there, as scikit-learn's).
const UNDEFINED_WHEN_CONSTANT = new Set(["pearson", "spearman"]);

/** `path` without `./` segments and repeated or trailing slashes: `./a//b/` reads `a/b`. */
export function tidyPath(path: string): string {
  const parts = path.split("/").filter((p, i) => p !== "." && (p !== "" || i === 0));
  return parts.join("/") || (path.startsWith("/") ? "/" : ".");
}

/**
 * FoundRun.modelKey of the run in `dir`: its run.json's real_dir, else (a --seeds run keeps what
 * it resolved in its seed folders) the first seed folder's, else `--model` tidied.
 */
async function modelKeyOf(
  dir: string,
  run: Record<string, unknown>,
  folders: readonly string[],
  model: string,
): Promise<string> {
  const real = await firstResolved(dir, run, folders, (resolved) => {
    const m = isJsonObject(resolved.model) ? resolved.model : null;
    return typeof m?.real_dir === "string" ? m.real_dir : null;
  });
  return real !== null ? folderKey(real) : `name ${tidyPath(model)}`;
}

/**
 * What `pick` finds in the `resolved` of the run in `dir` (its run.json, `run`), or else of the
 * first of its seed folders' run.json that has it (a --seeds run keeps what it resolved there);
 * null when none has.
 */
async function firstResolved(
  dir: string,
  run: Record<string, unknown>,
  folders: readonly string[],
  pick: (resolved: Record<string, unknown>) => string | null,
): Promise<string | null> {
  const from = (r: unknown) =>
    isJsonObject(r) && isJsonObject(r.resolved) ? pick(r.resolved) : null;
  let found = from(run);
  for (const f of folders) {
    if (found !== null) break;
    const seedRun = `${dir}/${f}/run.json`;
    // A seed's run.json that cannot be read has nothing to say: the next seed's may.
    if (await statOrNull(seedRun)) found = from(await readJsonFile(seedRun).catch(() => null));
  }
  return found;
}

/**
 * FoundRun.dataKey of the run in `dir`: its run.json's (or, for a --seeds run, its first seed
 * folder's) train and dev fingerprints, or null when they were not recorded.
 */
function dataKeyOf(
  dir: string,
  run: Record<string, unknown>,
  folders: readonly string[],
): Promise<string | null> {
  return firstResolved(dir, run, folders, (resolved) => {
    const t = isJsonObject(resolved.task) ? resolved.task : null;
    const [train, dev] = [t?.train_sha256, t?.dev_sha256];
    return typeof train === "string" && typeof dev === "string" ? `${train} ${dev}` : null;
  });
}

/**
 * The key of a model folder: a hub snapshot by its id and commit (`hub org/name@<sha>`), the same
 * on every machine whatever its cache's path; any other folder by its real path (`dir <path>`).
 */
export function folderKey(real: string): string {
  const hub = /\/models--([^/]+)\/snapshots\/([^/]+)\/?$/.exec(real);
  return hub ? `hub ${hub[1].replaceAll("--", "/")}@${hub[2]}` : `dir ${real}`;
}

/** What a model key says after its kind (`dir `, `hub `, `name `): a path, an id@commit, a name. */
function keyDetail(key: string): string {
  return key.slice(key.indexOf(" ") + 1);
}

/**
 * Runs from before run.json recorded the model's folder (`name` keys) join the one model whose
 * runs were given the same --model (tidied), when exactly one is: old and new seeds of one
 * setting then pool as before. Left apart (with a note) when none or several are.
 */
function joinNamedRuns(runs: readonly FoundRun[]): void {
  const bySpelling = new Map<string, Set<string>>();
  for (const r of runs) {
    if (r.modelKey.startsWith("name ")) continue;
    const spelling = tidyPath(r.model);
    bySpelling.set(spelling, (bySpelling.get(spelling) ?? new Set()).add(r.modelKey));
  }
  for (const r of runs) {
    if (!r.modelKey.startsWith("name ")) continue;
    const keys = bySpelling.get(keyDetail(r.modelKey));
    if (keys?.size === 1) r.modelKey = [...keys][0];
  }
}

/**
 * A --seeds run's seed folders (names beside its `dir`/run.json, parsed as `run`); none for one
 * seed. At most MAX_SEEDS, each `seed-<n>` (an edited run.json's 50,000,000 seeds were stat'ed
 * one by one, in gigabytes of memory).
 */
function seedFoldersOf(dir: string, run: unknown): string[] {
  const s = isJsonObject(run) && isJsonObject(run.settings) ? run.settings : {};
  if (isJsonObject(run) && Array.isArray(run.seed_folders)) {
    const names = run.seed_folders;
    if (
      names.length > MAX_SEEDS ||
      !names.every((n) => typeof n === "string" && /^seed-[0-9]{1,10}$/.test(n))
    ) {
      throw new Error(
        `${dir}/run.json: seed_folders is not a list of at most ${MAX_SEEDS} seed-<n> names`,
      );
    }
    return names as string[];
  }
  if (typeof s.seeds !== "number" || s.seeds <= 1 || typeof s.seed !== "number") return [];
  if (
    !Number.isSafeInteger(s.seeds) || s.seeds > MAX_SEEDS || !Number.isSafeInteger(s.seed) ||
    s.seed < 0
  ) {
    throw new Error(
      `${dir}/run.json: settings.seeds ${s.seeds} and seed ${s.seed} are not up to ${MAX_SEEDS} ` +
        "seeds from a whole number",
    );
  }
  return seedList({ seed: s.seed, seeds: s.seeds }).map(seedFolder);
}

/**
 * The run in `dir` (which holds run.json), or why it is skipped; and the seed folders of a
 * --seeds run (which the search does not enter).
 */
async function readRun(dir: string): Promise<[FoundRun | SkippedRun, string[]]> {
  const run = await readJsonFile(`${dir}/run.json`);
  if (!isJsonObject(run) || !isJsonObject(run.settings)) {
    throw new Error(`${dir}/run.json: no "settings" object`);
  }
  const s = run.settings;
  for (const key of ["task", "strategy", "model"]) {
    if (typeof s[key] !== "string") throw new Error(`${dir}/run.json: settings.${key} missing`);
  }
  if (s.peft !== null && s.peft !== undefined && typeof s.peft !== "string") {
    throw new Error(`${dir}/run.json: settings.peft is not a string`);
  }
  const multi = Array.isArray(run.seed_folders) ||
    (typeof s.seeds === "number" && s.seeds > 1);
  const folders = multi ? seedFoldersOf(dir, run) : [];
  const metricsPath = `${dir}/metrics.json`;
  if (!(await statOrNull(metricsPath))) {
    if (!multi) return [{ path: dir, reason: "unfinished (no metrics.json)" }, folders];
    let done = 0;
    for (const f of folders) if (await statOrNull(`${dir}/${f}/metrics.json`)) done++;
    return [{
      path: dir,
      reason: `unfinished (no metrics.json; ${done} of ${folders.length} seeds finished)`,
    }, folders];
  }
  const base = {
    path: dir,
    task: s.task as string,
    strategy: s.strategy as string,
    peft: (s.peft as string | null | undefined) ?? null,
    model: s.model as string,
    modelKey: await modelKeyOf(dir, run, folders, s.model as string),
    settings: s,
    dataKey: await dataKeyOf(dir, run, folders),
  };
  const metrics = await readJsonFile(metricsPath);
  if (!multi) {
    const seed = typeof s.seed === "number" ? s.seed : 0;
    return [{
      ...base,
      seeds: [{ seed, best: bestOf(metricsPath, metrics) }],
      environments: [describeRecord(run)],
    }, folders];
  }
  if (!isJsonObject(metrics) || !isJsonObject(metrics.seeds)) {
    throw new Error(`${metricsPath}: a multi-seed run's metrics.json without "seeds"`);
  }
  const seeds = Object.entries(metrics.seeds).map(([seed, m]) => ({
    seed: Number(seed),
    best: bestOf(`${metricsPath} (seed ${seed})`, m),
  }));
  // Each seed's run.json says where that seed ran (the run's own says nothing of it).
  const environments: (string | null)[] = [];
  for (const { seed } of seeds) {
    const path = `${dir}/${seedFolder(seed)}/run.json`;
    // Only where the seed ran: a seed's run.json that cannot be read says nothing of it.
    const seedRun = (await statOrNull(path)) ? await readJsonFile(path).catch(() => null) : null;
    environments.push(describeRecord(seedRun));
  }
  return [{ ...base, seeds, environments }, folders];
}

/**
 * Finds the runs under `paths` (see the top of this file). A path that does not exist or is not
 * a folder is an error; a run whose run.json or metrics.json cannot be read is skipped, with the
 * file's error as the reason.
 */
export async function findRuns(paths: readonly string[]): Promise<FoundRuns> {
  const found: { real: string; run: FoundRun }[] = [];
  const skipped: SkippedRun[] = [];
  const visited = new Set<string>();

  const walk = async (dir: string): Promise<void> => {
    // A folder may go while the report reads (an --overwrite moving a run's entries away, a
    // failed start removing its empty --out, a user deleting a run): it is passed over then.
    await walkFolder(dir).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) throw e;
    });
  };

  const walkFolder = async (dir: string): Promise<void> => {
    const real = await Deno.realPath(dir);
    if (visited.has(real)) return;
    visited.add(real);
    let seedFolders: string[] = [];
    const isRun = (await statOrNull(`${dir}/run.json`)) !== null;
    if (isRun) {
      // Runs kept inside a run's folder (runs/rte/ beside runs/rte/ehft-bitfit/) are runs too;
      // a --seeds run's own seed folders count through it alone.
      // A damaged run.json or metrics.json leaves that run out, named, not the whole report
      // (a programming error is not a damaged file: it still stops it).
      const read = await readRun(dir).catch((e: Error) => {
        if (e instanceof TypeError || e instanceof RangeError || e instanceof ReferenceError) {
          throw e;
        }
        return e;
      });
      if (read instanceof Error) {
        skipped.push({ path: dir, reason: `unreadable: ${read.message}` });
        // Its seed folders are its own, not runs of their own: a --seeds run is counted whole
        // or not at all.
        seedFolders = await seedFolderNames(dir);
      } else {
        const [r, folders] = read;
        if ("reason" in r) skipped.push(r);
        else found.push({ real, run: r });
        seedFolders = folders;
      }
    } else if (await statOrNull(`${dir}/metrics.json`)) {
      skipped.push({ path: dir, reason: "metrics.json without run.json" });
    }
    const children: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      // A .removing- folder holds what --overwrite is deleting (or could not delete).
      const removing = e.name.startsWith(REMOVING_PREFIX);
      // A run's own folders (model/, stage1/, ...) hold no runs.
      const own = isRun && RUN_FOLDERS.includes(e.name);
      if ((e.isDirectory || e.isSymlink) && !seedFolders.includes(e.name) && !removing && !own) {
        children.push(e.name);
      }
    }
    children.sort();
    for (const name of children) {
      const child = `${dir}/${name}`;
      if ((await statOrNull(child))?.isDirectory) await walk(child);
    }
  };

  for (const p of paths) {
    const info = await statOrNull(p);
    if (!info) throw new Error(`${p}: no such folder`);
    if (!info.isDirectory) {
      throw new Error(`${p}: not a folder (give run folders or their parents)`);
    }
    await walk(p.replace(/\/+$/, "") || "/");
  }

  // A seed folder given directly counts once, through its multi-seed parent when that is found.
  const multiSeed = new Set(found.filter((f) => isMulti(f.run)).map((f) => f.real));
  const runs = found.filter((f) => {
    const slash = f.real.lastIndexOf("/");
    const parent = f.real.slice(0, slash) || "/";
    return !(/^seed-\d+$/.test(f.real.slice(slash + 1)) && multiSeed.has(parent));
  }).map((f) => f.run);
  joinNamedRuns(runs);
  return { runs, skipped };
}

/**
 * Each model's name, by FoundRun.modelKey: its first run's `--model`, with its folder after it
 * when another model of `runs` would be named the same (a hub id at two commits, say).
 */
export function modelNames(runs: readonly FoundRun[]): Map<string, string> {
  const first = new Map<string, string>();
  for (const r of runs) if (!first.has(r.modelKey)) first.set(r.modelKey, r.model);
  const named = new Map<string, number>();
  for (const name of first.values()) named.set(name, (named.get(name) ?? 0) + 1);
  return new Map(
    [...first].map((
      [key, name],
    ) => [key, named.get(name)! > 1 ? `${name} (${keyDetail(key)})` : name]),
  );
}

/** One note per model that runs gave under several spellings. */
function spellingNotes(runs: readonly FoundRun[], names: ReadonlyMap<string, string>): string[] {
  const notes: string[] = [];
  for (const [key, name] of names) {
    const spellings = [...new Set(runs.filter((r) => r.modelKey === key).map((r) => r.model))];
    if (spellings.length < 2) continue;
    const same = key.startsWith("dir ")
      ? `the same folder, ${keyDetail(key)}`
      : key.startsWith("hub ")
      ? `the same hub snapshot, ${keyDetail(key)}`
      : "the same path";
    notes.push(
      `model ${name} was also given as ${
        spellings.slice(1).map((m) => JSON.stringify(m))
          .join(", ")
      }: ${same}, counted as one model`,
    );
  }
  return notes;
}

function isMulti(run: FoundRun): boolean {
  return typeof run.settings.seeds === "number" && run.settings.seeds > 1;
}

/** One seed's value in a cell. */
export interface CellSeed {
  seed: number;
  value: number;
  run: string;
}

export interface Cell {
  metric: string;
  /**
   * Fractions (0.8123), as metrics.json holds them: the mean over the seeds whose metric is
   * defined; null when none is.
   */
  mean: number | null;
  /** Population standard deviation over those seeds; null for fewer than two. */
  std: number | null;
  /** The seeds in the mean. */
  n: number;
  /**
   * Finished seeds whose metric is undefined (null in metrics.json: a Pearson or Spearman
   * correlation with constant predictions or gold), left out of the mean and std. An MCC of
   * constant predictions is 0, as sklearn has it, and counts.
   */
  undefinedSeeds: number;
  seeds: CellSeed[];
  /**
   * The seeds' other metrics (their best, as the cell's), each summarized as the cell is: CB's
   * macro-F1, MRPC's accuracy, STS-B's Spearman; absent when the runs have none.
   */
  also?: Record<string, MetricSummary>;
}

/** Mean and population standard deviation of one metric over the seeds that define it. */
export interface MetricSummary {
  /** Fractions; null when no seed defines the metric. */
  mean: number | null;
  /** Null for fewer than two seeds. */
  std: number | null;
  /** The seeds in the mean. */
  n: number;
}

function summarize(values: readonly number[]): MetricSummary {
  const n = values.length;
  const mean = n > 0 ? values.reduce((a, v) => a + v, 0) / n : null;
  const std = mean !== null && n > 1
    ? Math.sqrt(values.reduce((a, v) => a + (v - mean) ** 2, 0) / n)
    : null;
  return { mean, std, n };
}

export interface Row {
  method: string;
  strategy: string;
  peft: string | null;
  model: string;
  cells: Record<string, Cell>;
  /** Mean of the cell means over the tasks present; null when none. */
  average: { mean: number; tasks: number } | null;
}

export interface ResultsTable {
  /**
   * The paper's nine tasks (TABLE_TASKS), then a column for each other task the runs are of
   * (a task of one's own: its first metric), by name; Avg counts the paper's nine only.
   */
  columns: TableColumn[];
  rows: Row[];
  skipped: SkippedRun[];
  /** Things worth knowing about how cells were pooled. */
  notes: string[];
  /**
   * Where the table's runs ran (FoundRun.environments: describeRecord; null: not recorded, runs
   * from before it was), with the number of seed runs each, most first.
   */
  environments: { environment: string | null; runs: number }[];
}

function rowKey(r: { modelKey: string; strategy: string; peft: string | null }): string {
  return JSON.stringify([r.modelKey, r.strategy, r.peft]);
}

function orderIndex(order: readonly string[], x: string | null): number {
  const i = x === null ? -1 : order.indexOf(x);
  return i < 0 ? (x === null ? -1 : order.length) : i;
}

// The model's spelling is noted once per model (spellingNotes): runs in one row are of one model.
const IGNORED_SETTINGS = new Set(["seed", "seeds", "out", "model"]);

function settingsDifference(a: FoundRun, b: FoundRun): string {
  const ignored = new Set(IGNORED_SETTINGS);
  // One folder is one hub commit, whichever --revision named it ("main" or its hash).
  if (!a.modelKey.startsWith("name ")) ignored.add("revision");
  // The same examples under two spellings of --data are one data set; other examples are not,
  // whatever the path.
  if (a.dataKey && b.dataKey) {
    if (a.dataKey !== b.dataKey) {
      return `data ${JSON.stringify(a.settings.data)} vs ${JSON.stringify(b.settings.data)}, ` +
        `other examples`;
    }
    ignored.add("data");
  }
  // A run from before a setting was recorded ran with its value of then. Every setting that
  // differs is named: the first alone hid the others (lr named, max_length not).
  const [sa, sb] = [a, b].map((r) => ({ ...UNRECORDED_SETTINGS, ...r.settings }));
  const differences: string[] = [];
  for (const k of new Set([...Object.keys(sa), ...Object.keys(sb)])) {
    if (ignored.has(k)) continue;
    const [x, y] = [sa[k], sb[k]];
    if (JSON.stringify(x) !== JSON.stringify(y)) {
      const shown = (v: unknown) => v === undefined ? "unrecorded" : JSON.stringify(v);
      differences.push(`${k} ${shown(x)} vs ${shown(y)}`);
    }
  }
  return differences.join(", ");
}

/** Builds the table from finished runs (`skipped` is carried through for the outputs). */
export function buildTable(found: FoundRuns): ResultsTable {
  const names = modelNames(found.runs);
  const notes = spellingNotes(found.runs, names);
  const skipped = [...found.skipped];
  const byRow = new Map<string, { row: Row; runs: Map<string, FoundRun[]> }>();
  const columns: TableColumn[] = [...TABLE_TASKS];
  const extra = new Map<string, TableColumn>();
  for (const run of found.runs) {
    if (TABLE_TASKS.some((t) => t.name === run.task) || extra.has(run.task)) continue;
    // A task of one's own: its first metric (metrics.json keeps the task's order).
    const metric = run.seeds.map((s) => Object.keys(s.best)[0]).find((m) => m !== undefined);
    if (metric !== undefined) extra.set(run.task, { name: run.task, title: run.task, metric });
  }
  columns.push(...[...extra.values()].sort((a, b) => a.name < b.name ? -1 : 1));
  for (const run of found.runs) {
    const column = columns.find((t) => t.name === run.task);
    if (!column) {
      skipped.push({ path: run.path, reason: `task ${run.task}: no metric in its metrics.json` });
      continue;
    }
    const key = rowKey(run);
    let entry = byRow.get(key);
    if (!entry) {
      entry = {
        row: {
          method: methodTitle(run.strategy, run.peft),
          strategy: run.strategy,
          peft: run.peft,
          model: names.get(run.modelKey)!,
          cells: {},
          average: null,
        },
        runs: new Map(),
      };
      byRow.set(key, entry);
    }
    const list = entry.runs.get(run.task) ?? [];
    list.push(run);
    entry.runs.set(run.task, list);
  }

  const models = new Set([...byRow.values()].map((e) => e.row.model));
  for (const { row, runs } of byRow.values()) {
    for (const column of columns) {
      const list = runs.get(column.name);
      if (!list) continue;
      // The row as the table titles it: with the model when there are several.
      const where = `${row.method}${models.size > 1 ? ` [${row.model}]` : ""} ${column.title}`;
      for (const other of list.slice(1)) {
        const diff = settingsDifference(list[0], other);
        if (diff) {
          notes.push(
            `${where}: pools runs with different settings (${diff}): ${
              [list[0].path, other.path].join(", ")
            }`,
          );
        }
      }
      const seeds: CellSeed[] = [];
      let undefinedSeeds = 0;
      for (const run of list) {
        for (const s of run.seeds) {
          const v = s.best[column.metric];
          if (v === undefined) {
            notes.push(`${where}: ${run.path} (seed ${s.seed}) has no best ${column.metric}`);
          } else if (v === null) {
            notes.push(`${where}: ${run.path} (seed ${s.seed}): best ${column.metric} undefined`);
            undefinedSeeds++;
          } else {
            seeds.push({ seed: s.seed, value: v, run: run.path });
          }
        }
      }
      const counts = new Map<number, number>();
      for (const s of seeds) counts.set(s.seed, (counts.get(s.seed) ?? 0) + 1);
      for (const [seed, count] of counts) {
        if (count > 1) notes.push(`${where}: seed ${seed} appears ${count} times`);
      }
      if (seeds.length === 0 && undefinedSeeds === 0) continue;
      const { mean, std, n } = summarize(seeds.map((s) => s.value));
      const cell: Cell = { metric: column.metric, mean, std, n, undefinedSeeds, seeds };
      const others = new Map<string, number[]>();
      for (const run of list) {
        for (const s of run.seeds) {
          for (const [metric, v] of Object.entries(s.best)) {
            if (metric === column.metric) continue;
            const values = others.get(metric) ?? [];
            if (typeof v === "number") values.push(v);
            others.set(metric, values);
          }
        }
      }
      if (others.size > 0) {
        cell.also = Object.fromEntries([...others].map(([m, vs]) => [m, summarize(vs)]));
      }
      row.cells[column.name] = cell;
    }
    const means = TABLE_TASKS.map((t) => row.cells[t.name]?.mean)
      .filter((m): m is number => typeof m === "number");
    row.average = means.length > 0
      ? { mean: means.reduce((a, b) => a + b, 0) / means.length, tasks: means.length }
      : null;
  }

  const rows = [...byRow.values()].map((e) => e.row).sort((a, b) =>
    (a.model < b.model ? -1 : a.model > b.model ? 1 : 0) ||
    orderIndex(STRATEGY_ORDER, a.strategy) - orderIndex(STRATEGY_ORDER, b.strategy) ||
    a.strategy.localeCompare(b.strategy) ||
    orderIndex(PEFT_ORDER, a.peft) - orderIndex(PEFT_ORDER, b.peft) ||
    (a.peft ?? "").localeCompare(b.peft ?? "")
  );
  // Only the runs the table shows: a skipped run's environment is not the table's.
  const skippedPaths = new Set(skipped.map((r) => r.path));
  const environments = new Map<string | null, number>();
  for (const run of found.runs) {
    if (skippedPaths.has(run.path)) continue;
    for (const e of run.environments) environments.set(e, (environments.get(e) ?? 0) + 1);
  }
  return {
    columns,
    rows,
    skipped,
    notes,
    environments: [...environments].map(([environment, runs]) => ({ environment, runs }))
      .sort((a, b) => b.runs - a.runs),
  };
}

/**
 * x × 100 with `digits` decimals, a half rounded away from zero as the decimal number reads
 * (0.8765 → "87.7", where toFixed alone sees 87.64999… and gives "87.6"; -0.8765 → "-87.7", so a
 * negative MCC reads as its positive twin); "-0.0" is written "0.0".
 */
export function percent(x: number, digits = 1): string {
  const scale = 10 ** digits;
  // 12 significant digits drop the binary noise of x × 100 before the rounding.
  const scaled = Number((x * 100 * scale).toPrecision(12));
  const s = (Math.sign(scaled) * Math.round(Math.abs(scaled)) / scale).toFixed(digits);
  return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
}

function rowTitle(row: Row, table: ResultsTable): string {
  const models = new Set(table.rows.map((r) => r.model));
  return models.size > 1 ? `${row.method} [${row.model}]` : row.method;
}

/**
 * What report.ts says on stderr about the table, for its files (results.md, report.md): the cells
 * that pool runs of different settings or repeat a seed, and the runs left out and why. Empty
 * when there is nothing to say.
 */
export function renderNotes(table: ResultsTable): string {
  const lines = [
    ...table.notes.map((n) => `- ${n}`),
    ...table.skipped.map((s) => `- not in the table: \`${s.path}\`: ${s.reason}`),
  ];
  return lines.length === 0 ? "" : ["Notes:", "", ...lines, ""].join("\n");
}

/** The table as markdown (with a legend below it). */
export function renderMarkdown(table: ResultsTable): string {
  const header = ["Method", ...table.columns.map((t) => t.title), "Avg"];
  const body = table.rows.map((row) => {
    const cells = table.columns.map((t) => {
      const c = row.cells[t.name];
      if (!c) return "–";
      if (c.mean === null) return "n/a";
      const score = c.std === null ? percent(c.mean) : `${percent(c.mean)} ± ${percent(c.std)}`;
      return c.undefinedSeeds > 0 ? `${score} (${c.undefinedSeeds} n/a)` : score;
    });
    const avg = row.average === null
      ? "–"
      : row.average.tasks === TABLE_TASKS.length
      ? percent(row.average.mean)
      : `${percent(row.average.mean)} (${row.average.tasks}/${TABLE_TASKS.length})`;
    return [rowTitle(row, table), ...cells, avg];
  });
  const widths = header.map((h, i) => Math.max(3, h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(" | ")} |`;
  const rule = `| ${
    widths.map((w, i) => i === 0 ? "-".repeat(w) : "-".repeat(w - 1) + ":").join(" | ")
  } |`;
  const cells = table.rows.flatMap((r) => Object.values(r.cells));
  const counts = cells.filter((c) => c.n > 0).map((c) => c.n);
  const extras = table.columns.slice(TABLE_TASKS.length);
  const extraNote = extras.length === 0 ? "" : ` ${extras.map((c) => c.title).join(", ")}: ` +
    `not a task of the paper's table (its metric: ${extras.map((c) => c.metric).join(", ")}), ` +
    `not in Avg.`;
  const undefinedNote = cells.some((c) => c.undefinedSeeds > 0)
    ? " n/a: the metric is undefined (a correlation where the predictions or the gold scores are constant); (k n/a): k seeds " +
      "so, left out of the mean."
    : "";
  const others = otherMetrics(table);
  const othersNote = others.length === 0
    ? ""
    : ` Other metrics (${
      others.map((o) =>
        `${table.columns.find((c) => c.name === o.task)!.title} ${
          METRIC_TITLES[o.metric] ?? o.metric
        }`
      )
        .join(", ")
    }): results.csv, results.json.`;
  const lo = Math.min(...counts), hi = Math.max(...counts);
  const seeds = counts.length === 0
    ? ""
    : lo === hi
    ? ` Seeds per cell: ${lo}.`
    : ` Seeds per cell: ${lo} to ${hi} (results.json lists them).`;
  const legend = "Best dev score of each run × 100, mean ± standard deviation over seeds " +
    "(population; none for one seed). Metrics: accuracy; MRPC F1; CoLA Matthews correlation; " +
    `STS-B Pearson. Avg: mean over the tasks present, (k/9) when fewer; –: no finished run.` +
    `${undefinedNote}${extraNote}${seeds}${othersNote}`;
  return [line(header), rule, ...body.map(line), "", legend + ranOn(table), ""].join("\n");
}

/**
 * " Ran on: <environment>." for the legend, with the number of (seed) runs of each when there are
 * several.
 */
function ranOn(table: ResultsTable): string {
  const list = table.environments;
  // Runs from before run.json recorded it, alone, have nothing to say.
  if (list.every((e) => e.environment === null)) return "";
  if (list.length === 1) return ` Ran on: ${list[0].environment}.`;
  const named = list.map((e) => `${e.environment ?? "not recorded"} (${plural(e.runs, "run")})`);
  return ` Ran on: ${named.join("; ")}.`;
}

function csvField(x: string): string {
  return /[",\n\r]/.test(x) ? `"${x.replace(/"/g, '""')}"` : x;
}

/** Metric names as the legend writes them. */
const METRIC_TITLES: Record<string, string> = {
  accuracy: "accuracy",
  f1: "F1",
  macro_f1: "macro-F1",
  mcc: "MCC",
  pearson: "Pearson",
  spearman: "Spearman",
};

/**
 * Each column's other metrics that some cell holds (Cell.also), in the columns' order and the
 * metrics' order of first appearance.
 */
function otherMetrics(table: ResultsTable): { task: string; metric: string }[] {
  const out: { task: string; metric: string }[] = [];
  for (const t of table.columns) {
    const seen = new Set<string>();
    for (const row of table.rows) {
      for (const metric of Object.keys(row.cells[t.name]?.also ?? {})) {
        if (!seen.has(metric)) out.push({ task: t.name, metric });
        seen.add(metric);
      }
    }
  }
  return out;
}

/**
 * The table as CSV: scores × 100 with two decimals, empty where a cell is missing; after the
 * average, the cells' other metrics (`cb_macro_f1_mean`, …), the same way.
 */
export function renderCsv(table: ResultsTable): string {
  const others = otherMetrics(table);
  const header = [
    "method",
    "strategy",
    "peft",
    "model",
    ...table.columns.flatMap((t) => [`${t.name}_mean`, `${t.name}_std`, `${t.name}_n`]),
    "average",
    "average_tasks",
    ...others.flatMap((o) => ["mean", "std", "n"].map((x) => `${o.task}_${o.metric}_${x}`)),
  ];
  const lines = [header.join(",")];
  for (const row of table.rows) {
    const fields = [row.method, row.strategy, row.peft ?? "", row.model];
    for (const t of table.columns) {
      const c = row.cells[t.name];
      fields.push(
        c && c.mean !== null ? percent(c.mean, 2) : "",
        c && c.std !== null ? percent(c.std, 2) : "",
        c ? String(c.n) : "",
      );
    }
    fields.push(
      row.average ? percent(row.average.mean, 2) : "",
      row.average ? String(row.average.tasks) : "",
    );
    for (const o of others) {
      const m = row.cells[o.task]?.also?.[o.metric];
      fields.push(
        m && m.mean !== null ? percent(m.mean, 2) : "",
        m && m.std !== null ? percent(m.std, 2) : "",
        m ? String(m.n) : "",
      );
    }
    lines.push(fields.map(csvField).join(","));
  }
  return lines.join("\n") + "\n";
}

/** The table as a JSON-ready object: fractions, every seed's value, the skipped runs. */
export function tableJson(table: ResultsTable): Record<string, unknown> {
  return {
    score: "best",
    tasks: table.columns,
    rows: table.rows,
    skipped: table.skipped,
    notes: table.notes,
    environments: table.environments,
  };
}
