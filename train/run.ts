// A training run from its config to its output folder: the loop over a strategy's stages.
//
//   out/run.json        every resolved setting, and where the run started (train/environment.ts)
//   out/log.jsonl       one line per step (stage, step, loss, lr, grad_norm) and per evaluation
//   out/metrics.json    {"final": {...}, "best": {...}}, fractions; written last: a run with it
//                       is finished
//   out/model/          the final model in the checkpoint contract (config.json, tokenizer.json,
//                       model.safetensors with the task and head shape in its metadata)
//   out/stage1/         two-stage strategies: the model as Stage 1 left it
//   out/adapter/        LoRA still active at the end on a frozen backbone: the Hugging Face PEFT
//                       adapter and the head
//   out/analysis/       --analysis: its measurements and figures
//   out/<TASK>.jsonl|tsv  --predict-test: the leaderboard's submission file (train/submission.ts)
//   out/checkpoint.safetensors   while running: what --resume continues from
//
// `--seeds K` runs K seeds into out/seed-<seed>/ and writes out/metrics.json with the mean and
// standard deviation of each metric over the seeds.
//
// Beside it: run_folder.ts (what in a folder is a run's, and what --resume checks), prepare.ts
// (the model and data read once before the first step), run_log.ts (log.jsonl).

import { allocation, getGpu, type Gpu, oneLine } from "../kernels/device.ts";
import { checkRunFolder, FlagError, lockOutFolder, probeRunFolder } from "./flags.ts";
import { autotuneForProgram, type TuneRequest } from "../kernels/matmul_autotune.ts";
import { modelTuneShapes } from "./tune_shapes.ts";
import { Recorder } from "../kernels/recorder.ts";
import type { Tensor } from "../kernels/tensor.ts";
import {
  exists,
  isDirectory,
  lockFolder,
  removeEntries,
  removeStaleTemporaries,
  REMOVING_PREFIX,
  temporaryTarget,
  writeFileAtomic,
  writeJsonAtomic,
} from "../model/atomic_write.ts";
import { checkBackboneFinite, loadBackbone, loadHead, saveModel } from "../model/checkpoint.ts";
import type { ModelConfig } from "../model/config.ts";
import { encoderParameters } from "../model/encoder.ts";
import type { OpenedModel } from "../model/load.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";
import { convertTokenizerDir } from "../model/tokenizer_convert.ts";
import { mergeLora, saveLoraAdapter } from "../peft/lora.ts";
import { createPeft, PEFT_NAMES, type PeftMethod, type PeftOptions } from "../peft/method.ts";
import {
  assembleBatch,
  batchesPerEpoch,
  DataStream,
  deriveSeed,
  longestRow,
  SEED_PURPOSE,
  type TokenizedExample,
} from "./batches.ts";
import { batchesOf, RunAnalysis, writeAnalysis } from "./analysis.ts";
import {
  checkStepStats,
  drawFiguresCommand,
  explainRunError,
  isWriteFailure,
  nonFiniteOutputsFault,
  resumeCommand,
  RunFaultError,
  type RunPlace,
  setRunFinished,
  setRunResumable,
  setStepLoop,
  setTrainingPlace,
  signalTurn,
  stopRequested,
} from "./run_faults.ts";
import {
  checkConfigChoices,
  checkConfigValues,
  checkRunModes,
  microBatchSize,
  runFolders,
  runSettings,
  seedFolder,
  seedList,
  type TrainConfig,
  UNRECORDED_SETTINGS,
} from "./config.ts";
import { evaluate, type MetricValues, NonFiniteOutputsError, updateBest } from "./evaluate.ts";
import { Progress } from "./progress.ts";
import { plural } from "../model/progress_text.ts";
import { learningRate, type Schedule } from "./schedule.ts";
import type { Stage } from "./strategy.ts";
import { headFeatures, type Task, taskDefinitionProblem } from "./task.ts";
import {
  CHECKPOINT_FILE,
  checkTrainingPlace,
  checkWholeCheckpoint,
  type LoadedCheckpoint,
  readTrainingCheckpoint,
  type TrainingState,
  uploadByName,
  writeTrainingCheckpoint,
} from "./training_checkpoint.ts";
import { Trainer, type TrainerOptions } from "./trainer.ts";
import {
  checkInputsOutside,
  checkSameData,
  checkSameSchedule,
  checkSameSettings,
  clearFinishedLeftovers,
  readRunJson,
  recordedDifference,
  RUN_FILES,
  RUN_FOLDERS,
  runEntries,
  settingsFingerprint,
  writesIntoFolder,
} from "./run_folder.ts";
import { RunLog } from "./run_log.ts";
import { resumeElsewhereNote, runEnvironment } from "./environment.ts";
// Kept importable from here (the tests, programs of one's own).
export { RunLog, trailingSkips } from "./run_log.ts";
import { adamwSettings, prepare, type Prepared } from "./prepare.ts";

/** What `runTraining` needs beside its TrainConfig: the task, the GPU, output and callbacks. */
export interface RunOptions {
  /** The task named by config.task. */
  task: Task;
  /** No progress output. */
  quiet?: boolean;
  /** Default: the process-wide GPU. */
  gpu?: Gpu;
  /**
   * Tune the GEMM for this device before training (kernels/matmul_autotune.ts), as the request
   * says; absent: no tune, the built-in choice (what tests want: no dependence on the machine's
   * tune cache). Any choice gives bitwise the same results; the tune changes speed only.
   */
  autotune?: TuneRequest;
  /**
   * Called when a stage begins, after its hand-off (restore, PEFT dropped) and before its first
   * step; e.g. for tests that inspect the model between the stages.
   */
  onStageStart?: (info: { stage: Stage; index: number; trainer: Trainer }) => Promise<void> | void;
  /**
   * Called with the run's metrics once it has ended, while the run folder is still locked: work
   * that reads or writes the folder afterwards (train.ts's --predict-test) is not cut into by a
   * second train.ts on it.
   */
  afterRun?: (metrics: RunMetrics | SeedsMetrics) => Promise<void> | void;
  /**
   * What the caller will do after the run, kept in run.json as `requests` (not a setting: no
   * part of the settings' fingerprint), so that a plain --resume does it too: train.ts's
   * `{ predict_test: true }`.
   */
  requests?: Readonly<Record<string, unknown>>;
  /**
   * A parameter-efficient method of one's own, in place of config.peft's (which still chooses
   * the learning-rate defaults and must be given: the strategy needs a PEFT stage). `create` is
   * called once per seed with the settings config.peft's method would get (and once before the
   * run writes or removes anything, as a check), and must return a method whose `name` is this
   * `name`; the method plugs into the encoder through its hooks (model/encoder.ts
   * `EncoderHooks`; a `LinearHook`'s context carries the frozen weight). run.json records `name`
   * as resolved.peft_method.
   */
  peft?: {
    name: string;
    create: (gpu: Gpu, config: ModelConfig, options: PeftOptions) => PeftMethod;
  };
}

/** run.json's `requests` field, when the options have any. */
function requestsOf(options: RunOptions): { requests?: Readonly<Record<string, unknown>> } {
  return options.requests && Object.keys(options.requests).length > 0
    ? { requests: options.requests }
    : {};
}

/** RunOptions.peft's method, which must carry the name the run records for it. */
function createOwnPeft(
  own: NonNullable<RunOptions["peft"]>,
  gpu: Gpu,
  config: ModelConfig,
  options: PeftOptions,
): PeftMethod {
  const method = own.create(gpu, config, options);
  if (method.name !== own.name) {
    method.destroy();
    throw new Error(
      `RunOptions.peft: create() made a method named "${method.name}", not "${own.name}"`,
    );
  }
  return method;
}

/** metrics.json of one run. */
export interface RunMetrics {
  /** The last evaluation's values. */
  final: MetricValues;
  /** Each metric's best value over the final stage's evaluations (Stage 1's are only logged). */
  best: MetricValues;
}

/** metrics.json of a multi-seed run: means, standard deviations and each seed's. */
export interface SeedsMetrics extends RunMetrics {
  /**
   * Population standard deviations of `final` and `best` over the seeds that define each metric;
   * null where fewer than two do.
   */
  std: RunMetrics;
  /** Each seed's metrics, by seed. */
  seeds: Record<string, RunMetrics>;
}

/**
 * Trains as `config` says into `config.out`. Returns the metrics written to metrics.json (the
 * seeds' summary for `seeds` > 1).
 */
export async function runTraining(
  config: TrainConfig,
  options: RunOptions,
): Promise<RunMetrics | SeedsMetrics> {
  checkRunModes(config);
  checkConfigChoices(config, "runTraining");
  checkConfigValues(config);
  // A library caller's config may leave out (or null) a setting ehft added later: recorded as
  // its default, which is what it means, so that train.ts --resume reads it back as one.
  const defaults = Object.entries(UNRECORDED_SETTINGS).filter(([k]) =>
    (config as unknown as Record<string, unknown>)[k] == null
  );
  if (defaults.length > 0) config = { ...config, ...Object.fromEntries(defaults) };
  const definition = taskDefinitionProblem(options.task);
  if (definition !== null) throw new Error(definition);
  if (options.peft && !config.peft) {
    throw new Error(
      `RunOptions.peft (${options.peft.name}): strategy ${config.strategy} has no PEFT stage; ` +
        `give a strategy that has one (peft, ehft, ehft-reserve) and config.peft, whose ` +
        `learning-rate defaults it takes`,
    );
  }
  // The saved models tell the built-in methods apart by name (LoRA's adapter, BitFit's biases).
  if (options.peft && (PEFT_NAMES as readonly string[]).includes(options.peft.name)) {
    throw new Error(
      `RunOptions.peft: "${options.peft.name}" is a built-in method's name; give the method ` +
        `of one's own another (or use config.peft for the built-in one)`,
    );
  }
  if (options.task.name !== config.task) {
    throw new Error(
      `runTraining: config.task is ${config.task}, the task given is ${options.task.name}`,
    );
  }
  if (config.precision === "f16") {
    // Before anything is written: the run could not start.
    const gpu = options.gpu ?? await getGpu();
    if (!gpu.hasF16) {
      throw new FlagError(
        `--precision f16: this adapter (${gpu.description}) has no shader-f16; use ` +
          `--precision f32`,
      );
    }
  }
  if ((await isDirectory(config.data)) === false) {
    // A file would be read as every split: the model chosen and scored on its own training data.
    throw new FlagError(
      `--data ${config.data} is a file: training reads the ${options.task.trainSplit ?? "train"} ` +
        `and ${options.task.devSplit} splits from a folder in the task's layout (pass the folder ` +
        `that holds it)`,
    );
  }
  await checkRunFolder(config.out);
  const held: { lock: Deno.FsFile | null } = { lock: null };
  try {
    const metrics = await trainInFolder(config, options, held);
    // A stop during what comes after (the test predictions) says the training is kept.
    setRunFinished(config.out);
    await options.afterRun?.(metrics);
    return metrics;
  } catch (e) {
    // A write that failed outside a seed's training (a --seeds run's summary, a submission
    // file): the run is kept, and --resume writes what is missing. (One inside it is a
    // RunFaultError that says so already.)
    if (
      !(e instanceof RunFaultError) && isWriteFailure(e) && await exists(`${config.out}/run.json`)
    ) {
      throw new RunFaultError(
        `${e.message}; the run in ${config.out} is kept; once it can be written, continue ` +
          `with: ${resumeCommand()}`,
      );
    }
    throw e;
  } finally {
    setRunFinished(null);
    held.lock?.close();
  }
}

/**
 * runTraining once its flags are checked: the run in `config.out`, the folder locked for the
 * process (`held.lock`, closed by the caller) before anything in it is read to decide, or removed.
 */
async function trainInFolder(
  config: TrainConfig,
  options: RunOptions,
  held: { lock: Deno.FsFile | null },
): Promise<RunMetrics | SeedsMetrics> {
  const out = config.out;
  // A second train.ts on this folder (a double launch, a --resume or --overwrite while the run
  // goes on) would interleave checkpoints and results, or remove them under the first.
  const existed = await isDirectory(out);
  if (existed) held.lock = await lockOutFolder(out, "train.ts");
  const entries = await runEntries(out);
  // Prepared once for every seed (the model opened and hashed, the splits tokenized: tens of
  // seconds at RoBERTa-large on QNLI), on the first that needs it; closed here, whatever happens.
  let prepared: Prepared | null = null;
  const prepareOnce = async () => prepared ??= await prepare(config, options.task, options.quiet);
  try {
    return await trainPrepared(config, options, held, entries, prepareOnce);
  } catch (e) {
    // A run that could not start (a model, data or GPU it could not get) leaves no empty --out
    // behind; a folder it wrote anything into stays. Only while this process holds the folder's
    // lock: a second train.ts that lost the race for a new --out must not remove the first's.
    if (!existed && held.lock !== null) await Deno.remove(out).catch(() => {});
    throw e;
  } finally {
    (prepared as Prepared | null)?.model.weights.close();
    setRunResumable(false);
  }
}

/** trainInFolder with the folder locked: `prepareOnce` gives the one Prepared of the run. */
async function trainPrepared(
  config: TrainConfig,
  options: RunOptions,
  held: { lock: Deno.FsFile | null },
  entries: string[],
  prepareOnce: () => Promise<Prepared>,
): Promise<RunMetrics | SeedsMetrics> {
  const out = config.out;
  if (entries.length > 0 && !entries.includes("run.json")) {
    // Not written by train.ts (its runs write run.json first): neither ours to replace nor to
    // continue. The command's to change (exit status 2), as an --out that is a file.
    throw new FlagError(
      `${out} holds ${entries.join(", ")} but no run.json, so it is not a run of train.ts: ` +
        `choose another --out`,
    );
  }
  // Before the model and data are read (train.ts probed already; a library caller has not).
  if (writesIntoFolder(config, entries)) await probeRunFolder(out);
  // A PEFT method of one's own is made once before anything is written or removed: a create()
  // that throws, or makes a method of another name, is refused with the old run still there.
  const tryOwnPeft = async () => {
    if (!options.peft || !config.peft) return;
    const { model } = await prepareOnce();
    const gpu = options.gpu ?? await getGpu();
    createOwnPeft(options.peft, gpu, model.config, {
      loraR: config.loraR,
      loraAlpha: config.loraAlpha,
      prefixLength: config.prefixLength,
      seed: 0,
    }).destroy();
  };
  if (entries.length > 0) {
    if (config.overwrite) {
      await checkInputsOutside(config, out, entries);
      // The old run goes only once the new one can start: model (its weights finite too, which
      // the upload would find only after), data, head, GPU and a PEFT method of one's own.
      const { model } = await prepareOnce();
      await checkBackboneFinite(model.weights, model.config);
      if (!options.gpu) await getGpu();
      await tryOwnPeft();
      // All or nothing (a removal cut short by a folder it may not change would leave neither
      // run): with the old run's entries go the temporaries its killed writes left (not another
      // program's write in progress: predict.ts --out into the folder), and what an earlier
      // --overwrite could not delete.
      const leftovers: string[] = [];
      for await (const e of Deno.readDir(out)) {
        const temporary = e.isFile && RUN_FILES.includes(temporaryTarget(e.name) ?? "");
        if (temporary || (e.isDirectory && e.name.startsWith(REMOVING_PREFIX))) {
          leftovers.push(e.name);
        }
      }
      // A seed folder another train.ts trains in (`--out <out>/seed-43 --resume`) is not taken
      // from under it: held locked until it is gone, as --out is.
      const seedLocks = await lockSeedFolders(out, entries);
      let kept: string | null;
      try {
        kept = await removeEntries(out, [...entries, ...leftovers]).catch((e) => {
          throw new Error(`--overwrite: ${(e as Error).message}`);
        });
      } finally {
        for (const lock of seedLocks) lock.close();
      }
      if (kept !== null) console.error(`--overwrite: ${kept}`);
    } else if (!config.resume) {
      throw new FlagError(
        `${out} already holds a run (${entries.join(", ")}): pass --resume (resume: true) ` +
          `to continue it or --overwrite (overwrite: true) to replace it`,
      );
    }
  }
  // Said, so that a mistyped --out is seen at once, not after a run started from scratch.
  if (config.resume && entries.length === 0 && !options.quiet) {
    console.error(`--resume: ${out} holds no run yet: starting one`);
  }
  if (entries.length === 0) await tryOwnPeft();
  await Deno.mkdir(out, { recursive: true });
  held.lock ??= await lockOutFolder(out, "train.ts");
  // A run found here is one --resume goes on with, from the start.
  if (config.resume && entries.length > 0) setRunResumable(true);
  const settings = runSettings(config);
  if (config.resume) {
    await checkSameSettings(out, settings as unknown as Record<string, unknown>);
    if (await exists(`${out}/metrics.json`)) {
      const dirs = runFolders(config);
      // A multi-seed run's seed folders are its own too (each one's checkpoint included).
      for (const d of dirs) await clearFinishedLeftovers(d);
      if (config.seeds > 1) await removeStaleTemporaries(out, RUN_FILES);
      let drawn = 0;
      for (const d of dirs) if (await drawMissingFigures(d, options.quiet ?? false)) drawn++;
      const metrics = await readRunJson(`${out}/metrics.json`);
      // Said as "nothing to train": the caller's afterRun (a --predict-test) may still write.
      if (!options.quiet && !drawn) console.error(`${out}: the run is finished; nothing to train`);
      return metrics as unknown as RunMetrics | SeedsMetrics;
    }
  }
  if (config.seeds === 1) {
    return await runSeed(out, config, config.seed, options, null, prepareOnce);
  }
  // Each seed's folder is cleaned by its own runSeed; the summary's writes are this folder's.
  if (config.resume) await removeStaleTemporaries(out, RUN_FILES);

  if (!(await exists(`${out}/run.json`))) {
    // The model, data and GPU first, as a single seed's run: a run that cannot start writes
    // nothing (and leaves no folder it made).
    await prepareOnce();
    if (!options.gpu) await getGpu();
    await writeJsonAtomic(`${out}/run.json`, {
      settings,
      seed_folders: seedList(config).map(seedFolder),
      ...requestsOf(options),
    });
  }
  setRunResumable(true);
  const results: Record<string, RunMetrics> = {};
  for (const seed of seedList(config)) {
    // A SIGTERM kept for a seed's step end that came in its last step: no next seed.
    await stopRequested()?.();
    results[String(seed)] = await runSeed(
      `${out}/${seedFolder(seed)}`,
      config,
      seed,
      options,
      `seed ${seed}`,
      prepareOnce,
    );
  }
  const summary = summarizeSeeds(results);
  await writeJsonAtomic(`${out}/metrics.json`, summary);
  return summary;
}

/**
 * Mean and (population) standard deviation of each metric over the seeds where it is defined (a
 * seed's null, such as a Pearson r of constant predictions, is left out; each seed's own value
 * stays in `seeds`); std is null when fewer than two seeds define it, the mean when none does.
 */
export function summarizeSeeds(results: Record<string, RunMetrics>): SeedsMetrics {
  const runs = Object.values(results);
  const stat = (kind: "final" | "best") => {
    const mean: MetricValues = {};
    const std: MetricValues = {};
    const names = new Set(runs.flatMap((r) => Object.keys(r[kind])));
    for (const name of names) {
      const xs = runs.map((r) => r[kind][name]).filter((v): v is number => typeof v === "number");
      if (xs.length === 0) {
        mean[name] = std[name] = null;
        continue;
      }
      const m = xs.reduce((a, b) => a + b, 0) / xs.length;
      mean[name] = m;
      std[name] = xs.length > 1
        ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length)
        : null;
    }
    return { mean, std };
  };
  const final = stat("final"), best = stat("best");
  return {
    final: final.mean,
    best: best.mean,
    std: { final: final.std, best: best.std },
    seeds: results,
  };
}

/** Copies the model's tokenizer (tokenizer.json, or one converted from its vocabulary) to dir. */
async function writeTokenizer(model: OpenedModel, dir: string): Promise<void> {
  const src = `${model.dir}/tokenizer.json`;
  if (await exists(src)) {
    await writeFileAtomic(`${dir}/tokenizer.json`, await Deno.readFile(src));
  } else {
    await writeJsonAtomic(`${dir}/tokenizer.json`, await convertTokenizerDir(model.dir));
  }
  const config = `${model.dir}/tokenizer_config.json`;
  if (await exists(config)) {
    await writeFileAtomic(`${dir}/tokenizer_config.json`, await Deno.readFile(config));
  }
}

/**
 * Locks the seed folders (`seed-<n>/`) among a run folder's `entries`, or throws naming the first
 * that another process holds (closing those it took).
 */
async function lockSeedFolders(out: string, entries: readonly string[]): Promise<Deno.FsFile[]> {
  const locks: Deno.FsFile[] = [];
  for (const name of entries) {
    if (!/^seed-\d+$/.test(name) || (await isDirectory(`${out}/${name}`)) !== true) continue;
    const lock = await lockFolder(`${out}/${name}`);
    if (lock === "held") {
      for (const l of locks) l.close();
      throw new Error(
        `--overwrite: ${out}/${name} is in use: another train.ts is running in it (wait for it ` +
          `to end, or stop it, then --overwrite)`,
      );
    }
    if (lock) locks.push(lock);
  }
  return locks;
}

/**
 * The most encoder rows × tokens one forward of a seed's run takes under `config`: each
 * micro-batch of every step (the data stream is the seed's, each padded to its longest row),
 * --analysis's passes over the training examples, and the dev split's micro-batches. Computed
 * from the settings, not from `p`'s batches, so that other batch sizes and parts can be asked.
 */
function largestForwardRows(config: TrainConfig, p: Prepared, seed: number): number {
  const micro = microBatchSize(config);
  const n = p.train.examples.length;
  const steps = config.maxSteps ?? config.epochs! * batchesPerEpoch(n, config.batchSize);
  const stream = new DataStream(n, config.batchSize, seed, config.shuffle);
  let most = 0;
  const take = (examples: readonly TokenizedExample[]) => {
    let rows = 0, longest = 0;
    for (const e of examples) {
      for (const input of e.inputs) {
        rows++;
        longest = Math.max(longest, input.ids.length);
      }
    }
    most = Math.max(most, rows * longest);
  };
  const chunks = (examples: readonly TokenizedExample[], size: number) => {
    for (let i = 0; i < examples.length; i += size) take(examples.slice(i, i + size));
  };
  for (let step = 0; step < steps; step++) {
    chunks(stream.examples(step).map((i) => p.train.examples[i]), micro);
  }
  // --analysis's feature passes: every training example in file order, a batch at a time.
  if (config.analysis) chunks(p.train.examples, config.batchSize);
  chunks(p.dev.examples, micro);
  return most;
}

/** Log lines between flushes (the step stats wait on the GPU until then). */
const LOG_BLOCK = 32;

/**
 * Trains one seed into `dir`: `config.out`, or a --seeds run's seed folder, which is a run folder
 * of its own (`train.ts --out <out>/seed-42 --resume` reaches it) and so is locked while its seed
 * trains, as `--out` is: two processes never train one seed.
 */
async function runSeed(...args: Parameters<typeof trainSeed>): Promise<RunMetrics> {
  const [dir, config] = args;
  if (dir === config.out) return await trainSeed(...args);
  await Deno.mkdir(dir, { recursive: true });
  const lock = await lockFolder(dir);
  if (lock === "held") {
    throw new Error(
      `${dir} is in use: another train.ts is running in it (wait for it to end, then --resume)`,
    );
  }
  try {
    return await trainSeed(...args);
  } finally {
    lock?.close();
  }
}

/** Throws unless the finished run in the seed folder `dir` was trained with `settings`. */
async function checkFinishedSeed(dir: string, settings: Record<string, unknown>): Promise<void> {
  if (!(await exists(`${dir}/run.json`))) {
    throw new Error(
      `${dir} holds a metrics.json but no run.json: not a seed of this run (move it away, or ` +
        `--overwrite the run)`,
    );
  }
  const diff = await recordedDifference(dir, settings);
  if (diff) {
    throw new Error(
      `${dir} holds a finished run that is not this run's seed ${settings.seed} (${diff.text}): ` +
        `move it away, or --overwrite the run`,
    );
  }
}

async function trainSeed(
  dir: string,
  config: TrainConfig,
  seed: number,
  options: RunOptions,
  label: string | null,
  prepareOnce: () => Promise<Prepared>,
): Promise<RunMetrics> {
  const metricsPath = `${dir}/metrics.json`;
  const settings = { ...runSettings(config), seed, seeds: 1, out: dir };
  if (await exists(metricsPath)) {
    // A finished seed folder counts as this seed only if it is this run's: another train.ts may
    // have written its own run there (`--out <out>/seed-43`), which the mean took as seed 43.
    if (dir !== config.out) await checkFinishedSeed(dir, settings as Record<string, unknown>);
    const metrics = await readRunJson(metricsPath) as unknown as RunMetrics;
    if (config.resume) await clearFinishedLeftovers(dir);
    await drawMissingFigures(dir, options.quiet ?? false);
    return metrics;
  }
  await Deno.mkdir(dir, { recursive: true });
  const task = options.task;
  // What its checkpoints record, and a resumed one's is compared with.
  const settingsSha256 = settingsFingerprint(settings);
  if (config.resume) await checkSameSettings(dir, settings as Record<string, unknown>);

  // Borrowed from trainInFolder, which closes the model's weights.
  const p = await prepareOnce();
  const { model } = p;
  const checkpointPath = `${dir}/${CHECKPOINT_FILE}`;
  // A run killed inside an atomic write left its temporary file: the target is whole without it.
  if (config.resume) await removeStaleTemporaries(dir, RUN_FILES, RUN_FOLDERS);
  const resolved = options.peft ? { ...p.resolved, peft_method: options.peft.name } : p.resolved;
  if (config.resume) {
    await checkSameData(dir, config.out, resolved, config.data);
    await checkSameSchedule(dir, config.out, config);
  }
  const checkpoint = config.resume ? await readTrainingCheckpoint(checkpointPath) : null;
  if (checkpoint) {
    checkTrainingPlace(checkpointPath, checkpoint.state, p.stages.map((s) => s.steps));
    const recorded = checkpoint.state.settingsSha256;
    if (recorded !== undefined && recorded !== settingsSha256) {
      throw new Error(
        `${checkpointPath}: written under other settings than ${dir}/run.json records now ` +
          `(edited since? a changed lr or step count would make the resumed run neither run): ` +
          `put run.json's settings back, or --overwrite starts the run again`,
      );
    }
  }
  const gpu = options.gpu ?? await getGpu();
  const environment = runEnvironment(gpu);
  if (!checkpoint) {
    await writeJsonAtomic(`${dir}/run.json`, {
      settings,
      resolved,
      environment,
      ...requestsOf(options),
    });
    setRunResumable(true);
  } else if (await exists(`${dir}/run.json`)) {
    const record = await readRunJson(`${dir}/run.json`);
    const note = resumeElsewhereNote(`${dir}/run.json`, record, environment);
    if (note) {
      // Said even with `quiet`, as prepare's notes on the data: it is about the result. Kept in
      // run.json too, for report.ts to say where the run ran.
      console.error(note);
      const resumes = Array.isArray(record.resumed_on) ? record.resumed_on : [];
      await writeJsonAtomic(`${dir}/run.json`, {
        ...record,
        resumed_on: [...resumes, environment],
      });
    }
  }
  // The GPU holds one micro-batch at once (the whole batch without --grad-accum).
  const maxExamples = Math.min(
    microBatchSize(config),
    Math.max(p.train.examples.length, p.dev.examples.length),
  );
  if (options.autotune) {
    const rows = maxExamples * p.train.inputsPerExample;
    const seq = longestRow(p.train, p.dev);
    const shapes = modelTuneShapes(model.config, {
      rows: rows * seq,
      headRows: rows,
      headFeatures: headFeatures(task, model.config.hiddenSize),
      headWidth: p.headWidth,
      headClasses: task.headClasses,
      backward: true,
      attention: { sequences: rows, seq },
      f16Math: config.f16Math ?? false,
    });
    await autotuneForProgram(gpu, options.autotune, shapes, {
      info: options.quiet ? () => {} : undefined,
    });
  }
  const peftOptions: PeftOptions = {
    loraR: config.loraR,
    loraAlpha: config.loraAlpha,
    prefixLength: config.prefixLength,
    seed: deriveSeed(seed, SEED_PURPOSE.peft),
  };
  const peft = config.peft
    ? options.peft
      ? createOwnPeft(options.peft, gpu, model.config, peftOptions)
      : createPeft(config.peft, gpu, model.config, peftOptions)
    : null;
  const place: RunPlace = {
    dir,
    checkpoint: checkpoint ? { path: checkpointPath, step: checkpoint.state.step } : null,
  };
  // The most rows × tokens of one forward in this run: a batch beyond one storage binding is
  // said before the first step, not at the step that meets it.
  const largestForward = largestForwardRows(config, p, seed);
  const trainerOptions = (examples: number, withPeft: PeftMethod | null): TrainerOptions => ({
    config: model.config,
    loss: task.loss,
    headClasses: task.headClasses,
    wic: task.head === "wic",
    inputsPerExample: p.train.inputsPerExample,
    maxExamples: examples,
    maxSeq: longestRow(p.train, p.dev),
    maxRows: Math.min(
      largestForward,
      examples * p.train.inputsPerExample * longestRow(p.train, p.dev),
    ),
    maxPrefix: peft?.prefixLength,
    dropout: config.dropout ?? undefined,
    headWidth: p.headWidth,
    headSeed: deriveSeed(seed, SEED_PURPOSE.head),
    dropoutSeed: deriveSeed(seed, SEED_PURPOSE.dropout),
    gradAccum: config.gradAccum ?? 1,
    peft: withPeft,
    adamw: adamwSettings(config),
    precision: config.precision,
    f16Math: config.f16Math ?? false,
    frozenBackbone: p.stages.every((st) => st.trains.backbone === "none" && !st.trains.peft),
  });
  // The largest batch below `from` whose buffers this adapter allocates (a Trainer built with
  // every stage's gradients and optimizer state, then freed whether it fit or not; a step's
  // scratch buffers and --analysis's copy of the backbone are left out, so the advice may be a
  // little large), for the advice of an allocation error; null if none does.
  // Called once the run's own trainer is freed.
  const largestFitting = async (from: number): Promise<number | null> => {
    for (let b = from; b >= 1; b = b > 8 ? Math.floor(b * 0.8) : b - 1) {
      let probe: Trainer | null = null;
      try {
        probe = new Trainer(gpu, trainerOptions(b, null));
        // The PEFT method's own tensors are left out (the run's was freed with its trainer).
        for (const stage of p.stages) {
          probe.beginStage({ ...stage.trains, peft: false }, adamwSettings(config));
        }
        await gpu.flushErrors();
        return b;
      } catch {
        // Try a smaller one.
      } finally {
        probe?.destroy();
      }
    }
    return null;
  };
  // A lost device surfaces as whatever the next call threw: wait briefly for the loss to be
  // reported, so that the message says what happened.
  const explain = async (e: unknown) => {
    if (!gpu.lost) await Promise.race([gpu.device.lost, new Promise((r) => setTimeout(r, 200))]);
    await Promise.resolve();
    const lost = gpu.lost ?? undefined;
    const run = {
      batchSize: config.batchSize,
      gradAccum: config.gradAccum ?? 1,
      maxLength: p.maxLength,
      place,
    };
    const first = explainRunError(lost ?? e, run);
    if (!(first instanceof RunFaultError) || !first.message.includes("does not fit this adapter")) {
      return first;
    }
    // Not a binding's limit: buffers beyond it allocate, and the probe below would say a batch
    // of one less fits. The encoder's check named the bytes of the run's largest forward: the
    // parts (--grad-accum) whose largest forward fits are found over the same batches, as the
    // ratio to the largest batch was too large when that batch was a short one with long rows.
    const binding = e instanceof Error ? allocation(e.message) : null;
    if (binding?.binding) {
      const used = trainerOptions(maxExamples, null).maxRows;
      if (!(e as Error).message.startsWith("Encoder: activation (") || !used) return first;
      const perRow = binding.bytes / used;
      const fit = (c: TrainConfig) => largestForwardRows(c, p, seed) * perRow <= binding.limit!;
      // A smaller batch (other batches: the stream is drawn again), or the batch in more parts.
      let b = config.batchSize - 1;
      while (b >= 1 && !fit({ ...config, batchSize: b, gradAccum: 1 })) b--;
      let k = (config.gradAccum ?? 1) + 1;
      while (k <= config.batchSize && !fit({ ...config, gradAccum: k })) k++;
      return explainRunError(e, {
        ...run,
        fitsBatch: b >= 1 ? b : null,
        fitsParts: k <= config.batchSize ? k : undefined,
      });
    }
    // Whichever allocation failed first (optimizer state comes after the activations), the probe
    // tells whether a smaller batch fits, or none does.
    // A batch of 1 has nothing smaller to probe: the advice is then the shorter --max-length.
    const from = maxExamples - 1;
    const fits = from >= 1 ? await largestFitting(from) : undefined;
    return explainRunError(e, { ...run, fitsBatch: fits });
  };
  let trainer: Trainer;
  try {
    trainer = new Trainer(gpu, trainerOptions(maxExamples, peft));
  } catch (e) {
    peft?.destroy();
    throw await explain(e);
  }
  const log = await RunLog.open(`${dir}/log.jsonl`, checkpoint?.state.logLines ?? 0);
  const progress = new Progress({
    total: p.totalSteps,
    done: checkpoint?.state.step ?? 0,
    quiet: options.quiet,
    label: label ?? undefined,
  });
  const trainSplit = task.trainSplit ?? "train";
  // The inputs' limit as used: --max-length cut to the model's positions (less prefix rows),
  // which run.json's settings keep as typed.
  progress.line(
    `${task.name}: ${p.train.examples.length} ${trainSplit} and ${p.dev.examples.length} ` +
      `${task.devSplit} examples of ≤ ${p.maxLength} tokens, ${plural(p.totalSteps, "step")}, ` +
      `on ${gpu.description}`,
  );
  let analysis: RunAnalysis | null = null;
  let freed = false;
  try {
    setTrainingPlace(place);
    await loadBackbone(model.weights, model.config, encoderParameters(trainer.encoder.params));
    if (config.head) {
      const reader = await openSafetensors(config.head);
      try {
        await loadHead(reader, trainer.headParameters());
      } finally {
        reader.close();
      }
    }
    if (config.analysis) {
      analysis = new RunAnalysis(trainer, {
        trainBatches: batchesOf(p.model.config, task.loss, p.train.examples, config.batchSize),
        devBatches: p.devBatches,
        loss: task.loss,
        labelNames: task.labels,
        stages: p.stages.map((st) => st.name),
      }, {
        weightEvery: Math.max(1, Math.round(p.totalSteps / 50)),
        gradSteps: Math.min(20, p.stages[p.stages.length - 1].steps),
      });
    }
    // Until its results are written: a SIGTERM stops the run at a step's end with a checkpoint
    // (before what the step ends with: its evaluation, Stage 1's save, the run's end); one that
    // comes during the run's last evaluation or the final save lets the run end.
    setStepLoop(true);
    const result = await trainStages(
      {
        config,
        task,
        dir,
        p,
        trainer,
        log,
        progress,
        options,
        seed,
        analysis,
        place,
        settingsSha256,
      },
      checkpoint,
    );
    if (analysis) {
      const peft = config.peft;
      const data = await analysis.finish({ task: task.name, strategy: config.strategy, peft });
      await writeAnalysis(`${dir}/analysis`, data, analysis.headFeatures);
    }
    progress.finish();
    await saveFinalModel(dir, config, task, p, trainer);
    await writeJsonAtomic(metricsPath, result);
    await Deno.remove(checkpointPath).catch(() => {});
    setStepLoop(false);
    setTrainingPlace(null);
    // Also draws those of an analysis written before the run was killed and resumed.
    await drawMissingFigures(dir, options.quiet ?? false);
    return result;
  } catch (e) {
    // Freed first: the advice on a batch that fits probes this adapter's memory.
    analysis?.destroy();
    analysis = null;
    trainer.destroy();
    freed = true;
    throw await explain(e);
  } finally {
    setStepLoop(false);
    setTrainingPlace(null);
    progress.finish();
    log.close();
    analysis?.destroy();
    if (!freed) trainer.destroy();
  }
}

/** Resolved against this module's URL, as a literal specifier would be (file or http alike). */
const ANALYSIS_FIGURES = "./analysis_figures.ts";

/** Written after a run's last figure: its absence after the results means figures still to draw. */
const FIGURES_LIST = "analysis/figures.json";

/**
 * Draws a finished run's figures if it has an analysis and they were not all drawn (a run killed
 * between its results and its figures, or one whose drawing failed). True if it tried.
 */
async function drawMissingFigures(dir: string, quiet: boolean): Promise<boolean> {
  if (!(await exists(`${dir}/analysis/analysis.json`))) return false;
  if (await exists(`${dir}/${FIGURES_LIST}`)) return false;
  await drawAnalysis(dir, quiet);
  return true;
}

/**
 * The run's analysis figures (train/analysis_figures.ts). After the results are safe: a drawing
 * failure costs the figures only, with a one-line warning. Then analysis/figures.json lists them
 * with their captions.
 */
async function drawAnalysis(dir: string, quiet: boolean): Promise<void> {
  const start = performance.now();
  try {
    // Loaded here, not up front, and through a variable, which Deno's module graph does not
    // follow: the drawing libraries (vega, resvg, fontkit: 40 MB of npm packages) stay out of
    // what Deno installs at start-up. Only runs with --analysis need them (and the offline GPU
    // machine, which takes 64 MiB in all, Deno included, has no room for them).
    const drawing: typeof import("./analysis_figures.ts") = await import(ANALYSIS_FIGURES);
    const { keepHeadLayout, readRunAnalysis, runFigures, writeFigures } = drawing;
    const files = await readRunAnalysis(dir);
    if (!files) return;
    const figures = await writeFigures(`${dir}/analysis`, await runFigures(files));
    await keepHeadLayout(files);
    await writeJsonAtomic(
      `${dir}/${FIGURES_LIST}`,
      figures.map((f) => ({
        name: f.name,
        svg: `${f.name}.svg`,
        png: `${f.name}.png`,
        caption: f.caption,
      })),
    );
    if (!quiet) {
      console.error(
        `analysis: ${figures.length} figures in ${dir}/analysis (${
          ((performance.now() - start) / 1000).toFixed(1)
        } s)`,
      );
    }
  } catch (e) {
    console.error(
      `analysis: figures not drawn (${oneLine((e as Error).message)}); the measurements are in ` +
        `${dir}/analysis/analysis.json; to draw them: ${drawFiguresCommand()}`,
    );
  }
}

interface Loop {
  config: TrainConfig;
  task: Task;
  dir: string;
  p: Prepared;
  trainer: Trainer;
  log: RunLog;
  progress: Progress;
  options: RunOptions;
  seed: number;
  analysis: RunAnalysis | null;
  /** Where the run stands for fault messages: its folder and last checkpoint. */
  place: RunPlace;
  /** The fingerprint of the run's settings its checkpoints record (settingsFingerprint). */
  settingsSha256: string;
}

/** Whether a stage's backbone tensor `name` (relative) was trained since the last restore. */
function backboneTrainedSince(
  stages: Stage[],
  upTo: number,
  trainer: Trainer,
): (name: string) => boolean {
  let from = 0;
  for (let i = upTo; i > 0; i--) {
    if (stages[i].restoreBackbone) {
      from = i;
      break;
    }
  }
  const tests: ((name: string) => boolean)[] = [];
  for (let i = from; i <= upTo; i++) {
    const b = stages[i].trains.backbone;
    if (b === "all") return () => true;
    if (b === "peft" && trainer.peft) tests.push(trainer.peft.trainsBackbone);
  }
  // ehft-reserve keeps the PEFT-trained tensors through its restore.
  if (from > 0 && !stages[from].dropPeft && trainer.peft) tests.push(trainer.peft.trainsBackbone);
  return (name) => tests.some((t) => t(name));
}

/**
 * What a checkpoint in stage `s` keeps of the parameters, by name: the backbone's tensors trained
 * since its last restore (the others are the pretrained ones), the head's, the PEFT method's.
 */
function checkpointParameters(l: Loop, s: number): Map<string, Tensor> {
  const trainer = l.trainer;
  const keep = backboneTrainedSince(l.p.stages, s, trainer);
  return new Map([
    ...[...encoderParameters(trainer.encoder.params)]
      .filter(([name]) => keep(name))
      .map(([name, t]) => [`${l.p.model.config.prefix}.${name}`, t] as const),
    ...trainer.headParameters(),
    ...trainer.peftParameters(),
  ]);
}

async function trainStages(
  l: Loop,
  checkpoint: LoadedCheckpoint | null,
): Promise<RunMetrics> {
  const { p, trainer, config, task } = l;
  const stages = p.stages;
  const lastStage = stages.length - 1;
  const stream = new DataStream(p.train.examples.length, config.batchSize, l.seed, config.shuffle);
  let best: MetricValues = checkpoint?.state.best ?? {};
  let last: MetricValues | null = checkpoint?.state.last ?? null;
  const startStage = checkpoint?.state.stage ?? 0;
  const adamw = adamwSettings(config);

  // A resumed run goes on counting the skips in a row its log ended with, as the run would have.
  let consecutiveSkips = l.log.trailingSkips;
  // A resumed run replays the hand-offs of the stages it already passed.
  for (let s = 1; s < startStage; s++) await trainer.handOff(stages[s], p.model.weights);

  let stageStart = 0;
  for (let s = 0; s < startStage; s++) stageStart += stages[s].steps;

  for (let s = startStage; s < stages.length; s++) {
    const stage = stages[s];
    const resumed = checkpoint !== null && s === startStage;
    if (s > 0) await trainer.handOff(stage, p.model.weights);
    trainer.beginStage(stage.trains, adamw);
    let first = 0;
    if (resumed) {
      const targets = new Map([
        ...trainer.backboneParameters(),
        ...trainer.headParameters(),
        ...trainer.peftParameters(),
      ]);
      const moments = trainer.optimizer!.moments();
      // All of it, or a checkpoint cut down (by hand, a tool) resumed from pretrained weights
      // and zero moments without a word.
      checkWholeCheckpoint(
        `${l.dir}/${CHECKPOINT_FILE}`,
        checkpoint,
        checkpointParameters(l, s).keys(),
        moments.keys(),
      );
      uploadByName("--resume", checkpoint.params, targets);
      const ms = new Map([...moments].map(([n, t]) => [n, t.m]));
      const vs = new Map([...moments].map(([n, t]) => [n, t.v]));
      uploadByName("--resume", new Map([...checkpoint.moments].map(([n, x]) => [n, x.m])), ms);
      uploadByName("--resume", new Map([...checkpoint.moments].map(([n, x]) => [n, x.v])), vs);
      const { adamStep, adamApplied = adamStep } = checkpoint.state;
      if (adamApplied !== adamStep && !trainer.lossScaleState) {
        throw new Error(
          `${l.dir}/${CHECKPOINT_FILE}: its training state has adamApplied ${adamApplied} and ` +
            `adamStep ${adamStep}, but a run without loss scaling skips no step`,
        );
      }
      trainer.optimizer!.resumeAt(adamStep, adamApplied);
      trainer.restoreLossScale(checkpoint.lossScale);
      // Uploaded: the host copies go (RoBERTa-large's weights and moments, 4.3 GB, were held
      // for the rest of the run, a resumed run's peak 14 GB against a fresh one's 8).
      checkpoint.params.clear();
      checkpoint.moments.clear();
      first = checkpoint.state.stageStep;
      l.progress.line(`resumed at step ${checkpoint.state.step} (${stage.name})`);
      // Past Stage 1, whose snapshot is gone (removed by hand): said, as it cannot be made again.
      const stage1 = `${l.dir}/stage1`;
      if (
        checkpoint.state.stage > 0 && l.p.stages[0].name === "stage1" && !(await exists(stage1))
      ) {
        l.progress.line(
          `--resume: ${stage1} is missing (removed since?): Stage 1's snapshot cannot be made ` +
            `again (its weights are gone from this run); the run goes on without it`,
        );
      }
    } else {
      l.progress.line(
        `${stage.name}: ${plural(stage.steps, "step")} at lr ${stage.lr} (${
          describeTrains(stage)
        })`,
      );
    }
    await l.options.onStageStart?.({ stage, index: s, trainer });
    if (l.analysis) {
      if (s === 0) await l.analysis.start();
      await l.analysis.stageStart(s, stageStart);
    }

    const schedule: Schedule = {
      name: config.schedule,
      lr: stage.lr,
      total: stage.steps,
      warmupRatio: config.warmupRatio,
    };
    let pending: { stage: string; step: number; lr: number }[] = [];
    let lastLoss: number | null = null;
    let lossScale: number | undefined;
    const flush = async () => {
      const stats = await trainer.takeStats();
      if (stats.length !== pending.length) throw new Error("training log out of step");
      const logged = pending;
      pending = [];
      // Before anything else uses this block's weights (an evaluation, a checkpoint). The log
      // ends at a step that stops the run: the steps after it (up to a block's, on the GPU
      // already) trained diverged weights.
      let fault: RunFaultError | null = null;
      try {
        consecutiveSkips = checkStepStats(logged, stats, consecutiveSkips, l.place);
      } catch (e) {
        if (!(e instanceof RunFaultError)) throw e;
        fault = e;
      }
      const kept = fault?.at === undefined ? logged.length : fault.at + 1;
      await l.log.write(
        logged.slice(0, kept).map((x, i) => ({
          stage: x.stage,
          step: x.step,
          loss: stats[i].loss,
          lr: x.lr,
          grad_norm: stats[i].gradNorm,
          ...(stats[i].lossScale === undefined
            ? {}
            : { loss_scale: stats[i].lossScale, skipped: stats[i].skipped }),
        })),
      );
      if (fault) throw fault;
      if (stats.length > 0) {
        // The block's mean loss, as pretrain.ts shows it: one step's loss swings with its batch
        // (a line showed 2.53 where its 32 steps' mean was 10.85). f16's skipped steps (a
        // non-finite loss) are left out; a block skipped whole shows its last loss.
        const counted = stats.filter((x) => !x.skipped && Number.isFinite(x.loss));
        lastLoss = counted.length === 0
          ? stats[stats.length - 1].loss
          : counted.reduce((a, x) => a + x.loss, 0) / counted.length;
        lossScale = stats[stats.length - 1].lossScale ?? lossScale;
        l.progress.logged(stage.name, logged[logged.length - 1].step, lastLoss);
      }
    };

    // What step j of the stage ends with: an evaluation (periodic, a stage's end, the run's end)
    // and Stage 1's save.
    const ends = (j: number) => {
      const stageEnd = j + 1 === stage.steps;
      const evaluates = (p.evalEvery > 0 && (stageStart + j + 1) % p.evalEvery === 0) ||
        (stageEnd && (s === lastStage || p.evalEvery > 0));
      return { evaluates, savesStage1: stageEnd && s === 0 && stages.length > 1 };
    };
    const endStep = async (j: number) => {
      const done = stageStart + j + 1;
      const { evaluates, savesStage1 } = ends(j);
      if (evaluates) {
        await flush();
        // A SIGTERM taken while the flush waited for the GPU: the loop checks right after it
        // hands a step over, before the GPU has run it, so one that came during the step's
        // GPU work reached its listener only here, and the run's last step went on to its
        // evaluation and saves (exit 0, after the grace period a scheduler allowed).
        const asked = stopRequested();
        if (asked) {
          await keepCheckpoint(j, true);
          await asked();
        }
        const classes = task.labels.length > 0 ? task.labels.length : undefined;
        const scored = await evaluate(trainer, p.devBatches, p.gold, task.metrics, classes).catch(
          (e) => {
            if (!(e instanceof NonFiniteOutputsError)) throw e;
            const where = `step ${done} (${stage.name})`;
            const f16 = config.precision === "f16";
            throw nonFiniteOutputsFault(where, task.devSplit, e.message, l.place, f16);
          },
        );
        const metrics = scored.metrics;
        last = metrics;
        // Only the final stage's evaluations count for the best score (the model it reports).
        if (s === lastStage) best = updateBest(best, metrics);
        const oneClass = scored.oneClass === null
          ? null
          : task.labels[scored.oneClass] ?? String(scored.oneClass);
        await l.log.write([{
          stage: stage.name,
          step: done,
          split: task.devSplit,
          metrics,
          ...(oneClass === null ? {} : { one_class: oneClass }),
        }]);
        l.progress.line(
          `${stage.name} step ${done}: ${
            Object.entries(metrics).map(([k, v]) => `${k} ${v === null ? "nan" : v.toFixed(4)}`)
              .join(", ")
          }${oneClass === null ? "" : ` (every prediction "${oneClass}")`}`,
        );
      }
      if (savesStage1) await saveStage1(l);
    };
    // The checkpoint after step j; `owed`: before what the step ends with (endStep).
    const keepCheckpoint = async (j: number, owed: boolean) => {
      await flush();
      const state: TrainingState = {
        stage: s,
        stageStep: j + 1,
        step: stageStart + j + 1,
        adamStep: trainer.optimizer!.step,
        adamApplied: await trainer.optimizer!.appliedSteps(),
        best,
        last,
        logLines: l.log.lines,
        ...(owed ? { owed } : {}),
        settingsSha256: l.settingsSha256,
      };
      await l.log.sync();
      await writeTrainingCheckpoint(`${l.dir}/${CHECKPOINT_FILE}`, state, {
        params: checkpointParameters(l, s),
        moments: trainer.optimizer!.moments(),
        lossScale: trainer.lossScaleState,
      });
      l.place.checkpoint = { path: `${l.dir}/${CHECKPOINT_FILE}`, step: state.step };
    };

    // A run a SIGTERM stopped before its step's end does that end first.
    if (resumed && checkpoint.state.owed) await endStep(first - 1);
    const micro = microBatchSize(config);
    for (let j = first; j < stage.steps; j++) {
      const step = stageStart + j;
      const examples = stream.examples(step).map((i) => p.train.examples[i]);
      // With --grad-accum, the step's examples in order, in parts of at most a micro-batch (an
      // epoch's short last batch in fewer parts).
      const parts = [];
      for (let i = 0; i < examples.length; i += micro) {
        parts.push(assembleBatch(p.model.config, task.loss, examples.slice(i, i + micro)));
      }
      const batch = parts[0];
      const lr = learningRate(schedule, j);
      await l.analysis?.beforeStep();
      const signals = signalTurn();
      await trainer.step(parts, lr, step);
      await signals();
      const done = step + 1;
      await l.analysis?.afterStep(done, batch);
      pending.push({ stage: stage.name, step: done, lr });
      if (pending.length >= LOG_BLOCK) await flush();
      l.progress.step(stage.name, done, lastLoss);

      // A SIGTERM's stop: a checkpoint at this step first, so the resumed run loses none. What
      // the step ends with is left to the resumed run: a long dev evaluation could outlast the
      // grace period a scheduler gives before its SIGKILL.
      const early = stopRequested();
      const { evaluates, savesStage1 } = ends(j);
      if (early && (evaluates || savesStage1)) {
        await keepCheckpoint(j, true);
        await early();
      }
      await endStep(j);
      // One that came during the run's last evaluation lets the run end, results written.
      const runEnd = j + 1 === stage.steps && s === lastStage;
      const periodic = !runEnd && p.checkpointEvery > 0 && done % p.checkpointEvery === 0;
      if (periodic) await keepCheckpoint(j, false);
      // Asked for before or during that write: the checkpoint kept is this step's.
      const stop = runEnd ? null : stopRequested();
      if (stop && !periodic) await keepCheckpoint(j, false);
      if (stop) await stop();
    }
    await flush();
    // f16: the steps the loss scaler skipped are in log.jsonl; a stage that lost some (or all:
    // it trained nothing, and would end without a word) says so.
    const skipped = l.log.skippedIn(stage.name);
    if (skipped > 0) {
      l.progress.line(
        `${stage.name}: ${skipped} of its ${stage.steps} steps skipped (non-finite gradients${
          lossScale === undefined ? "" : `; loss scale at the last step ${lossScale}`
        })${skipped >= stage.steps ? ": none of them changed the weights" : ""}`,
      );
    }
    stageStart += stage.steps;
    await l.analysis?.stageEnd(s, stageStart);
  }
  return { final: last ?? {}, best };
}

function describeTrains(stage: Stage): string {
  const parts = ["head"];
  if (stage.trains.backbone === "all") parts.push("backbone");
  if (stage.trains.peft) parts.push("PEFT");
  if (stage.restoreBackbone) parts.push("backbone restored");
  if (stage.dropPeft) parts.push("PEFT dropped");
  return parts.join(", ");
}

function modelMetadata(
  l: { config: TrainConfig; task: Task; trainer: Trainer; p: Prepared },
  stage: string,
): Record<string, string> {
  const c = l.config;
  const meta: Record<string, string> = {
    task: l.task.name,
    strategy: c.strategy,
    stage,
    // The length the examples were cut at: predict.ts's default, so its outputs are the run's.
    max_length: String(l.p.maxLength),
  };
  // The method that ran: config.peft's, or one of one's own (RunOptions.peft).
  const method = l.trainer.peft?.name ?? c.peft;
  if (method) meta.peft = method;
  if (method === "lora") {
    Object.assign(meta, { lora_r: String(c.loraR), lora_alpha: String(c.loraAlpha) });
  }
  if (method === "prefix") meta.prefix_length = String(c.prefixLength);
  return meta;
}

/** stage1/: the backbone as Stage 1 left it, the head, and the PEFT method's own tensors. */
async function saveStage1(l: Loop): Promise<void> {
  const dir = `${l.dir}/stage1`;
  const { trainer, p } = l;
  await saveModel(dir, {
    config: p.model.config,
    backbone: encoderParameters(trainer.encoder.params),
    head: trainer.headParameters(),
    extra: trainer.peftParameters(),
    metadata: modelMetadata(l, "stage1"),
  });
  await writeTokenizer(p.model, dir);
}

/**
 * model/: the final model. LoRA still active is merged into the weights of model/ and, when the
 * backbone stayed frozen (`peft`), also saved as a Hugging Face PEFT adapter (adapter/, the head
 * beside it in adapter/head.safetensors): an adapter is a change to its frozen base model, so a
 * run whose last stage trained the backbone too (ehft-reserve) has none (its factors hold only on
 * that stage's weights, which model/ holds merged). Prefix rows cannot be merged and go into
 * model.safetensors under their own names. The metadata's "peft_state" says which.
 */
async function saveFinalModel(
  dir: string,
  config: TrainConfig,
  task: Task,
  p: Prepared,
  trainer: Trainer,
): Promise<void> {
  const peft = trainer.peft;
  const active = peft !== null && (trainer.trains?.peft ?? false);
  const metadata = modelMetadata({ config, task, trainer, p }, "final");
  let extra = new Map<string, Tensor>();
  if (!config.peft) {
    metadata.peft_state = "none";
  } else if (!active) {
    metadata.peft_state = "dropped";
  } else if (peft.name === "lora") {
    if (trainer.trains?.backbone !== "all") {
      await saveLoraAdapter(`${dir}/adapter`, peft, p.model.config, { baseModel: config.model });
      const head: Parameters<typeof writeSafetensors>[1] = {};
      for (const [name, t] of trainer.headParameters()) {
        head[name] = {
          dtype: "F32",
          shape: [...t.shape],
          data: (await t.download()) as Float32Array,
        };
      }
      await writeSafetensors(`${dir}/adapter/head.safetensors`, head, { task: task.name });
    }
    const rec = new Recorder(trainer.gpu);
    mergeLora(rec, peft, trainer.encoder.params);
    await rec.submit();
    trainer.encoder.setHooks(null);
    metadata.peft_state = "merged";
  } else if (peft.name === "bitfit") {
    metadata.peft_state = "in_backbone";
  } else {
    // Prefix rows, or the tensors of a method of one's own: not mergeable, kept by name.
    extra = trainer.peftParameters();
    metadata.peft_state = "separate";
  }
  await saveModel(`${dir}/model`, {
    config: p.model.config,
    backbone: encoderParameters(trainer.encoder.params),
    head: trainer.headParameters(),
    extra,
    metadata,
  });
  await writeTokenizer(p.model, `${dir}/model`);
}
