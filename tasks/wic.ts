// WiC (Word-in-Context, SuperGLUE): is the target word used with the same sense in both
// sentences? One encoder input per example, pair(sentence1, sentence2); the head reads
// [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] (wi the mean of the target word's tokens in sentence i) and
// gives one logit with BCE, as the official EH-FT code does; label ids as in Hugging Face
// datasets: false 0, true 1.
//
// The JSONL gives the word's character offsets in each sentence, start1/end1 and start2/end2,
// end exclusive (`sentence1.slice(start1, end1)` is the word form used there, e.g. "ran" for
// the word "run"). The engine maps them to token ranges after truncation (train/batches.ts);
// pairs are cut longest-first, which keeps the most of both sentences. The data is CC BY-NC 4.0
// (non-commercial use only, see data/README.md).

import {
  DataError,
  indexField,
  integerField,
  labelId,
  readJsonl,
  splitFile,
  stringField,
} from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { paperRecipe, type Recipe } from "../train/config.ts";
import { miniRecipe } from "../train/default_model.ts";

const LABELS = ["false", "true"] as const;

/**
 * The range [start, end) of the fields `start`/`end` inside `text`, in JavaScript's string
 * indices. The files count characters (code points, as Python does, which writes them): past a
 * character outside the BMP (an emoji) a JavaScript index is one more, so such offsets are
 * converted, or they select the wrong text ("l cla" for "class").
 */
function charSpan(
  file: string,
  line: number,
  row: Record<string, unknown>,
  text: string,
  start: string,
  end: string,
): [number, number] {
  const a = integerField(file, line, row, start);
  const b = integerField(file, line, row, end);
  const characters = [...text];
  if (a >= b || b > characters.length) {
    throw new DataError(
      file,
      line,
      `${start}/${end} [${a}, ${b}) is not a non-empty range inside its sentence of ` +
        `${characters.length} characters`,
    );
  }
  if (characters.length === text.length) return [a, b];
  const index = (n: number) => characters.slice(0, n).join("").length;
  return [index(a), index(b)];
}

export const wic: Task = {
  name: "wic",
  labels: LABELS,
  headClasses: 1,
  head: "wic",
  loss: "bce",
  metrics: ["accuracy"],
  devSplit: "val",
  dataDir: "data/superglue/WiC",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "jsonl");
    return (await readJsonl(file)).map(({ line, value }, i) => {
      const sentence1 = stringField(file, line, value, "sentence1");
      const sentence2 = stringField(file, line, value, "sentence2");
      return {
        source: `${file}:${line}`,
        idx: indexField(file, line, value, i),
        inputs: [[sentence1, sentence2]],
        label: labelId(file, line, value.label, LABELS),
        spans: [
          charSpan(file, line, value, sentence1, "start1", "end1"),
          charSpan(file, line, value, sentence2, "start2", "end2"),
        ],
      };
    });
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

/** The paper's recipe for WiC with RoBERTa-Large: EH-FT (BitFit), 40 epochs at lr 3e-5. */
export const WIC_RECIPE: Recipe = paperRecipe("wic", 40, { lr: 3e-5 });

/** The recipe for the shipped mini model (no --model): see train/default_model.ts. */
export const WIC_MINI_RECIPE: Recipe = miniRecipe(WIC_RECIPE, { epochs: 3 });

// `deno task wic [train.ts flags]`: every flag overrides the recipe.
if (import.meta.main) {
  const { runTaskScript } = await import("../train.ts");
  await runTaskScript(wic, WIC_RECIPE, WIC_MINI_RECIPE);
}
