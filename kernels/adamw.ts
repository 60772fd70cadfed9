// One fused AdamW step, element for element what torch.optim.AdamW (single-tensor,
// non-amsgrad) computes:
//
//   p ← p · (1 − lr·wd)                        decoupled weight decay (wd = 0: "no decay")
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
//
// with g = grad · gradScale when a scale tensor is given (the clip coefficient written by
// gradNormClip, or coef / loss scale), read on the GPU so no host read is needed. Every element
// is updated, including those whose gradient is 0 (they still decay and move by their momentum),
// unless a skip flag is given (`skipIndex`, another element of the scale tensor): when it is
// non-zero (a loss-scaled step whose gradients were not finite) every invocation returns
// without touching p, m or v, as GradScaler skips optimizer.step(). A skipped step is not
// counted either: with an applied-step count (`appliedIndex`, kept on the GPU by the norm kernel)
// that has fallen behind `step`, the bias correction is the count's, as torch's state["step"]
// (which only optimizer.step() advances), read from a host-computed table.
//
// Scalars are computed on the host in float64 and passed as f32 uniforms: 1 − lr·wd, 1 − β1,
// 1 − β2 (in f32 arithmetic 1 − 0.999 would be off by 1e-5 relative), the step size
// lr / (1 − β1^t) and √(1 − β2^t). The kernel does only f32 products, one sqrt and two divisions
// per element, so p, m and v agree with a float64 replica to a few f32 ulps per step.

import { GpuError } from "./device.ts";
import {
  adjacentRuns,
  bindElements,
  type BoundElements,
  maxSliceElements,
  runLength,
  sliceRanges,
} from "./binding_slices.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectDisjoint, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

/**
 * The update kernel. With `vec4`, the four tensors are bound as arrays of vec4<f32> and each
 * invocation updates four consecutive elements (bases and count in vec4 units): the same
 * arithmetic per element, but a quarter of the loads and stores, which on a CPU adapter
 * (lavapipe checks and issues every lane's access separately) is 3-5× faster for this
 * memory-bound step.
 */
function adamwWgsl(scaled: boolean, vec4: boolean, skippable = false, counted = false): string {
  const T = vec4 ? "vec4<f32>" : "f32";
  // Every invocation reads the same flag, so the branch never diverges within a workgroup.
  const skip = skippable ? `if (gradScale[params.skipBase] != 0.0) { return; }` : "";
  const scaleBinding = scaled
    ? `@group(0) @binding(4) var<storage, read> gradScale: array<f32>;`
    : "";
  // With a count t behind the host's step: lr / (1 − β1^t) and √(1 − β2^t) from the table (the
  // host's f64 values rounded once, as the uniforms); t == step keeps the uniforms, bit for bit.
  const tableBinding = counted
    ? `@group(0) @binding(5) var<storage, read> biasTable: array<f32>;`
    : "";
  const countFields = counted
    ? `lr: f32, hostStep: u32, appliedBase: u32, tableBase: u32, tableSteps: u32, _c0: u32,
  _c1: u32, _c2: u32,`
    : "";
  const corrections = counted
    ? `var stepSize = params.stepSize;
  var bc2Sqrt = params.bc2Sqrt;
  let t = u32(gradScale[params.appliedBase]);
  if (t != params.hostStep && t >= 1u && t <= params.tableSteps) {
    let at = params.tableBase + 2u * (t - 1u);
    stepSize = params.lr / biasTable[at];
    bc2Sqrt = biasTable[at + 1u];
  }`
    : `let stepSize = params.stepSize;
  let bc2Sqrt = params.bc2Sqrt;`;
  const grad = scaled
    ? `grad[params.gBase + i] * gradScale[params.sBase]`
    : `grad[params.gBase + i]`;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> param: array<${T}>;
@group(0) @binding(1) var<storage, read> grad: array<${T}>;
@group(0) @binding(2) var<storage, read_write> m: array<${T}>;
@group(0) @binding(3) var<storage, read_write> v: array<${T}>;
${scaleBinding}
${tableBinding}
struct Params {
  count: u32, pBase: u32, gBase: u32, mBase: u32,
  vBase: u32, sBase: u32, skipBase: u32, _p1: u32,
  decay: f32, beta1: f32, oneMinusBeta1: f32, beta2: f32,
  oneMinusBeta2: f32, stepSize: f32, bc2Sqrt: f32, eps: f32,
  ${countFields}
}
@group(0) @binding(${4 + (scaled ? 1 : 0) + (counted ? 1 : 0)}) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.count) { return; }
  ${skip}
  ${corrections}
  let g = ${grad};
  let p = param[params.pBase + i] * params.decay;
  let mi = params.beta1 * m[params.mBase + i] + params.oneMinusBeta1 * g;
  let vi = params.beta2 * v[params.vBase + i] + params.oneMinusBeta2 * (g * g);
  m[params.mBase + i] = mi;
  v[params.vBase + i] = vi;
  let denom = sqrt(vi) / bc2Sqrt + params.eps;
  param[params.pBase + i] = p - stepSize * (mi / denom);
}
`;
}

/** AdamW hyper-parameters of one step. */
export interface AdamwHyper {
  /** Learning rate of this step (≥ 0); also scales the weight decay. */
  lr: number;
  /** Decay of the first moment m, in [0, 1). */
  beta1: number;
  /** Decay of the second moment v, in [0, 1). */
  beta2: number;
  /** Added to the bias-corrected √v in the denominator (≥ 0). */
  eps: number;
  /** The step number t ≥ 1 of this update (1 for the first), as torch's state["step"] after +1. */
  step: number;
  /**
   * `[k]` f32 tensor holding the gradient scale (e.g. gradNormClip's `out`); g = grad ·
   * gradScale[gradScaleIndex]. Absent: g = grad.
   */
  gradScale?: Tensor;
  /** Element of `gradScale` to read; default 0 (1 for gradNormClip's `[norm, coef]`). */
  gradScaleIndex?: number;
  /**
   * Element of `gradScale` holding a skip flag (gradNormClip's `out[2]` with loss scaling): when
   * it is non-zero on the GPU the step leaves p, m and v untouched. Absent: never skipped.
   */
  skipIndex?: number;
  /**
   * With `skipIndex`: the element of `gradScale` holding the count of updates made, this one
   * included (gradNormClip's `out` with loss scaling: LOSS_SCALED_NORM.applied). Where it is
   * behind `step` (earlier steps were skipped), the bias correction is the count's, as
   * torch.optim.AdamW's under GradScaler, read from `biasCorrections`. Absent: `step`'s.
   */
  appliedIndex?: number;
  /**
   * With `appliedIndex`: f32, `biasCorrectionTable(beta1, beta2, n)` for some n ≥ `step` (a
   * count outside [1, n] keeps `step`'s correction).
   */
  biasCorrections?: Tensor;
}

/**
 * AdamW's bias corrections for t = 1..n, computed in float64: [1 − β1^t, √(1 − β2^t)] at
 * 2(t − 1) (AdamwHyper.biasCorrections).
 */
export function biasCorrectionTable(beta1: number, beta2: number, n: number): Float32Array {
  const out = new Float32Array(2 * n);
  for (let t = 1; t <= n; t++) {
    out[2 * (t - 1)] = 1 - Math.pow(beta1, t);
    out[2 * (t - 1) + 1] = Math.sqrt(1 - Math.pow(beta2, t));
  }
  return out;
}

function checkHyper(op: string, h: AdamwHyper, weightDecays: readonly number[]): void {
  const bad = (what: string, value: number) => {
    throw new GpuError(`${op}: ${what} is out of range (${value})`);
  };
  if (!(h.lr >= 0) || !Number.isFinite(h.lr)) bad("lr", h.lr);
  if (!(h.beta1 >= 0 && h.beta1 < 1)) bad("beta1", h.beta1);
  if (!(h.beta2 >= 0 && h.beta2 < 1)) bad("beta2", h.beta2);
  if (!(h.eps >= 0) || !Number.isFinite(h.eps)) bad("eps", h.eps);
  if (!Number.isSafeInteger(h.step) || h.step < 1) bad("step (an integer ≥ 1)", h.step);
  for (const wd of weightDecays) if (!(wd >= 0) || !Number.isFinite(wd)) bad("weightDecay", wd);
  if (h.gradScale) {
    expectShape(op, "gradScale", h.gradScale, [-1], "f32");
    expectBindable(op, "gradScale", h.gradScale);
    const index = h.gradScaleIndex ?? 0;
    if (!Number.isSafeInteger(index) || index < 0 || index >= h.gradScale.numel) {
      bad(`gradScaleIndex for gradScale ("${h.gradScale.label}") of ${h.gradScale.numel}`, index);
    }
    const skip = h.skipIndex;
    if (
      skip !== undefined && (!Number.isSafeInteger(skip) || skip < 0 || skip >= h.gradScale.numel)
    ) {
      bad(`skipIndex for gradScale ("${h.gradScale.label}") of ${h.gradScale.numel}`, skip);
    }
  } else if (h.skipIndex !== undefined) {
    throw new GpuError(`${op}: skipIndex ${h.skipIndex} needs a gradScale tensor to read it from`);
  }
  if (h.appliedIndex === undefined) return;
  if (!h.gradScale || h.skipIndex === undefined) {
    throw new GpuError(`${op}: appliedIndex ${h.appliedIndex} needs a gradScale and a skipIndex`);
  }
  const applied = h.appliedIndex;
  if (!Number.isSafeInteger(applied) || applied < 0 || applied >= h.gradScale.numel) {
    bad(`appliedIndex for gradScale ("${h.gradScale.label}") of ${h.gradScale.numel}`, applied);
  }
  const table = h.biasCorrections;
  if (!table) {
    throw new GpuError(`${op}: appliedIndex ${applied} needs a biasCorrections table`);
  }
  expectShape(op, "biasCorrections", table, [-1], "f32");
  expectBindable(op, "biasCorrections", table);
  if (table.numel < 2 * h.step) {
    throw new GpuError(
      `${op}: biasCorrections ("${table.label}") has ${table.numel} elements, step ${h.step} ` +
        `needs ${2 * h.step} (biasCorrectionTable)`,
    );
  }
}

/** One contiguous range per role (param, grad, m, v) of `count` elements. */
interface Range {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  count: number;
  weightDecay: number;
}

const adamwSource = cachedSource(adamwWgsl);

function recordRanges(rec: Recorder, op: string, ranges: Range[], h: AdamwHyper): void {
  const gpu = rec.gpu;
  const scaled = h.gradScale !== undefined;
  const skippable = scaled && h.skipIndex !== undefined;
  const counted = skippable && h.appliedIndex !== undefined;
  const name = counted
    ? "adamw-scaled-counted"
    : skippable
    ? "adamw-scaled-skippable"
    : scaled
    ? "adamw-scaled"
    : "adamw";
  const scalar = getPipeline(gpu, name, adamwSource(scaled, false, skippable, counted));
  const vector = getPipeline(gpu, `${name}-vec4`, adamwSource(scaled, true, skippable, counted));
  const scale = h.gradScale
    ? bindElements(gpu, h.gradScale.buffer, h.gradScale.offset, h.gradScale.numel)
    : null;
  const table = counted
    ? bindElements(
      gpu,
      h.biasCorrections!.buffer,
      h.biasCorrections!.offset,
      h.biasCorrections!.numel,
    )
    : null;
  const bc1 = 1 - Math.pow(h.beta1, h.step);
  const bc2 = 1 - Math.pow(h.beta2, h.step);
  // Slices start at multiples of 4·WORKGROUP elements, so a range aligned for vec4 stays so.
  const maxSlice = maxSliceElements(gpu, 4 * WORKGROUP);
  const maxPerDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const launch = (
    label: string,
    pipeline: GPUComputePipeline,
    bound: BoundElements[],
    count: number,
    width: number,
    weightDecay: number,
  ) => {
    const u = new Uint32Array(counted ? 24 : 16);
    u.set([
      count,
      ...bound.map((b) => b.base / width),
      (scale?.base ?? 0) + (h.gradScaleIndex ?? 0),
      skippable ? scale!.base + h.skipIndex! : 0,
    ]);
    new Float32Array(u.buffer, 32).set([
      1 - h.lr * weightDecay,
      h.beta1,
      1 - h.beta1,
      h.beta2,
      1 - h.beta2,
      h.lr / bc1,
      Math.sqrt(bc2),
      h.eps,
    ]);
    if (table) {
      new Float32Array(u.buffer, 64)[0] = h.lr;
      u.set([
        h.step,
        scale!.base + h.appliedIndex!,
        table.base,
        Math.floor(h.biasCorrections!.numel / 2),
      ], 17);
    }
    const bindings = bound.map((b) => b.binding);
    if (scale) bindings.push(scale.binding);
    if (table) bindings.push(table.binding);
    rec.dispatch(label, pipeline, bindings, grid1d(count, WORKGROUP, maxPerDim), u);
  };
  for (const r of ranges) {
    const label = `${op} ${r.param.label}${r.count > r.param.numel ? " (and following)" : ""}`;
    for (const s of sliceRanges(r.count, maxSlice)) {
      const at = (t: Tensor, skip = 0) =>
        bindElements(gpu, t.buffer, t.offset + (s.start + skip) * 4, s.count - skip);
      const bound = [at(r.param), at(r.grad), at(r.m), at(r.v)];
      // The vec4 kernel needs every tensor's first element on a 16-byte boundary; the last
      // count mod 4 elements (or a misaligned range) go through the scalar kernel.
      const body = bound.every((b) => b.base % 4 === 0) ? s.count - (s.count % 4) : 0;
      if (body > 0) launch(label, vector, bound, body / 4, 4, r.weightDecay);
      if (body < s.count) {
        const tail = [r.param, r.grad, r.m, r.v].map((t) => at(t, body));
        launch(label, scalar, tail, s.count - body, 1, r.weightDecay);
      }
    }
  }
}

/**
 * Records one AdamW step of one tensor of any shape (it may be a view into a larger buffer at any
 * 4-byte offset, e.g. a whole parameter group laid out contiguously). `grad`, `m`, `v` have
 * `param`'s shape; m and v start at zero for step 1. Tensors beyond one storage binding
 * (maxStorageBufferBindingSize) are updated in binding-sized slices, one launch each.
 * `weightDecay` 0 is "no decay" (biases, LayerNorm weights).
 */
export function adamwStep(
  rec: Recorder,
  args: AdamwHyper & { param: Tensor; grad: Tensor; m: Tensor; v: Tensor; weightDecay: number },
): void {
  const op = "adamwStep";
  const { param, grad, m, v } = args;
  expectShape(op, "param", param, param.shape.map(() => -1), "f32");
  expectShape(op, "grad", grad, param.shape, "f32");
  expectShape(op, "m", m, param.shape, "f32");
  expectShape(op, "v", v, param.shape, "f32");
  checkHyper(op, args, [args.weightDecay]);
  expectDisjoint(op, { param, m, v });
  if (param.numel === 0) return;
  recordRanges(rec, op, [
    { param, grad, m, v, count: param.numel, weightDecay: args.weightDecay },
  ], args);
}

/**
 * Throws when a tensor of the group that is written (a parameter, m or v) shares bytes with any
 * other of the group, of its own index or another's (a tied weight given twice would be updated
 * twice; a gradient in a parameter's bytes read after a launch wrote them), naming both. The
 * tensors of each buffer are sorted by offset and swept once: every step checks hundreds.
 */
function expectGroupDisjoint(
  op: string,
  written: Record<string, readonly Tensor[]>,
  read: Record<string, readonly Tensor[]>,
): void {
  type Entry = { list: string; i: number; t: Tensor; writes: boolean };
  const byBuffer = new Map<GPUBuffer, Entry[]>();
  const add = (lists: Record<string, readonly Tensor[]>, writes: boolean) => {
    for (const [list, ts] of Object.entries(lists)) {
      ts.forEach((t, i) => {
        if (t.byteLength === 0) return;
        const entries = byBuffer.get(t.buffer);
        if (entries) entries.push({ list, i, t, writes });
        else byBuffer.set(t.buffer, [{ list, i, t, writes }]);
      });
    }
  };
  add(written, true);
  add(read, false);
  const end = (e: Entry) => e.t.offset + e.t.byteLength;
  for (const entries of byBuffer.values()) {
    if (entries.length < 2) continue;
    entries.sort((a, b) => a.t.offset - b.t.offset);
    // The entry reaching furthest so far, of the written ones and of all.
    let farWritten: Entry | undefined, far: Entry | undefined;
    for (const e of entries) {
      const other = farWritten && e.t.offset < end(farWritten)
        ? farWritten
        : e.writes && far && e.t.offset < end(far)
        ? far
        : undefined;
      if (other) {
        const [a, b] = other.writes ? [other, e] : [e, other];
        expectDisjoint(op, { [`${a.list}[${a.i}]`]: a.t }, { [`${b.list}[${b.i}]`]: b.t });
      }
      if (e.writes && (!farWritten || end(e) > end(farWritten))) farWritten = e;
      if (!far || end(e) > end(far)) far = e;
    }
  }
}

/**
 * Records one AdamW step of a parameter group sharing hyper-parameters; `weightDecay` is one
 * number or one per tensor (0 for the no-decay ones).
 *
 * Launches: consecutive tensors i, i+1 whose param, grad, m and v are each back-to-back views
 * of one buffer (view i+1 starting right after view i's last element, at any 4-byte offset) and
 * that share the weight decay are updated by one launch (per binding-sized slice); any other
 * tensor costs one launch. So a model whose parameters, gradients and optimizer state live in
 * arenas of identical layout, decayed tensors before no-decay ones, takes two launches in all.
 * (An arena that pads its views to 256-byte boundaries breaks adjacency; pass it instead as one
 * view spanning the group: zero padding in all four arenas stays zero through a step.)
 */
export function adamwStepGroup(
  rec: Recorder,
  args: AdamwHyper & {
    params: readonly Tensor[];
    grads: readonly Tensor[];
    ms: readonly Tensor[];
    vs: readonly Tensor[];
    weightDecay: number | readonly number[];
  },
): void {
  const op = "adamwStepGroup";
  const { params, grads, ms, vs } = args;
  const n = params.length;
  const wds = typeof args.weightDecay === "number"
    ? new Array<number>(n).fill(args.weightDecay)
    : args.weightDecay;
  for (const [name, list] of [["grads", grads], ["ms", ms], ["vs", vs], ["weightDecay", wds]]) {
    if (list.length !== n) {
      throw new GpuError(`${op}: ${name} has ${list.length} entries, params has ${n}`);
    }
  }
  for (let i = 0; i < n; i++) {
    const shape = params[i].shape;
    expectShape(op, `params[${i}]`, params[i], shape.map(() => -1), "f32");
    expectShape(op, `grads[${i}]`, grads[i], shape, "f32");
    expectShape(op, `ms[${i}]`, ms[i], shape, "f32");
    expectShape(op, `vs[${i}]`, vs[i], shape, "f32");
  }
  expectGroupDisjoint(op, { params, ms, vs }, { grads });
  checkHyper(op, args, wds);
  const live = [...params.keys()].filter((i) => params[i].numel > 0);
  const pick = (ts: readonly Tensor[]) => live.map((i) => ts[i]);
  const roles = [pick(params), pick(grads), pick(ms), pick(vs)];
  const runs = adjacentRuns(roles, (i, j) => wds[live[i]] === wds[live[j]]);
  const ranges = runs.map((run) => ({
    param: roles[0][run.start],
    grad: roles[1][run.start],
    m: roles[2][run.start],
    v: roles[3][run.start],
    count: runLength(roles[0], run),
    weightDecay: wds[live[run.start]],
  }));
  recordRanges(rec, op, ranges, args);
}
