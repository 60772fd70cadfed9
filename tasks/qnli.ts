// QNLI (Question-answering NLI, GLUE): does the sentence answer the question? One encoder input
// per example, pair(sentence, question) with the sentence cut when too long; one logit with BCE;
// label ids as in Hugging Face datasets: entailment 0, not_entailment 1.
//
// GLUE's TSV files, split on tabs only, with a header: index, question, sentence and, except in
// test.tsv, label. idx is `index`.
//
// QNLI is too large to ship: with no --data, the official GLUE zip is downloaded on first use
// into the data cache ($EHFT_DATA_CACHE, else $XDG_CACHE_HOME/ehft/data, else
// ~/.cache/ehft/data; train/data_download.ts), checked, and read from <cache>/QNLI/.

import {
  type DatasetSpec,
  ensureDataset,
  type EnsureDatasetOptions,
} from "../train/data_download.ts";
import { labelId, readTsv, splitFile, tsvColumn, tsvIndex } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["entailment", "not_entailment"] as const;

/** The official GLUE QNLI zip and its files' row counts (Hugging Face's split sizes). */
export const QNLI_DATASET: DatasetSpec = {
  name: "QNLI",
  url: "https://dl.fbaipublicfiles.com/glue/data/QNLIv2.zip",
  files: [
    { path: "QNLI/train.tsv", rows: 104743, header: true },
    { path: "QNLI/dev.tsv", rows: 5463, header: true },
    { path: "QNLI/test.tsv", rows: 5463, header: true },
  ],
};

/** How QNLI gets its data, for the error about a missing split. */
const QNLI_HINT = "with no --data, QNLI is downloaded into the data cache on first use";

export const qnli: Task = {
  name: "qnli",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  truncation: "only_first",
  metrics: ["accuracy"],
  devSplit: "dev",
  resolveData: (options?: EnsureDatasetOptions) => ensureDataset(QNLI_DATASET, options),
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "tsv", QNLI_HINT);
    const table = await readTsv(file, { header: true });
    const index = tsvColumn(table, "index");
    const question = tsvColumn(table, "question");
    const sentence = tsvColumn(table, "sentence");
    const label = table.header!.includes("label") ? tsvColumn(table, "label") : -1;
    return table.rows.map(({ line, fields }) => ({
      source: `${file}:${line}`,
      idx: tsvIndex(file, line, fields[index], "index"),
      inputs: [[fields[sentence], fields[question]]],
      label: label < 0 ? null : labelId(file, line, fields[label], LABELS),
    }));
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for QNLI with RoBERTa-Large: EH-FT (BitFit), 10 epochs, 10% in Stage 1. */
export const QNLI_RECIPE: Recipe = paperRecipe("qnli", 10);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const QNLI_MINI_RECIPE: Recipe = miniRecipe(QNLI_RECIPE, { maxSteps: 600 });

// `deno task qnli [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(qnli, QNLI_RECIPE, QNLI_MINI_RECIPE);
}
