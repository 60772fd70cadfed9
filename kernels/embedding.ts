// BERT/RoBERTa input embeddings: out[t] = word[ids[t]] + tokenType[typeIds[t]] +
// position[positionIds[t]] (summed in that order, as Hugging Face does), and its backward, a
// deterministic scatter-add into the three tables. LayerNorm and dropout follow as other ops.
//
// A word table can be larger than one storage binding (roberta-large: 50265 × 1024 f32 = 206 MB,
// lavapipe binds at most 128 MiB), so it is bound as row slices (kernels/binding_slices.ts), one
// dispatch per slice. Every slice binding starts at an offset aligned to
// minStorageBufferOffsetAlignment, at or before the slice's first row; the kernel is told how
// many elements into the binding that row begins.
//
// The backward cannot use float atomics (they are neither portable nor deterministic). Token ids
// are host data, so the host sorts them once per batch into a plan: the unique ids, and for each
// the positions of its tokens in order. One invocation per (unique id, column) then sums its
// tokens' dOut values in that fixed order and writes the gradient element: the same inputs give
// bitwise the same gradients, and no two invocations write the same element.
//
// That is one invocation's loop per (id, column), as long as the id's run of tokens: an id that
// fills most of the batch (RoBERTa's one token type: every token of the batch) kept a thousand
// invocations walking 4096 tokens each, 1 ms of an H200 training step (2026-11-28), and lavapipe
// stops an invocation after 65,535 loop iterations, silently keeping its partial sum (token type 0
// of a 128 × 512 single-segment batch occurs 65,536 times). A run longer than RUN_BLOCK tokens is
// therefore cut into blocks of RUN_BLOCK: a second launch sums each (block, column) into a
// workspace, a third adds each run's blocks in order into its gradient row. The order is fixed by
// the plan alone, so the gradients stay bitwise reproducible; runs of at most RUN_BLOCK tokens
// are summed by the first launch, as before.

import { type Gpu, GpuError } from "./device.ts";
import { type RowSlice, rowSlices } from "./binding_slices.ts";
import { fill } from "./fill.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { createTensor, expectBindable, expectShape, type Tensor } from "./tensor.ts";
import { Workspace } from "./workspace.ts";

const WORKGROUP = 256;

/** Quiet NaN, written for tokens whose ids are out of range (never read out of bounds). */
const NAN_BITS = 0x7fc00000;

const FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> positionIds: array<u32>;
@group(0) @binding(2) var<storage, read> typeIds: array<u32>;
@group(0) @binding(3) var<storage, read> word: array<f32>;
@group(0) @binding(4) var<storage, read> position: array<f32>;
@group(0) @binding(5) var<storage, read> tokenType: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
struct Params {
  n: u32, h: u32,
  // This dispatch's slice of the word table: rows [rowStart, rowStart + rows), row rowStart
  // beginning \`base\` elements into the binding.
  rowStart: u32, rows: u32, base: u32,
  vocab: u32, positions: u32, types: u32,
  // 1 on the last slice, which also owns tokens whose word id is >= vocab (and writes NaN).
  last: u32, nanBits: u32,
}
@group(0) @binding(7) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.n * params.h) { return; }
  let t = i / params.h;
  let c = i - t * params.h;
  let id = ids[t];
  let inSlice = id >= params.rowStart && id - params.rowStart < params.rows;
  let beyond = params.last == 1u && id >= params.vocab;
  if (!inSlice && !beyond) { return; }
  let p = positionIds[t];
  let k = typeIds[t];
  if (beyond || p >= params.positions || k >= params.types) {
    out[i] = bitcast<f32>(params.nanBits);
    return;
  }
  let w = word[params.base + (id - params.rowStart) * params.h + c];
  out[i] = (w + tokenType[k * params.h + c]) + position[p * params.h + c];
}
`;

/**
 * Runs of more tokens than this are summed in blocks of this many, in parallel (see the top): a
 * run of 64 tokens is 64 loads in one invocation's loop, against a launch and a workspace pass.
 */
export const RUN_BLOCK = 64;

/**
 * WGSL adding dOut[t, c] into `s` for the tokens t = tokens[k], k from `from` below `to`, in
 * order, four at a time: four token ids loaded, then their four values, then the four adds (a
 * loop of one token at a time waited two memory round trips a token: WGSL's loop counters keep GPU
 * compilers from unrolling). Tokens past n (a stale plan) add nothing.
 */
function tokenSum(from: string, to: string): string {
  const four = [0, 1, 2, 3];
  return `var k = ${from};
  let kTo = ${to};
  for (; k + 3u < kTo; k += 4u) {
    ${four.map((j) => `let t${j} = tokens[k + ${j}u];`).join(" ")}
    ${
    four.map((j) =>
      `var v${j} = 0.0;
    if (t${j} < params.n) { v${j} = dOut[t${j} * params.h + c]; }`
    ).join("\n    ")
  }
    ${four.map((j) => `if (t${j} < params.n) { s += v${j}; }`).join("\n    ")}
  }
  for (; k < kTo; k++) {
    let t = tokens[k];
    if (t < params.n) { s += dOut[t * params.h + c]; }
  }`;
}

/** WGSL writing (or adding, with accumulate) column c of id's row of the gradient slice: s. */
const STORE_GRAD_WGSL = /* wgsl */ `let o = params.base + (id - params.rowStart) * params.h + c;
  if (params.accumulate == 1u) {
    grad[o] = grad[o] + s;
  } else {
    grad[o] = s;
  }`;

const BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> uniqueIds: array<u32>;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> dOut: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;
struct Params {
  n: u32, h: u32,
  // The unique ids [uStart, uStart + uCount) of the plan fall in this dispatch's table slice.
  uStart: u32, uCount: u32,
  rowStart: u32, rows: u32, base: u32,
  accumulate: u32,
}
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.uCount * params.h) { return; }
  let j = i / params.h;
  let c = i - j * params.h;
  let u = params.uStart + j;
  let id = uniqueIds[u];
  if (id < params.rowStart || id - params.rowStart >= params.rows) { return; }
  // Clamped so that a stale or corrupt plan can never read outside dOut.
  let kEnd = min(offsets[u + 1u], params.n);
  let kStart = min(offsets[u], kEnd);
  // A longer run is summed in blocks (BLOCKS_WGSL, FINISH_WGSL).
  if (kEnd - kStart > ${RUN_BLOCK}u) { return; }
  var s = 0.0;
  ${tokenSum("kStart", "kEnd")}
  ${STORE_GRAD_WGSL}
}
`;

// The long runs' table (EmbeddingPlanTensors.runs): four words a run, [unique id index, first
// token, end token, first block], then the blocks' run indices (EmbeddingPlanTensors.blocks).

/** Each (block, column) of the long runs: its RUN_BLOCK tokens' sum, in order. */
const BLOCKS_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> runs: array<vec4u>;
@group(0) @binding(1) var<storage, read> blocks: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> dOut: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
struct Params { n: u32, h: u32, blocks: u32, pad: u32 }
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.blocks * params.h) { return; }
  let b = i / params.h;
  let c = i - b * params.h;
  let run = runs[blocks[b]];
  let kEnd = min(run.z, params.n);
  let k0 = min(run.y + (b - run.w) * ${RUN_BLOCK}u, kEnd);
  var s = 0.0;
  ${tokenSum("k0", `min(kEnd, k0 + ${RUN_BLOCK}u)`)}
  partial[i] = s;
}
`;

/** Each (long run, column) of a table slice: its blocks' sums added in order into the gradient. */
const FINISH_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> runs: array<vec4u>;
@group(0) @binding(1) var<storage, read> uniqueIds: array<u32>;
@group(0) @binding(2) var<storage, read> partial: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;
struct Params {
  h: u32,
  // The long runs [runStart, runStart + runCount) are of ids in this dispatch's table slice.
  runStart: u32, runCount: u32,
  rowStart: u32, rows: u32, base: u32,
  accumulate: u32, blocks: u32,
}
@group(0) @binding(4) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.runCount * params.h) { return; }
  let j = i / params.h;
  let c = i - j * params.h;
  let run = runs[params.runStart + j];
  let id = uniqueIds[run.x];
  if (id < params.rowStart || id - params.rowStart >= params.rows) { return; }
  let count = (max(run.z, run.y) - run.y + ${RUN_BLOCK - 1}u) / ${RUN_BLOCK}u;
  let end = min(run.w + count, params.blocks);
  var s = 0.0;
  var b = run.w;
  for (; b + 3u < end; b += 4u) {
    ${[0, 1, 2, 3].map((j) => `let p${j} = partial[(b + ${j}u) * params.h + c];`).join(" ")}
    s += p0; s += p1; s += p2; s += p3;
  }
  for (; b < end; b++) { s += partial[b * params.h + c]; }
  ${STORE_GRAD_WGSL}
}
`;

function bindingLimitOf(op: string, gpu: Gpu, bindingLimit: number | undefined): number {
  const max = gpu.limits.maxStorageBufferBindingSize;
  if (bindingLimit === undefined) return max;
  if (!Number.isSafeInteger(bindingLimit) || bindingLimit < 4 || bindingLimit > max) {
    throw new GpuError(`${op}: bindingLimit ${bindingLimit} is not in [4, ${max}]`);
  }
  return bindingLimit - (bindingLimit % 4);
}

/** Arguments of `embeddingForward`: N tokens, hidden size H. */
export interface EmbeddingForwardArgs {
  /** [N] u32 word ids, each < V (the caller validates them on the host). */
  ids: Tensor;
  /** [N] u32, each < Pmax. */
  positionIds: Tensor;
  /** [N] u32, each < T. */
  typeIds: Tensor;
  /** [V, H] f32; may be larger than one storage binding. */
  word: Tensor;
  /** [Pmax, H] f32. */
  position: Tensor;
  /** [T, H] f32. */
  tokenType: Tensor;
  /** [N, H] f32, written entirely. */
  out: Tensor;
  /**
   * Largest number of bytes bound per word-table slice; defaults to the adapter's
   * maxStorageBufferBindingSize. Tests lower it to exercise slicing on small tables.
   */
  bindingLimit?: number;
}

/**
 * Records out[t] = word[ids[t]] + tokenType[typeIds[t]] + position[positionIds[t]], one dispatch
 * per word-table slice (one for a table that fits in a binding). A token with any id out of range
 * gets NaN in its row; no table is ever read out of bounds.
 */
export function embeddingForward(rec: Recorder, args: EmbeddingForwardArgs): void {
  const op = "embeddingForward";
  const { ids, positionIds, typeIds, word, position, tokenType, out } = args;
  expectShape(op, "ids", ids, [-1], "u32");
  const n = ids.shape[0];
  expectShape(op, "positionIds", positionIds, [n], "u32");
  expectShape(op, "typeIds", typeIds, [n], "u32");
  expectShape(op, "word", word, [-1, -1], "f32");
  const [vocab, h] = word.shape;
  expectShape(op, "position", position, [-1, h], "f32");
  expectShape(op, "tokenType", tokenType, [-1, h], "f32");
  expectShape(op, "out", out, [n, h], "f32");
  for (
    const [name, t] of [["ids", ids], ["positionIds", positionIds], ["typeIds", typeIds]] as const
  ) {
    expectBindable(op, name, t);
  }
  expectBindable(op, "position", position);
  expectBindable(op, "tokenType", tokenType);
  expectBindable(op, "out", out);
  const gpu = rec.gpu;
  const slices = rowSlices(op, [["word", word]], bindingLimitOf(op, gpu, args.bindingLimit));
  if (n === 0 || h === 0) return;
  const pipeline = getPipeline(gpu, op, FORWARD_WGSL);
  const groups = grid1d(n * h, WORKGROUP, gpu.limits.maxComputeWorkgroupsPerDimension);
  slices.forEach((s, i) => {
    const [table] = s.bound;
    rec.dispatch(
      slices.length === 1 ? op : `${op} (word rows ${s.rowStart}..${s.rowStart + s.rows - 1})`,
      pipeline,
      [ids, positionIds, typeIds, table.binding, position, tokenType, out],
      groups,
      new Uint32Array([
        n,
        h,
        s.rowStart,
        s.rows,
        table.base,
        vocab,
        position.shape[0],
        tokenType.shape[0],
        i === slices.length - 1 ? 1 : 0,
        NAN_BITS,
      ]),
    );
  });
}

/** How the backward scatters one batch of ids: built on the host from the ids. */
export interface EmbeddingPlan {
  /** The distinct ids of the batch, ascending. */
  uniqueIds: Uint32Array;
  /**
   * CSR offsets, length uniqueIds.length + 1: id uniqueIds[u] has tokens[offsets[u]..offsets[u+1]).
   * offsets[0] may be above 0: tokens placed before the first group are in no group and give no
   * gradient (the encoder parks padding_idx tokens there, as Hugging Face gives padding rows none).
   */
  offsets: Uint32Array;
  /** Token positions (0..N-1) grouped by id, ascending within each group. */
  tokens: Uint32Array;
}

/** Sorts a batch's ids into the plan the backward scatter-add follows. */
export function buildEmbeddingPlan(ids: Uint32Array): EmbeddingPlan {
  const n = ids.length;
  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  // Ties broken by position: the scatter sums each id's tokens in token order.
  order.sort((a, b) => ids[a] - ids[b] || a - b);
  const unique: number[] = [];
  const offsets: number[] = [];
  for (let k = 0; k < n; k++) {
    const id = ids[order[k]];
    if (k === 0 || id !== unique[unique.length - 1]) {
      unique.push(id);
      offsets.push(k);
    }
  }
  offsets.push(n);
  return {
    uniqueIds: Uint32Array.from(unique),
    offsets: Uint32Array.from(offsets),
    tokens: order,
  };
}

/**
 * A plan on the GPU, sized for up to `maxTokens` tokens so that a training loop allocates it once
 * and calls `update` per batch. Call `update` before recording the backward that uses it (the
 * launcher reads the host copy when recording) and only after the previous batch's backward was
 * submitted (the uploads are queued and land before the next submit).
 */
export class EmbeddingPlanTensors {
  /** Prefix of its tensors' labels, named in errors. */
  readonly label: string;
  /** The most tokens a plan may cover. */
  readonly maxTokens: number;
  /** [maxTokens] u32; the first `plan.uniqueIds.length` are valid. */
  readonly uniqueIds: Tensor;
  /** [maxTokens + 1] u32. */
  readonly offsets: Tensor;
  /** [maxTokens] u32. */
  readonly tokens: Tensor;
  /**
   * The runs longer than RUN_BLOCK tokens, four u32 each: [unique id index, first token, end
   * token, first block]; as many as maxTokens allows. The first `longRuns.length / 4` are valid.
   */
  readonly runs: Tensor;
  /** Each block of the long runs: its run's index in `runs`; the first `blockCount` valid. */
  readonly blocks: Tensor;
  /**
   * The host copy of the plan last uploaded (the launcher reads its sizes and ids); set it with
   * `update`, which also makes `longRuns` and `blockCount` from it.
   */
  plan: EmbeddingPlan = {
    uniqueIds: new Uint32Array(0),
    offsets: new Uint32Array([0]),
    tokens: new Uint32Array(0),
  };
  /** The host copy of `runs` for the plan last uploaded. */
  longRuns: Uint32Array = new Uint32Array(0);
  /** How many blocks the long runs of the plan last uploaded have. */
  blockCount = 0;

  /** Allocates the three u32 tensors; throws a GpuError unless maxTokens is at least 1. */
  constructor(gpu: Gpu, maxTokens: number, label: string) {
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
      throw new GpuError(`embedding plan "${label}": maxTokens ${maxTokens} must be >= 1`);
    }
    this.label = label;
    this.maxTokens = maxTokens;
    this.uniqueIds = createTensor(gpu, [maxTokens], "u32", `${label}.uniqueIds`);
    this.offsets = createTensor(gpu, [maxTokens + 1], "u32", `${label}.offsets`);
    this.tokens = createTensor(gpu, [maxTokens], "u32", `${label}.tokens`);
    // A long run has at least RUN_BLOCK + 1 tokens and at most twice its tokens / RUN_BLOCK
    // blocks.
    const maxRuns = Math.max(1, Math.floor(maxTokens / (RUN_BLOCK + 1)));
    const maxBlocks = Math.max(1, Math.floor((2 * maxTokens) / RUN_BLOCK));
    this.runs = createTensor(gpu, [4 * maxRuns], "u32", `${label}.runs`);
    this.blocks = createTensor(gpu, [maxBlocks], "u32", `${label}.blocks`);
  }

  /** Number of tokens of the current plan (the N of the dOut it applies to). */
  get tokenCount(): number {
    return this.plan.tokens.length;
  }

  /** Builds (from ids) or takes a plan and queues its upload. Returns the plan. */
  update(idsOrPlan: Uint32Array | EmbeddingPlan): EmbeddingPlan {
    const plan = idsOrPlan instanceof Uint32Array ? buildEmbeddingPlan(idsOrPlan) : idsOrPlan;
    const n = plan.tokens.length;
    const u = plan.uniqueIds.length;
    if (n > this.maxTokens) {
      throw new GpuError(
        `embedding plan "${this.label}": ${n} tokens, more than its maxTokens ` +
          `${this.maxTokens}`,
      );
    }
    if (plan.offsets.length !== u + 1 || plan.offsets[u] !== n) {
      throw new GpuError(`embedding plan "${this.label}": offsets do not match its ids`);
    }
    this.uniqueIds.view(0, [u]).upload(plan.uniqueIds);
    this.offsets.view(0, [u + 1]).upload(plan.offsets);
    this.tokens.view(0, [n]).upload(plan.tokens);
    const { runs, blocks } = blockPlan(plan.offsets);
    if (runs.length > 0) {
      this.runs.view(0, [runs.length]).upload(runs);
      this.blocks.view(0, [blocks.length]).upload(blocks);
    }
    this.plan = plan;
    this.longRuns = runs;
    this.blockCount = blocks.length;
    return plan;
  }

  /** Frees the GPU buffers. */
  destroy(): void {
    for (const t of [this.uniqueIds, this.offsets, this.tokens, this.runs, this.blocks]) {
      t.destroy();
    }
  }
}

/**
 * The runs of a plan longer than RUN_BLOCK tokens, four u32 each (unique id index, first token,
 * end token, first block), and each of their blocks' run index, in order of the unique ids.
 */
export function blockPlan(offsets: Uint32Array): { runs: Uint32Array; blocks: Uint32Array } {
  const runs: number[] = [];
  const blocks: number[] = [];
  for (let u = 0; u + 1 < offsets.length; u++) {
    const length = offsets[u + 1] - offsets[u];
    if (length <= RUN_BLOCK) continue;
    const run = runs.length / 4;
    runs.push(u, offsets[u], offsets[u + 1], blocks.length);
    for (let b = 0; b < Math.ceil(length / RUN_BLOCK); b++) blocks.push(run);
  }
  return { runs: Uint32Array.from(runs), blocks: Uint32Array.from(blocks) };
}

/** Allocates plan tensors for batches of up to `maxTokens` tokens. */
export function createEmbeddingPlanTensors(
  gpu: Gpu,
  maxTokens: number,
  label = "embedding plan",
): EmbeddingPlanTensors {
  return new EmbeddingPlanTensors(gpu, maxTokens, label);
}

/** Arguments of `embeddingBackward`: each table gradient given needs the plan of its ids. */
export interface EmbeddingBackwardArgs {
  /** [N, H] f32, the gradient of the embedding output. */
  dOut: Tensor;
  /** Plan of the word ids; needed when dWord is given. */
  wordPlan?: EmbeddingPlanTensors;
  /** Plan of the position ids; needed when dPosition is given. */
  positionPlan?: EmbeddingPlanTensors;
  /** Plan of the token-type ids; needed when dTokenType is given. */
  typePlan?: EmbeddingPlanTensors;
  /** [V, H] f32; may be larger than one storage binding. Omitted: the table is frozen. */
  dWord?: Tensor;
  /** [Pmax, H] f32. */
  dPosition?: Tensor;
  /** [T, H] f32. */
  dTokenType?: Tensor;
  /**
   * true: add into the gradients, leaving rows of ids absent from the batch untouched.
   * false (default): overwrite; the launcher records a zero fill of each whole gradient first,
   * so absent rows become 0 (this costs a write of the whole table).
   */
  accumulate?: boolean;
  /** As in embeddingForward: bytes bound per gradient slice, for tests. */
  bindingLimit?: number;
}

/**
 * Records the gradients of the embedding sum: dTable[id] (+)= Σ dOut[t] over the tokens t whose
 * id is `id`, summed in token order. Deterministic: no atomics, each element written once.
 */
export function embeddingBackward(rec: Recorder, args: EmbeddingBackwardArgs): void {
  const op = "embeddingBackward";
  const { dOut } = args;
  expectShape(op, "dOut", dOut, [-1, -1], "f32");
  expectBindable(op, "dOut", dOut);
  const [n, h] = dOut.shape;
  const tables = [
    ["dWord", args.dWord, "wordPlan", args.wordPlan],
    ["dPosition", args.dPosition, "positionPlan", args.positionPlan],
    ["dTokenType", args.dTokenType, "typePlan", args.typePlan],
  ] as const;
  const gpu = rec.gpu;
  const limit = bindingLimitOf(op, gpu, args.bindingLimit);
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const accumulate = args.accumulate ?? false;
  const jobs: {
    grad: Tensor;
    name: string;
    planTensors: EmbeddingPlanTensors;
    slices: RowSlice[];
  }[] = [];
  // Every argument is checked before anything is recorded.
  for (const [name, grad, planName, planTensors] of tables) {
    if (!grad) continue;
    expectShape(op, name, grad, [-1, h], "f32");
    if (!planTensors) throw new GpuError(`${op}: ${name} is given without ${planName}`);
    const plan = planTensors.plan;
    if (plan.tokens.length !== n) {
      throw new GpuError(
        `${op}: ${planName} ("${planTensors.label}") holds ${plan.tokens.length} tokens, ` +
          `but dOut ("${dOut.label}") has ${n} rows`,
      );
    }
    const u = plan.uniqueIds.length;
    if (u > 0 && plan.uniqueIds[u - 1] >= grad.shape[0]) {
      throw new GpuError(
        `${op}: ${planName} holds id ${plan.uniqueIds[u - 1]}, but ${name} ("${grad.label}") ` +
          `has ${grad.shape[0]} rows`,
      );
    }
    const { uniqueIds, offsets, tokens, runs, blocks } = planTensors;
    for (const t of [uniqueIds, offsets, tokens, runs, blocks]) expectBindable(op, planName, t);
    if (!accumulate && grad.offset % align !== 0) {
      // fill, which zeroes the gradient in overwrite mode, binds whole aligned slices.
      throw new GpuError(
        `${op}: ${name} ("${grad.label}") starts at byte ${grad.offset}, not a multiple of ` +
          `${align}: overwrite it only with accumulate (after zeroing it yourself)`,
      );
    }
    jobs.push({ grad, name, planTensors, slices: rowSlices(op, [[name, grad]], limit) });
  }
  const pipeline = getPipeline(gpu, op, BACKWARD_WGSL);
  const maxGroups = gpu.limits.maxComputeWorkgroupsPerDimension;
  for (const { grad, name, planTensors, slices } of jobs) {
    if (!accumulate) fill(rec, grad, 0);
    if (h === 0) continue;
    const ids = planTensors.plan.uniqueIds;
    const runs = planTensors.longRuns;
    const blocks = planTensors.blockCount;
    // The long runs' blocks, summed once for every slice (kernels/workspace.ts: why sharing the
    // workspace is safe).
    const partial = blocks > 0 ? partialWorkspace.view(gpu, [blocks * h]) : undefined;
    if (partial) {
      rec.dispatch(
        `${op} ${name} (blocks of long runs)`,
        getPipeline(gpu, `${op} blocks`, BLOCKS_WGSL),
        [planTensors.runs, planTensors.blocks, planTensors.tokens, dOut, partial],
        grid1d(blocks * h, WORKGROUP, maxGroups),
        new Uint32Array([n, h, blocks, 0]),
      );
    }
    let u = 0, r = 0;
    for (const s of slices) {
      // Unique ids are ascending: those in this slice are a contiguous run of them, and so are
      // the long runs of those ids.
      const uStart = u;
      while (u < ids.length && ids[u] < s.rowStart + s.rows) u++;
      const rStart = r;
      while (4 * r < runs.length && runs[4 * r] < u) r++;
      const [table] = s.bound;
      const rows = slices.length === 1 ? "" : ` (rows ${s.rowStart}..${s.rowStart + s.rows - 1})`;
      const tail = new Uint32Array([s.rowStart, s.rows, table.base, accumulate ? 1 : 0]);
      if (u > uStart) {
        rec.dispatch(
          `${op} ${name}${rows}`,
          pipeline,
          [planTensors.uniqueIds, planTensors.offsets, planTensors.tokens, dOut, table.binding],
          grid1d((u - uStart) * h, WORKGROUP, maxGroups),
          new Uint32Array([n, h, uStart, u - uStart, ...tail]),
        );
      }
      if (r > rStart) {
        rec.dispatch(
          `${op} ${name} (long runs)${rows}`,
          getPipeline(gpu, `${op} long runs`, FINISH_WGSL),
          [planTensors.runs, planTensors.uniqueIds, partial!, table.binding],
          grid1d((r - rStart) * h, WORKGROUP, maxGroups),
          new Uint32Array([h, rStart, r - rStart, ...tail, blocks]),
        );
      }
    }
  }
}

/** The long runs' block sums (kernels/workspace.ts: why sharing it is safe). */
const partialWorkspace = new Workspace("embedding backward block sums");
