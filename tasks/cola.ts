// CoLA (Corpus of Linguistic Acceptability, GLUE): is the sentence grammatical? One encoder input
// per example, the sentence; one logit with BCE; label ids as in Hugging Face datasets (the
// file's label column): unacceptable 0, acceptable 1. Matthews correlation, as GLUE reports it.
//
// GLUE's TSV files, split on tabs only: train.tsv and dev.tsv have no header and four columns
// (source, label, original label, sentence); test.tsv has the header `index, sentence` and no
// labels. idx is the `index` column in the test file, else the row's position.

import { DataError, labelId, readTsv, splitFile, tsvIndex } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["unacceptable", "acceptable"] as const;

export const cola: Task = {
  name: "cola",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  metrics: ["mcc"],
  devSplit: "dev",
  dataDir: "data/glue/CoLA",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "tsv");
    const table = await readTsv(file, {
      // GLUE's test header is "index\tsentence"; exports name the first column id or idx too.
      header: (fields) =>
        fields.length === 2 && ["index", "idx", "id"].includes(fields[0].trim()) &&
        fields[1].trim() === "sentence",
      columns: 4,
    });
    if (table.header) {
      return table.rows.map(({ line, fields }) => ({
        source: `${file}:${line}`,
        idx: tsvIndex(file, line, fields[0], "index"),
        inputs: [fields[1]],
        label: null,
      }));
    }
    return table.rows.map(({ line, fields }, i) => {
      // A labeled row's sentence is CoLA's whole input: none (or only spaces) is a broken row.
      if (fields[3].trim() === "") {
        const what = fields[3] === "" ? "empty" : "blank (only spaces)";
        throw new DataError(file, line, `the sentence (4th field) is ${what}`);
      }
      return {
        source: `${file}:${line}`,
        idx: i,
        inputs: [fields[3]],
        label: labelId(file, line, fields[1], LABELS),
      };
    });
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for CoLA with RoBERTa-Large: EH-FT (BitFit), 20 epochs, 10% in Stage 1. */
export const COLA_RECIPE: Recipe = paperRecipe("cola", 20);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const COLA_MINI_RECIPE: Recipe = miniRecipe(COLA_RECIPE, { epochs: 3 });

// `deno task cola [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(cola, COLA_RECIPE, COLA_MINI_RECIPE);
}
