// What the classification head reads from the encoder's final hidden state [B, S, H]: the first
// token's row (`<s>` / [CLS]), or for WiC the row [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] where wi is
// the mean of the hidden states of the target word's tokens in sentence i.
//
// Backward passes write every element of dHidden (zeros where a token contributed nothing), each
// by one invocation from a fixed-order expression: no atomics, bitwise-deterministic, and no
// separate zero fill needed.
//
// Spans are u32 [B, 4] = (start1, end1, start2, end2), token index ranges [start, end) into the
// sequence. They are clamped to the sequence on the GPU, so nothing is read out of bounds; an
// empty span pools to 0 (PyTorch would give NaN: callers validate spans on the host).

import { GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindable, expectShape, type Tensor } from "./tensor.ts";

const WORKGROUP = 256;

const FIRST_TOKEN_FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> hidden: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct Params { batch: u32, seq: u32, h: u32 }
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.batch * p.h) { return; }
  let b = i / p.h;
  let c = i - b * p.h;
  out[i] = hidden[b * p.seq * p.h + c];
}
`;

const FIRST_TOKEN_BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> d_out: array<f32>;
@group(0) @binding(1) var<storage, read_write> d_hidden: array<f32>;
struct Params { batch: u32, seq: u32, h: u32, accumulate: u32 }
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.batch * p.seq * p.h) { return; }
  let row = i / p.h;
  let c = i - row * p.h;
  let b = row / p.seq;
  let s = row - b * p.seq;
  var g = 0.0;
  if (s == 0u) { g = d_out[b * p.h + c]; }
  if (p.accumulate != 0u) { g = d_hidden[i] + g; }
  d_hidden[i] = g;
}
`;

const WIC_COMMON_WGSL = /* wgsl */ `
// [start, end) clamped to [0, seq], end never before start.
fn span_of(spans: vec2u, seq: u32) -> vec2u {
  let start = min(spans.x, seq);
  return vec2u(start, min(max(spans.y, start), seq));
}
`;

const WIC_FORWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> hidden: array<f32>;
@group(0) @binding(1) var<storage, read> spans: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct Params { batch: u32, seq: u32, h: u32 }
@group(0) @binding(3) var<uniform> p: Params;
${WIC_COMMON_WGSL}

fn span_mean(b: u32, c: u32, span: vec2u) -> f32 {
  let n = span.y - span.x;
  if (n == 0u) { return 0.0; }
  var s = 0.0;
  for (var t = span.x; t < span.y; t++) { s += hidden[(b * p.seq + t) * p.h + c]; }
  return s / f32(n);
}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.batch * p.h) { return; }
  let b = i / p.h;
  let c = i - b * p.h;
  let s1 = span_of(vec2u(spans[4u * b], spans[4u * b + 1u]), p.seq);
  let s2 = span_of(vec2u(spans[4u * b + 2u], spans[4u * b + 3u]), p.seq);
  let w1 = span_mean(b, c, s1);
  let w2 = span_mean(b, c, s2);
  let o = b * 5u * p.h + c;
  out[o] = hidden[b * p.seq * p.h + c];
  out[o + p.h] = w1;
  out[o + 2u * p.h] = w2;
  out[o + 3u * p.h] = abs(w1 - w2);
  out[o + 4u * p.h] = w1 * w2;
}
`;

const WIC_BACKWARD_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> pooled: array<f32>;
@group(0) @binding(1) var<storage, read> spans: array<u32>;
@group(0) @binding(2) var<storage, read> d_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_hidden: array<f32>;
struct Params { batch: u32, seq: u32, h: u32, accumulate: u32 }
@group(0) @binding(4) var<uniform> p: Params;
${WIC_COMMON_WGSL}

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= p.batch * p.seq * p.h) { return; }
  let row = i / p.h;
  let c = i - row * p.h;
  let b = row / p.seq;
  let s = row - b * p.seq;
  let o = b * 5u * p.h + c;
  var g = 0.0;
  if (s == 0u) { g = d_out[o]; }
  let s1 = span_of(vec2u(spans[4u * b], spans[4u * b + 1u]), p.seq);
  let s2 = span_of(vec2u(spans[4u * b + 2u], spans[4u * b + 3u]), p.seq);
  let in1 = s >= s1.x && s < s1.y;
  let in2 = s >= s2.x && s < s2.y;
  if (in1 || in2) {
    let w1 = pooled[o + p.h];
    let w2 = pooled[o + 2u * p.h];
    // d|x|/dx = sign(x), 0 at x = 0 as in PyTorch.
    let d_abs = sign(w1 - w2) * d_out[o + 3u * p.h];
    let d_prod = d_out[o + 4u * p.h];
    if (in1) { g += (d_out[o + p.h] + d_abs + w2 * d_prod) / f32(s1.y - s1.x); }
    if (in2) { g += (d_out[o + 2u * p.h] - d_abs + w1 * d_prod) / f32(s2.y - s2.x); }
  }
  if (p.accumulate != 0u) { g = d_hidden[i] + g; }
  d_hidden[i] = g;
}
`;

function grid(rec: Recorder, n: number): [number, number] {
  return grid1d(n, WORKGROUP, rec.gpu.limits.maxComputeWorkgroupsPerDimension);
}

function hiddenDims(op: string, name: string, hidden: Tensor): [number, number, number] {
  expectShape(op, name, hidden, [-1, -1, -1], "f32");
  const [b, s, h] = hidden.shape;
  if (s === 0 && b > 0) {
    throw new GpuError(`${op}: ${name} ("${hidden.label}") has no tokens to pool`);
  }
  return [b, s, h];
}

/** Records out[b] = hidden[b, 0]: hidden [B, S, H] → out [B, H]. */
export function firstTokenForward(rec: Recorder, args: { hidden: Tensor; out: Tensor }): void {
  const op = "firstTokenForward";
  const { hidden, out } = args;
  const [b, s, h] = hiddenDims(op, "hidden", hidden);
  expectShape(op, "out", out, [b, h], "f32");
  expectBindable(op, "hidden", hidden);
  expectBindable(op, "out", out);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, FIRST_TOKEN_FORWARD_WGSL),
    [hidden, out],
    grid(rec, b * h),
    new Uint32Array([b, s, h]),
  );
}

/**
 * Records dHidden[b, 0] = dOut[b] and dHidden[b, s > 0] = 0 (added into dHidden when
 * `accumulate`). dOut [B, H], dHidden [B, S, H].
 */
export function firstTokenBackward(
  rec: Recorder,
  args: { dOut: Tensor; dHidden: Tensor; accumulate?: boolean },
): void {
  const op = "firstTokenBackward";
  const { dOut, dHidden } = args;
  const [b, s, h] = hiddenDims(op, "dHidden", dHidden);
  expectShape(op, "dOut", dOut, [b, h], "f32");
  expectBindable(op, "dOut", dOut);
  expectBindable(op, "dHidden", dHidden);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, FIRST_TOKEN_BACKWARD_WGSL),
    [dOut, dHidden],
    grid(rec, b * s * h),
    new Uint32Array([b, s, h, args.accumulate ? 1 : 0]),
  );
}

/**
 * Records the WiC head input out[b] = [h0; w1; w2; |w1 − w2|; w1 ⊙ w2] (out [B, 5H]), h0 the
 * first token's hidden state and wi the mean of hidden[b, start_i .. end_i − 1].
 * hidden [B, S, H] f32; spans [B, 4] u32 = (start1, end1, start2, end2).
 */
export function wicPoolForward(
  rec: Recorder,
  args: { hidden: Tensor; spans: Tensor; out: Tensor },
): void {
  const op = "wicPoolForward";
  const { hidden, spans, out } = args;
  const [b, s, h] = hiddenDims(op, "hidden", hidden);
  expectShape(op, "spans", spans, [b, 4], "u32");
  expectShape(op, "out", out, [b, 5 * h], "f32");
  expectBindable(op, "hidden", hidden);
  expectBindable(op, "spans", spans);
  expectBindable(op, "out", out);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, WIC_FORWARD_WGSL),
    [hidden, spans, out],
    grid(rec, b * h),
    new Uint32Array([b, s, h]),
  );
}

/**
 * Records dHidden, the gradient of `wicPoolForward` given dOut [B, 5H], reading w1 and w2 from
 * the forward's output `pooled` [B, 5H]. Every element of dHidden [B, S, H] is written (added
 * into when `accumulate`).
 */
export function wicPoolBackward(
  rec: Recorder,
  args: { pooled: Tensor; spans: Tensor; dOut: Tensor; dHidden: Tensor; accumulate?: boolean },
): void {
  const op = "wicPoolBackward";
  const { pooled, spans, dOut, dHidden } = args;
  const [b, s, h] = hiddenDims(op, "dHidden", dHidden);
  expectShape(op, "pooled", pooled, [b, 5 * h], "f32");
  expectShape(op, "spans", spans, [b, 4], "u32");
  expectShape(op, "dOut", dOut, [b, 5 * h], "f32");
  for (const [name, t] of [["pooled", pooled], ["spans", spans], ["dOut", dOut]] as const) {
    expectBindable(op, name, t);
  }
  expectBindable(op, "dHidden", dHidden);
  rec.dispatch(
    op,
    getPipeline(rec.gpu, op, WIC_BACKWARD_WGSL),
    [pooled, spans, dOut, dHidden],
    grid(rec, b * s * h),
    new Uint32Array([b, s, h, args.accumulate ? 1 : 0]),
  );
}
