// Shared set-up of the training tests: the tiny-bert fixture as a model folder (its config and
// weights with a 101-token WordPiece vocabulary, with or without its head), and a small separable
// RTE-format task: the label is whether a marker word occurs in the hypothesis. And the helpers
// that compare run folders.

import { uniformGenerator as generator } from "../model/init.ts";
import { assert } from "./assert.ts";
import { initialHeadValues } from "../model/head.ts";
import {
  type LoadedTensor,
  openSafetensors,
  type SafetensorsReader,
  writeSafetensors,
} from "../model/safetensors.ts";
import { type ModelConfig, readConfig } from "../model/config.ts";
import { loadBackbone, loadHead } from "../model/checkpoint.ts";
import { encoderParameters } from "../model/encoder.ts";
import { ADAMW_DEFAULTS, type AdamwSettings } from "../train/optimizer.ts";
import type { Trainer, TrainerOptions } from "../train/trainer.ts";
import type { RunEnvironment } from "../train/environment.ts";
import { mlmHeadNames, type MlmHeadParams } from "../model/mlm_head.ts";
import type { MaskingIds } from "../train/mlm_data.ts";
import { type OpenedModel, openModel } from "../model/load.ts";
import { batchesOf } from "../train/analysis.ts";
import { tokenizeExamples, type TrainBatch } from "../train/batches.ts";
import { rte } from "../tasks/rte.ts";

export const TINY_BERT = new URL("./fixtures/tiny-bert/", import.meta.url).pathname;

/**
 * The tiny-bert fixture's AdamW reference inputs (adamw_reference.safetensors, made by
 * tools/make_fixtures.py: pre-tokenized rows and BCE labels) as training batches of `B` examples
 * in file order, one per step.
 */
export async function referenceBatches(B = 3): Promise<TrainBatch[]> {
  const ref = await openSafetensors(`${TINY_BERT}adamw_reference.safetensors`);
  try {
    const ints = async (name: string) =>
      Uint32Array.from((await ref.read(name)).data as BigInt64Array, Number);
    const [ids, mask, types, positions] = await Promise.all(
      ["input_ids", "attention_mask", "token_type_ids", "position_ids"].map(ints),
    );
    const labels = (await ref.read("labels")).data as Float64Array;
    const S = ref.tensors.get("input_ids")!.shape[1];
    return Array.from({ length: labels.length / B }, (_, k) => {
      const rows = (a: Uint32Array) => a.slice(k * B * S, (k + 1) * B * S);
      return {
        examples: B,
        encoder: {
          inputIds: rows(ids),
          typeIds: rows(types),
          positionIds: rows(positions),
          attentionMask: rows(mask),
          batch: B,
          seqLen: S,
        },
        targets: Float32Array.from(labels.subarray(k * B, (k + 1) * B)),
      };
    });
  } finally {
    ref.close();
  }
}

/** A run file's environment as an H100 machine records it (train/environment.ts). */
export const H100_ENVIRONMENT: RunEnvironment = {
  ehft: "0.1.0",
  deno: "2.9.6",
  os: "linux x86_64",
  adapter: {
    description: "NVIDIA H100 80GB HBM3",
    vendor: "4318",
    architecture: "",
    device: "8960",
  },
};

/** What a Trainer test needs of the tiny-bert fixture (`referenceTraining`). */
export interface ReferenceTraining {
  /** The AdamW reference's batches of 3 (`referenceBatches`). */
  batches: TrainBatch[];
  /** The Trainer's options: BCE, dropout 0.1, sized for the batches. */
  options: Omit<TrainerOptions, "precision">;
  /** AdamW's defaults: clipping at 0.1, which clips these gradients. */
  adamw: AdamwSettings;
  /** Loads the fixture's backbone and head into a Trainer. */
  load: (trainer: Trainer) => Promise<void>;
  /** Closes the fixture's weights. */
  close: () => void;
}

/** The tiny-bert fixture's weights and reference batches, ready for Trainers. */
export async function referenceTraining(): Promise<ReferenceTraining> {
  const B = 3;
  const batches = await referenceBatches(B);
  const S = batches[0].encoder.seqLen;
  const config = await readConfig(`${TINY_BERT}config.json`);
  const model = await openSafetensors(`${TINY_BERT}model.safetensors`);
  const adamw = { ...ADAMW_DEFAULTS };
  return {
    batches,
    adamw,
    options: {
      config,
      loss: "bce",
      headClasses: 1,
      maxExamples: B,
      maxSeq: S,
      dropout: 0.1,
      headSeed: 0,
      dropoutSeed: 5,
      adamw,
    },
    load: async (trainer) => {
      await loadBackbone(model, config, encoderParameters(trainer.encoder.params));
      await loadHead(model, trainer.headParameters());
    },
    close: () => model.close(),
  };
}

/** The masked-LM fixture (tools/make_mlm_fixture.py): config, weights and PyTorch's reference. */
export const TINY_BERT_MLM = new URL("./fixtures/tiny-bert-mlm/", import.meta.url).pathname;

/** The masked-LM fixture's special ids. */
export const MLM_IDS: MaskingIds = {
  pad: 0,
  cls: 2,
  sep: 3,
  mask: 4,
  vocabSize: 101,
  special: new Set([0, 1, 2, 3, 4]),
};

/** A masked-LM checkpoint's starting values in pretrain()'s form (encoder and head). */
export async function mlmInitialValues(
  config: ModelConfig,
  model: SafetensorsReader,
): Promise<{ encoder: Map<string, Float32Array>; head: MlmHeadParams<Float32Array> }> {
  const encoder = new Map<string, Float32Array>();
  const prefix = `${config.prefix}.`;
  for (const n of model.tensors.keys()) {
    if (n.startsWith(prefix)) encoder.set(n.slice(prefix.length), await model.readF32(n));
  }
  const names = mlmHeadNames(config);
  const head = {} as MlmHeadParams<Float32Array>;
  for (const k of Object.keys(names) as (keyof MlmHeadParams)[]) {
    head[k] = await model.readF32(names[k]);
  }
  return { encoder, head };
}

const WORDS = (
  "the a of to and in is was for on that with as by it at from his an were are which this be " +
  "has had not or but its have their one after been first new who they two he she her all " +
  "also more than other into some only time can there most over would when up out what about " +
  "people years war city state world said no may united states government president company " +
  "made three while many before through where between during under against since because " +
  "could these later such then being both both2 four five six seven eight nine ten"
).split(" ");

/** The 101-token vocabulary of the tiny models ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4). */
export const VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ...WORDS].slice(0, 101);

/** Writes a model folder: config.json, vocab.txt and model.safetensors (head optional). */
export async function writeTinyBert(dir: string, withHead = true): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.copyFile(`${TINY_BERT}/config.json`, `${dir}/config.json`);
  await Deno.writeTextFile(`${dir}/vocab.txt`, VOCAB.join("\n") + "\n");
  if (withHead) {
    await Deno.copyFile(`${TINY_BERT}/model.safetensors`, `${dir}/model.safetensors`);
    return;
  }
  const tensors = await readTensors(
    `${TINY_BERT}/model.safetensors`,
    (n) => !n.startsWith("head."),
  );
  await writeSafetensors(`${dir}/model.safetensors`, tensors);
}

/** A safetensors file's tensors (those `keep` keeps) as F32, as writeSafetensors takes them. */
export async function readTensors(
  path: string,
  keep: (name: string) => boolean = () => true,
): Promise<Parameters<typeof writeSafetensors>[1]> {
  const source = await openSafetensors(path);
  try {
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    for (const [name, info] of source.tensors) {
      if (keep(name)) {
        tensors[name] = { dtype: "F32", shape: info.shape, data: await source.readF32(name) };
      }
    }
    return tensors;
  } finally {
    source.close();
  }
}

export const MARKER = "war";
const FILLER = ["the", "city", "state", "world", "people", "time", "company", "four"];

/**
 * RTE-format examples: a 2-word premise and a 1-word hypothesis over a small vocabulary;
 * "not_entailment" (label id 1) exactly when the hypothesis is the marker word. Classes
 * alternate, so every batch of an ordered file holds both.
 */
export function markerExamples(n: number, seed: number): Record<string, unknown>[] {
  const next = generator(seed);
  const pick = () => FILLER[Math.floor(next() * FILLER.length)];
  return Array.from({ length: n }, (_, idx) => {
    const positive = idx % 2 === 1;
    return {
      premise: [pick(), pick()].join(" "),
      hypothesis: positive ? MARKER : pick(),
      label: positive ? "not_entailment" : "entailment",
      idx,
    };
  });
}

/** Writes train.jsonl and val.jsonl of the marker task into `dir`. */
export async function writeMarkerData(dir: string, train = 64, dev = 32): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const write = (name: string, rows: Record<string, unknown>[]) =>
    Deno.writeTextFile(`${dir}/${name}`, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  await write("train.jsonl", markerExamples(train, 1));
  await write("val.jsonl", markerExamples(dev, 2));
}

/**
 * Writes a fresh EH-FT head for the tiny models (hidden 24, one output) `width` units wide:
 * `--head` with it trains a narrow head, much faster on lavapipe than the 2048 default. With
 * `logits`, one output per value, the output layer's weights 0 and its biases `logits`: every
 * input gets those logits.
 */
export async function writeNarrowHead(
  path: string,
  width = 64,
  seed = 7,
  logits?: number[],
): Promise<void> {
  const C = logits?.length ?? 1;
  const v = initialHeadValues(24, width, C, seed);
  if (logits) {
    v.outProj.weight.fill(0);
    v.outProj.bias.set(logits);
  }
  await writeSafetensors(path, {
    "head.dense.weight": { dtype: "F32", shape: [width, 24], data: v.dense.weight },
    "head.dense.bias": { dtype: "F32", shape: [width], data: v.dense.bias },
    "head.out_proj.weight": { dtype: "F32", shape: [C, width], data: v.outProj.weight },
    "head.out_proj.bias": { dtype: "F32", shape: [C], data: v.outProj.bias },
  });
}

/** A run's log.jsonl, one parsed record a line (steps' and evaluations' alike, as JSON.parse gives). */
// deno-lint-ignore no-explicit-any
export async function readLogRecords(dir: string): Promise<any[]> {
  return (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
}

/** Writes `value` as JSON at `path`, making its folder first (run folders written by hand). */
export async function writeJson(path: string, value: unknown): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(path, JSON.stringify(value, null, 2) + "\n");
}

// The library's own check: a permission or I/O error fails the test instead of reading as absent.
export { exists } from "../model/atomic_write.ts";
import { parentOf } from "../model/atomic_write.ts";

/** Every file under dir (relative path → bytes). */
export async function readTree(dir: string, base = dir): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) { for (const [k, v] of await readTree(path, base)) out.set(k, v); }
    else out.set(path.slice(base.length + 1), await Deno.readFile(path));
  }
  return out;
}

/** Copies every file under `from` to the same relative path under `to` (folders made). */
export async function copyTree(from: string, to: string): Promise<void> {
  for (const [name, bytes] of await readTree(from)) {
    await Deno.mkdir(parentOf(`${to}/${name}`), { recursive: true });
    await Deno.writeFile(`${to}/${name}`, bytes);
  }
}

/**
 * Rewrites the safetensors file at `path` after `change` edits its metadata or tensors (read in
 * their stored dtype) in place.
 */
export async function rewriteSafetensors(
  path: string,
  change: (metadata: Record<string, string>, tensors: Map<string, LoadedTensor>) => void,
): Promise<void> {
  const reader = await openSafetensors(path);
  const metadata = { ...reader.metadata };
  const tensors = new Map<string, LoadedTensor>();
  for (const name of reader.tensors.keys()) tensors.set(name, await reader.read(name));
  reader.close();
  change(metadata, tensors);
  await writeSafetensors(path, Object.fromEntries(tensors), metadata);
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Asserts that every file of the run folder `expected` (as `readTree` gives it) is in `actual`
 * with the same bytes, except run.json (a seed folder's too), which names its own folder. `what`
 * starts the message.
 */
export function assertSameFiles(
  actual: Map<string, Uint8Array>,
  expected: Map<string, Uint8Array>,
  what: string,
): void {
  for (const [name, bytes] of expected) {
    if (name === "run.json" || name.endsWith("/run.json")) continue;
    const got = actual.get(name);
    assert(got !== undefined && sameBytes(got, bytes), `${what}: ${name} differs`);
  }
}

/**
 * A PyTorch reference file (tools/make_fixtures.py, tools/make_mlm_fixture.py): every tensor as
 * float64 (I64 inputs converted), and each tensor's shape.
 */
export async function readReference(
  path: string,
): Promise<{ ref: Map<string, Float64Array>; shapes: Map<string, number[]> }> {
  const reader = await openSafetensors(path);
  try {
    const ref = new Map<string, Float64Array>();
    const shapes = new Map<string, number[]>();
    for (const [n, info] of reader.tensors) {
      const data = (await reader.read(n)).data;
      ref.set(
        n,
        info.dtype === "I64"
          ? Float64Array.from(data as BigInt64Array, Number)
          : data as Float64Array,
      );
      shapes.set(n, [...info.shape]);
    }
    return { ref, shapes };
  } finally {
    reader.close();
  }
}

/**
 * SIGKILLs a child; returns false when it had already exited. It can exit after the caller saw
 * it running but before its `status` settled: Deno then knows and kill() throws.
 */
export function sigkill(child: Deno.ChildProcess): boolean {
  try {
    child.kill("SIGKILL");
    return true;
  } catch (e) {
    if (e instanceof TypeError && /already terminated/.test(e.message)) return false;
    throw e;
  }
}

/**
 * The marker task's train split in `dataDir` as the model in `modelDir` tokenizes it, in BCE
 * batches of `size`, for tests that drive a Trainer themselves. The model stays open: close its
 * weights when done.
 */
export async function markerTrainBatches(
  modelDir: string,
  dataDir: string,
  size: number,
): Promise<{ model: OpenedModel; longest: number; batches: TrainBatch[] }> {
  const model = await openModel(modelDir);
  const examples = await rte.readExamples(dataDir, "train");
  const tokens = tokenizeExamples(model.tokenizer, examples, 512, "rte train", rte.truncation);
  const batches = batchesOf(model.config, "bce", tokens.examples, size);
  return { model, longest: tokens.longest, batches };
}

/** `f`'s result and the lines it wrote with console.error meanwhile. */
export async function capturingErrors<T>(
  f: () => Promise<T>,
): Promise<{ result: T; lines: string[] }> {
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args.join(" "));
  try {
    return { result: await f(), lines };
  } finally {
    console.error = original;
  }
}
