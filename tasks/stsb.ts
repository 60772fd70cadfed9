// STS-B (Semantic Textual Similarity Benchmark, GLUE): how similar are the two sentences, from 0
// to 5? One encoder input per example, pair(sentence1, sentence2); one output with MSE on the
// score (regression: no label names); Pearson and Spearman correlations, as GLUE reports them.
// The prediction is the score.
//
// GLUE's TSV files, split on tabs only, with a header: index, genre, filename, year, old_index,
// source1, source2, sentence1, sentence2 and, except in test.tsv, score. idx is `index`.
//
// A score must be a plain decimal number ("3.8", "5.000", "1e0" too; not "", "n/a", "0x1",
// "Infinity") in [0, 5], GLUE's scale: one outside it is an error naming the file and line,
// since it means a wrong column or another scale (clamping would train on a silent mistake).

import { DataError, quote, readTsv, splitFile, tsvColumn, tsvIndex } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

/** A decimal number as GLUE writes scores (an exponent allowed). */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

export const stsb: Task = {
  name: "stsb",
  labels: [],
  headClasses: 1,
  loss: "mse",
  // Two sentences of like length: cut the longer (HF's default). At the recipe's 512 tokens
  // nothing is cut; with a small --max-length, "only_first" could not fit a long second one.
  truncation: "longest_first",
  metrics: ["pearson", "spearman"],
  devSplit: "dev",
  dataDir: "data/glue/STS-B",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "tsv");
    const table = await readTsv(file, { header: true });
    const index = tsvColumn(table, "index");
    const first = tsvColumn(table, "sentence1");
    const second = tsvColumn(table, "sentence2");
    const score = table.header!.includes("score") ? tsvColumn(table, "score") : -1;
    return table.rows.map(({ line, fields }) => {
      let label: number | null = null;
      if (score >= 0) {
        const raw = fields[score];
        label = Number(raw);
        if (!DECIMAL.test(raw.trim()) || label < 0 || label > 5) {
          throw new DataError(file, line, `score ${quote(raw)} is not a number in [0, 5]`);
        }
      }
      return {
        source: `${file}:${line}`,
        idx: tsvIndex(file, line, fields[index], "index"),
        inputs: [[fields[first], fields[second]]],
        label,
      };
    });
  },
  prediction: (outputs) => outputs[0],
};

/** The paper's recipe for STS-B with RoBERTa-Large: EH-FT (BitFit), 20 epochs, 10% in Stage 1. */
export const STSB_RECIPE: Recipe = paperRecipe("stsb", 20);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const STSB_MINI_RECIPE: Recipe = miniRecipe(STSB_RECIPE, { epochs: 3 });

// `deno task stsb [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(stsb, STSB_RECIPE, STSB_MINI_RECIPE);
}
