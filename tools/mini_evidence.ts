// The evidence for the shipped mini model (README, "The shipped model"): on the shipped task data,
// the pretrained mini encoder against a randomly initialised one of the same shape under full
// fine-tuning, and FT against EH-FT (BitFit, LoRA) and LP-FT with the pretrained one, 4 seeds each,
// every run on the task's mini recipe (tasks/<task>.ts, *_MINI_RECIPE), then report.ts's table.
//
//   deno run -A tools/mini_evidence.ts [--tasks cb,rte] [--seeds 4] [--out runs/mini-evidence] \
//     [--methods ft,lpft,...] [--jobs 1] [--deadline SECONDS] [--no-report] [--table-only]
//
// Runs the cells (task × method, every seed in one process) `--jobs` at a time (each with its own
// log under <out>/logs/ when more than one, and on lavapipe its share of the cores), stopping them
// at `--deadline`; a finished cell (metrics.json) is skipped and an unfinished one resumed from its
// last checkpoint, so the command can be repeated until everything is done. The random model is
// made first with tools/random_model.ts (seed 0) from the shipped model's config and vocabulary.
// At the end (or alone with --table-only, from the cells an earlier run left in --out: a folder
// holding none is refused) it writes <out>/table.md: README's table of the finished cells (and of
// an unfinished one's finished seeds, its seeds column "2 of 4"), the task's main dev metric
// (report.ts's: accuracy, MRPC's F1, CoLA's MCC, STS-B's Pearson r) × 100 (best over the run and
// final, mean ± population std over seeds) and the minutes each seed took (from its folder's
// run.json to its metrics.json: a seed resumed later counts the pause too).
// `--no-report` leaves report.ts out (it draws with vega, which the offline GPU machine does not
// get: tools/mini_evidence_gpu.sh).

import { exists, writeAll, writeFileAtomic } from "../model/atomic_write.ts";
import { TASKS } from "../tasks/all.ts";
import { percent, TABLE_TASKS } from "../train/report_table.ts";
import type { Recipe } from "../train/config.ts";
import { shippedModelDir } from "../train/default_model.ts";
import { type RunMetrics, summarizeSeeds } from "../train/run.ts";
import { FlagError, parseFlags } from "../train/flags.ts";
import { runTool } from "./cli.ts";

export const METHODS: { name: string; label: string; flags: string[]; random?: boolean }[] = [
  { name: "ft", label: "FT", flags: ["--strategy", "ft"] },
  { name: "ft-random", label: "FT", flags: ["--strategy", "ft"], random: true },
  {
    name: "ehft-bitfit",
    label: "EH-FT (BitFit)",
    flags: ["--strategy", "ehft", "--peft", "bitfit"],
  },
  { name: "ehft-lora", label: "EH-FT (LoRA)", flags: ["--strategy", "ehft", "--peft", "lora"] },
  { name: "lpft", label: "LP-FT", flags: ["--strategy", "lpft"] },
];

interface CellMetrics {
  best: Record<string, number | null>;
  final: Record<string, number | null>;
  std?: { best: Record<string, number | null>; final: Record<string, number | null> };
  seeds?: Record<string, unknown>;
}

/**
 * A cell's metrics: its metrics.json when the cell finished; otherwise, from the seeds of its
 * run.json (`seed_folders`, as train.ts writes it) that did, each seed folder's metrics.json
 * summarized as train.ts does, so that a cell stopped at a deadline still shows what it has, and
 * `of` how many seeds it runs; null when no seed finished.
 */
async function cellMetrics(
  dir: string,
): Promise<{ metrics: CellMetrics; of?: number } | null> {
  if (await exists(`${dir}/metrics.json`)) {
    return { metrics: JSON.parse(await Deno.readTextFile(`${dir}/metrics.json`)) };
  }
  if (!(await exists(`${dir}/run.json`))) return null;
  const folders: string[] = JSON.parse(await Deno.readTextFile(`${dir}/run.json`)).seed_folders ??
    [];
  const seeds: Record<string, RunMetrics> = {};
  for (const folder of folders) {
    const seed = /^seed-(\d+)$/.exec(folder)?.[1];
    if (!seed || !(await exists(`${dir}/${folder}/metrics.json`))) continue;
    seeds[seed] = JSON.parse(await Deno.readTextFile(`${dir}/${folder}/metrics.json`));
  }
  if (Object.keys(seeds).length === 0) return null;
  return { metrics: summarizeSeeds(seeds) as CellMetrics, of: folders.length };
}

/**
 * README's table of the cells (see the header): finished ones, and unfinished ones with the seeds
 * that finished, their seeds column saying how many of the cell's ("2 of 4").
 */
export async function writeTable(
  out: string,
  tasks: string[],
  methods: typeof METHODS,
): Promise<void> {
  // As report.ts writes scores; an undefined one (null: a correlation of constant predictions)
  // is "n/a", never a plausible 0.0.
  const pct = (x: number | null | undefined) => typeof x === "number" ? percent(x) : "n/a";
  const rows: string[][] = [];
  let partial = 0;
  for (const name of tasks) {
    for (const m of methods) {
      const dir = `${out}/${name}-${m.name}`;
      const found = await cellMetrics(dir);
      if (!found) continue;
      if (found.of !== undefined) partial++;
      const r = found.metrics;
      const seeds = Object.keys(r.seeds ?? { one: 0 });
      const column = TABLE_TASKS.find((t) => t.name === name);
      const metric = column?.metric ?? "accuracy";
      const cell = (kind: "best" | "final") => {
        const std = r.std?.[kind][metric];
        return typeof std === "number"
          ? `${pct(r[kind][metric])} ± ${pct(std)}`
          : pct(r[kind][metric]);
      };
      const minutes: number[] = [];
      for (const seed of r.seeds ? seeds : []) {
        const start = (await Deno.stat(`${dir}/seed-${seed}/run.json`)).mtime!.getTime();
        const end = (await Deno.stat(`${dir}/seed-${seed}/metrics.json`)).mtime!.getTime();
        minutes.push((end - start) / 60000);
      }
      rows.push([
        column?.title ?? name.toUpperCase(),
        ({ mcc: "MCC", f1: "F1", pearson: "Pearson r" } as Record<string, string>)[metric] ??
          metric,
        m.label,
        m.random
          ? "the same shape, random init (`tools/random_model.ts`, seed 0)"
          : "ehft-mini-en (pretrained)",
        found.of === undefined ? String(seeds.length) : `${seeds.length} of ${found.of}`,
        cell("best"),
        cell("final"),
        minutes.length > 0
          ? `${Math.min(...minutes).toFixed(1)}–${Math.max(...minutes).toFixed(1)}`
          : "",
      ]);
    }
  }
  const head = [
    "task",
    "dev metric (× 100)",
    "method",
    "model",
    "seeds",
    "best",
    "final",
    "minutes per seed",
  ];
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  const table = [line(head), line(head.map(() => "---")), ...rows.map(line)].join("\n") + "\n";
  await writeFileAtomic(`${out}/table.md`, table);
  console.error(
    `mini_evidence: ${out}/table.md (${rows.length} cells${
      partial ? `, ${partial} of them unfinished: the seeds that finished` : ""
    })`,
  );
}

/**
 * The methods `--methods` names (comma-separated, in METHODS' order; all when not given). An
 * unknown or empty name is refused in one line that lists the known ones.
 */
export function selectMethods(spec: string | undefined): typeof METHODS {
  if (spec === undefined) return METHODS;
  const known = METHODS.map((m) => m.name);
  const names = spec.split(",").map((n) => n.trim());
  for (const name of names) {
    if (!known.includes(name)) {
      throw new FlagError(
        `--methods: ${name === "" ? "an empty name" : `unknown method "${name}"`} in "${spec}" ` +
          `(known: ${known.join(", ")})`,
      );
    }
  }
  return METHODS.filter((m) => names.includes(m.name));
}

/**
 * Runs `deno <args>`; its output goes to `log` when given (parallel cells), else to ours. Killed
 * (SIGTERM) when `signal` aborts: the run's last checkpoint is where `--resume` picks it up.
 */
async function run(
  args: string[],
  log?: string,
  signal?: AbortSignal,
  env?: Record<string, string>,
): Promise<void> {
  console.error(`mini_evidence: deno ${args.join(" ")}${log ? ` > ${log}` : ""}`);
  const started = performance.now();
  const file = log ? await Deno.open(log, { write: true, create: true, append: true }) : undefined;
  const child = new Deno.Command(Deno.execPath(), {
    args,
    env,
    stdout: file ? "piped" : "inherit",
    stderr: file ? "piped" : "inherit",
    signal,
  }).spawn();
  // Both streams into the one file, each chunk written whole (a write may take only part of it).
  const writeChunk = (chunk: Uint8Array) => writeAll(file!, chunk);
  const copies = file
    ? [child.stdout, child.stderr].map((stream) =>
      stream.pipeTo(new WritableStream({ write: writeChunk }))
    )
    : [];
  const status = await child.status;
  await Promise.all(copies);
  file?.close();
  if (signal?.aborted) {
    console.error(`mini_evidence: stopped at the deadline: deno ${args.join(" ")}`);
    return;
  }
  if (!status.success) throw new Error(`deno ${args.join(" ")} failed (exit ${status.code})`);
  console.error(`mini_evidence: done in ${((performance.now() - started) / 60000).toFixed(1)} min`);
}

/**
 * The cores each of `jobs` processes gets on a CPU adapter: lavapipe runs as many threads as the
 * machine has cores unless LP_NUM_THREADS says otherwise, and one process gains little from a
 * second core (BERT-mini shape, batch 32 × 64, this 2-core machine: 27.4 samples/s with two
 * threads, 21.4 with one), so jobs share them out (MRPC's cells, two single-threaded at a time:
 * about 0.72 steps/s together against 0.65 for one with both cores). lavapipe's results do not
 * depend on its thread count (a CB run gave the same bytes with 1 and 2); a GPU's driver ignores
 * the variable. Left alone when the user set it.
 */
function jobThreads(jobs: number): Record<string, string> | undefined {
  if (jobs < 2 || Deno.env.get("LP_NUM_THREADS") !== undefined) return undefined;
  const cores = navigator.hardwareConcurrency ?? 1;
  return { LP_NUM_THREADS: String(Math.max(1, Math.floor(cores / jobs))) };
}

/** A mini recipe's budget and settings as flags (the strategy comes from the method). */
function recipeFlags(r: Recipe): string[] {
  const flags: string[] = [];
  if (r.epochs !== undefined) flags.push("--epochs", String(r.epochs));
  if (r.maxSteps !== undefined) flags.push("--max-steps", String(r.maxSteps));
  if (r.lr !== undefined) flags.push("--lr", String(r.lr));
  if (r.maxLength !== undefined) flags.push("--max-length", String(r.maxLength));
  if (r.batchSize !== undefined) flags.push("--batch-size", String(r.batchSize));
  return flags;
}

/**
 * What --table-only needs: `out` a folder holding at least one of the cells' folders
 * (<out>/<task>-<method>) that an earlier run made; otherwise a one-line error saying so.
 */
export async function checkEvidenceFolder(
  out: string,
  tasks: string[],
  methods: typeof METHODS,
): Promise<void> {
  const cells = tasks.flatMap((t) => methods.map((m) => `${t}-${m.name}`));
  const needs = `--table-only remakes ${out}/table.md from the cell folders an earlier run left ` +
    `there (such as ${out}/${cells[0]}/): give that run's --out, or drop --table-only to run them`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(out);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new FlagError(`--out ${out} does not exist; ${needs}`);
    }
    throw new FlagError(`--out ${out}: ${(e as Error).message}`);
  }
  if (!info.isDirectory) throw new FlagError(`--out ${out} is a file, not a folder; ${needs}`);
  for (const cell of cells) if (await exists(`${out}/${cell}`)) return;
  throw new FlagError(
    `--out ${out} holds no cell of --tasks ${tasks.join(",")} and --methods ${
      methods.map((m) => m.name).join(",")
    }; ${needs}`,
  );
}

export const FLAGS = {
  tasks: { type: "string", default: "cb,rte" },
  seeds: { type: "string", default: "4" },
  out: { type: "string", default: "runs/mini-evidence" },
  methods: { type: "string" },
  "table-only": { type: "boolean" },
  jobs: { type: "string", default: "1" },
  "no-report": { type: "boolean" },
  deadline: { type: "string" },
} as const;

async function main(args: string[]): Promise<void> {
  const f = parseFlags(FLAGS, args);
  // The flags first: a mistyped name is refused before anything runs or a table is written.
  const methods = selectMethods(f.methods);
  const tasks = f.tasks!.split(",");
  for (const name of tasks) {
    if (!TASKS[name]) {
      throw new FlagError(
        `--tasks: unknown task "${name}" (known: ${Object.keys(TASKS).join(", ")})`,
      );
    }
  }
  const jobs = Number(f.jobs);
  if (!Number.isInteger(jobs) || jobs < 1) {
    throw new FlagError(`--jobs: "${f.jobs}" is not a count`);
  }
  const deadline = f.deadline === undefined ? Infinity : Number(f.deadline);
  if (!(deadline > 0)) {
    throw new FlagError(`--deadline: "${f.deadline}" is not a number of seconds`);
  }
  const root = new URL("..", import.meta.url).pathname;
  const model = shippedModelDir();
  if (!model || !(await exists(`${model}/config.json`))) {
    throw new Error("the shipped model (models/ehft-mini-en) is missing");
  }
  const out = f.out!;
  if (f["table-only"]) {
    await checkEvidenceFolder(out, tasks, methods);
    return await writeTable(out, tasks, methods);
  }
  const random = `${out}/random-mini`;
  if (!(await exists(`${random}/model.safetensors`))) {
    const config = JSON.parse(await Deno.readTextFile(`${model}/config.json`));
    await run([
      "run",
      "-A",
      `${root}tools/random_model.ts`,
      "--out",
      random,
      "--vocab",
      `${model}/vocab.txt`,
      "--layers",
      String(config.num_hidden_layers),
      "--hidden",
      String(config.hidden_size),
      "--heads",
      String(config.num_attention_heads),
      "--intermediate",
      String(config.intermediate_size),
      "--max-positions",
      String(config.max_position_embeddings),
      "--seed",
      "0",
      // The folder is this tool's own: one left without weights (an interrupted run) is replaced.
      "--overwrite",
    ]);
  }
  const cells: { dir: string; args: string[] }[] = [];
  for (const name of tasks) {
    const module = await import(`../tasks/${name}.ts`);
    const mini = module[`${name.toUpperCase()}_MINI_RECIPE`] as Recipe | undefined;
    if (!mini) throw new Error(`tasks/${name}.ts has no ${name.toUpperCase()}_MINI_RECIPE`);
    for (const m of methods) {
      const dir = `${out}/${name}-${m.name}`;
      if (await exists(`${dir}/metrics.json`)) continue;
      cells.push({
        dir,
        args: [
          "run",
          "-A",
          `${root}tasks/${name}.ts`,
          "--model",
          m.random ? random : model,
          ...recipeFlags(mini),
          ...m.flags,
          "--seeds",
          f.seeds!,
          "--out",
          dir,
          ...((await exists(`${dir}/run.json`)) ? ["--resume"] : []),
        ],
      });
    }
  }
  // `jobs` cells at a time (one GPU shared by several processes keeps it busier than one
  // process's dispatches can), each with its own log when more than one runs; at the deadline
  // the running cells are stopped and no further one starts: run the command again to go on.
  const stop = new AbortController();
  const timer = Number.isFinite(deadline)
    ? setTimeout(() => stop.abort(), deadline * 1000)
    : undefined;
  if (jobs > 1) await Deno.mkdir(`${out}/logs`, { recursive: true });
  const env = jobThreads(jobs);
  let next = 0;
  const worker = async () => {
    while (next < cells.length && !stop.signal.aborted) {
      const cell = cells[next++];
      const log = jobs > 1 ? `${out}/logs/${cell.dir.split("/").pop()}.log` : undefined;
      await run(cell.args, log, stop.signal, env);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(jobs, cells.length) }, worker));
  } finally {
    clearTimeout(timer);
  }
  const unfinished: string[] = [];
  for (const c of cells) if (!(await exists(`${c.dir}/metrics.json`))) unfinished.push(c.dir);
  await writeTable(out, tasks, methods);
  if (unfinished.length > 0) {
    console.error(
      `mini_evidence: ${unfinished.length} cells unfinished at the deadline (${
        unfinished.join(", ")
      }): run the same command again to resume them`,
    );
    return;
  }
  if (!f["no-report"]) {
    // The report folder is this tool's own: a rerun replaces it.
    await run(["run", "-A", `${root}report.ts`, out, "--out", `${out}/report`, "--overwrite"]);
  }
}

if (import.meta.main) await runTool("mini_evidence", import.meta.url, main);
