// COPA (Choice of Plausible Alternatives, SuperGLUE): which of two choices is the cause (or the
// effect) of the premise? Two encoder inputs per example, one per choice, each a single text:
// the premise without its final period, " because " (cause) or " so " (effect), and the choice
// with its first letter lower-cased. One logit per text, cross-entropy over the two; the label
// and the prediction are the right choice's index, 0 or 1 (as SuperGLUE's files write it).

import {
  DataError,
  indexField,
  labelId,
  quote,
  readJsonl,
  splitFile,
  stringField,
} from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

// The label names are the choice indices, as the data files and the leaderboard write them.
const LABELS = ["0", "1"] as const;

/**
 * One of COPA's texts: "My body cast a shadow over the grass because the sun was rising."
 * Surrounding spaces (two examples in the train split have them) are dropped first.
 */
export function copaText(premise: string, question: "cause" | "effect", choice: string): string {
  const p = premise.trim().replace(/\.$/, "");
  const c = choice.trim();
  return `${p}${question === "cause" ? " because " : " so "}${c.charAt(0).toLowerCase()}${
    c.slice(1)
  }`;
}

export const copa: Task = {
  name: "copa",
  labels: LABELS,
  headClasses: 1,
  loss: "ce",
  metrics: ["accuracy"],
  devSplit: "val",
  dataDir: "data/superglue/COPA",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "jsonl");
    return (await readJsonl(file)).map(({ line, value }, i) => {
      const question = stringField(file, line, value, "question");
      if (question !== "cause" && question !== "effect") {
        throw new DataError(
          file,
          line,
          `field "question" is ${quote(question)}, not "cause" or "effect"`,
        );
      }
      const premise = stringField(file, line, value, "premise");
      return {
        source: `${file}:${line}`,
        idx: indexField(file, line, value, i),
        inputs: [
          copaText(premise, question, stringField(file, line, value, "choice1")),
          copaText(premise, question, stringField(file, line, value, "choice2")),
        ],
        label: labelId(file, line, value.label, LABELS),
      };
    });
  },
  // One logit per choice: the index of the larger (the first on a tie).
  prediction: (logits) => (logits[1] > logits[0] ? 1 : 0),
};

/**
 * The paper's recipe for COPA with RoBERTa-Large: EH-FT (BitFit), 400 epochs, 10% in Stage 1,
 * at most 256 tokens per text.
 */
export const COPA_RECIPE: Recipe = paperRecipe("copa", 400, { maxLength: 256 });

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const COPA_MINI_RECIPE: Recipe = miniRecipe(COPA_RECIPE, { epochs: 10 });

// `deno task copa [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(copa, COPA_RECIPE, COPA_MINI_RECIPE);
}
