// Fine-tunes a pretrained encoder on a task with one of the strategies (ft, lp, lpft, peft,
// ehft, ehft-reserve):
//   deno run -A train.ts --task rte --model DIR_OR_HUB_ID [--data PATH] --strategy ehft
//     --peft bitfit [--epochs N | --max-steps N] [--lr 1e-5] [--stage1-lr ...] --out DIR ...
// Every flag and its default: `--help` (train/help.ts; parsed in train/config.ts); the outputs:
// train/run.ts. `--dry-run` reads and checks the data and trains nothing (train/dry_run.ts).

import {
  MODEL_CHOICES,
  parseTrainArgs,
  type Recipe,
  recipeLearningRate,
  runSettings,
  type TrainConfig,
} from "./train/config.ts";
import { tuneRequest } from "./kernels/matmul_autotune.ts";
import { maxSequenceLength, type ModelConfig, readConfig } from "./model/config.ts";
import { resolveModel } from "./model/hub.ts";
import { loadTokenizer } from "./model/tokenizer.ts";
import { dryRunFromArgs, type DryRunReport } from "./train/dry_run.ts";
import { checkRunFolder, FlagError, probeRunFolder, runMain } from "./train/flags.ts";
import {
  DEFAULT_MODEL_NAME,
  isShippedModel,
  shippedDataDir,
  startLines,
  taskScriptRecipe,
} from "./train/default_model.ts";
import { taskHelp, TRAIN_HELP } from "./train/help.ts";
import { type RunMetrics, runTraining, type SeedsMetrics } from "./train/run.ts";
import { checkTestSplit, missingSubmission, writeTestSubmissions } from "./train/submission.ts";
import { interruptedMessage, readsTrainFlags, stopWithWord } from "./train/run_faults.ts";
import { checkSameSettings, runEntries, writesIntoFolder } from "./train/run_folder.ts";
import { parseOverRecorded, recordedSettings } from "./train/resume_settings.ts";
import type { Task } from "./train/task.ts";

export type { DryRunReport, Recipe, RunMetrics, SeedsMetrics, TrainConfig };
export { runTraining };

// Stands for "the task's download" until the flags are parsed (a task without a shipped folder).
const DOWNLOAD = "\0download";

/**
 * Parses `args` over a task script's `recipe` and trains: what train.ts's command line does, for
 * task scripts that call it with their own defaults and their own `task` (a script passes itself,
 * so that this module never has to import the task files: a script importing train.ts that in
 * turn imported the script would never finish loading).
 */
export async function trainFromArgs(
  args: string[],
  recipe: Recipe = {},
  task?: Task,
  start?: { usingDefault: boolean; paper: Recipe; missingDefault?: boolean },
): Promise<RunMetrics | SeedsMetrics | DryRunReport> {
  readsTrainFlags(args); // a fault's resume advice is then these flags, --resume added
  const byName = task
    ? (name: string) => {
      if (name !== task.name) {
        throw new FlagError(`--task: this script trains ${task.name}, not ${name}`);
      }
      return task;
    }
    : (await import("./tasks/all.ts")).taskByName;
  // With no --data: the task's shipped folder, or its download into the data cache.
  const taskData = (name: string) => {
    const dataDir = byName(name).dataDir;
    if (dataDir !== undefined) return shippedDataDir(dataDir);
    return byName(name).resolveData ? DOWNLOAD : undefined;
  };
  // --resume: what run.json records, under what is typed (the run refuses a difference).
  const recorded = await recordedSettings(args, recipe);
  if (recorded) {
    console.error(`--resume: the settings recorded in ${recorded.path}`);
  } else if (start?.missingDefault && !args.includes("--dry-run")) {
    throw new FlagError(
      `--model is required: this script's default, the shipped models/${DEFAULT_MODEL_NAME}, ` +
        `is not beside it (it comes with a local checkout, not by URL); give ${MODEL_CHOICES}`,
    );
  }
  if (args.includes("--dry-run")) {
    if (recorded) {
      // Its refusals first, and the resumed run's: a typed setting that is not the run's.
      const { config } = parseOverRecorded(args, recipe, recorded, taskData);
      await checkSameSettings(
        config.out,
        runSettings(config) as unknown as Record<string, unknown>,
      );
    }
    return await dryRunFromArgs(args, { ...recipe, ...recorded?.recipe }, byName);
  }
  const { config, typed, tune } = recorded
    ? parseOverRecorded(args, recipe, recorded, taskData)
    : parseTrainArgs(args, recipe, taskData);
  // Before a download of the data or the model, which a wrong --out would waste.
  await checkRunFolder(config.out);
  if (writesIntoFolder(config, await runEntries(config.out))) await probeRunFolder(config.out);
  if (config.data === DOWNLOAD) config.data = await byName(config.task).resolveData!();
  // A recorded learning rate is the one the run trained with, whatever the model.
  const recipeLr = recipe.lr !== undefined && !typed.has("lr") && !recorded;
  // The model's folder, its config and the positions a run has (less a prefix), found once for
  // what needs them below.
  let found: { dir: string; model: ModelConfig; positions: number } | null = null;
  const modelFound = async () => {
    if (found) return found;
    const dir = await resolveModel(config.model, { revision: config.revision ?? undefined });
    const model = await readConfig(`${dir}/config.json`);
    const positions = maxSequenceLength(model) -
      (config.peft === "prefix" ? config.prefixLength : 0);
    return found = { dir, model, positions };
  };
  if (recipeLr || (task && start)) {
    // The model decides a recipe's learning rate (BERT's is another) and the longest input: the
    // start lines say what the run will use, so they come after both are known.
    const { model, positions } = await modelFound();
    if (recipeLr) config.lr = recipeLearningRate(config, recipe, typed, model.modelType);
    if (task && start) {
      const usingDefault = recorded ? isShippedModel(config.model) : start.usingDefault;
      for (const line of startLines(task, config, usingDefault, start.paper, positions)) {
        console.error(line);
      }
    }
  }
  // --predict-test, typed or recorded by the run being resumed (a plain --resume, a scheduler's
  // requeue, does what the run was started to do). Recorded alone, a submission already written
  // is not written again.
  const predictTest = typed.has("predict-test") ||
    (recorded?.requests.predict_test === true &&
      await missingSubmission(config, byName(config.task)));
  // A fault in the test split is found before the training, not after it: for WiC also a target
  // word that truncation cuts, with the model's tokenizer at the run's length.
  if (predictTest) {
    const tested = byName(config.task);
    let spans;
    if (tested.head === "wic") {
      const { dir, model, positions } = await modelFound();
      spans = {
        tokenizer: await loadTokenizer(dir, model),
        maxLength: Math.min(config.maxLength ?? positions, positions),
      };
    }
    await checkTestSplit(config, tested, undefined, spans);
  }
  return await runTraining(config, {
    task: byName(config.task),
    autotune: tuneRequest(tune),
    requests: predictTest ? { predict_test: true } : undefined,
    // Inside the run folder's lock: the submission reads model/ and writes beside it.
    afterRun: async (metrics) => {
      // Which numbers these are: report.ts's table shows `best`, and a --seeds run's are means.
      const seeds = "seeds" in metrics ? Object.keys(metrics.seeds).length : 1;
      console.error(
        `train: ${config.out}/metrics.json: ${seeds > 1 ? `mean over ${seeds} seeds: ` : ""}` +
          `final ${JSON.stringify(metrics.final)}, best ${JSON.stringify(metrics.best)}`,
      );
      if (predictTest) await writeTestSubmissions(config, byName(config.task));
    },
  });
}

/**
 * The main program of a task script: `deno task <name> [train.ts flags over its recipe]`. With no
 * --model it trains the shipped model (train/default_model.ts) with `mini`, its own recipe;
 * with one, the paper's `recipe`. The recipes' task is `task` unless they name it.
 */
export async function runTaskScript(task: Task, recipe: Recipe, mini?: Recipe): Promise<void> {
  await runMain(
    task.name,
    async (args) => {
      sayHowToResumeOnInterrupt(task.name, args);
      const chosen = taskScriptRecipe(args, recipe, mini);
      setDryRunStatus(
        await trainFromArgs(args, { task: task.name, ...chosen.recipe }, task, {
          usingDefault: chosen.usingDefault,
          paper: recipe,
          // Refused there unless a resumed run's run.json names the model.
          missingDefault: chosen.missingDefault,
        }),
      );
    },
    taskHelp(task.name, recipe, mini, ownScript()),
    { flagsOnly: true },
  );
}

/**
 * The main module as its user runs it (relative to the working folder when under it), when it is
 * not one of this toolkit's task scripts; null when it is.
 */
function ownScript(): string | null {
  const main = Deno.mainModule;
  if (main.startsWith(new URL("./tasks/", import.meta.url).href)) return null;
  const url = new URL(main);
  if (url.protocol !== "file:") return main;
  const path = decodeURIComponent(url.pathname);
  const cwd = Deno.cwd();
  return path.startsWith(`${cwd}/`) ? path.slice(cwd.length + 1) : path;
}

/**
 * A --dry-run whose report says the training would not start exits with status 1, after the
 * report (a script checking its data sees the refusal).
 */
function setDryRunStatus(result: RunMetrics | SeedsMetrics | DryRunReport): void {
  if ("ready" in result && result.ready === false) Deno.exitCode = 1;
}

/**
 * Ctrl-C stops the run where it is, as a kill would (checkpoints and results are written
 * atomically); the SIGTERM a scheduler (slurm at its time limit) or `kill` sends during training
 * lets the step end and writes a checkpoint there first (stopWithWord). Either says what was
 * kept and the command that goes on (interruptedMessage); exit status 130 or 143, as the shell's
 * own for these signals. SIGHUP keeps its default: handling it would undo nohup. A dry run
 * writes nothing: a signal only stops it.
 */
function sayHowToResumeOnInterrupt(name: string, args: readonly string[]): void {
  if (!args.includes("--dry-run")) stopWithWord(name, interruptedMessage);
}

if (import.meta.main) {
  await runMain(
    "train",
    async (args) => {
      sayHowToResumeOnInterrupt("train", args);
      setDryRunStatus(await trainFromArgs(args));
    },
    TRAIN_HELP,
    { flagsOnly: true },
  );
}
