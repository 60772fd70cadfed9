// What a run needs before its first step, read once for every seed: the model opened and
// fingerprinted, both splits read, checked and tokenized, the budget and the stages resolved.

import { checkHeadFinite, readHeadShape } from "../model/checkpoint.ts";
import { isDirectory } from "../model/atomic_write.ts";
import { maxSequenceLength } from "../model/config.ts";
import { HEAD_WIDTH } from "../model/head.ts";
import { filesSha256, modelSha256, type OpenedModel, openModel } from "../model/load.ts";
import { openSafetensors } from "../model/safetensors.ts";
import {
  assembleBatch,
  batchesPerEpoch,
  checkLeadingToken,
  emptyTextNote,
  expectSpans,
  lengthProblem,
  longestRow,
  type TokenizedSplit,
  tokenizeExamples,
  type TrainBatch,
} from "./batches.ts";
import { sha256Hex } from "./data_files.ts";
import { FlagError } from "./flags.ts";
import { microBatchSize, type TrainConfig } from "./config.ts";
import { unscorableDevSplit } from "./evaluate.ts";
import { ADAMW_DEFAULTS, type AdamwSettings } from "./optimizer.ts";
import { resolveStages, type Stage } from "./strategy.ts";
import { warmupSteps } from "./schedule.ts";
import { badLabel, headFeatures, labelClasses, type Task, type TaskExample } from "./task.ts";

/** A run's model, tokenized splits, stages and budget: shared by every seed, read-only. */
export interface Prepared {
  model: OpenedModel;
  train: TokenizedSplit;
  dev: TokenizedSplit;
  devBatches: TrainBatch[];
  gold: number[];
  stages: Stage[];
  resolved: Record<string, unknown>;
  perEpoch: number;
  totalSteps: number;
  evalEvery: number;
  checkpointEvery: number;
  headWidth: number;
  maxLength: number;
}

/**
 * A fingerprint of a split as read (each example's texts, label and target spans, in order): a
 * resumed run checks its data against the one it started on.
 */
async function examplesSha256(examples: readonly TaskExample[]): Promise<string> {
  return await sha256Hex(
    examples.map((e) => JSON.stringify([e.inputs, e.label, e.spans ?? null])).join("\n"),
  );
}

/** About the most checkpoints a run writes without `--checkpoint-every`. */
export const DEFAULT_CHECKPOINTS = 20;

/**
 * The default checkpoint interval: every `every` steps (each evaluation's, or each epoch's
 * without evaluations), or every k-th such step when that would make more than about
 * DEFAULT_CHECKPOINTS. A checkpoint holds the weights and both AdamW moments: at each of CB's
 * 400 evaluations with RoBERTa-large (4.3 GB each), 1.7 TB a run. A kill loses the steps since
 * the last one: at most `every` steps, or about a twentieth of a longer run.
 */
export function defaultCheckpointEvery(every: number, totalSteps: number): number {
  return every * Math.max(1, Math.ceil(totalSteps / (DEFAULT_CHECKPOINTS * every)));
}

/** Opens the model, reads and tokenizes the data, resolves the budget and the stages. */
export async function prepare(config: TrainConfig, task: Task, quiet = false): Promise<Prepared> {
  const model = await openModel(config.model, { revision: config.revision ?? undefined, quiet });
  try {
    const prefixRows = config.peft === "prefix" ? config.prefixLength : 0;
    const positions = maxSequenceLength(model.config);
    const limit = positions - prefixRows;
    const trainSplit = task.trainSplit ?? "train";
    checkLeadingToken(model.tokenizer, model.tokenizer.source);
    // Both splits read and checked before either is tokenized (tens of seconds on QNLI).
    const trainExamples = await task.readExamples(config.data, trainSplit);
    const devExamples = await task.readExamples(config.data, task.devSplit);
    const problem = lengthProblem(model.tokenizer, trainExamples, {
      maxLength: config.maxLength,
      positions,
      prefixRows,
      task: task.name,
      model: model.dir,
    });
    if (problem) throw new (problem.command ? FlagError : Error)(problem.message);
    const maxLength = Math.min(config.maxLength ?? limit, limit);
    // The recipe's or the flag's: said, since what the run reads and saves is shorter.
    if (config.maxLength !== null && config.maxLength > limit) {
      console.error(
        `note: --max-length ${config.maxLength} is more than the ${limit} positions ` +
          (prefixRows > 0
            ? `this model's ${positions} leave beside --prefix-length ${prefixRows}`
            : "this model has") +
          `: the run takes ${limit}`,
      );
    }
    const classes = labelClasses(task, trainExamples);
    const splits = [[trainSplit, trainExamples], [task.devSplit, devExamples]] as const;
    for (const [split, examples] of splits) {
      const bad = badLabel(task, examples, classes, `${task.name} ${split}`);
      if (bad !== null) throw new Error(bad);
    }
    const unscorable = unscorableDevSplit(
      task.metrics,
      devExamples.length,
      `${task.name} ${task.devSplit}`,
    );
    if (unscorable !== null) throw new Error(unscorable);
    for (const [split, examples] of splits) {
      const note = emptyTextNote(examples, `${task.name} ${split}`);
      if (note !== null) console.error(note);
    }
    const tokenize = (examples: readonly TaskExample[], split: string) =>
      tokenizeExamples(
        model.tokenizer,
        examples,
        maxLength,
        `${task.name} ${split}`,
        task.truncation,
      );
    const train = tokenize(trainExamples, trainSplit);
    const trainSha256 = await examplesSha256(trainExamples);
    const dev = tokenize(devExamples, task.devSplit);
    for (const [split, t] of [[trainSplit, train], [task.devSplit, dev]] as const) {
      if (t.fellBack > 0) {
        console.error(
          `${task.name} ${split}: ${t.fellBack} pairs did not fit by cutting the first text ` +
            `only (${task.truncation}) and were cut longest-first`,
        );
      }
    }
    expectSpans(train, task.head, `${task.name} ${trainSplit}`);
    expectSpans(dev, task.head, `${task.name} ${task.devSplit}`);
    if (dev.inputsPerExample !== train.inputsPerExample) {
      throw new Error(
        `${task.name}: ${dev.inputsPerExample} inputs per ${task.devSplit} example, ` +
          `${train.inputsPerExample} per ${trainSplit} example`,
      );
    }
    const B = config.batchSize;
    // Evaluated a micro-batch at a time: the GPU holds no more than that (--grad-accum).
    const devBatches: TrainBatch[] = [];
    const micro = microBatchSize(config);
    for (let i = 0; i < dev.examples.length; i += micro) {
      devBatches.push(assembleBatch(model.config, task.loss, dev.examples.slice(i, i + micro)));
    }
    const perEpoch = batchesPerEpoch(train.examples.length, B);
    const totalSteps = config.maxSteps ?? config.epochs! * perEpoch;
    const examples = `${train.examples.length} ${trainSplit} examples`;
    if (B > train.examples.length) {
      console.error(
        `note: --batch-size ${B} is more than the ${examples}: each step takes them all`,
      );
    }
    let stages;
    try {
      stages = resolveStages({
        strategy: config.strategy,
        peft: config.peft,
        totalSteps,
        stage1Ratio: config.stage1Ratio,
        lr: config.lr,
        stage1Lr: config.stage1Lr ?? config.lr,
      });
    } catch (e) {
      // Too few steps: what --epochs gave them.
      const message = (e as Error).message;
      if (config.maxSteps !== null || !/at least \d+ steps?, got/.test(message)) throw e;
      throw new FlagError(
        `${message} (--epochs ${config.epochs} of ${perEpoch} batch` +
          `${perEpoch === 1 ? "" : "es"}: ${examples}, --batch-size ${B})`,
      );
    }
    const evalEvery = config.evalEvery ?? perEpoch;
    const checkpointEvery = config.checkpointEvery ?? defaultCheckpointEvery(
      evalEvery > 0 ? evalEvery : perEpoch,
      totalSteps,
    );
    let headWidth = HEAD_WIDTH;
    if (config.head) {
      if ((await isDirectory(config.head)) === true) {
        throw new Error(
          `--head ${config.head} is a folder: give the .safetensors file that holds the head.* ` +
            `tensors (a run's model/model.safetensors, say)`,
        );
      }
      const reader = await openSafetensors(config.head);
      try {
        const shape = readHeadShape(reader);
        if (!shape) throw new Error(`--head ${config.head}: no head.* tensors`);
        // Read now, not only at the upload: --overwrite removes the old run in between.
        await checkHeadFinite(reader);
        const features = headFeatures(task, model.config.hiddenSize);
        if (shape.features !== features || shape.classes !== task.headClasses) {
          throw new Error(
            `--head ${config.head}: a head of ${shape.features} → ${shape.classes}, the model ` +
              `and task need ${features} → ${task.headClasses}`,
          );
        }
        headWidth = shape.hidden;
      } finally {
        reader.close();
      }
      // run.json says what happened: the first stage starts from the given head.
      stages[0] = { ...stages[0], freshHead: false };
    }
    const adamw = adamwSettings(config);
    const resolved = {
      // What relative --model, --data and --head paths are relative to: --resume finds them from
      // another working folder too.
      cwd: Deno.cwd(),
      task: {
        name: task.name,
        loss: task.loss,
        head_classes: task.headClasses,
        head_input: task.head ?? "first-token",
        inputs_per_example: train.inputsPerExample,
        metrics: task.metrics,
        train_split: trainSplit,
        dev_split: task.devSplit,
        train_examples: train.examples.length,
        dev_examples: dev.examples.length,
        train_sha256: trainSha256,
        dev_sha256: await examplesSha256(devExamples),
      },
      model: {
        dir: model.dir,
        // What report.ts tells models apart by, however --model was spelled.
        real_dir: await Deno.realPath(model.dir),
        // Its config, tokenizer and weights as read: --resume refuses a model changed in place.
        sha256: await modelSha256(model),
        model_type: model.config.modelType,
        hidden_size: model.config.hiddenSize,
        layers: model.config.numLayers,
        max_positions: maxSequenceLength(model.config),
      },
      max_length: maxLength,
      longest_row: longestRow(train, dev),
      dropout: {
        hidden: config.dropout ?? model.config.hiddenDropout,
        attention: config.dropout ?? model.config.attentionDropout,
      },
      batches_per_epoch: perEpoch,
      total_steps: totalSteps,
      eval_every: evalEvery,
      checkpoint_every: checkpointEvery,
      head_width: headWidth,
      ...(config.head ? { head_sha256: await filesSha256([config.head]) } : {}),
      adamw,
      // constant_warmup: `constant` warms up; runs from before did not. warmup_steps: each
      // stage's, of the exact product; runs from before rounded it down (checkSameSchedule).
      schedule: {
        name: config.schedule,
        warmup_ratio: config.warmupRatio,
        constant_warmup: true,
        warmup_steps: stages.map((s) =>
          warmupSteps({
            name: config.schedule,
            lr: s.lr,
            total: s.steps,
            warmupRatio: config.warmupRatio,
          })
        ),
      },
      stages,
    };
    return {
      model,
      train,
      dev,
      devBatches,
      gold: dev.examples.map((e) => e.label),
      stages,
      resolved,
      perEpoch,
      totalSteps,
      evalEvery,
      checkpointEvery,
      headWidth,
      maxLength,
    };
  } catch (e) {
    model.weights.close();
    throw e;
  }
}

export function adamwSettings(config: TrainConfig): AdamwSettings {
  return {
    ...ADAMW_DEFAULTS,
    weightDecay: config.weightDecay,
    maxGradNorm: config.maxGradNorm,
  };
}
