// RTE (Recognizing Textual Entailment, SuperGLUE): does the premise entail the hypothesis?
// One encoder input per example, pair(premise, hypothesis); one logit with BCE, as the official
// EH-FT code does; label ids as in Hugging Face datasets: entailment 0, not_entailment 1.

import { DataError, indexField, readJsonl, splitFile, stringField } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";

const LABELS = ["entailment", "not_entailment"] as const;

export const rte: Task = {
  name: "rte",
  labels: LABELS,
  headClasses: 1,
  loss: "bce",
  metrics: ["accuracy"],
  devSplit: "val",
  dataDir: "data/superglue/RTE",
  async readExamples(path: string, split: string): Promise<TaskExample[]> {
    const file = await splitFile(path, split, "jsonl");
    return (await readJsonl(file)).map(({ line, value }, i) => {
      let label: number | null = null;
      if (value.label !== undefined && value.label !== null) {
        label = LABELS.indexOf(value.label as typeof LABELS[number]);
        if (label < 0) {
          throw new DataError(
            file,
            line,
            `label ${JSON.stringify(value.label)} is not one of ${LABELS.join(", ")}`,
          );
        }
      }
      return {
        idx: indexField(file, line, value, i),
        inputs: [[
          stringField(file, line, value, "premise"),
          stringField(file, line, value, "hypothesis"),
        ]],
        label,
      };
    });
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};

if (import.meta.main) {
  const { getGpu } = await import("../kernels/device.ts");
  try {
    const gpu = await getGpu();
    console.log(`ehft: WebGPU adapter: ${gpu.description}`);
    console.error(
      "ehft: `deno task rte` cannot train yet: the training engine and task scripts are not " +
        "implemented in this version (see README, Status).",
    );
    gpu.destroy();
    Deno.exit(2);
  } catch (e) {
    console.error(`ehft: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
