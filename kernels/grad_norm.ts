// Global gradient norm and its clipping coefficient, as torch.nn.utils.clip_grad_norm_ computes
// them: totalNorm = √Σ g² over every trainable tensor, clipCoef = min(maxNorm / (totalNorm +
// 1e-6), 1). Nothing is scaled here: AdamW reads the coefficient from the GPU as its gradScale,
// so clipping costs no host round trip and no extra pass over the gradients.
//
// Determinism without atomics: stage 1 gives each workgroup a fixed range of 16384 elements of
// one tensor and writes that range's sum of squares into its own slot of `partials`; stage 2, a
// single workgroup, reduces the slots in a fixed order. The tree depends only on the tensors'
// sizes and layout, so reruns are bitwise identical.
//
// The sum-of-squares stage below is shared with kernels/distance.ts (‖a − b‖₂ is the same
// reduction over a − b); tensors beyond one binding are sliced by kernels/binding_slices.ts.

import {
  adjacentRuns,
  bindElements,
  type BoundElements,
  ELEMENT_BYTES,
  maxSliceElements,
  runLength,
  sliceRanges,
} from "./binding_slices.ts";
import { GpuError } from "./device.ts";
import type { Gpu } from "./device.ts";
import { grid1d } from "./grid.ts";
import {
  checkLossScaleSettings,
  expectLossScaleState,
  LOSS_SCALE_STATE,
  type LossScaling,
} from "./loss_scale.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

// ---------------------------------------------------------------------------------------------
// Stage 1: sums of squares (of a, or of a − b) per fixed chunk.

const WORKGROUP = 256;
/** Elements each thread adds sequentially per chunk. */
const ITEMS = 16;
/** Elements of one chunk: each thread adds ITEMS of them, strided for coalesced reads. */
const CHUNK = WORKGROUP * ITEMS;
/**
 * Chunks per workgroup (and partial slot). Each chunk is summed alone before joining the thread's
 * total, so the sequential error stays 16 + 4 adds, while 4× fewer workgroups (and tree
 * reductions with their barriers) run: 2-3× faster on lavapipe.
 */
const GROUP_CHUNKS = 4;
/** Elements per partial slot of gradNormClip and distance. */
export const SUM_SQUARES_PER_SLOT = CHUNK * GROUP_CHUNKS;

/** Flags of the stage-1 kernel. */
const ADD_TO_SLOT = 1; // slot += this sum (accumulating binding-sized slices without partials)
const TAKE_SQRT = 2; // write √(sum) (the last slice of a reduction without partials)

function sumSquaresWgsl(diff: boolean): string {
  const bBinding = diff ? `@group(0) @binding(1) var<storage, read> b: array<f32>;` : "";
  const value = (i: string) =>
    diff ? `a[params.aBase + ${i}] - b[params.bBase + ${i}]` : `a[params.aBase + ${i}]`;
  const slotBinding = diff ? 2 : 1;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<f32>;
${bBinding}
@group(0) @binding(${slotBinding}) var<storage, read_write> slots: array<f32>;
struct Params {
  count: u32, aBase: u32, bBase: u32, slot: u32,
  chunksPerGroup: u32, flags: u32, _p0: u32, _p1: u32,
}
@group(0) @binding(${slotBinding + 1}) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let group = wid.x + wid.y * nwg.x;
  let first = group * params.chunksPerGroup;
  // Groups beyond the last chunk (grid1d rounds up) write nothing.
  if (first * ${CHUNK}u >= params.count) { return; }
  var total = 0.0;
  for (var c = 0u; c < params.chunksPerGroup; c++) {
    let start = (first + c) * ${CHUNK}u;
    // Each chunk is summed alone before joining the running total, so that the sequential
    // error grows with the number of chunks, not of elements.
    // All of a thread's ITEMS values are loaded before any is added (a loop of one load and
    // one add kept one load in flight per invocation), then added in the loop's order.
    var s = 0.0;
    ${
    Array.from({ length: ITEMS }, (_, k) =>
      `let i${k} = start + ${k * WORKGROUP}u + lid.x;
    var d${k} = 0.0;
    if (i${k} < params.count) { d${k} = ${value(`i${k}`)}; }`).join("\n    ")
  }
    ${
    Array.from({ length: ITEMS }, (_, k) => `if (i${k} < params.count) { s += d${k} * d${k}; }`)
      .join("\n    ")
  }
    total += s;
  }
  sums[lid.x] = total;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    var r = sums[0];
    if ((params.flags & ${ADD_TO_SLOT}u) != 0u) { r += slots[params.slot + group]; }
    if ((params.flags & ${TAKE_SQRT}u) != 0u) { r = sqrt(r); }
    slots[params.slot + group] = r;
  }
}
`;
}

/** One contiguous range of elements to reduce: of `a`, or of `a − b` when `b` is given. */
export interface SquaresRange {
  a: { buffer: GPUBuffer; byteOffset: number };
  b?: { buffer: GPUBuffer; byteOffset: number };
  count: number;
}

/** Partial slots that `recordSumSquares` writes for ranges of these element counts. */
export function sumSquaresSlots(gpu: Gpu, counts: readonly number[]): number {
  const max = maxSliceElements(gpu, SUM_SQUARES_PER_SLOT);
  let slots = 0;
  for (const count of counts) {
    for (const s of sliceRanges(count, max)) slots += Math.ceil(s.count / SUM_SQUARES_PER_SLOT);
  }
  return slots;
}

const sumSquaresSource = cachedSource(sumSquaresWgsl);

/**
 * Records stage 1 over the slice `s` of `range` (at most one binding): `workgroups` of
 * `chunksPerGroup` chunks each, writing the slots from `slot` of `slots`.
 */
function dispatchSumSquares(
  rec: Recorder,
  label: string,
  range: SquaresRange,
  s: { start: number; count: number },
  slots: BoundElements,
  launch: { slot: number; workgroups: [number, number] | 1; chunksPerGroup: number; flags: number },
): void {
  const gpu = rec.gpu;
  const diff = range.b !== undefined;
  const pipeline = getPipeline(
    gpu,
    diff ? "sum-squares-diff" : "sum-squares",
    sumSquaresSource(diff),
  );
  const at = (x: { buffer: GPUBuffer; byteOffset: number }) =>
    bindElements(gpu, x.buffer, x.byteOffset + s.start * ELEMENT_BYTES, s.count);
  const a = at(range.a);
  const b = range.b ? at(range.b) : null;
  rec.dispatch(
    label,
    pipeline,
    b ? [a.binding, b.binding, slots.binding] : [a.binding, slots.binding],
    launch.workgroups,
    new Uint32Array([
      s.count,
      a.base,
      b?.base ?? 0,
      slots.base + launch.slot,
      launch.chunksPerGroup,
      launch.flags,
      0,
      0,
    ]),
  );
}

/**
 * Records stage 1 for every range, one launch per range and binding-sized slice, writing
 * consecutive slots of `partials` from element 0. Returns the number of slots written.
 */
export function recordSumSquares(
  rec: Recorder,
  label: string,
  ranges: readonly SquaresRange[],
  partials: Tensor,
): number {
  const gpu = rec.gpu;
  const max = maxSliceElements(gpu, SUM_SQUARES_PER_SLOT);
  const maxPerDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const slots = bindElements(gpu, partials.buffer, partials.offset, partials.numel);
  let slot = 0;
  for (const r of ranges) {
    for (const s of sliceRanges(r.count, max)) {
      const groups = Math.ceil(s.count / SUM_SQUARES_PER_SLOT);
      const workgroups = grid1d(groups, 1, maxPerDim);
      dispatchSumSquares(rec, label, r, s, slots, {
        slot,
        workgroups,
        chunksPerGroup: GROUP_CHUNKS,
        flags: 0,
      });
      slot += groups;
    }
  }
  return slot;
}

/**
 * Records a whole reduction √Σ into `out[0]` with no partials buffer: one workgroup walks every
 * chunk of 4096 (slow on a large GPU; its sequential error grows with n / 4096, see distance.ts).
 * Binding-sized slices accumulate into out[0] and the last takes the square root. `range.count`
 * must be > 0.
 */
export function recordSumSquaresSingle(
  rec: Recorder,
  label: string,
  range: SquaresRange,
  out: Tensor,
): void {
  const gpu = rec.gpu;
  const outBind = bindElements(gpu, out.buffer, out.offset, out.numel);
  const slices = sliceRanges(range.count, maxSliceElements(gpu, CHUNK));
  slices.forEach((s, k) => {
    dispatchSumSquares(rec, label, range, s, outBind, {
      slot: 0,
      workgroups: 1,
      chunksPerGroup: Math.max(1, Math.ceil(s.count / CHUNK)),
      flags: (k > 0 ? ADD_TO_SLOT : 0) | (k === slices.length - 1 ? TAKE_SQRT : 0),
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Stage 2: one workgroup reduces the partial slots in a fixed order and finishes.

const FINISH_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { count: u32, base: u32, outBase: u32, writeCoef: u32, maxNorm: f32 }
@group(0) @binding(2) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = lid.x; i < params.count; i += ${WORKGROUP}u) { s += partials[params.base + i]; }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let norm = sqrt(sums[0]);
    out[params.outBase] = norm;
    if (params.writeCoef != 0u) {
      // As torch: no clipping asked (maxNorm 0) is a coefficient of exactly 1; a NaN norm
      // propagates (NaN > 1 is false) and an infinite one gives 0.
      var coef = 1.0;
      if (params.maxNorm > 0.0) {
        coef = params.maxNorm / (norm + 1e-6);
        if (coef > 1.0) { coef = 1.0; }
      }
      out[params.outBase + 1u] = coef;
    }
  }
}
`;

/**
 * Elements of gradNormClip's `out` with loss scaling, and what each holds. `gradScale` is what
 * AdamW multiplies the raw (scaled) gradients by; `skipped` is 1 when the step must be skipped
 * (AdamW's `skipIndex`); `lossScale` is the scale S this step's gradients carry (the state's
 * scale before this step's update), for the logs. `applied` counts the steps not skipped since
 * `out` was zero, this one included: AdamW's step t as torch counts it under GradScaler, which
 * skips optimizer.step() (AdamW's `appliedIndex`). It is exact in f32 up to 2^24 steps.
 */
export const LOSS_SCALED_NORM = {
  length: 5,
  norm: 0,
  gradScale: 1,
  skipped: 2,
  lossScale: 3,
  applied: 4,
};

// The finish with loss scaling. Non-finite is tested on the bit pattern (exponent all ones: inf
// or NaN), which integer arithmetic keeps under any fast-math float assumption (`x != x` may be
// folded to false). The raw sum of squares is tested, not only the gradients: finite gradients
// whose squares overflow f32 (|g·S| ≳ 1.8e19) count as a skip too, as they would make the
// unscaled norm and the clip coefficient meaningless; so are a non-finite unscaled norm or
// gradient factor (a scale of 0 or inf, reached only by a long run of skips or by hand).
const S = LOSS_SCALE_STATE;
const N = LOSS_SCALED_NORM;
const LOSS_SCALED_FINISH_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
struct Params {
  count: u32, base: u32, outBase: u32, stateBase: u32,
  maxNorm: f32, growth: f32, backoff: f32, interval: u32,
}
@group(0) @binding(3) var<uniform> params: Params;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

fn nonFinite(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var i = lid.x; i < params.count; i += ${WORKGROUP}u) { s += partials[params.base + i]; }
  sums[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WORKGROUP / 2}u; w > 0u; w >>= 1u) {
    if (lid.x < w) { sums[lid.x] += sums[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let sumsq = sums[0];
    let raw = sqrt(sumsq);
    let at = params.stateBase;
    let scale = state[at + ${S.scale}u];
    // S is a power of two: the unscaled norm, the clip coefficient and coef / S are what the
    // unscaled gradients give, bit for bit.
    let norm = raw / scale;
    var coef = 1.0;
    if (params.maxNorm > 0.0) {
      coef = params.maxNorm / (norm + 1e-6);
      if (coef > 1.0) { coef = 1.0; }
    }
    let factor = coef / scale;
    let o = params.outBase;
    out[o + ${N.lossScale}u] = scale;
    if (nonFinite(sumsq) || nonFinite(norm) || nonFinite(factor)) {
      // The raw value goes to the log; AdamW reads the skip flag and touches nothing.
      out[o + ${N.norm}u] = raw;
      out[o + ${N.gradScale}u] = 0.0;
      out[o + ${N.skipped}u] = 1.0;
      state[at + ${S.scale}u] = scale * params.backoff;
      state[at + ${S.goodSteps}u] = 0.0;
      state[at + ${S.skippedTotal}u] = state[at + ${S.skippedTotal}u] + 1.0;
      state[at + ${S.lastSkipped}u] = 1.0;
      return;
    }
    out[o + ${N.norm}u] = norm;
    out[o + ${N.gradScale}u] = factor;
    out[o + ${N.skipped}u] = 0.0;
    out[o + ${N.applied}u] = out[o + ${N.applied}u] + 1.0;
    var good = state[at + ${S.goodSteps}u] + 1.0;
    var next = scale;
    if (good >= f32(params.interval)) {
      // As torch: the scale never grows past f32's range; the count restarts either way.
      let grown = scale * params.growth;
      if (!nonFinite(grown)) { next = grown; }
      good = 0.0;
    }
    state[at + ${S.scale}u] = next;
    state[at + ${S.goodSteps}u] = good;
    state[at + ${S.lastSkipped}u] = 0.0;
  }
}
`;

/**
 * Records stage 2: out[0] = √Σ partials[0..slots), and out[1] = the clip coefficient if asked.
 * With `lossScale` (and a `maxNorm`), the loss-scaled finish: `out` as LOSS_SCALED_NORM, and the
 * state updated (see gradNormClip).
 */
export function recordFinishNorm(
  rec: Recorder,
  label: string,
  partials: Tensor,
  slots: number,
  out: Tensor,
  maxNorm: number | null,
  lossScale?: LossScaling,
): void {
  const gpu = rec.gpu;
  const p = bindElements(gpu, partials.buffer, partials.offset, partials.numel);
  const o = bindElements(gpu, out.buffer, out.offset, out.numel);
  const u = new Uint32Array(8);
  if (lossScale) {
    const st = lossScale.state;
    const s = bindElements(gpu, st.buffer, st.offset, st.numel);
    u.set([slots, p.base, o.base, s.base]);
    new Float32Array(u.buffer).set(
      [maxNorm ?? 0, lossScale.growthFactor, lossScale.backoffFactor],
      4,
    );
    u[7] = lossScale.growthInterval;
    const pipeline = getPipeline(gpu, "norm-finish-loss-scaled", LOSS_SCALED_FINISH_WGSL);
    rec.dispatch(label, pipeline, [p.binding, o.binding, s.binding], 1, u);
    return;
  }
  u.set([slots, p.base, o.base, maxNorm === null ? 0 : 1]);
  new Float32Array(u.buffer)[4] = maxNorm ?? 0;
  rec.dispatch(label, getPipeline(gpu, "norm-finish", FINISH_WGSL), [p.binding, o.binding], 1, u);
}

// ---------------------------------------------------------------------------------------------
// The gradient norm.

function gradRanges(grads: readonly Tensor[]): SquaresRange[] {
  const live = grads.filter((g) => g.numel > 0);
  return adjacentRuns([live]).map((run) => ({
    a: { buffer: live[run.start].buffer, byteOffset: live[run.start].offset },
    count: runLength(live, run),
  }));
}

/**
 * Elements the `partials` tensor of `gradNormClip` needs for these gradients: one per
 * SUM_SQUARES_PER_SLOT (16384) elements of each run of back-to-back views (a whole gradient
 * arena is one run), at least 1.
 */
export function gradNormPartialsLength(gpu: Gpu, grads: readonly Tensor[]): number {
  return Math.max(1, sumSquaresSlots(gpu, gradRanges(grads).map((r) => r.count)));
}

/**
 * Records the global L2 norm of `grads` and torch's clip coefficient:
 * `out = [totalNorm, clipCoef]` with clipCoef = min(maxNorm / (totalNorm + 1e-6), 1), or 1
 * when maxNorm is 0 (no clipping). Pass `out` to AdamW as `gradScale` with
 * `gradScaleIndex: 1` (the kernel reads that element, so no aligned view of it is needed).
 *
 * `partials` (f32, 1-D, at least `gradNormPartialsLength(gpu, grads)` elements) is scratch.
 * Consecutive grads that are back-to-back views of one buffer are reduced as one range, so a
 * gradient arena costs one launch per storage binding (128 MiB on lavapipe) plus one; separate
 * tensors cost one launch each.
 * Accumulation is f32 over a fixed tree: per thread 16 sequential adds per chunk of 4096 and 4
 * chunk sums, 8 tree levels, then ⌈slots/256⌉ sequential adds and 8 tree levels; with the square's
 * rounding each term goes through at most 37 + ⌈n / 2^22⌉ roundings, so the relative error of Σg²
 * is at most (37 + ⌈n / 2^22⌉) · 2^-24 (≈ 2.3e-6 for n = 1e6) and the norm's about half that.
 *
 * With `lossScale` (dynamic loss scaling, kernels/loss_scale.ts) the grads carry the factor S of
 * the state, and `out` is f32 [5] as LOSS_SCALED_NORM (zero when created; it keeps a count from
 * step to step). R = √Σ(S·g)². When Σ(S·g)² is not finite (a NaN or inf gradient, or finite
 * gradients whose squares overflow f32: a skip too), or R / S or coef / S is not:
 * out = [R, 0, 1 (skip), S, a], and the state's scale is multiplied by backoffFactor, goodSteps
 * reset to 0, skippedTotal incremented, lastSkipped set to 1. Otherwise
 * out = [R / S, coef / S, 0, S, a + 1] with coef computed from R / S as without scaling (pass
 * out to AdamW with `gradScaleIndex: 1, skipIndex: 2, appliedIndex: 4`), goodSteps incremented,
 * lastSkipped
 * cleared, and after growthInterval finite steps in a row the scale is multiplied by
 * growthFactor (unless that overflows) and goodSteps restarts at 0. The state is read and
 * written by one invocation after the reduction, so the update is ordered before any later
 * launch of the same recorder (e.g. the next step's scaleByLossScale).
 */
export function gradNormClip(
  rec: Recorder,
  args: {
    grads: readonly Tensor[];
    partials: Tensor;
    maxNorm: number;
    out: Tensor;
    lossScale?: LossScaling;
  },
): void {
  const op = "gradNormClip";
  const { grads, partials, maxNorm, out, lossScale } = args;
  grads.forEach((g, i) => expectShape(op, `grads[${i}]`, g, g.shape.map(() => -1), "f32"));
  expectShape(op, "partials", partials, [-1], "f32");
  expectShape(op, "out", out, [lossScale ? LOSS_SCALED_NORM.length : 2], "f32");
  expectBindable(op, "partials", partials);
  expectBindable(op, "out", out);
  if (lossScale) {
    expectLossScaleState(op, lossScale.state);
    checkLossScaleSettings(op, lossScale);
    if (lossScale.state.buffer === out.buffer) {
      throw new GpuError(
        `${op}: the loss-scale state ("${lossScale.state.label}") and out ("${out.label}") ` +
          `share a buffer`,
      );
    }
  }
  if (!(maxNorm >= 0) || !Number.isFinite(maxNorm)) {
    throw new GpuError(
      `${op}: maxNorm must be a finite number ≥ 0 (0: no clipping), got ${maxNorm}`,
    );
  }
  const ranges = gradRanges(grads);
  const need = Math.max(1, sumSquaresSlots(rec.gpu, ranges.map((r) => r.count)));
  if (partials.numel < need) {
    throw new GpuError(
      `${op}: partials ("${partials.label}") has ${partials.numel} elements, these grads need ` +
        `${need} (gradNormPartialsLength)`,
    );
  }
  const slots = recordSumSquares(rec, op, ranges, partials);
  recordFinishNorm(rec, op, partials, slots, out, maxNorm, lossScale);
}
