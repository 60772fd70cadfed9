// The model a task script trains when no --model is given: the toolkit's own small English
// encoder in models/ehft-mini-en/ (pretrained by pretrain.ts, see its README), so that
// `deno task rte` works offline and on a machine without a GPU. With it comes a recipe of its
// own (a few epochs at a small model's learning rate, its 128 positions), since the paper's
// recipe is sized for RoBERTa-Large on a GPU. Every flag the user types still wins.

import { microBatchSize, type Recipe, type TrainConfig } from "./config.ts";
import type { Task } from "./task.ts";
import { plural } from "../model/progress_text.ts";

/** The name of the small English model shipped in models/ (the task scripts' default --model). */
export const DEFAULT_MODEL_NAME = "ehft-mini-en";

/**
 * The shipped model's folder, or null when this module is not a local file (imported by URL) or
 * the folder has no config.json (a checkout without it).
 */
export function shippedModelDir(): string | null {
  const url = new URL(`../models/${DEFAULT_MODEL_NAME}`, import.meta.url);
  if (url.protocol !== "file:") return null;
  const dir = decodeURIComponent(url.pathname);
  try {
    Deno.statSync(`${dir}/config.json`);
    return dir;
  } catch {
    return null;
  }
}

/**
 * A task's shipped data folder (`task.dataDir`, relative) as a run reads it: from the working
 * folder when it is there (`deno task` runs in the repository root), else the repository's own
 * copy beside this module (a script run from another folder, as the shipped model is found),
 * else as it is, for the error to name.
 */
export function shippedDataDir(dataDir: string): string {
  const isFolder = (path: string) => {
    try {
      return Deno.statSync(path).isDirectory;
    } catch {
      return false;
    }
  };
  if (isFolder(dataDir)) return dataDir;
  const url = new URL(`../${dataDir}`, import.meta.url);
  const beside = url.protocol === "file:" ? decodeURIComponent(url.pathname) : null;
  return beside !== null && isFolder(beside) ? beside : dataDir;
}

/** The shipped model's learning rate for full fine-tuning and Stage 2 (a 2-layer, 128-wide BERT). */
export const MINI_LR = 2e-4;

/**
 * A task's recipe for the shipped model: the paper's recipe (its strategy and method) with a
 * budget of `budget` (epochs, or steps for the largest tasks), the small model's learning rate and
 * its 128 positions.
 */
export function miniRecipe(
  paper: Recipe,
  budget: { epochs: number } | { maxSteps: number },
): Recipe {
  const { epochs: _epochs, maxSteps: _maxSteps, ...rest } = paper;
  return { ...rest, ...budget, lr: MINI_LR, maxLength: 128 };
}

/** The model the arguments name (`--model X` or `--model=X`; the last wins), or null. */
function namedModel(args: readonly string[]): string | null {
  const end = args.indexOf("--");
  const flags = end < 0 ? args : args.slice(0, end);
  let model: string | null = null;
  flags.forEach((a, i) => {
    if (a === "--model") model = flags[i + 1] ?? "";
    else if (a.startsWith("--model=")) model = a.slice("--model=".length);
  });
  return model;
}

/** Whether `path` is the folder `dir` (by real path; a hub id or a missing path is not). */
function sameFolder(path: string, dir: string): boolean {
  try {
    return Deno.realPathSync(path) === Deno.realPathSync(dir);
  } catch {
    return false;
  }
}

/** Whether `model` is the shipped model's folder (any spelling of it). */
export function isShippedModel(model: string): boolean {
  const dir = shippedModelDir();
  return dir !== null && sameFolder(model, dir);
}

/**
 * The recipe a task script runs: `mini` with the shipped model when the arguments name no model
 * or name the shipped folder itself (and the model is there), else the paper's. `usingDefault`
 * says which.
 */
export function taskScriptRecipe(
  args: readonly string[],
  paper: Recipe,
  mini: Recipe | undefined,
  dir: string | null = shippedModelDir(),
): { recipe: Recipe; usingDefault: boolean; missingDefault: boolean } {
  const named = namedModel(args);
  if (!mini || dir === null || (named !== null && !sameFolder(named, dir))) {
    // A script with a shipped-model recipe whose model is not beside it (loaded by URL, or a
    // checkout without models/), given no --model and no recipe model of its own.
    const missingDefault = mini !== undefined && dir === null && named === null &&
      paper.model === undefined;
    return { recipe: paper, usingDefault: false, missingDefault };
  }
  return { recipe: { ...mini, model: named ?? dir }, usingDefault: true, missingDefault: false };
}

/** What a run's budget reads as. */
function budgetText(c: TrainConfig): string {
  return c.maxSteps !== null ? plural(c.maxSteps, "step") : plural(c.epochs!, "epoch");
}

/** A learning rate as people write it: 2e-4, 1e-5 (String gives 0.0002, 0.00001). */
export function lrText(lr: number | undefined): string {
  if (lr === undefined) return "the default";
  return lr !== 0 && Math.abs(lr) < 0.01 ? lr.toExponential().replace(/\.?0*e/, "e") : String(lr);
}

function method(strategy: string, peft: string | null): string {
  return peft ? `${strategy} (${peft})` : strategy;
}

/**
 * The lines a task script prints at its start: model, data, recipe, and the paper's setting.
 * `config` is the run's, with the learning rate as the model decides it (recipeLearningRate);
 * `positions`, what the model takes (less prefix rows): the max length as the run will cut it.
 */
export function startLines(
  task: Task,
  config: TrainConfig,
  usingDefault: boolean,
  paper: Recipe,
  positions: number,
): string[] {
  const model = usingDefault
    ? `models/${DEFAULT_MODEL_NAME} (the toolkit's own 2-layer English encoder, pretrained on a ` +
      `CPU: an offline start, far from the paper's numbers; see models/${DEFAULT_MODEL_NAME}/` +
      `README.md)`
    : config.model;
  const seeds = config.seeds > 1 ? `, ${config.seeds} seeds` : "";
  const maxLength = config.maxLength === null || config.maxLength > positions
    ? `${positions} (the model's limit)`
    : String(config.maxLength);
  const lines = [
    `${task.name}: model ${model}`,
    `${task.name}: data ${config.data}`,
    `${task.name}: ${method(config.strategy, config.peft)}, ${budgetText(config)}, lr ` +
    `${lrText(config.lr)}, batch ${config.batchSize}${
      (config.gradAccum ?? 1) > 1 ? ` in parts of ≤ ${microBatchSize(config)}` : ""
    }, max length ${maxLength}${seeds} → ` +
    config.out,
  ];
  if (!/roberta-large/i.test(config.model)) {
    const paperBudget = paper.maxSteps !== undefined
      ? `${paper.maxSteps} steps`
      : `${paper.epochs} epochs`;
    lines.push(
      `${task.name}: the paper's setting: deno task ${task.name} --model ` +
        `FacebookAI/roberta-large (${method(paper.strategy ?? "ehft", paper.peft ?? null)}, ` +
        `${paperBudget}, lr ${lrText(paper.lr)}, max length ${paper.maxLength}; a GPU)`,
    );
  }
  return lines;
}
