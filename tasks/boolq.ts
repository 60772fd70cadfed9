// BoolQ (Boolean Questions, SuperGLUE): is the answer to the question about the passage yes?
// One encoder input per example, pair(passage, question) with the passage cut when too long;
// one logit with BCE; label ids as in Hugging Face datasets: false 0, true 1 (the files write
// JSON booleans; "true"/"false" strings are accepted too).
//
// BoolQ is too large to ship: with no --data, the official SuperGLUE zip is downloaded on first
// use into the data cache ($EHFT_DATA_CACHE, else $XDG_CACHE_HOME/ehft/data, else
// ~/.cache/ehft/data; train/data_download.ts), checked, and read from <cache>/BoolQ/.

import {
  type DatasetSpec,
  ensureDataset,
  type EnsureDatasetOptions,
} from "../train/data_download.ts";
import { indexField, labelId, readJsonl, splitFile, stringField } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["false", "true"] as const;

/** The official SuperGLUE BoolQ zip and its files' row counts (Hugging Face's split sizes). */
export const BOOLQ_DATASET: DatasetSpec = {
  name: "BoolQ",
  url: "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/BoolQ.zip",
  files: [
    { path: "BoolQ/train.jsonl", rows: 9427 },
    { path: "BoolQ/val.jsonl", rows: 3270 },
    { path: "BoolQ/test.jsonl", rows: 3245 },
  ],
};

/** How BoolQ gets its data, for the error about a missing split. */
const BOOLQ_HINT = "with no --data, BoolQ is downloaded into the data cache on first use";

export const boolq: Task = {
  name: "boolq",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  truncation: "only_first",
  metrics: ["accuracy"],
  devSplit: "val",
  resolveData: (options?: EnsureDatasetOptions) => ensureDataset(BOOLQ_DATASET, options),
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "jsonl", BOOLQ_HINT);
    return (await readJsonl(file)).map(({ line, value }, i) => ({
      source: `${file}:${line}`,
      idx: indexField(file, line, value, i),
      inputs: [[
        stringField(file, line, value, "passage"),
        stringField(file, line, value, "question"),
      ]],
      label: labelId(file, line, value.label, LABELS),
    }));
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for BoolQ with RoBERTa-Large: EH-FT (BitFit), 40 epochs, 10% in Stage 1. */
export const BOOLQ_RECIPE: Recipe = paperRecipe("boolq", 40);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const BOOLQ_MINI_RECIPE: Recipe = miniRecipe(BOOLQ_RECIPE, { maxSteps: 300 });

// `deno task boolq [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(boolq, BOOLQ_RECIPE, BOOLQ_MINI_RECIPE);
}
