// RTE (Recognizing Textual Entailment, SuperGLUE): does the premise entail the hypothesis?
// One encoder input per example, pair(premise, hypothesis); one logit with BCE, as the official
// EH-FT code does; label ids as in Hugging Face datasets: entailment 0, not_entailment 1 (the
// files write the names; the ids 0 and 1 are accepted too).

import { indexField, labelId, readJsonl, splitFile, stringField } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["entailment", "not_entailment"] as const;

export const rte: Task = {
  name: "rte",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  truncation: "only_first",
  metrics: ["accuracy"],
  devSplit: "val",
  dataDir: "data/superglue/RTE",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "jsonl");
    return (await readJsonl(file)).map(({ line, value }, i) => ({
      source: `${file}:${line}`,
      idx: indexField(file, line, value, i),
      inputs: [[
        stringField(file, line, value, "premise"),
        stringField(file, line, value, "hypothesis"),
      ]],
      label: labelId(file, line, value.label, LABELS),
    }));
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for RTE with RoBERTa-Large: EH-FT (BitFit), 60 epochs, 10% in Stage 1. */
export const RTE_RECIPE: Recipe = paperRecipe("rte", 60);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const RTE_MINI_RECIPE: Recipe = miniRecipe(RTE_RECIPE, { epochs: 3 });

// `deno task rte [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(rte, RTE_RECIPE, RTE_MINI_RECIPE);
}
