// Fine-tunes a pretrained encoder on a task with one of the strategies (ft, lp, lpft, peft,
// ehft, ehft-reserve):
//   deno run -A train.ts --task rte --model DIR_OR_HUB_ID [--data PATH] --strategy ehft
//     --peft bitfit [--epochs N | --max-steps N] [--lr 1e-5] [--stage1-lr ...] --out DIR ...
// Every flag and its default: train/config.ts; the outputs: train/run.ts.

import { parseTrainArgs, type Recipe, type TrainConfig } from "./train/config.ts";
import { runMain } from "./train/flags.ts";
import { type RunMetrics, runTraining, type SeedsMetrics } from "./train/run.ts";
import type { Task } from "./train/task.ts";
import { taskByName } from "./tasks/all.ts";

export type { Recipe, RunMetrics, SeedsMetrics, TrainConfig };
export { runTraining };

/**
 * Parses `args` over a task script's `recipe` and trains: what train.ts's command line does, for
 * task scripts that call it with their own defaults.
 */
export async function trainFromArgs(
  args: string[],
  recipe: Recipe = {},
): Promise<RunMetrics | SeedsMetrics> {
  const { config } = parseTrainArgs(args, recipe, (name) => taskByName(name).dataDir);
  const task: Task = taskByName(config.task);
  const metrics = await runTraining(config, { task });
  console.error(`train: ${config.out}/metrics.json: ${JSON.stringify(metrics.final)}`);
  return metrics;
}

if (import.meta.main) {
  await runMain("train", async (args) => {
    await trainFromArgs(args);
  });
}
