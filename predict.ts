// Predictions of a fine-tuned model on a task's data:
//   deno run -A predict.ts --model DIR --task rte [--data PATH] [--split val] [--batch-size N]
//     [--max-length N] [--revision REV] [--other-task] --out FILE [--overwrite]
// `--split` is one of the task's splits (train, its dev split, test; default its dev split);
// `--revision` only with a hub id. Flag rules as in train/flags.ts.
// `--out` is checked before the model is opened or the data downloaded (checkOutPath); the file is
// written atomically.
// writes one JSON object per example: {"idx": ..., "logits": [...], "prediction": ...}.
// WiC-style tasks (`head: "wic"`): the head pools the target words, whose token ranges each batch
// computes from the examples' character spans (train/batches.ts exampleTokenSpans).

import { allocation, getGpu, type Gpu, GpuError } from "./kernels/device.ts";
import { checkRevision } from "./model/hub.ts";
import { autotuneForProgram, type TuneRequest, tuneRequest } from "./kernels/matmul_autotune.ts";
import { BindGroupCache, Recorder } from "./kernels/recorder.ts";
import { createTensor, type Tensor } from "./kernels/tensor.ts";
import { loadBackbone, loadHead } from "./model/checkpoint.ts";
import { maxSequenceLength } from "./model/config.ts";
import { MAX_BATCH_SIZE } from "./train/config.ts";
import { createEncoder, encoderParameters } from "./model/encoder.ts";
import { createHead, headParameters } from "./model/head.ts";
import { noteUnusedOnce, type OpenedModel, openModel } from "./model/load.ts";
import { parentOf, writeFileAtomic } from "./model/atomic_write.ts";
import { PREDICT_HELP } from "./train/help.ts";
import { stopWithWord } from "./train/run_faults.ts";
import { plural, writeStdout } from "./model/progress_text.ts";
import { shippedDataDir } from "./train/default_model.ts";
import type { TextInput } from "./model/tokenizer.ts";
import {
  checkFoldersCanBeMade,
  checkRevisionTarget,
  choiceFlag,
  FlagError,
  intFlag,
  parseFlags,
  requireFlag,
  runMain,
  TUNE_FLAGS,
  tuneFlags,
} from "./train/flags.ts";
import {
  checkLeadingToken,
  emptyTextNote,
  exampleTokenSpans,
  maxLengthProblem,
} from "./train/batches.ts";
import { modelTuneShapes } from "./train/tune_shapes.ts";
import { headFeatures, type Task, type TaskExample } from "./train/task.ts";
import { readUtf8File } from "./model/utf8.ts";

export const FLAGS = {
  model: { type: "string" },
  task: { type: "string" },
  data: { type: "string" },
  split: { type: "string" },
  "batch-size": { type: "string" },
  "max-length": { type: "string" },
  revision: { type: "string" },
  "other-task": { type: "boolean" },
  out: { type: "string" },
  overwrite: { type: "boolean" },
  ...TUNE_FLAGS,
} as const;

/** What `predict` runs: a fine-tuned model over one split of a task's data. */
export interface PredictOptions {
  /**
   * A fine-tuned model: a run's model/ folder, or a hub id. Refused: a model that carries an
   * active PEFT method's tensors (prefix-tuning rows: the `--strategy peft --peft prefix` and
   * `ehft-reserve --peft prefix` models; unmerged LoRA factors: a Stage-1 snapshot; a method of
   * one's own), which this runner does not apply.
   */
  model: string;
  /** The task the model was fine-tuned on (its head must fit it). */
  task: Task;
  /** The task's data folder. */
  data: string;
  /** train, the task's dev split or test. */
  split: string;
  /** Examples per forward pass. */
  batchSize: number;
  /**
   * Tokens per example; default the length the model was fine-tuned at (its weights' metadata,
   * or for a run's model/ from before it was kept there, the run's run.json), else the model's
   * limit: predictions at another length are not those the run's metrics scored.
   */
  maxLength?: number;
  /**
   * Predict with a model whose metadata names another task than `task` (its head must still fit
   * `task`); refused otherwise, as a head trained for another task's labels reads as nonsense.
   */
  otherTask?: boolean;
  /** The hub branch, tag or commit (with a hub id). */
  revision?: string;
  /**
   * Tune the GEMM for this device first (kernels/matmul_autotune.ts); absent: no tune (the
   * built-in choice). The predictions are bitwise the same either way.
   */
  autotune?: TuneRequest;
  /** The GPU to run on; default the process-wide one (`getGpu`). */
  gpu?: Gpu;
}

/** One example's prediction. */
export interface Prediction {
  /** The example's idx in the data file. */
  idx: number;
  /** The head's outputs for it (one per choice for multiple choice). */
  logits: number[];
  /** The label name, a choice's index (COPA), or the score (STS-B). */
  prediction: string | number;
}

/** Runs the model over one split of a task's data and returns a prediction per example. */
export async function predict(options: PredictOptions): Promise<Prediction[]> {
  const { task } = options;
  // A library caller's options came past no flag parser (batchSize 0 looped forever).
  const { batchSize, maxLength } = options;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > MAX_BATCH_SIZE) {
    throw new FlagError(
      `--batch-size (batchSize): expected an integer in [1, ${MAX_BATCH_SIZE}], got ${batchSize}`,
    );
  }
  if (maxLength !== undefined && (!Number.isSafeInteger(maxLength) || maxLength < 2)) {
    throw new FlagError(`--max-length (maxLength): expected an integer ≥ 2, got ${maxLength}`);
  }
  // The unused tensors are named below, once the model is known to be one predict.ts can run.
  const model = await openModel(options.model, { revision: options.revision, noteUnused: false });
  try {
    const { config, tokenizer, head: headShape } = model;
    checkLeadingToken(tokenizer, tokenizer.source);
    if (!headShape) {
      // A transformers fine-tuned classifier is fine-tuned, but not with the EH-FT head.
      const classifier = model.unused.some((n) => n.startsWith("classifier."));
      throw new Error(
        `${model.dir} has no EH-FT head (head.* tensors): ` +
          (classifier
            ? "its classifier.* tensors are a transformers classification head, which " +
              "predict.ts does not run (it runs models ehft trained)"
            : "it is a pretrained backbone, not a fine-tuned model"),
      );
    }
    if (headShape.classes !== task.headClasses) {
      throw new Error(
        `${model.dir}: its head has ${headShape.classes} outputs, task ${task.name} needs ` +
          `${task.headClasses}`,
      );
    }
    const wic = task.head === "wic";
    const features = headFeatures(task, config.hiddenSize);
    if (headShape.features !== features) {
      throw new Error(
        `${model.dir}: its head takes ${headShape.features} features, task ${task.name} on this ` +
          `backbone (hidden size ${config.hiddenSize}) gives ${features}` +
          (wic ? " (WiC: 5 × hidden)" : ""),
      );
    }
    // Prefix-tuning rows and unmerged LoRA factors live beside the backbone only while the
    // method is active (a Stage-1 snapshot; the prefix-tuning baseline's model); this runner
    // applies neither, so it refuses rather than predict with part of the model.
    const names = [...model.weights.tensors.keys()];
    const prefixRows = names.find((n) => n.startsWith("prefix."));
    if (prefixRows) {
      throw new Error(
        `${model.dir} carries prefix-tuning rows ("${prefixRows}"); predict.ts runs models ` +
          `without an active prefix (train with ehft, or another strategy that drops it)`,
      );
    }
    // A method of one's own left active: its tensors are kept beside the backbone, unapplied here.
    const meta = model.weights.metadata;
    if (meta.peft_state === "separate") {
      throw new Error(
        `${model.dir} carries the tensors of the still active PEFT method ` +
          `${meta.peft ? `"${meta.peft}"` : "(its metadata names none)"}; ` +
          `predict.ts runs models without one (train with ehft, or another strategy that drops it)`,
      );
    }
    const loraFactors = names.find((n) => n.startsWith("lora."));
    if (loraFactors) {
      throw new Error(
        `${model.dir} carries LoRA factors not merged into its weights ("${loraFactors}"); ` +
          `predict.ts runs models whose LoRA is merged (a run's model/ folder is; with the ` +
          `library, mergeLora merges them)`,
      );
    }
    // train.ts's metadata (with its strategy and stage): other tools' "task" may be any word.
    const ours = meta.strategy !== undefined && meta.stage !== undefined;
    if (ours && meta.task !== undefined && meta.task !== task.name && !options.otherTask) {
      throw new Error(
        `${model.dir} was fine-tuned on ${JSON.stringify(meta.task)} (its weights' metadata), ` +
          `not ${task.name}: ` +
          `pass --other-task (otherTask: true) to predict ${task.name} with it anyway`,
      );
    }
    if (model.unused.length > 0) noteUnusedOnce(model.weights.path, model.unused);
    const examples = await task.readExamples(options.data, options.split);
    const empty = emptyTextNote(examples, `${task.name} ${options.split}`);
    if (empty !== null) console.error(`predict: ${empty}`);
    const repeated = repeatedIdxNote(examples, `${task.name} ${options.split}`);
    if (repeated !== null) console.error(`predict: ${repeated}`);
    if (options.maxLength !== undefined) {
      const problem = maxLengthProblem(tokenizer, examples, options.maxLength, task.name);
      if (problem !== null) throw new FlagError(problem);
    }
    const kept = options.maxLength === undefined ? await trainedMaxLength(model) : null;
    if (kept !== null) {
      // Checked as a typed one is: a length of 3 (an edited file) predicted one input for all.
      const problem = maxLengthProblem(tokenizer, examples, kept.length, task.name);
      if (problem !== null) {
        throw new Error(
          `${kept.source}: the max_length ${kept.length} it gives ${
            problem.replace(/^--max-length \d+ /, "")
          } (or give --max-length)`,
        );
      }
    }
    const trained = kept?.length ?? null;
    const limit = Math.min(options.maxLength ?? trained ?? Infinity, maxSequenceLength(config));
    // As train.ts says it: a typed length beyond the model's positions is cut to them.
    if (options.maxLength !== undefined && options.maxLength > maxSequenceLength(config)) {
      console.error(
        `predict: note: --max-length ${options.maxLength} is more than the ` +
          `${maxSequenceLength(config)} positions this model has: the predictions take ${limit}`,
      );
    }

    // Every input is tokenized first (cheap), so the GPU arena fits the longest batch exactly.
    const inputs: { example: number; input: TextInput }[] = [];
    examples.forEach((e, i) => e.inputs.forEach((input) => inputs.push({ example: i, input })));
    const batches: ReturnType<typeof tokenizer.encodeBatch>[] = [];
    const batchSpans: number[][] = [];
    const what = `${task.name} ${options.split}`;
    for (let start = 0; start < inputs.length; start += options.batchSize) {
      const chunk = inputs.slice(start, start + options.batchSize);
      const encoded = tokenizer.encodeBatch(chunk.map((x) => x.input), {
        maxLength: limit,
        truncation: task.truncation ?? "longest_first",
        fallback: "longest_first",
      });
      batches.push(encoded);
      // WiC examples have one input each, so row b of the batch is example chunk[b].example.
      batchSpans.push(
        wic
          ? chunk.flatMap((x, b) => [
            ...exampleTokenSpans(tokenizer, examples[x.example], encoded, b, what, x.example),
          ])
          : [],
      );
    }
    const maxSeq = Math.max(1, ...batches.map((b) => b.seqLen));
    const maxBatch = Math.max(1, ...batches.map((b) => b.batch));

    const gpu = options.gpu ?? await getGpu();
    if (options.autotune) {
      const shapes = modelTuneShapes(config, {
        rows: maxBatch * maxSeq,
        headRows: maxBatch,
        headFeatures: features,
        headWidth: headShape.hidden,
        headClasses: headShape.classes,
        backward: false,
        attention: { sequences: maxBatch, seq: maxSeq },
      });
      await autotuneForProgram(gpu, options.autotune, shapes);
    }
    // The largest batch's rows × tokens: one beyond a storage binding is said before any runs.
    const maxRows = Math.max(1, ...batches.map((b) => b.batch * b.seqLen));
    let encoder;
    try {
      encoder = createEncoder(gpu, config, { maxBatch, maxSeq, maxRows, inference: true });
    } catch (e) {
      throw withBatchThatFits(e, options.batchSize, batches.flatMap(rowLengths), maxRows);
    }
    const head = createHead(gpu, {
      hiddenSize: config.hiddenSize,
      numClasses: headShape.classes,
      wic,
      width: headShape.hidden,
      maxBatch,
      maxSeq,
      init: false,
    });
    let all: Tensor | null = null;
    try {
      await loadBackbone(model.weights, config, encoderParameters(encoder.params));
      await loadHead(model.weights, headParameters(head));
      // Every batch's outputs gathered on the GPU and read once (a read per batch waited on
      // the GPU each time); bind groups reused across batches of the same length.
      const C = task.headClasses;
      const rows = batches.reduce((n, b) => n + b.batch, 0);
      all = createTensor(gpu, [rows * C], "f32", "predictions");
      const rec = new Recorder(gpu, new BindGroupCache());
      let at = 0;
      for (const [i, batch] of batches.entries()) {
        encoder.setBatch(batch);
        if (wic) head.setSpans(batchSpans[i], batch.batch, batch.seqLen);
        const hidden = encoder.forward(rec, { training: false });
        const out = head.forward(rec, hidden);
        const n = batch.batch * C;
        rec.copy("predictions", out.view(0, [n]), all.view(at * 4, [n]));
        at += n;
        await rec.submit();
      }
      const values = await all.download();
      const logits: number[][] = [];
      for (let r = 0; r < rows; r++) logits.push(Array.from(values.subarray(r * C, (r + 1) * C)));
      return collect(task, examples, inputs.map((x) => x.example), logits);
    } finally {
      all?.destroy();
      encoder.destroy();
      head.destroy();
    }
  } finally {
    model.weights.close();
  }
}

/**
 * A note when examples share an idx (the predictions are keyed by it, so two would be one), or
 * null: how many idx values repeat, and the first with where it is.
 */
export function repeatedIdxNote(examples: readonly TaskExample[], what: string): string | null {
  const first = new Map<number, TaskExample>();
  const again: [TaskExample, TaskExample][] = [];
  const repeated = new Set<number>();
  for (const e of examples) {
    const seen = first.get(e.idx);
    if (seen === undefined) first.set(e.idx, e);
    else if (!repeated.has(e.idx)) {
      repeated.add(e.idx);
      again.push([seen, e]);
    }
  }
  if (again.length === 0) return null;
  const [a, b] = again[0];
  const at = (e: TaskExample) => e.source ?? `example ${examples.indexOf(e)}`;
  return `${what}: ${again.length === 1 ? "an idx" : `${again.length} idx values`} ` +
    `repeat${again.length === 1 ? "s" : ""} (idx ${a.idx} at ${at(a)} and ${at(b)}): their ` +
    `predictions share it`;
}

/**
 * The max length a fine-tuned model was trained at: its weights' metadata (train.ts writes
 * max_length), or for a model train.ts saved before the metadata kept it, the resolved max_length
 * of the run.json beside it; null when neither says.
 */
async function trainedMaxLength(
  model: OpenedModel,
): Promise<{ length: number; source: string } | null> {
  const valid = (n: unknown) => typeof n === "number" && Number.isSafeInteger(n) && n >= 2;
  const meta = model.weights.metadata;
  // Digits only, as train.ts writes it (Number() read "0x10" and " 16 " as 16).
  const kept = /^[0-9]{1,9}$/.test(meta.max_length ?? "") ? Number(meta.max_length) : NaN;
  if (valid(kept)) return { length: kept, source: model.weights.path };
  // Only a model train.ts saved (its strategy and stage): another model copied beside some
  // run's run.json is not that run's.
  if (meta.strategy === undefined || meta.stage === undefined) return null;
  try {
    const path = `${model.dir}/../run.json`;
    const run = JSON.parse(await readUtf8File(path));
    const length = run?.resolved?.max_length;
    return valid(length) ? { length, source: path } : null;
  } catch {
    // A hub model, or a folder that is not a run's model/.
    return null;
  }
}

/** Groups per-input logits back into examples: one logit per input, or the input's row. */
function collect(
  task: Task,
  examples: TaskExample[],
  owner: number[],
  logits: number[][],
): Prediction[] {
  const perExample: number[][] = examples.map(() => []);
  logits.forEach((row, i) => perExample[owner[i]].push(...row));
  return examples.map((e, i) => ({
    idx: e.idx,
    logits: perExample[i],
    prediction: task.prediction(perExample[i]),
  }));
}

/** The tokens of each row of an encoded batch (its attention mask's ones). */
function rowLengths(b: { batch: number; seqLen: number; attentionMask: ArrayLike<number> }) {
  return Array.from({ length: b.batch }, (_, r) => {
    let n = 0;
    for (let t = 0; t < b.seqLen; t++) n += b.attentionMask[r * b.seqLen + t];
    return n;
  });
}

/**
 * The encoder's refusal of a batch beyond one storage binding, with the largest --batch-size
 * whose batches (of these rows, `lengths` tokens each, in order) all fit: the bytes it named are
 * for `maxRows` rows × tokens. Other errors as they are.
 */
function withBatchThatFits(
  e: unknown,
  batchSize: number,
  lengths: readonly number[],
  maxRows: number,
): unknown {
  return withBatchAdvice(e, batchSize, (bytes, limit) => {
    const perRow = bytes / maxRows;
    const largest = (b: number) => {
      let most = 0;
      for (let i = 0; i < lengths.length; i += b) {
        const chunk = lengths.slice(i, i + b);
        most = Math.max(most, chunk.length * Math.max(...chunk));
      }
      return most;
    };
    let fits = batchSize - 1;
    while (fits >= 1 && largest(fits) * perRow > limit) fits--;
    return fits;
  });
}

/**
 * A batch beyond one storage binding (the encoder's check, or a launch's) with the --batch-size
 * that fits: `fitting` finds it from the bytes and the limit, by default from their ratio
 * (activations grow with the batch). Other errors, and one that says what fits already, as they
 * are; a smaller --max-length when no smaller batch fits.
 */
export function withBatchAdvice(
  e: unknown,
  batchSize: number,
  fitting = (bytes: number, limit: number) => Math.max(1, Math.floor((batchSize * limit) / bytes)),
): unknown {
  const a = e instanceof GpuError ? allocation(e.message) : null;
  if (!a?.binding || a.limit === null || a.bytes === 0) return e;
  if ((e as Error).message.includes("does not fit this adapter")) return e;
  const fits = fitting(a.bytes, a.limit);
  return new GpuError(
    `${(e as Error).message}: the batch of ${batchSize} does not fit this adapter; try ` +
      (fits >= 1 && fits < batchSize ? `--batch-size ${fits}` : "a smaller --max-length"),
  );
}

/** predict.ts's command line, checked: every flag before anything is read or downloaded. */
export interface PredictArgs {
  out: string;
  /** --overwrite: an existing --out file may be replaced. */
  overwrite: boolean;
  /** --data as typed; absent: the task's shipped copy or its download. */
  data?: string;
  /** Whether --split was typed (a --data file is the split read, whatever it says). */
  splitTyped?: boolean;
  options: Omit<PredictOptions, "data">;
}

/** Parses and checks predict.ts's arguments (one-line FlagErrors naming the flag). */
export async function parsePredictArgs(args: string[]): Promise<PredictArgs> {
  // Loaded here, not at the top: a task script that imports this module (--predict-test) is
  // itself one of the task files, and a static import back into it would never finish loading.
  const { taskByName } = await import("./tasks/all.ts");
  const flags = parseFlags(FLAGS, args);
  const out = requireFlag("out", flags.out);
  const model = requireFlag("model", flags.model);
  const task = taskByName(requireFlag("task", flags.task));
  const splits = [...new Set([task.trainSplit ?? "train", task.devSplit, "test"])];
  const split = flags.split === undefined
    ? task.devSplit
    : choiceFlag("split", flags.split, splits);
  const batchSize = intFlag("batch-size", flags["batch-size"], 32, 1, MAX_BATCH_SIZE);
  const maxLength = flags["max-length"] === undefined
    ? undefined
    : intFlag("max-length", flags["max-length"], 512, 2);
  if (flags.revision !== undefined) {
    try {
      checkRevision(flags.revision);
    } catch (e) {
      throw new FlagError(`--revision: ${(e as Error).message}`);
    }
    checkRevisionTarget(model, flags.revision);
  }
  const autotune = tuneRequest(tuneFlags(flags));
  return {
    out,
    overwrite: flags.overwrite,
    data: flags.data,
    splitTyped: flags.split !== undefined,
    options: {
      model,
      task,
      split,
      batchSize,
      maxLength,
      revision: flags.revision,
      otherTask: flags["other-task"],
      autotune,
    },
  };
}

/**
 * Checks `--out` before the model is opened, the data downloaded or the GPU used, so that a bad
 * path costs nothing and no file is replaced unasked: a folder is refused, an existing file (or
 * link) unless `overwrite`, a path through a file, or a folder that takes no file, always. A
 * missing parent folder is made when the predictions are written (as train.ts makes its --out).
 */
export async function checkOutPath(out: string, overwrite: boolean): Promise<void> {
  let info: Deno.FileInfo | null = null;
  try {
    info = await Deno.lstat(out);
    if (info.isSymlink) info = await Deno.stat(out).catch(() => info);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) {
      throw new FlagError(`--out ${out}: cannot check it: ${(e as Error).message}`);
    }
  }
  if (info?.isDirectory || out.endsWith("/")) {
    throw new FlagError(
      `--out ${out} is a folder: give a file path for the predictions (e.g. ` +
        `${out.replace(/\/+$/, "")}/predictions.jsonl)`,
    );
  }
  if (info && !info.isFile && !info.isSymlink) {
    throw new FlagError(
      `--out ${out} is not a regular file (a device, pipe or socket): give a file path for the ` +
        "predictions",
    );
  }
  if (info && !overwrite) {
    throw new FlagError(
      `--out ${out} already exists: pass --overwrite to replace it, or choose another path`,
    );
  }
  await checkFoldersCanBeMade(out, "--out", true);
}

/** `--out -`: the predictions go to stdout (for a pipe), not into a file called "-". */
const STDOUT = "-";

async function main(args: string[]) {
  // The predictions are written once, whole: an interrupted write leaves --out as it was.
  stopWithWord("predict", (how) => Promise.resolve(`${how}; no file was left half-written`));
  const { out, overwrite, data: typedData, splitTyped, options } = await parsePredictArgs(args);
  const { task } = options;
  if (out !== STDOUT) await checkOutPath(out, overwrite);
  // A file is read as it is: a --split that names another split would be ignored (test.tsv read
  // for --split val); one that names the file's own is what it is.
  const named = (typedData?.split("/").pop() ?? "").split(".")[0];
  if (
    splitTyped && typedData !== undefined && named !== options.split &&
    (await Deno.stat(typedData).catch(() => null))?.isFile
  ) {
    throw new FlagError(
      `--split ${options.split}: --data ${typedData} is a file, which is read whatever its split; ` +
        `give the folder that holds the split instead (or leave out --split)`,
    );
  }
  // Without --data: the task's shipped copy, or its download (BoolQ, QNLI).
  const shipped = task.dataDir === undefined ? undefined : shippedDataDir(task.dataDir);
  const data = typedData ?? shipped ?? await task.resolveData?.();
  if (!data) throw new FlagError(`--data is required (task ${task.name} has no default data)`);
  const predictions = await predict({ ...options, data }).catch((e) => {
    throw withBatchAdvice(e, options.batchSize);
  });
  if (predictions.length === 0) throw new FlagError(`--data: no examples`);
  const text = predictions.map((p) => JSON.stringify(p)).join("\n") + "\n";
  if (out === STDOUT) {
    await writeStdout(text);
    console.error(`predict: ${plural(predictions.length, "prediction")} written to stdout`);
    return;
  }
  await Deno.mkdir(parentOf(out), { recursive: true });
  await writeFileAtomic(out, text);
  console.error(`predict: ${plural(predictions.length, "prediction")} written to ${out}`);
}

if (import.meta.main) await runMain("predict", main, PREDICT_HELP);
