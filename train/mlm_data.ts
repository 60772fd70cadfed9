// Masked-language-model batches: documents packed into sequences, and BERT's masking.
//
// Packing: sentences are concatenated until the next one would not fit `maxSeq − 2` tokens ([CLS]
// and [SEP] take the other two); a sentence longer than that is cut into pieces. By default a
// sequence stays within its document (RoBERTa's "DOC-SENTENCES"); `acrossDocuments` lets it run on
// into the next one ("FULL-SENTENCES"), which keeps batches full when the documents are short (a
// task example is one document). The held-out documents are packed on their own, so none of
// their text reaches a training sequence either way.
//
// Masking as BERT and RoBERTa do it (Hugging Face's DataCollatorForLanguageModeling): each
// eligible token is chosen with probability 15%, eligible meaning not a special id (`ids.special`:
// the added [CLS], [SEP] and padding, and also [UNK] and any [MASK], [SEP], ... that the text itself
// tokenized to, which are never prediction targets, as HF's get_special_tokens_mask marks them); a
// chosen token becomes the mask token 80% of the time, a random non-special token 10%, and stays
// itself 10%; the loss is taken at the chosen positions only. A sequence where nothing was chosen
// gets one chosen eligible token, so that every sequence teaches something (one with no eligible
// token gets none). Every draw comes from a generator seeded by (seed, step), so a step's batch is
// the same whether or not the run was resumed before it.

import { uniformGenerator } from "../model/init.ts";

/** mulberry32 on [0, 1) (model/init.ts). */
export const generator = uniformGenerator;

/** A 32-bit seed from a run seed and a counter (splitmix32-style finaliser). */
export function streamSeed(seed: number, counter: number, salt = 0): number {
  let h = (seed ^ Math.imul(counter + 1, 0x9e3779b9) ^ Math.imul(salt + 1, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Packs documents (lists of tokenized sentences) into sequences of at most `maxTokens` tokens, in
 * order.
 */
export function packDocuments(
  documents: readonly (readonly (readonly number[])[])[],
  maxTokens: number,
  options: { acrossDocuments?: boolean } = {},
): Uint32Array[] {
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
    throw new Error(`packDocuments: maxTokens ${maxTokens} is not a positive integer`);
  }
  const out: Uint32Array[] = [];
  let current: number[] = [];
  const flush = () => {
    if (current.length > 0) out.push(Uint32Array.from(current));
    current = [];
  };
  for (const doc of documents) {
    for (const sentence of doc) {
      if (sentence.length === 0) continue;
      if (current.length + sentence.length > maxTokens) flush();
      for (let i = 0; i < sentence.length; i += maxTokens) {
        const piece = sentence.slice(i, i + maxTokens);
        if (current.length + piece.length > maxTokens) flush();
        current.push(...piece);
      }
    }
    if (!options.acrossDocuments) flush();
  }
  flush();
  return out;
}

/** The token ids masking needs, and the vocabulary's size (random replacements are below it). */
export interface MaskingIds {
  /** [CLS] (RoBERTa: <s>), put first in each row. */
  cls: number;
  /** [SEP] (RoBERTa: </s>), put after each sequence. */
  sep: number;
  /** Padding id. */
  pad: number;
  /** [MASK], put in place of most chosen tokens. */
  mask: number;
  /** Vocabulary size. */
  vocabSize: number;
  /**
   * The special ids ([CLS], [SEP], [PAD], [MASK], [UNK], ...): never chosen for masking where they
   * occur in a sequence, and never drawn as a random replacement.
   */
  special: ReadonlySet<number>;
}

/** A masked batch (`maskBatch`): rows padded to the longest, and the positions to predict. */
export interface MlmBatch {
  /** Rows. */
  batch: number;
  /** Tokens per row: the longest sequence plus [CLS] and [SEP]. */
  seqLen: number;
  /** [batch · seqLen] input ids after masking. */
  inputIds: Uint32Array;
  /** [batch · seqLen] 1 for real tokens ([CLS] and [SEP] included), 0 for padding. */
  attentionMask: Uint32Array;
  /** Flat indices (row · seqLen + column) of the chosen positions, ascending. */
  positions: Uint32Array;
  /** The original token at each chosen position. */
  targets: Uint32Array;
}

/**
 * `b` in at most `parts` parts of ⌈batch / parts⌉ rows (the last may be smaller), each with its
 * rows' masked positions: the same masks, padding and tokens, run a part at a time (--grad-accum).
 */
export function splitMlmBatch(b: MlmBatch, parts: number): MlmBatch[] {
  if (parts <= 1) return [b];
  const rows = Math.ceil(b.batch / parts);
  const out: MlmBatch[] = [];
  let p = 0;
  for (let r0 = 0; r0 < b.batch; r0 += rows) {
    const r1 = Math.min(b.batch, r0 + rows);
    const lo = r0 * b.seqLen, hi = r1 * b.seqLen;
    // Positions ascend: a part's are the run of them inside its rows.
    const first = p;
    while (p < b.positions.length && b.positions[p] < hi) p++;
    out.push({
      batch: r1 - r0,
      seqLen: b.seqLen,
      inputIds: b.inputIds.slice(lo, hi),
      attentionMask: b.attentionMask.slice(lo, hi),
      positions: b.positions.slice(first, p).map((at) => at - lo),
      targets: b.targets.slice(first, p),
    });
  }
  return out;
}

/** Probabilities of BERT's masking. */
export const MLM_PROBABILITY = 0.15;
const MASK_SHARE = 0.8;
const RANDOM_SHARE = 0.1;

/**
 * One masked batch of `sequences` (each at most seqLen − 2 tokens), padded to the longest;
 * `random` supplies every draw. Positions holding a special id are never chosen; each other
 * position is chosen with probability `probability` (one draw per position, special or not, so a
 * sequence without special ids is masked as it always was).
 */
export function maskBatch(
  sequences: readonly Uint32Array[],
  ids: MaskingIds,
  random: () => number,
  probability = MLM_PROBABILITY,
): MlmBatch {
  const batch = sequences.length;
  if (batch === 0) throw new Error("maskBatch: no sequences");
  const seqLen = 2 + Math.max(...sequences.map((s) => s.length));
  const inputIds = new Uint32Array(batch * seqLen).fill(ids.pad);
  const attentionMask = new Uint32Array(batch * seqLen);
  const positions: number[] = [];
  const targets: number[] = [];
  const replacements: number[] = [];
  for (let v = 0; v < ids.vocabSize; v++) if (!ids.special.has(v)) replacements.push(v);
  if (replacements.length === 0) throw new Error("maskBatch: every token id is special");
  sequences.forEach((seq, b) => {
    const row = b * seqLen;
    inputIds[row] = ids.cls;
    inputIds.set(seq, row + 1);
    inputIds[row + 1 + seq.length] = ids.sep;
    attentionMask.fill(1, row, row + seq.length + 2);
    // A draw for every position, special or not, as HF's collator does (a Bernoulli matrix with
    // the special positions then cleared): a sequence without special ids gets the same draws, and
    // so the same masks, as before special ids in the text were excluded.
    const eligible: number[] = [];
    const chosen: number[] = [];
    for (let i = 0; i < seq.length; i++) {
      const draw = random();
      if (ids.special.has(seq[i])) continue;
      eligible.push(i);
      if (draw < probability) chosen.push(i);
    }
    if (chosen.length === 0 && eligible.length > 0) {
      chosen.push(eligible[Math.floor(random() * eligible.length)]);
    }
    for (const i of chosen) {
      const at = row + 1 + i;
      positions.push(at);
      targets.push(seq[i]);
      const r = random();
      if (r < MASK_SHARE) inputIds[at] = ids.mask;
      else if (r < MASK_SHARE + RANDOM_SHARE) {
        inputIds[at] = replacements[Math.floor(random() * replacements.length)];
      }
    }
  });
  return {
    batch,
    seqLen,
    inputIds,
    attentionMask,
    positions: Uint32Array.from(positions),
    targets: Uint32Array.from(targets),
  };
}

/** A seeded permutation of 0..n−1 (Fisher–Yates). */
export function permutation(n: number, random: () => number): Uint32Array {
  const p = Uint32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

/**
 * The sequences of global step `step` (0-based): epochs of `count` sequences in a seeded order
 * (a new order per epoch), batches of `batchSize`, the last partial batch of an epoch dropped.
 */
export function batchIndices(
  count: number,
  batchSize: number,
  seed: number,
  step: number,
): Uint32Array {
  const perEpoch = Math.floor(count / batchSize);
  if (perEpoch < 1) {
    throw new Error(`batchIndices: ${count} sequences do not fill one batch of ${batchSize}`);
  }
  const epoch = Math.floor(step / perEpoch);
  const order = permutation(count, generator(streamSeed(seed, epoch, 1)));
  const start = (step % perEpoch) * batchSize;
  return order.slice(start, start + batchSize);
}
