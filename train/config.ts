// A training run's settings: the flags of train.ts (and of the task scripts, which add a recipe
// of defaults) turned into one `TrainConfig`, the object runTraining takes and run.json records.
//
// Precedence: what the user typed, then the recipe, then the defaults below; and defaults never
// conflict with what the user typed. A recipe's strategy-specific settings (its PEFT method and
// learning rates, its stage-1 ratio) are dropped when the user types another strategy, and its
// stage-1 learning rate when the user types another PEFT method; an explicit `--strategy ft`
// simply drops a default `--peft`. Only contradictions the user typed are errors (`--peft lora
// --strategy ft`, `--stage1-lr`/`--stage1-ratio` with a one-stage strategy, `--epochs` with
// `--max-steps`, `--resume` with `--overwrite` or `--analysis`, `--grad-accum` above
// `--batch-size` or with `--analysis`, `--lora-r`/`--lora-alpha` when the run's method is not
// LoRA, `--prefix-length` when it is not prefix-tuning, `--retune` with `--no-autotune`). How
// flags are written (unknown ones, a flag given twice: the last wins, ...): train/flags.ts.

import type { Precision } from "../model/encoder.ts";
import type { PeftName } from "../peft/method.ts";
import { PEFT_DEFAULTS, PEFT_NAMES } from "../peft/method.ts";
import {
  checkRevisionTarget,
  choiceFlag,
  closestFlag,
  FlagError,
  intFlag,
  parseFlags,
  TUNE_FLAGS,
  type TuneFlags,
  tuneFlags,
} from "./flags.ts";
import { SCHEDULE_NAMES, type ScheduleName } from "./schedule.ts";
import {
  defaultMainLr,
  defaultStage1Lr,
  isTwoStage,
  STRATEGY_NAMES,
  type StrategyName,
  usesPeft,
} from "./strategy.ts";
import { ADAMW_DEFAULTS } from "./optimizer.ts";
import { checkRevision } from "../model/hub.ts";

/** Every setting of a training run (`parseTrainArgs`), as `runTraining` takes it. */
export interface TrainConfig {
  /** Task name (the entry point resolves it to a Task). */
  task: string;
  /** A local model folder or a Hugging Face hub id. */
  model: string;
  /** Hub revision (branch, tag or commit), or null. */
  revision: string | null;
  /** The task's data folder (or file). */
  data: string;
  /** How the run trains: ft, lp, lpft, peft, ehft or ehft-reserve. */
  strategy: StrategyName;
  /** The PEFT method; null for strategies without one (ft, lp, lpft). */
  peft: PeftName | null;
  /** The first seed; `seeds` runs use seed, seed + 1, ... */
  seed: number;
  /** Seeds to run (each into out/seed-<seed>/ when more than 1). */
  seeds: number;
  /** Budget in epochs, or null when `maxSteps` gives it. */
  epochs: number | null;
  /** Budget in optimizer steps (all stages together), or null. */
  maxSteps: number | null;
  /** Two-stage strategies: stage 1's share of the steps. */
  stage1Ratio: number;
  /** Single-stage strategies: their lr; two-stage ones: stage 2's. */
  lr: number;
  /** Two-stage strategies: stage 1's lr; null otherwise. */
  stage1Lr: number | null;
  /** Examples per optimizer step. */
  batchSize: number;
  /**
   * Micro-batches per optimizer step: each step's examples are run through the model in this many
   * parts of at most ⌈batchSize / gradAccum⌉ examples, their gradients summed before the update
   * (memory for a smaller batch, the update of the whole one). 1: the whole batch at once.
   */
  gradAccum: number;
  /** Requested tokens per row, or null for the model's limit (always clamped to it minus P). */
  maxLength: number | null;
  /** Dropout override, or null for the model config's. */
  dropout: number | null;
  /**
   * "f32", or "f16": f16 weight copies and activations around the matrix products, f32 master
   * weights and optimizer state, dynamic loss scaling (model/encoder.ts EncoderOptions.precision,
   * kernels/loss_scale.ts). Needs an adapter with shader-f16.
   */
  precision: Precision;
  /**
   * With precision "f16": the encoder's matrix products (linear layers, attention) multiply and
   * sum in f16 (runs of 16 in f16, their totals in f32: model/encoder.ts EncoderOptions.f16Math),
   * for GPUs whose f16 arithmetic is twice their f32 rate. Changes the results a little (some 2^-9
   * relative per product). Optional for a library caller's config: default false.
   */
  f16Math?: boolean;
  /** Shuffle the training examples each epoch (seeded); false keeps file order. */
  shuffle: boolean;
  /** Learning-rate schedule of each stage. */
  schedule: ScheduleName;
  /** Warmup share of each stage's updates. */
  warmupRatio: number;
  /** AdamW's decoupled weight decay (not on biases and LayerNorm weights). */
  weightDecay: number;
  /** Global gradient-norm clip; 0 disables it. */
  maxGradNorm: number;
  /** LoRA rank r. */
  loraR: number;
  /** LoRA α; the low-rank term is scaled by α / r. */
  loraAlpha: number;
  /** Prefix tuning's prefix rows per layer, P. */
  prefixLength: number;
  /** A safetensors file whose head.* tensors initialise the head, or null for a fresh head. */
  head: string | null;
  /** Evaluate every N steps; 0 never (only at the end); null each epoch. */
  evalEvery: number | null;
  /** Checkpoint every N steps; 0 never; null at each periodic evaluation (or each epoch). */
  checkpointEvery: number | null;
  /** The run folder everything is written to. */
  out: string;
  /** Continue the run already in `out` (its settings must match). */
  resume: boolean;
  /** Replace a run already in `out`. */
  overwrite: boolean;
  /**
   * Measure feature change, weight distance, head features and convergence, and draw them
   * (train/analysis.ts) into <out>/analysis/. Changes nothing in the training itself.
   */
  analysis: boolean;
}

/**
 * Every TrainConfig key (the type makes the list whole): a library caller's misspelt key
 * (`learningRate` for `lr`) is refused by checkConfigValues rather than trained without.
 */
const CONFIG_KEYS: Record<keyof TrainConfig, true> = {
  task: true,
  model: true,
  revision: true,
  data: true,
  strategy: true,
  peft: true,
  seed: true,
  seeds: true,
  epochs: true,
  maxSteps: true,
  stage1Ratio: true,
  lr: true,
  stage1Lr: true,
  batchSize: true,
  gradAccum: true,
  maxLength: true,
  dropout: true,
  precision: true,
  f16Math: true,
  shuffle: true,
  schedule: true,
  warmupRatio: true,
  weightDecay: true,
  maxGradNorm: true,
  loraR: true,
  loraAlpha: true,
  prefixLength: true,
  head: true,
  evalEvery: true,
  checkpointEvery: true,
  out: true,
  resume: true,
  overwrite: true,
  analysis: true,
};

/** Other tools' names for a setting, too far from ours for closestFlag to suggest it. */
const KEY_ALIASES: Record<string, keyof TrainConfig> = {
  learningRate: "lr",
  learning_rate: "lr",
  numEpochs: "epochs",
  num_train_epochs: "epochs",
  maxSeqLength: "maxLength",
  max_seq_length: "maxLength",
};

/** The settings that define a run (what a resumed run must agree on). */
export type RunSettings = Omit<TrainConfig, "resume" | "overwrite" | "analysis">;

/** Defaults of the settings that are not strategy- or method-specific. */
export const TRAIN_DEFAULTS = {
  strategy: "ehft" as StrategyName,
  peft: "bitfit" as PeftName,
  seed: 42,
  seeds: 1,
  epochs: 10,
  stage1Ratio: 0.1,
  batchSize: 32,
  gradAccum: 1,
  schedule: "linear" as ScheduleName,
  warmupRatio: 0.1,
  weightDecay: ADAMW_DEFAULTS.weightDecay,
  maxGradNorm: ADAMW_DEFAULTS.maxGradNorm,
  loraR: PEFT_DEFAULTS.loraR,
  loraAlpha: PEFT_DEFAULTS.loraAlpha,
  prefixLength: PEFT_DEFAULTS.prefixLength,
};

/** A task script's defaults: any setting, as if typed, but yielding to what the user typed. */
export type Recipe = Partial<RunSettings & { analysis: boolean }>;

export const TRAIN_FLAGS = {
  task: { type: "string" },
  model: { type: "string" },
  revision: { type: "string" },
  data: { type: "string" },
  strategy: { type: "string" },
  peft: { type: "string" },
  seed: { type: "string" },
  seeds: { type: "string" },
  epochs: { type: "string" },
  "max-steps": { type: "string" },
  "stage1-ratio": { type: "string" },
  lr: { type: "string" },
  "stage1-lr": { type: "string" },
  "batch-size": { type: "string" },
  "grad-accum": { type: "string" },
  "max-length": { type: "string" },
  dropout: { type: "string" },
  precision: { type: "string" },
  "f16-math": { type: "boolean" },
  "no-shuffle": { type: "boolean" },
  schedule: { type: "string" },
  "warmup-ratio": { type: "string" },
  "weight-decay": { type: "string" },
  "max-grad-norm": { type: "string" },
  "lora-r": { type: "string" },
  "lora-alpha": { type: "string" },
  "prefix-length": { type: "string" },
  head: { type: "string" },
  "eval-every": { type: "string" },
  "checkpoint-every": { type: "string" },
  out: { type: "string" },
  resume: { type: "boolean" },
  overwrite: { type: "boolean" },
  analysis: { type: "boolean" },
  // After training: the leaderboard file of the test split (train/submission.ts); not a setting
  // of the run, so not in TrainConfig (it reads as `typed.has("predict-test")`).
  "predict-test": { type: "boolean" },
  // Instead of training: read and check the data, print a summary (train/dry_run.ts).
  "dry-run": { type: "boolean" },
  // The GEMM autotune (--no-autotune, --retune, --tune-cache): how this machine runs, not a
  // setting of the run (every choice gives the same results), so not in TrainConfig either.
  ...TUNE_FLAGS,
} as const;

/** The largest --batch-size (predict.ts's limit too). */
export const MAX_BATCH_SIZE = 65536;

/** The largest --seed: seeds are u32 (a run's seeds, seed … seed + seeds − 1, must all fit). */
export const MAX_SEED = 2 ** 32 - 1;

/**
 * A number as a flag takes it: plain decimal, a sign, a fraction and an exponent allowed ("2e-5",
 * ".5", "-1", "1."), as the data files' numbers (tasks/stsb.ts); not what else JavaScript's
 * Number() reads ("0x1", "0b1", "0o1", "Infinity", "").
 */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** A number flag within [min, max] (`open` excludes the bounds); plain decimal only. */
export function numberFlag(
  name: string,
  value: string | undefined,
  fallback: number,
  range: { min?: number; max?: number; minOpen?: boolean; maxOpen?: boolean } = {},
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  const { min = -Infinity, max = Infinity } = range;
  const ok = DECIMAL.test(value.trim()) && Number.isFinite(n) &&
    (range.minOpen ? n > min : n >= min) && (range.maxOpen ? n < max : n <= max);
  if (!ok) {
    const lo = min === -Infinity ? "" : `${range.minOpen ? ">" : "≥"} ${min}`;
    const hi = max === Infinity ? "" : `${range.maxOpen ? "<" : "≤"} ${max}`;
    const bounds = [lo, hi].filter(Boolean).join(" and ");
    throw new FlagError(
      `--${name}: expected a number${bounds ? ` ${bounds}` : ""}, got "${value}"`,
    );
  }
  return n;
}

const PRECISIONS: readonly Precision[] = ["f32", "f16"];

/** What `parseTrainArgs` returns: the run's settings and how the flags were given. */
export interface ParsedTrainArgs {
  /** The resolved settings. */
  config: TrainConfig;
  /** Flags the user typed (names without dashes). */
  typed: Set<string>;
  /** The GEMM autotune's flags. */
  tune: TuneFlags;
}

/**
 * Parses train.ts's arguments over a recipe. `taskData` gives a task's default data folder, if
 * it has one (asked only when neither the user nor the recipe names --data).
 */
export function parseTrainArgs(
  args: string[],
  recipe: Recipe = {},
  taskData: (task: string) => string | undefined = () => undefined,
): ParsedTrainArgs {
  const f = parseFlags(TRAIN_FLAGS, args);
  const typed = new Set(
    Object.entries(f).filter(([, v]) => v !== undefined && v !== false).map(([k]) => k),
  );
  const r: Recipe = { ...recipe };

  const task = f.task ?? r.task;
  if (!task) throw new FlagError("--task is required");
  // A task name becomes part of the default --out folder: a plain name, never a path.
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(task)) {
    throw new FlagError(`--task: ${JSON.stringify(task)} is not a task name (like rte)`);
  }
  if (f.task !== undefined && r.task !== undefined && f.task !== r.task) {
    throw new FlagError(`--task: this script trains ${r.task}, not ${f.task}`);
  }
  const model = f.model ?? r.model;
  if (!model) throw new FlagError(`--model is required: ${MODEL_CHOICES}`);

  // The strategy first: the recipe's strategy-specific settings yield to another typed one. Its
  // lr is the full fine-tuning's (ft's, and a two-stage strategy's last stage): kept for another
  // strategy that fine-tunes the whole model last (a baseline beside the recipe's run trains at
  // its lr), not for lp or peft, whose lr is the head's or the method's. Its PEFT method stays
  // for a strategy that uses one; its Stage-1 split and lr where they mean the same.
  const strategy = f.strategy !== undefined
    ? choiceFlag("strategy", f.strategy, STRATEGY_NAMES)
    : r.strategy ?? TRAIN_DEFAULTS.strategy;
  if (f.strategy !== undefined && r.strategy !== undefined && r.strategy !== strategy) {
    const fullLast = (s: StrategyName) => s === "ft" || isTwoStage(s);
    const peftFirst = (s: StrategyName) => s === "ehft" || s === "ehft-reserve";
    if (!(fullLast(r.strategy) && fullLast(strategy))) delete r.lr;
    if (!usesPeft(strategy)) delete r.peft;
    if (!(peftFirst(r.strategy) && peftFirst(strategy))) delete r.stage1Lr;
    if (!(isTwoStage(r.strategy) && isTwoStage(strategy))) delete r.stage1Ratio;
  }
  let peft: PeftName | null = null;
  if (f.peft !== undefined) {
    const typedPeft = choiceFlag("peft", f.peft.toLowerCase(), PEFT_NAMES);
    if (!usesPeft(strategy)) {
      throw new FlagError(
        `--peft ${typedPeft}: strategy ${strategy} uses no PEFT method (use --strategy peft, ` +
          `ehft or ehft-reserve)`,
      );
    }
    if (r.peft !== undefined && r.peft !== typedPeft) delete r.stage1Lr;
    peft = typedPeft;
  } else if (usesPeft(strategy)) {
    peft = r.peft ?? TRAIN_DEFAULTS.peft;
  }

  const twoStage = isTwoStage(strategy);
  const oneStage = {
    "stage1-lr": "use --lr for its learning rate",
    "stage1-ratio": "it trains for the whole budget, --epochs or --max-steps",
  } as const;
  for (const [name, hint] of Object.entries(oneStage) as [keyof typeof oneStage, string][]) {
    if (f[name] !== undefined && !twoStage) {
      throw new FlagError(`--${name}: strategy ${strategy} has one stage (${hint})`);
    }
  }
  const positive = { min: 0, minOpen: true };
  const lr = numberFlag("lr", f.lr, r.lr ?? defaultMainLr(strategy, peft), positive);
  const stage1Lr = twoStage
    ? numberFlag(
      "stage1-lr",
      f["stage1-lr"],
      r.stage1Lr ?? defaultStage1Lr(strategy, peft),
      positive,
    )
    : null;
  const stage1Ratio = numberFlag(
    "stage1-ratio",
    f["stage1-ratio"],
    r.stage1Ratio ?? TRAIN_DEFAULTS.stage1Ratio,
    { min: 0, max: 1, minOpen: true, maxOpen: true },
  );

  if (f.epochs !== undefined && f["max-steps"] !== undefined) {
    throw new FlagError("--epochs and --max-steps: give one budget, not both");
  }
  let epochs: number | null = null;
  let maxSteps: number | null = null;
  if (f["max-steps"] !== undefined) {
    maxSteps = intFlag("max-steps", f["max-steps"], 0, 1);
  } else if (f.epochs !== undefined) {
    epochs = intFlag("epochs", f.epochs, 0, 1);
  } else if (r.maxSteps != null) {
    maxSteps = r.maxSteps;
  } else {
    epochs = r.epochs ?? TRAIN_DEFAULTS.epochs;
  }

  const data = f.data ?? r.data ?? taskData(task);
  if (!data) throw new FlagError("--data is required (this task has no default data folder)");

  const optionalInt = (name: keyof typeof TRAIN_FLAGS, fallback: number | null, min: number) => {
    const v = f[name] as string | undefined;
    return v === undefined ? fallback : intFlag(name, v, 0, min);
  };
  const config: TrainConfig = {
    task,
    model,
    revision: f.revision ?? r.revision ?? null,
    data,
    strategy,
    peft,
    seed: intFlag("seed", f.seed, r.seed ?? TRAIN_DEFAULTS.seed, 0, MAX_SEED),
    seeds: intFlag("seeds", f.seeds, r.seeds ?? TRAIN_DEFAULTS.seeds, 1, MAX_SEEDS),
    epochs,
    maxSteps,
    stage1Ratio,
    lr,
    stage1Lr,
    batchSize: intFlag("batch-size", f["batch-size"], r.batchSize ?? TRAIN_DEFAULTS.batchSize, 1),
    gradAccum: intFlag("grad-accum", f["grad-accum"], r.gradAccum ?? TRAIN_DEFAULTS.gradAccum, 1),
    maxLength: optionalInt("max-length", r.maxLength ?? null, 2),
    dropout: f.dropout === undefined
      ? r.dropout ?? null
      : numberFlag("dropout", f.dropout, 0, { min: 0, max: 1, maxOpen: true }),
    precision: f.precision === undefined
      ? r.precision ?? "f32"
      : choiceFlag("precision", f.precision, PRECISIONS),
    f16Math: f["f16-math"] ? true : r.f16Math ?? false,
    shuffle: f["no-shuffle"] ? false : r.shuffle ?? true,
    schedule: f.schedule === undefined
      ? r.schedule ?? TRAIN_DEFAULTS.schedule
      : choiceFlag("schedule", f.schedule, SCHEDULE_NAMES),
    warmupRatio: numberFlag(
      "warmup-ratio",
      f["warmup-ratio"],
      r.warmupRatio ?? TRAIN_DEFAULTS.warmupRatio,
      { min: 0, max: 1, maxOpen: true },
    ),
    weightDecay: numberFlag(
      "weight-decay",
      f["weight-decay"],
      r.weightDecay ?? TRAIN_DEFAULTS.weightDecay,
      { min: 0 },
    ),
    maxGradNorm: numberFlag(
      "max-grad-norm",
      f["max-grad-norm"],
      r.maxGradNorm ?? TRAIN_DEFAULTS.maxGradNorm,
      { min: 0 },
    ),
    loraR: intFlag("lora-r", f["lora-r"], r.loraR ?? TRAIN_DEFAULTS.loraR, 1),
    loraAlpha: numberFlag(
      "lora-alpha",
      f["lora-alpha"],
      r.loraAlpha ?? TRAIN_DEFAULTS.loraAlpha,
      positive,
    ),
    prefixLength: intFlag(
      "prefix-length",
      f["prefix-length"],
      r.prefixLength ?? TRAIN_DEFAULTS.prefixLength,
      1,
    ),
    head: f.head ?? r.head ?? null,
    evalEvery: optionalInt("eval-every", r.evalEvery ?? null, 0),
    checkpointEvery: optionalInt("checkpoint-every", r.checkpointEvery ?? null, 0),
    out: f.out ?? r.out ?? defaultOut(task, strategy, peft),
    resume: f.resume ?? false,
    overwrite: f.overwrite ?? false,
    analysis: f.analysis ?? r.analysis ?? false,
  };
  // Seeds past the range would wrap (deriveSeed works modulo 2^32): seed-4294967296 would train
  // exactly as seed-0 did.
  const lastSeed = config.seed + config.seeds - 1;
  if (lastSeed > MAX_SEED) {
    throw new FlagError(
      `--seed ${config.seed} with --seeds ${config.seeds}: the last seed, ${lastSeed}, is past ` +
        `${MAX_SEED} (the largest --seed for ${config.seeds} seeds is ` +
        `${MAX_SEED - config.seeds + 1})`,
    );
  }
  if (config.f16Math && config.precision !== "f16") {
    throw new FlagError(
      `--f16-math needs --precision f16 (its f16 storage and loss scaling); got --precision ` +
        config.precision,
    );
  }
  if (config.batchSize > MAX_BATCH_SIZE) {
    throw new FlagError(
      `--batch-size: expected an integer ≤ ${MAX_BATCH_SIZE}, got "${config.batchSize}"`,
    );
  }
  if (config.revision !== null) {
    try {
      checkRevision(config.revision);
    } catch (e) {
      throw new FlagError(`--revision: ${(e as Error).message}`);
    }
    checkRevisionTarget(config.model, config.revision);
  }
  // A method's settings typed for a run that does not use the method (a recipe's never conflict).
  const methodFlags = [["lora-r", "lora"], ["lora-alpha", "lora"], ["prefix-length", "prefix"]];
  for (const [name, method] of methodFlags as [keyof typeof f, PeftName][]) {
    if (f[name] === undefined || peft === method) continue;
    const title = method === "lora" ? "LoRA" : "prefix-tuning";
    throw new FlagError(
      peft === null
        ? `--${name}: a ${title} setting, but strategy ${strategy} uses no PEFT method`
        : `--${name}: a ${title} setting, but this run's PEFT method is ${peft} (use --peft ` +
          `${method})`,
    );
  }
  checkRunModes(config);
  if (twoStage && config.maxSteps !== null && config.maxSteps < 2) {
    throw new FlagError(`--max-steps: strategy ${strategy} has two stages, so needs at least 2`);
  }
  checkConfigChoices(config);
  return { config, typed, tune: tuneFlags(f) };
}

/** The most seeds `--seeds` takes. */
export const MAX_SEEDS = 1000;

/** The seeds of a run: seed … seed + seeds − 1. */
export function seedList(config: Pick<TrainConfig, "seed" | "seeds">): number[] {
  return Array.from({ length: config.seeds }, (_, i) => config.seed + i);
}

/** What --model takes, for the errors that ask for one. */
export const MODEL_CHOICES = "a local model folder or a Hugging Face hub id (the paper's " +
  "setting: --model FacebookAI/roberta-large)";

/** A seed's folder in a `--seeds` run, relative to --out. */
export function seedFolder(seed: number): string {
  return `seed-${seed}`;
}

/** The folders a run's results land in: --out itself, or one seed folder per seed in it. */
export function runFolders(config: Pick<TrainConfig, "out" | "seed" | "seeds">): string[] {
  if (config.seeds === 1) return [config.out];
  return seedList(config).map((s) => `${config.out}/${seedFolder(s)}`);
}

/** runs/<task>/<strategy>[-<peft>] */
export function defaultOut(task: string, strategy: StrategyName, peft: PeftName | null): string {
  return `runs/${task}/${strategy}${peft ? `-${peft}` : ""}`;
}

/** The config key a flag gives (`max-steps` → `maxSteps`): its name without the dashes. */
export function settingKey(flag: string): string {
  return flag.replace(/-(\w)/g, (_, ch: string) => ch.toUpperCase());
}

/**
 * The named choices of a config (strategy, PEFT method, schedule, precision), checked once more
 * where they came past the type checker as data: a task script's recipe, or a library caller's
 * config given to runTraining. An unknown strategy would otherwise run as a two-stage PEFT one and
 * fail only once the model is loaded.
 */
export function checkConfigChoices(
  c: Pick<TrainConfig, "strategy" | "peft" | "schedule" | "precision">,
  caller: "flags" | "runTraining" = "flags",
): void {
  const known = (name: string, value: unknown, allowed: readonly string[]) => {
    if (!allowed.includes(value as string)) {
      // A library caller's config is named by its keys, not the flags that give them.
      const key = settingKey(name);
      throw new FlagError(
        caller === "flags"
          ? `--${name}: ${JSON.stringify(value)} is not one of ${allowed.join(", ")}`
          : `runTraining: config.${key} is ${JSON.stringify(value)}, not one of ` +
            allowed.join(", "),
      );
    }
  };
  // A config written by hand in JavaScript may leave out peft (none) or precision (f32).
  const peft = c.peft ?? null;
  known("strategy", c.strategy, STRATEGY_NAMES);
  if (peft !== null) known("peft", peft, PEFT_NAMES);
  known("schedule", c.schedule, SCHEDULE_NAMES);
  known("precision", c.precision ?? "f32", PRECISIONS);
  if (usesPeft(c.strategy) !== (peft !== null)) {
    const [flag, strategy] = caller === "flags"
      ? ["--peft", "--strategy"]
      : ["runTraining: config.peft", "config.strategy"];
    throw new FlagError(
      peft === null
        ? `${flag}: strategy ${c.strategy} needs a PEFT method (${PEFT_NAMES.join(", ")})`
        : `${flag} ${c.peft}: strategy ${c.strategy} uses no PEFT method (use ${strategy} peft, ` +
          `ehft or ehft-reserve)`,
    );
  }
}

/**
 * --resume, --overwrite and --analysis together, and --grad-accum against --batch-size and
 * --analysis, refused alike whether they came from flags or a library caller's config
 * (runTraining checks them too): --overwrite with --resume would remove the run it was asked to
 * continue.
 */
export function checkRunModes(
  config: Pick<TrainConfig, "resume" | "overwrite" | "analysis" | "batchSize"> & {
    gradAccum?: number;
  },
): void {
  if (config.resume && config.overwrite) {
    throw new FlagError("--resume and --overwrite: choose one");
  }
  if (config.resume && config.analysis) {
    throw new FlagError(
      "--analysis with --resume: the pretrained features and weights it compares against are " +
        "taken at the start of a run; start the run again with --overwrite --analysis (a " +
        "finished run's figures not drawn yet: --resume without --analysis draws them)",
    );
  }
  const parts = config.gradAccum ?? 1;
  if (!Number.isSafeInteger(parts) || parts < 1) {
    throw new FlagError(`--grad-accum: expected an integer ≥ 1, got ${JSON.stringify(parts)}`);
  }
  if (parts > config.batchSize) {
    throw new FlagError(
      `--grad-accum ${parts} is more than --batch-size ${config.batchSize}: a micro-batch holds ` +
        `at least one example`,
    );
  }
  if (parts > 1 && config.analysis) {
    throw new FlagError(
      "--analysis with --grad-accum: it measures each step's logits and gradients of the whole " +
        "batch at once; leave out --grad-accum (or --analysis)",
    );
  }
}

/**
 * What a run.json from before a setting was recorded ran with (and a config written by hand in
 * JavaScript that leaves it out runs with): f32, each batch at once.
 */
export const UNRECORDED_SETTINGS: Readonly<Record<string, unknown>> = {
  precision: "f32",
  f16Math: false,
  gradAccum: 1,
};

/**
 * Settings (run.json's, or a library caller's config) as the flags that give them, for
 * parseTrainArgs to check as typed ones: null ones left out, and those the run's strategy and
 * method do not use (run.json keeps every method's, and stage 1's share in a one-stage run;
 * typed they would be refused) returned apart as `unused`. Keys without a flag are left out.
 * `notAValue` makes the error for a value no flag takes.
 */
export function settingsFlags(
  settings: Record<string, unknown>,
  notAValue: (key: string, value: unknown, flag: string) => Error,
): { flags: string[]; unused: Record<string, number> } {
  const flags: string[] = [];
  const unused: Record<string, number> = {};
  for (const [key, value] of Object.entries(settings)) {
    if (value === null || value === undefined) continue;
    if (key === "shuffle") {
      if (value === false) flags.push("--no-shuffle");
      else if (value !== true) throw notAValue(key, value, "--no-shuffle");
      continue;
    }
    if (key === "f16Math") {
      if (value === true) flags.push("--f16-math");
      else if (value !== false) throw notAValue(key, value, "--f16-math");
      continue;
    }
    const flag = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    const spec = (TRAIN_FLAGS as Record<string, { type: string }>)[flag];
    if (spec === undefined || spec.type !== "string") continue;
    if (!(typeof value === "string" || (typeof value === "number" && Number.isFinite(value)))) {
      throw notAValue(key, value, `--${flag}`);
    }
    if (!settingApplies(key, settings)) {
      if (typeof value !== "number") throw notAValue(key, value, `--${flag}`);
      unused[key] = value;
      continue;
    }
    flags.push(`--${flag}=${value}`);
  }
  return { flags, unused };
}

/** Whether a setting is one the strategy and PEFT method in `settings` use. */
function settingApplies(key: string, settings: Record<string, unknown>): boolean {
  if (key === "loraR" || key === "loraAlpha") return settings.peft === "lora";
  if (key === "prefixLength") return settings.peft === "prefix";
  if (key === "stage1Ratio" || key === "stage1Lr") {
    return STRATEGY_NAMES.includes(settings.strategy as StrategyName) &&
      isTwoStage(settings.strategy as StrategyName);
  }
  return true;
}

/**
 * A library caller's config, checked as parseTrainArgs checks flags (runTraining calls it): a
 * value the flag would refuse (a warmup ratio of 5, no seeds, a negative learning rate), both
 * budgets or none, or one of the wrong type is refused on one line before anything is written,
 * instead of training on it or failing at the first step. The task's name is not a flag's here
 * (a task of one's own may be named freely); values a strategy or method does not use are not
 * checked.
 */
export function checkConfigValues(config: TrainConfig): void {
  for (const key of Object.keys(config)) {
    if (Object.hasOwn(CONFIG_KEYS, key)) continue;
    const hint = KEY_ALIASES[key] ?? closestFlag(key, Object.keys(CONFIG_KEYS));
    throw new FlagError(
      `runTraining: config.${key} is not a setting` +
        (hint ? ` (did you mean config.${hint}?)` : " (TrainConfig lists them)"),
    );
  }
  const settings = { ...runSettings(config) } as Record<string, unknown>;
  for (const mode of ["resume", "overwrite", "analysis"] as const) {
    const value = (config as unknown as Record<string, unknown>)[mode];
    if (value !== undefined && typeof value !== "boolean") {
      throw new FlagError(`runTraining: config.${mode} is ${shown(value)}, not true or false`);
    }
  }
  if ((settings.epochs ?? null) === null && (settings.maxSteps ?? null) === null) {
    throw new FlagError("runTraining: config has no budget: give epochs or maxSteps");
  }
  if (typeof settings.out !== "string" || settings.out === "") {
    throw new FlagError(`runTraining: config.out is ${shown(settings.out)}: give the run folder`);
  }
  // A two-stage run's stage 1 takes the main rate when it has none of its own (prepare.ts).
  if (settings.stage1Lr === null) delete settings.stage1Lr;
  const { flags } = settingsFlags(
    { ...settings, task: "task" },
    (key, value, flag) =>
      new FlagError(`runTraining: config.${key} is ${shown(value)}, not a value of ${flag}`),
  );
  let parsed: TrainConfig;
  try {
    parsed = parseTrainArgs(flags).config;
  } catch (e) {
    if (!(e instanceof FlagError)) throw e;
    // Worded for a config: its keys, not the flags that give them.
    const keyed = e.message.replace(/--([a-z0-9-]+)/g, (flag, name: string) => {
      if (!(name in TRAIN_FLAGS)) return flag;
      const key = name === "no-shuffle" ? "shuffle" : settingKey(name);
      return `config.${key}`;
    });
    throw new FlagError(`runTraining: ${keyed}`);
  }
  for (const [key, value] of Object.entries(runSettings(parsed))) {
    if (key === "task" || !(key in settings) || !settingApplies(key, settings)) continue;
    const given = settings[key] ?? UNRECORDED_SETTINGS[key] ?? null;
    if (JSON.stringify(given) !== JSON.stringify(value)) {
      throw new FlagError(
        `runTraining: config.${key} is ${shown(settings[key])}, where its flag gives ` +
          JSON.stringify(value),
      );
    }
  }
}

/** A value for a message: JSON, but NaN and ±Infinity as themselves (JSON writes them null). */
function shown(value: unknown): string {
  return typeof value === "number" && !Number.isFinite(value)
    ? String(value)
    : JSON.stringify(value);
}

/** The run-defining part of a config (run.json's "settings"). */
export function runSettings(c: TrainConfig): RunSettings {
  const { resume: _resume, overwrite: _overwrite, analysis: _analysis, ...settings } = c;
  return settings;
}

/**
 * Examples per micro-batch: what the GPU holds at once, in training and in evaluation (the dev
 * and test splits are read in batches of this size too).
 */
export function microBatchSize(c: Pick<TrainConfig, "batchSize"> & { gradAccum?: number }): number {
  return Math.ceil(c.batchSize / (c.gradAccum ?? 1));
}

/** The paper's learning rate for BERT-Large, where its recipes (made for RoBERTa-Large) say 1e-5. */
export const BERT_LARGE_LR = 3e-5;

/**
 * A task recipe belongs to a model family: the paper trains BERT-Large at 3e-5 where RoBERTa-Large
 * gets 1e-5. When the learning rate came from a recipe's 1e-5 (not typed) and the model is a BERT,
 * it becomes 3e-5. Returns the learning rate to use.
 */
export function recipeLearningRate(
  config: TrainConfig,
  recipe: Recipe,
  typed: ReadonlySet<string>,
  modelType: string,
): number {
  const fromRecipe = !typed.has("lr") && recipe.lr !== undefined && config.lr === recipe.lr;
  return fromRecipe && recipe.lr === 1e-5 && modelType === "bert" ? BERT_LARGE_LR : config.lr;
}

/**
 * The paper's recipe for a task with RoBERTa-Large: EH-FT with BitFit in Stage 1 (10% of the
 * epochs), batch 32, lr 1e-5, max length 512; `extra` holds the task's own differences.
 */
export function paperRecipe(task: string, epochs: number, extra: Recipe = {}): Recipe {
  return {
    task,
    strategy: "ehft",
    peft: "bitfit",
    epochs,
    stage1Ratio: 0.1,
    lr: 1e-5,
    batchSize: 32,
    maxLength: 512,
    ...extra,
  };
}
