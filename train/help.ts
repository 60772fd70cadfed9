// `--help` of train.ts, the task scripts, predict.ts and report.ts (runMain prints it). Every
// flag of each parser is listed, and each stated default is the parser's
// (tests/help_test.ts checks both).

import { ADAMW_DEFAULTS } from "./optimizer.ts";
import { PEFT_DEFAULTS, PEFT_NAMES } from "../peft/method.ts";
import { TABLE_TASKS } from "./report_table.ts";
import { SCHEDULE_NAMES } from "./schedule.ts";
import { FULL_FINETUNE_LR, STAGE1_LR, STRATEGY_NAMES } from "./strategy.ts";
import { BERT_LARGE_LR, type Recipe } from "./config.ts";

const TASK_NAMES = TABLE_TASKS.map((t) => t.name).join(", ");

/** The flags both train.ts and a task script take (a script fixes --task). */
const RUN_FLAGS =
  `  --model DIR|HUB_ID      a checkpoint folder or a Hugging Face hub id (the paper's setting:
                          FacebookAI/roberta-large)
  --revision REV          the hub branch, tag or commit
  --data DIR              the task's data folder (default: its shipped folder, or its
                          download)
  --strategy NAME         ${STRATEGY_NAMES.join(", ")} (default ehft)
  --peft NAME             ${PEFT_NAMES.join(", ")}: the PEFT method of peft, ehft and
                          ehft-reserve (default bitfit)
  --epochs N              the budget, all stages together (default 10)
  --max-steps N           the budget in optimizer steps instead of epochs
  --stage1-ratio X        two-stage strategies: Stage 1's share of the steps (default 0.1)
  --lr X                  full fine-tuning and Stage 2 (default ${FULL_FINETUNE_LR}); the one
                          stage of peft and lp (default: their Stage-1 rate below)
  --stage1-lr X           Stage 1 (default BitFit ${STAGE1_LR.bitfit}, LoRA ${STAGE1_LR.lora}, Prefix ${STAGE1_LR.prefix},
                          linear probing ${STAGE1_LR.lp})
  --batch-size N          examples per step (default 32)
  --grad-accum K          run each step's batch in parts of at most ⌈N / K⌉ examples and
                          sum their gradients: a part's memory, the batch's update (default 1)
  --max-length N          tokens per example (default: the model's limit)
  --dropout X             instead of the model config's dropout
  --precision f32|f16     f16: f16 activations and weight copies, f32 master weights
                          (default f32; needs shader-f16)
  --f16-math              with --precision f16: the encoder's matrix products multiply and
                          sum in f16 (runs of 16 in f16, their totals in f32); faster where
                          f16 arithmetic is twice f32's, a little less exact
  --no-shuffle            train in the data's order
  --schedule NAME         ${SCHEDULE_NAMES.join(" or ")}, after the warmup (default linear)
  --warmup-ratio X        linear warmup, share of each stage (default 0.1)
  --weight-decay X        AdamW's, not on biases and LayerNorm weights (default ${ADAMW_DEFAULTS.weightDecay})
  --max-grad-norm X       global gradient-norm clip, 0 for none (default ${ADAMW_DEFAULTS.maxGradNorm})
  --lora-r N              LoRA's rank (default ${PEFT_DEFAULTS.loraR}); on query, key, value and
                          attention output dense, as the official EH-FT code
  --lora-alpha X          LoRA's alpha (default ${PEFT_DEFAULTS.loraAlpha})
  --prefix-length N       prefix-tuning's rows (default ${PEFT_DEFAULTS.prefixLength})
  --head FILE             a safetensors file whose head.* tensors start the head (default: a
                          fresh head)
  --eval-every N          steps between dev evaluations, 0 for the end only (default: each epoch)
  --checkpoint-every N    steps between checkpoints, 0: none (default: evaluations or epochs, ≤ ~20)
  --seed N                the first seed, 0 to 2^32 − 1 with the others (default 42)
  --seeds K               K runs, seeds N, N + 1, ..., and their mean and std (default 1)
  --out DIR               the run folder (default runs/<task>/<strategy>[-<peft>])
  --resume                continue the killed run in --out, to the same result bit for bit;
                          its run.json gives every setting not typed (typed ones must agree)
  --overwrite             replace the run in --out (once the model, data and head are read)
  --analysis              measure and draw feature change, weight distance, head features and
                          convergence into <out>/analysis/ (training unchanged)
  --predict-test          afterwards, the test split's leaderboard file
  --dry-run               read and check the data, print a summary, train nothing
  --no-autotune, --retune, --tune-cache FILE
                          the GEMM autotune: off, timed again, its cache file
  --debug                 a failure's stack after its one-line message`;

export const TRAIN_HELP = `usage: deno run -A train.ts --task NAME --model DIR|HUB_ID [flags]

Fine-tunes a pretrained encoder on a task: EH-FT (Stage 1 trains the head with a PEFT method,
Stage 2 fine-tunes everything from the pretrained backbone and that head) or a baseline.

  --task NAME             ${TASK_NAMES}
${RUN_FLAGS}`;

/** A recipe's settings, as flags (what a task script presets). */
function recipeLine(r: Recipe, lrNote = ""): string {
  const parts: string[] = [];
  if (r.strategy) parts.push(`--strategy ${r.strategy}${r.peft ? ` --peft ${r.peft}` : ""}`);
  if (r.epochs !== undefined) parts.push(`--epochs ${r.epochs}`);
  if (r.maxSteps !== undefined) parts.push(`--max-steps ${r.maxSteps}`);
  if (r.lr !== undefined) parts.push(`--lr ${r.lr}${lrNote}`);
  if (r.batchSize !== undefined) parts.push(`--batch-size ${r.batchSize}`);
  if (r.maxLength !== undefined) parts.push(`--max-length ${r.maxLength}`);
  return parts.join(" ");
}

/** The flags recipeLine shows, by Recipe field. */
const RECIPE_FLAGS: Partial<Record<keyof Recipe, string>> = {
  strategy: "strategy",
  peft: "peft",
  epochs: "epochs",
  maxSteps: "max-steps",
  lr: "lr",
  batchSize: "batch-size",
  maxLength: "max-length",
};

/**
 * RUN_FLAGS with the train.ts default of each flag a recipe sets replaced by a pointer to the
 * recipes: a script's --epochs is its recipe's, not train.ts's 10.
 */
function flagsUnder(recipes: readonly Recipe[]): string {
  const set = new Set(
    Object.entries(RECIPE_FLAGS).filter(([k]) => recipes.some((r) => k in r)).map(([, f]) => f),
  );
  return RUN_FLAGS.split(/\n(?= {2}--)/).map((entry) => {
    const flag = /^ {2}--([\w-]+)/.exec(entry)?.[1];
    return flag && set.has(flag)
      ? entry.replace(/\(default[^)]*\)/, "(default: the recipe above)")
      : entry;
  }).join("\n");
}

/**
 * A task script's help: its presets, then the flags that override them. `script`: the path a
 * script of one's own is run by (null: one of the toolkit's, run as `deno task <name>`).
 */
export function taskHelp(
  task: string,
  paper: Recipe,
  mini?: Recipe,
  script: string | null = null,
): string {
  const title = TABLE_TASKS.find((t) => t.name === task)?.title ?? task;
  // recipeLearningRate: the paper gives BERT-Large 3e-5 where RoBERTa-Large gets 1e-5.
  const bert = paper.lr === 1e-5 ? ` (${BERT_LARGE_LR} for a BERT)` : "";
  const presets = mini
    ? `Without --model: the shipped model (models/ehft-mini-en) with
  ${recipeLine(mini)}
With --model (the paper's setting: --model FacebookAI/roberta-large):
  ${recipeLine(paper, bert)}`
    : `Its recipe (the paper's):\n  ${recipeLine(paper, bert)}`;
  // A script of one's own (runTaskScript from mod.ts) is run as itself, and train.ts knows only
  // the toolkit's tasks.
  const usage = script === null ? `deno task ${task}` : `deno run -A ${script}`;
  const what = script === null ? ` (train.ts --task ${task})` : "";
  return `usage: ${usage} [flags]

Fine-tunes on ${title}${what}.
${presets}
Every flag below overrides these.

${flagsUnder(mini ? [paper, mini] : [paper])}`;
}

export const PREDICT_HELP =
  `usage: deno run -A predict.ts --model DIR|HUB_ID --task NAME --out FILE [flags]

Writes one JSON object per example, {"idx": ..., "logits": [...], "prediction": ...}.

  --model DIR|HUB_ID      a fine-tuned model (a run's model/ folder) or a hub id
  --task NAME             ${TASK_NAMES}
  --out FILE              the predictions (JSON lines); its folder is created if missing;
                          - writes them to stdout
  --overwrite             replace an existing --out file
  --data PATH             the task's data (default: its shipped folder, or its download)
  --split NAME            train, the task's dev split or test (default: the dev split); with
                          a --data folder (a file is the split read)
  --batch-size N          examples per forward pass (default 32)
  --max-length N          tokens per example (default: the length the model was fine-tuned
                          at, as its run recorded it; else the model's limit)
  --revision REV          the hub branch, tag or commit (with a hub id)
  --other-task            predict with a model fine-tuned on another task (its head must fit)
  --no-autotune, --retune, --tune-cache FILE
                          the GEMM autotune: off, timed again, its cache file
  --debug                 a failure's stack after its one-line message`;

export const REPORT_HELP = `usage: deno run -A report.ts RUN_OR_FOLDER... [--out DIR [--overwrite]]

The results table of finished runs (mean ± std over seeds, one row per method, one column per
task), and with --out also report.md and the figures comparing the methods' --analysis (runs
on one task and one model).

  RUN_OR_FOLDER           run folders, or folders searched for them (after --, every argument)
  --out DIR               write results.md, results.csv, results.json, figures/*.svg and .png
                          and report.md (the table and the figures) there, once all are made;
                          refused if DIR is a file or already holds any of them
  --overwrite             replace those in --out, and remove the figures of an earlier report
                          that this one does not draw (other files in DIR are kept; default off)
  --debug                 a failure's stack after its one-line message`;
