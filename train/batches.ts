// From a task's examples to the batches the loop uploads: every example tokenized once (so the
// GPU arena can be sized for the longest batch before training starts), a seeded shuffle per
// epoch, and batches padded to their own longest row.
//
// The data stream is global over the run: step g (counting every stage) reads batch g mod N of
// epoch ⌊g / N⌋ (N batches per epoch, the last one possibly short), so a resumed run reads
// exactly what an uninterrupted one would, and Stage 2 continues the stream where Stage 1 ended.
//
// WiC-style examples (character spans of a target word in each text of their one pair) also get
// the word's token ranges in their encoded row, computed after truncation; a target word that
// truncation cut into is an error naming the example (never clamped: the head would silently
// pool other tokens), with the advice to raise --max-length.

import { type ModelConfig, positionIds as modelPositionIds } from "../model/config.ts";
import type { EncoderBatch } from "../model/encoder.ts";
import {
  type EncodedBatch,
  placeSpan,
  type TextInput,
  type TextTokenizer,
  TokenizerError,
  type Truncation,
} from "../model/tokenizer.ts";
import type { HeadInput, LossKind, TaskExample } from "./task.ts";
import { uniformGenerator } from "../model/init.ts";

/** One encoder input of an example: its tokens, special tokens included, unpadded. */
export interface TokenizedInput {
  /** Token ids. */
  ids: Uint32Array;
  /** Token type (segment) ids, one per token. */
  types: Uint32Array;
}

/** One example tokenized: its encoder inputs and its label. */
export interface TokenizedExample {
  /** Its encoder inputs (one, or one per choice for multiple choice). */
  inputs: TokenizedInput[];
  /** Label id, or score for regression. */
  label: number;
  /** WiC: the target word's token ranges in the example's one row: start1, end1, start2, end2. */
  spans?: TokenSpans;
}

/** Token ranges [start1, end1) and [start2, end2) of a WiC example's target word in its row. */
export type TokenSpans = readonly [number, number, number, number];

/** The tokenization of a split: examples, and the longest row in it. */
export interface TokenizedSplit {
  /** The examples, in file order. */
  examples: TokenizedExample[];
  /** Encoder inputs per example (1, or e.g. 2 for COPA's choices). */
  inputsPerExample: number;
  /** Tokens in the longest row. */
  longest: number;
  /** Whether the examples carry target-word token spans (all of them, or none). */
  hasSpans: boolean;
  /** Pairs cut longest-first because "only_first" could not fit them. */
  fellBack: number;
}

/**
 * The token ranges of `example`'s target words (its `spans`, character ranges) in row `row` of
 * `encoded`, where its one pair was encoded. Errors name `what`, the example and the word, and
 * suggest a larger --max-length when truncation removed tokens of that text.
 */
export function exampleTokenSpans(
  tokenizer: TextTokenizer,
  example: TaskExample,
  encoded: EncodedBatch,
  row: number,
  what: string,
  index: number,
): TokenSpans {
  const name = `${sourcePrefix(example)}${what}: example ${index} (idx ${example.idx})`;
  const input = example.inputs[0];
  if (!example.spans) throw new Error(`${name} has no target-word spans`);
  if (example.inputs.length !== 1 || typeof input === "string") {
    throw new Error(`${name} has target-word spans but not exactly one pair of texts`);
  }
  const out: number[] = [];
  for (const k of [0, 1] as const) {
    const [charStart, charEnd] = example.spans[k];
    const word = `target word ${k + 1} ${JSON.stringify(input[k].slice(charStart, charEnd))} ` +
      `(characters [${charStart}, ${charEnd}))`;
    let local;
    try {
      local = tokenizer.tokenSpan(input[k], charStart, charEnd);
    } catch (e) {
      if (!(e instanceof TokenizerError)) throw e;
      throw new Error(`${name}: ${word}: ${e.message}`);
    }
    const seg = k === 0 ? encoded.first[row] : encoded.second[row];
    const kept = seg ? seg.end - seg.start : 0;
    if (local.end > kept) {
      throw new Error(
        `${name}: ${word} is tokens [${local.start}, ${local.end}) of text ${k + 1}, but ` +
          `truncation to ${encoded.lengths[row]} tokens kept only its first ${kept}: pass a ` +
          `larger --max-length (up to the model's limit)`,
      );
    }
    const span = placeSpan(encoded, row, k, local);
    out.push(span.start, span.end);
  }
  return out as unknown as TokenSpans;
}

/**
 * The first example of `examples` whose target word (WiC's spans) truncation to `maxLength`
 * would cut, as exampleTokenSpans' one-line error; null when none would (or they carry no
 * spans). What a dry run and --predict-test check before the training, which would refuse them
 * (or, for the test split, fail after it).
 */
export function targetSpanProblem(
  tokenizer: TextTokenizer,
  examples: readonly TaskExample[],
  maxLength: number,
  what: string,
  truncation: Truncation = "longest_first",
): string | null {
  const BLOCK = 64;
  // Examples with spans and one pair (others are named by training's own checks).
  const withSpans = examples.flatMap((e, i) =>
    e.spans && e.inputs.length === 1 && typeof e.inputs[0] !== "string" ? [{ e, i }] : []
  );
  for (let start = 0; start < withSpans.length; start += BLOCK) {
    const chunk = withSpans.slice(start, start + BLOCK);
    const enc = tokenizer.encodeBatch(chunk.map(({ e }) => e.inputs[0]), {
      maxLength,
      truncation,
      fallback: "longest_first",
    });
    for (const [b, { e, i }] of chunk.entries()) {
      try {
        exampleTokenSpans(tokenizer, e, enc, b, what, i);
      } catch (err) {
        return (err as Error).message;
      }
    }
  }
  return null;
}

/** "<file>:<line>: " for an example that says where it comes from, else "". */
function sourcePrefix(example: TaskExample): string {
  return example.source ? `${example.source}: ` : "";
}

/**
 * Checks that a split's examples carry target-word spans exactly when the task's head reads them
 * (`head` "wic").
 */
export function expectSpans(split: TokenizedSplit, head: HeadInput | undefined, what: string) {
  const wic = head === "wic";
  if (split.hasSpans === wic) return;
  throw new Error(
    wic
      ? `${what}: the WiC head needs the target word's spans on every example, these have none`
      : `${what}: the examples carry target-word spans but the task's head reads the first token`,
  );
}

/**
 * The head reads the first position's final state: a tokenizer that puts no special token
 * ([CLS], <s>) before the text (a tokenizer.json without a post-processor) would give it a word of
 * the text instead. `source` names the tokenizer's file.
 */
export function checkLeadingToken(tokenizer: TextTokenizer, source: string): void {
  if (!tokenizer.addsLeadingToken) {
    throw new Error(
      `${source}: the tokenizer adds no special token ([CLS], <s>) before the text, and the ` +
        `classification head reads the first position (its post-processor is missing?)`,
    );
  }
}

/**
 * The least max length that leaves each text of `examples`' inputs a token beside the special
 * tokens the tokenizer adds (BERT's pair: [CLS] a [SEP] b [SEP], 3, so 5; RoBERTa's pair takes
 * 4), and how many those are. Below it a pair keeps one text at most ([CLS] a [SEP] [SEP] at 4),
 * and at the special tokens' count no text at all: every example one input, which trains and
 * scores nothing.
 */
export function leastMaxLength(
  tokenizer: TextTokenizer,
  examples: readonly TaskExample[],
): { least: number; special: number; pairs: boolean } {
  const pairs = examples.some((e) => e.inputs.some((input) => typeof input !== "string"));
  const special = tokenizer.numSpecialTokens(pairs);
  return { least: special + (pairs ? 2 : 1), special, pairs };
}

/** The refusal of a `--max-length` too short for `examples` of `task` (leastMaxLength), or null. */
export function maxLengthProblem(
  tokenizer: TextTokenizer,
  examples: readonly TaskExample[],
  maxLength: number,
  task: string,
): string | null {
  const { least, special, pairs } = leastMaxLength(tokenizer, examples);
  if (maxLength >= least) return null;
  const left = maxLength <= special ? "no token of text" : "one text of each pair no token";
  return `--max-length ${maxLength} leaves ${left}: ${task}'s ${pairs ? "pairs" : "texts"} ` +
    `take ${special} special tokens, so at least ${least}`;
}

/**
 * Why `examples` of `task` cannot be cut to fit a model of `positions` positions (less
 * `prefixRows` of prefix-tuning's), or null: a `maxLength` (typed, or a recipe's; null: none) too
 * short (maxLengthProblem), a --prefix-length that leaves too few, or a model too short for any
 * input. `command`: whether the command is what to change (a FlagError, exit status 2).
 */
export function lengthProblem(
  tokenizer: TextTokenizer,
  examples: readonly TaskExample[],
  o: {
    maxLength: number | null;
    positions: number;
    prefixRows: number;
    task: string;
    model: string;
  },
): { message: string; command: boolean } | null {
  if (o.maxLength !== null) {
    const problem = maxLengthProblem(tokenizer, examples, o.maxLength, o.task);
    if (problem !== null) return { message: problem, command: true };
  }
  const { least } = leastMaxLength(tokenizer, examples);
  if (o.positions < least) {
    return {
      message: `${o.model}: its ${o.positions} positions are fewer than the ${least} tokens ` +
        `${o.task}'s shortest inputs take`,
      command: false,
    };
  }
  const limit = o.positions - o.prefixRows;
  if (limit < least) {
    return {
      message: `--prefix-length ${o.prefixRows} leaves ${Math.max(0, limit)} of this model's ` +
        `${o.positions} positions, and ${o.task}'s inputs need ${least}: at most ` +
        `${o.positions - least}`,
      command: true,
    };
  }
  return null;
}

/**
 * One line about the examples of `what` with an empty (or blank) text, or null when none has
 * one. They are kept: the official data of some benchmarks has such rows (GLUE's QQP), and
 * Hugging Face's scripts read them as they are; but in a file of one's own an empty text is
 * usually a wrong field or column, so the first is named.
 */
export function emptyTextNote(examples: readonly TaskExample[], what: string): string | null {
  const blank = (text: string) => text.trim() === "";
  const empty = examples.filter((e) =>
    e.inputs.some((input) => typeof input === "string" ? blank(input) : input.some(blank))
  );
  if (empty.length === 0) return null;
  const first = empty[0];
  const n = empty.length;
  return `${what}: ${n} of the ${examples.length} examples ${n === 1 ? "has" : "have"} an ` +
    `empty text (the first: ${first.source ?? `idx ${first.idx}`}); kept, read as empty`;
}

/**
 * Tokenizes every example, pairs cut to `maxLength` by `truncation` (default longest-first, HF's
 * default for `truncation=True`). Examples without a label are an error naming the split, and
 * the file and line where the example says (`source`); that check comes before any tokenizing.
 * Texts of any length are tokenized in about linear time (a 5 MB text: a few seconds) and then
 * cut to `maxLength`.
 */
export function tokenizeExamples(
  tokenizer: TextTokenizer,
  examples: readonly TaskExample[],
  maxLength: number,
  what: string,
  truncation: Truncation = "longest_first",
): TokenizedSplit {
  if (examples.length === 0) throw new Error(`${what}: no examples`);
  const k = examples[0].inputs.length;
  const hasSpans = examples[0].spans !== undefined;
  const flat: TextInput[] = [];
  examples.forEach((e, i) => {
    if ((e.spans !== undefined) !== hasSpans) {
      throw new Error(
        `${sourcePrefix(e)}${what}: example ${i} (idx ${e.idx}) ` +
          `${hasSpans ? "lacks" : "has"} target-word spans, ` +
          `the first ${hasSpans ? "has" : "has none"}`,
      );
    }
    if (e.inputs.length !== k || k === 0) {
      throw new Error(
        `${sourcePrefix(e)}${what}: example ${i} (idx ${e.idx}) has ${e.inputs.length} ` +
          `inputs, the first has ${k}`,
      );
    }
    if (e.label === null || !Number.isFinite(e.label)) {
      const has = e.label === null ? "has no label" : `has label ${e.label}, not a number`;
      throw new Error(
        `${sourcePrefix(e)}${what}: example ${i} (idx ${e.idx}) ${has} (training and ` +
          `evaluation need one on every example)`,
      );
    }
    flat.push(...(e.inputs as TextInput[]));
  });
  const rows: TokenizedInput[] = [];
  const spans: TokenSpans[] = [];
  // Pairs whose second text alone is too long for "only_first" are cut longest-first instead
  // (HF's tokenizers would stop the run); they are counted and reported.
  let fellBack = 0;
  const CHUNK = 256;
  for (let start = 0; start < flat.length; start += CHUNK) {
    const enc = tokenizer.encodeBatch(flat.slice(start, start + CHUNK), {
      maxLength,
      truncation,
      fallback: "longest_first",
    });
    fellBack += enc.fellBack.length;
    for (let b = 0; b < enc.batch; b++) {
      const o = b * enc.seqLen;
      const n = enc.lengths[b];
      rows.push({
        ids: enc.inputIds.slice(o, o + n),
        types: enc.typeIds.slice(o, o + n),
      });
      // Spans need one input per example (checked by exampleTokenSpans), so row = example.
      const f = start + b;
      if (hasSpans && f % k === 0) {
        spans.push(exampleTokenSpans(tokenizer, examples[f / k], enc, b, what, f / k));
      }
    }
  }
  return {
    examples: examples.map((e, i) => ({
      inputs: rows.slice(i * k, (i + 1) * k),
      label: e.label as number,
      ...(hasSpans ? { spans: spans[i] } : {}),
    })),
    inputsPerExample: k,
    // A loop, not Math.max(...rows): spread arguments overflow the stack past ~125k inputs.
    longest: rows.reduce((m, r) => Math.max(m, r.ids.length), 0),
    hasSpans,
    fellBack,
  };
}

/** A 32-bit seed for `purpose` under the run's seed (splitmix32-style; unrelated streams). */
export function deriveSeed(seed: number, purpose: number): number {
  let z = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(purpose + 1, 0x85ebca6b)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

/** Purposes for deriveSeed, so that one run seed gives independent streams. */
export const SEED_PURPOSE = { head: 1, peft: 2, dropout: 3, shuffle: 1000 } as const;

/** The example order of `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch), or file order. */
export function epochOrder(n: number, seed: number, epoch: number, shuffle: boolean): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  if (!shuffle) return order;
  const next = uniformGenerator(deriveSeed(seed, SEED_PURPOSE.shuffle + epoch));
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** A batch ready for the trainer: the encoder rows (examples × inputs) and the targets. */
export interface TrainBatch {
  /** Examples in the batch. */
  examples: number;
  /** Rows = examples × inputsPerExample, example-major. */
  encoder: EncoderBatch;
  /** f32 targets (BCE label ids, MSE scores) or u32 class ids (CE), one per example. */
  targets: Float32Array | Uint32Array;
  /** WiC: [examples × 4] target-word token ranges (start1, end1, start2, end2) in the rows. */
  spans?: Uint32Array;
}

/** Pads `examples` to their longest row into one batch, with the model's padding conventions. */
export function assembleBatch(
  config: ModelConfig,
  loss: LossKind,
  examples: readonly TokenizedExample[],
): TrainBatch {
  const rows = examples.flatMap((e) => e.inputs);
  const B = rows.length;
  const S = Math.max(...rows.map((r) => r.ids.length));
  const inputIds = new Uint32Array(B * S).fill(config.padTokenId);
  const typeIds = new Uint32Array(B * S);
  const attentionMask = new Float32Array(B * S);
  rows.forEach((r, b) => {
    const o = b * S;
    inputIds.set(r.ids, o);
    typeIds.set(r.types, o);
    attentionMask.fill(1, o, o + r.ids.length);
  });
  // As the tokenizer numbers them (predict.ts's batches).
  const positionIds = modelPositionIds(inputIds, B, S, config);
  const labels = examples.map((e) => e.label);
  // A typed array would take 1.5 as class 1 and -1 as class 4294967295 without a word.
  for (const [i, label] of labels.entries()) {
    if (loss === "ce" ? !(Number.isInteger(label) && label >= 0) : !Number.isFinite(label)) {
      throw new Error(
        `assembleBatch: example ${i}'s label ${label} is not ` +
          (loss === "ce"
            ? "a class id (an integer ≥ 0) for loss ce"
            : `a finite number (loss ${loss})`),
      );
    }
  }
  const targets = loss === "ce" ? Uint32Array.from(labels) : Float32Array.from(labels);
  const batch: TrainBatch = {
    examples: examples.length,
    encoder: { inputIds, typeIds, positionIds, attentionMask, batch: B, seqLen: S },
    targets,
  };
  if (examples[0]?.spans) {
    if (B !== examples.length || examples.some((e) => !e.spans)) {
      throw new Error("assembleBatch: target-word spans need every example, one row each");
    }
    batch.spans = Uint32Array.from(examples.flatMap((e) => [...e.spans!]));
  }
  return batch;
}

/** Batches per epoch of `n` examples. */
export function batchesPerEpoch(n: number, batchSize: number): number {
  return Math.ceil(n / batchSize);
}

/** The examples of each global step (see the file comment); keeps the current epoch's order. */
export class DataStream {
  readonly perEpoch: number;
  private epoch = -1;
  private order: number[] = [];

  constructor(
    readonly size: number,
    readonly batchSize: number,
    readonly seed: number,
    readonly shuffle: boolean,
  ) {
    this.perEpoch = batchesPerEpoch(size, batchSize);
  }

  /** The example indices of global step `step`. */
  examples(step: number): number[] {
    const epoch = Math.floor(step / this.perEpoch);
    if (epoch !== this.epoch) {
      this.order = epochOrder(this.size, this.seed, epoch, this.shuffle);
      this.epoch = epoch;
    }
    const b = step % this.perEpoch;
    return this.order.slice(b * this.batchSize, (b + 1) * this.batchSize);
  }
}

/** The longest row any batch can have: the longest tokenized input. */
export function longestRow(...splits: TokenizedSplit[]): number {
  return Math.max(...splits.map((s) => s.longest));
}

export { uniformGenerator };
