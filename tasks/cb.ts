// CB (CommitmentBank, SuperGLUE): does the premise entail, contradict, or leave open the
// hypothesis? One encoder input per example, pair(premise, hypothesis) with the premise cut when
// too long; a 3-class head with cross-entropy; label ids as in Hugging Face datasets:
// entailment 0, contradiction 1, neutral 2. Accuracy, and macro-F1 as SuperGLUE reports it.

import { indexField, labelId, readJsonl, splitFile, stringField } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["entailment", "contradiction", "neutral"] as const;

export const cb: Task = {
  name: "cb",
  labels: LABELS,
  headClasses: 3,
  loss: "ce",
  truncation: "only_first",
  // macro_f1 averages over the three labels (a class a dev set lacks scores 0): SuperGLUE's F1.
  metrics: ["accuracy", "macro_f1"],
  devSplit: "val",
  dataDir: "data/superglue/CB",
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
  prediction: (logits) => {
    let best = 0;
    for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
    return LABELS[best];
  },
};

/** The paper's recipe for CB with RoBERTa-Large: EH-FT (BitFit), 400 epochs, 10% in Stage 1. */
export const CB_RECIPE: Recipe = paperRecipe("cb", 400);

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const CB_MINI_RECIPE: Recipe = miniRecipe(CB_RECIPE, { epochs: 10 });

// `deno task cb [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(cb, CB_RECIPE, CB_MINI_RECIPE);
}
