// Softmax cross-entropy over a vocabulary-sized row (the MLM head's logits [M, V], V in the tens
// of thousands), mean over the rows, as torch.nn.functional.cross_entropy; its gradient; and each
// row's argmax (the predicted token, for the MLM accuracy) from the same pass.
//
// kernels/softmax_cross_entropy.ts is made for classification heads: one invocation walks a whole
// row. That is wrong here, not just slow: llvmpipe (lavapipe) stops any invocation after 65,535
// loop iterations in all (its guard against endless shaders, LP_MAX_TGSI_LOOP_ITERATIONS), and
// returns whatever was computed so far: a row of 16,016 logits walked twice by an invocation that
// owns three rows exceeds it and gives a loss of 0.08 instead of 9.7. Here a workgroup owns a row
// and each invocation reads every 256th column (V / 256 iterations), with fixed-order tree
// reductions in workgroup memory, so the result is deterministic and no invocation loops long.
//
//   forward (one workgroup per row): m = max_j x[j] and its first column a; s = Σ_j exp(x[j] − m);
//     lse = m + log(s); rowLoss = lse − x[target] (NaN for a target ≥ V)
//   mean (one workgroup): loss = Σ_r rowLoss[r] / M, in a fixed order
//   backward (one invocation per element): dx[r, j] = scale · (exp(x[r, j] − lse[r]) − [j = t]) / M
//
// A confidently right row's tiny loss is a difference of two numbers near lse: its absolute error
// is a few ulps of lse (≈ 1e-6 at lse ≈ 10), which an MLM's mean loss does not notice.

import { expectGradScale } from "./batch_mean.ts";
import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;
const NAN_BITS = 0x7fc00000;

const ROW_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> rowLoss: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> argmax: array<u32>;
struct Params { rows: u32, cols: u32, nanBits: u32 }
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> best: array<f32, ${WORKGROUP}>;
var<workgroup> at: array<u32, ${WORKGROUP}>;
var<workgroup> sums: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let r = wid.x + wid.y * nwg.x;
  // Uniform control flow: a workgroup past the last row still reaches every barrier.
  let live = r < p.rows;
  let base = min(r, p.rows - 1u) * p.cols;
  var m = -3.4028235e38;
  var a = 0xffffffffu;
  for (var j = lid; j < p.cols; j += ${WORKGROUP}u) {
    let x = logits[base + j];
    if (x > m || a == 0xffffffffu) { m = x; a = j; }
  }
  best[lid] = m;
  at[lid] = a;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) {
      let o = lid + stride;
      // The larger value wins; on a tie the smaller column (torch.argmax's first maximum).
      if (at[o] != 0xffffffffu &&
          (at[lid] == 0xffffffffu || best[o] > best[lid] ||
           (best[o] == best[lid] && at[o] < at[lid]))) {
        best[lid] = best[o];
        at[lid] = at[o];
      }
    }
    workgroupBarrier();
  }
  let rowMax = best[0];
  var s = 0.0;
  for (var j = lid; j < p.cols; j += ${WORKGROUP}u) { s += exp(logits[base + j] - rowMax); }
  sums[lid] = s;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) { sums[lid] = sums[lid] + sums[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u && live) {
    let l = rowMax + log(sums[0]);
    lse[r] = l;
    argmax[r] = at[0];
    let t = targets[r];
    rowLoss[r] = select(bitcast<f32>(p.nanBits), l - logits[base + min(t, p.cols - 1u)], t < p.cols);
  }
}
`;

const MEAN_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> rowLoss: array<f32>;
@group(0) @binding(1) var<storage, read_write> loss: array<f32>;
struct Params { rows: u32 }
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> partial: array<f32, ${WORKGROUP}>;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var r = lid; r < p.rows; r += ${WORKGROUP}u) { s += rowLoss[r]; }
  partial[lid] = s;
  workgroupBarrier();
  for (var stride = ${WORKGROUP / 2}u; stride > 0u; stride = stride >> 1u) {
    if (lid < stride) { partial[lid] = partial[lid] + partial[lid + stride]; }
    workgroupBarrier();
  }
  if (lid == 0u) { loss[0] = partial[0] / f32(p.rows); }
}
`;

const BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read_write> dLogits: array<f32>;
struct Params { rows: u32, cols: u32, nanBits: u32, scale: f32 }
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.rows * p.cols) { return; }
  let r = i / p.cols;
  let j = i - r * p.cols;
  let t = targets[r];
  if (t >= p.cols) { dLogits[i] = bitcast<f32>(p.nanBits); return; }
  dLogits[i] = (exp(logits[i] - lse[r]) - select(0.0, 1.0, j == t)) * p.scale;
}
`;

/**
 * Per-row outputs of `vocabCrossEntropyForward` for M rows of logits, allocated by the caller;
 * the backward reads `lse`.
 */
export interface VocabCrossEntropyState {
  /** [M] f32: each row's log-sum-exp (the backward reads it). */
  lse: Tensor;
  /** [M] f32: each row's loss. */
  rowLoss: Tensor;
  /** [M] u32: each row's argmax (first maximum). */
  argmax: Tensor;
}

function checkLogits(op: string, logits: Tensor, targets: Tensor): [number, number] {
  expectShape(op, "logits", logits, [-1, -1], "f32");
  const [rows, cols] = logits.shape;
  expectShape(op, "targets", targets, [rows], "u32");
  if (rows === 0 || cols === 0) {
    throw new GpuError(`${op}: logits ("${logits.label}") [${rows}, ${cols}] is empty`);
  }
  expectBindable(op, "logits", logits);
  expectBindable(op, "targets", targets);
  return [rows, cols];
}

/**
 * Records loss[0] = mean over rows of −log softmax(logits[r])[targets[r]], with each row's
 * log-sum-exp, loss and argmax in `state` ([M] each). A target ≥ V makes its row's loss, and the
 * mean, NaN.
 */
export function vocabCrossEntropyForward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; loss: Tensor; state: VocabCrossEntropyState },
): void {
  const op = "vocabCrossEntropyForward";
  const { logits, targets, loss, state } = args;
  const [rows, cols] = checkLogits(op, logits, targets);
  expectShape(op, "loss", loss, [1], "f32");
  expectShape(op, "lse", state.lse, [rows], "f32");
  expectShape(op, "rowLoss", state.rowLoss, [rows], "f32");
  expectShape(op, "argmax", state.argmax, [rows], "u32");
  const maxPerDim = rec.gpu.limits.maxComputeWorkgroupsPerDimension;
  const grid = grid1d(rows, 1, maxPerDim);
  rec.dispatch(
    `${op} (rows)`,
    getPipeline(rec.gpu, `${op} (rows)`, ROW_WGSL),
    [logits, targets, state.rowLoss, state.lse, state.argmax],
    grid,
    new Uint32Array([rows, cols, NAN_BITS]),
  );
  rec.dispatch(
    `${op} (mean)`,
    getPipeline(rec.gpu, `${op} (mean)`, MEAN_WGSL),
    [state.rowLoss, loss],
    1,
    new Uint32Array([rows]),
  );
}

/**
 * Records dLogits = gradScale · (softmax(logits) − onehot(targets)) / M from the forward's
 * log-sum-exp (`lse`, [M]); every element written. A row whose target is not a class gets NaN.
 */
export function vocabCrossEntropyBackward(
  rec: Recorder,
  args: { logits: Tensor; targets: Tensor; lse: Tensor; dLogits: Tensor; gradScale?: number },
): void {
  const op = "vocabCrossEntropyBackward";
  const { logits, targets, lse, dLogits } = args;
  const [rows, cols] = checkLogits(op, logits, targets);
  expectShape(op, "lse", lse, [rows], "f32");
  expectShape(op, "dLogits", dLogits, [rows, cols], "f32");
  expectGradScale(op, args.gradScale);
  expectBindable(op, "dLogits", dLogits);
  const params = new Uint32Array([rows, cols, NAN_BITS, 0]);
  new Float32Array(params.buffer)[3] = (args.gradScale ?? 1) / rows;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, BACKWARD_WGSL),
    [logits, targets, lse, dLogits],
    grid1d(rows * cols, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension),
    params,
  );
}
