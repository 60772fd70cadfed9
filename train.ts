// Fine-tunes a pretrained encoder on a task with one of the strategies (ft, lp, lpft, peft,
// ehft, ehft-reserve):
//   deno run -A train.ts --task rte --model DIR_OR_HUB_ID [--data PATH] --strategy ehft
//     --peft bitfit [--epochs N | --max-steps N] [--lr 1e-5] [--stage1-lr ...] --out DIR ...
// Every flag and its default: train/config.ts; the outputs: train/run.ts.

import { parseTrainArgs, type Recipe, type TrainConfig } from "./train/config.ts";
import { runMain } from "./train/flags.ts";
import { type RunMetrics, runTraining, type SeedsMetrics } from "./train/run.ts";
import type { Task } from "./train/task.ts";

export type { Recipe, RunMetrics, SeedsMetrics, TrainConfig };
export { runTraining };

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
): Promise<RunMetrics | SeedsMetrics> {
  const byName = task
    ? (name: string) => {
      if (name !== task.name) {
        throw new Error(`--task: this script trains ${task.name}, not ${name}`);
      }
      return task;
    }
    : (await import("./tasks/all.ts")).taskByName;
  const { config } = parseTrainArgs(args, recipe, (name) => byName(name).dataDir);
  const metrics = await runTraining(config, { task: byName(config.task) });
  console.error(`train: ${config.out}/metrics.json: ${JSON.stringify(metrics.final)}`);
  return metrics;
}

if (import.meta.main) {
  await runMain("train", async (args) => {
    await trainFromArgs(args);
  });
}
