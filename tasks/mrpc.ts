// MRPC (Microsoft Research Paraphrase Corpus, GLUE): are the two sentences paraphrases? One
// encoder input per example, pair(#1 String, #2 String); one logit with BCE; label ids as in
// Hugging Face datasets, the Quality column: not_equivalent 0, equivalent 1. F1 (of
// "equivalent") and accuracy, as GLUE reports them.
//
// GLUE's TSV files, split on tabs only: train.tsv and dev.tsv (a UTF-8 byte-order mark, then the
// header Quality, #1 ID, #2 ID, #1 String, #2 String) and test.tsv (index, #1 ID, #2 ID,
// #1 String, #2 String: no labels). idx is the `index` column where there is one, else the row's
// position (as Hugging Face datasets numbers them). A file with neither Quality nor index is an
// error naming the column its split needs: Quality (the label) for train and dev, index for test.

import { labelId, readTsv, splitFile, tsvColumn, tsvIndex } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["not_equivalent", "equivalent"] as const;

export const mrpc: Task = {
  name: "mrpc",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  // Two sentences of like length: cut the longer (HF's default). At the recipe's 512 tokens
  // nothing is cut; with a small --max-length, "only_first" could not fit a long second one.
  truncation: "longest_first",
  metrics: ["f1", "accuracy"],
  devSplit: "dev",
  dataDir: "data/glue/MRPC",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "tsv");
    const table = await readTsv(file, { header: true });
    const first = tsvColumn(table, "#1 String");
    const second = tsvColumn(table, "#2 String");
    // The test split's file has `index` instead of Quality; in a train or dev file, a missing
    // Quality is the error (not a missing `index`, as if it were a test file).
    const labeled = table.header!.includes("Quality") ||
      (split !== "test" && !table.header!.includes("index"));
    const quality = labeled ? tsvColumn(table, "Quality") : -1;
    const index = quality < 0 ? tsvColumn(table, "index") : -1;
    return table.rows.map(({ line, fields }, i) => ({
      source: `${file}:${line}`,
      idx: index < 0 ? i : tsvIndex(file, line, fields[index], "index"),
      inputs: [[fields[first], fields[second]]],
      label: quality < 0 ? null : labelId(file, line, fields[quality], LABELS),
    }));
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for MRPC with RoBERTa-Large: EH-FT (BitFit), 60 epochs, 10% in Stage 1. */
export const MRPC_RECIPE: Recipe = paperRecipe("mrpc", 60);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const MRPC_MINI_RECIPE: Recipe = miniRecipe(MRPC_RECIPE, { epochs: 3 });

// `deno task mrpc [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(mrpc, MRPC_RECIPE, MRPC_MINI_RECIPE);
}
