// Dynamic loss scaling, as torch.cuda.amp.GradScaler does it, kept entirely on the GPU.
//
// With f16 activations and activation gradients, small gradients underflow to zero. So the
// loss gradient is multiplied by a scale S before the backward (`scaleByLossScale`); every
// gradient below it is then S times too large. The global-norm kernel (kernels/grad_norm.ts,
// `gradNormClip` with `lossScale`) unscales, checks that the gradients are finite, and updates S:
// halved after a step with a non-finite gradient (which AdamW then skips), doubled after
// `growthInterval` finite steps in a row. No host read is needed anywhere in a step.
//
// S stays a power of two (init 2^16, factors 2 and 0.5), so scaling and unscaling are exact in
// f32 as long as nothing overflows or goes subnormal: an f32 step with loss scaling gives the
// same parameters as one without.
//
// The state is one f32 tensor [4] = [scale, goodSteps, skippedTotal, lastSkipped]. The counts are
// exact in f32 up to 2^24 (16.7 million steps).

import { bindElements } from "./binding_slices.ts";
import { type Gpu, GpuError } from "./device.ts";
import { flatIndex, grid1d } from "./grid.ts";
import { getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { createTensor, expectBindable, expectShape, type Tensor } from "./tensor.ts";

/** Elements of the loss-scale state and what each one holds. */
export const LOSS_SCALE_STATE = {
  length: 4,
  /** The current scale S. */
  scale: 0,
  /** Finite steps since the last growth or skip. */
  goodSteps: 1,
  /** Steps skipped since the state was created. */
  skippedTotal: 2,
  /** 1 when the last step was skipped, else 0. */
  lastSkipped: 3,
} as const;

/** The loss-scaling policy (GradScaler's arguments); see LOSS_SCALE_DEFAULTS. */
export interface LossScaleSettings {
  /** The first scale (a power of two keeps scaling exact). */
  initScale: number;
  /** Factor applied after `growthInterval` finite steps in a row (> 1). */
  growthFactor: number;
  /** Factor applied after a step with a non-finite gradient (in (0, 1)). */
  backoffFactor: number;
  /** Finite steps in a row before the scale grows (an integer ≥ 1). */
  growthInterval: number;
}

/** torch.cuda.amp.GradScaler's defaults. */
export const LOSS_SCALE_DEFAULTS: Readonly<LossScaleSettings> = {
  initScale: 2 ** 16,
  growthFactor: 2,
  backoffFactor: 0.5,
  growthInterval: 2000,
};

/** What the norm kernel needs to unscale and update: the state tensor and the policy. */
export interface LossScaling extends Omit<LossScaleSettings, "initScale"> {
  /** f32 [4], made by `createLossScaleState`. */
  state: Tensor;
}

/** The state's values on the host. */
export interface LossScaleValues {
  /** The current scale S. */
  scale: number;
  /** Finite steps since the last growth or skip. */
  goodSteps: number;
  /** Steps skipped since the state was created. */
  skippedTotal: number;
  /** Whether the last step was skipped. */
  lastSkipped: boolean;
}

/** Throws unless the settings can drive a scaler (one line naming `op` and the bad field). */
export function checkLossScaleSettings(op: string, s: Partial<LossScaleSettings>): void {
  // Numbers by then (checked below, before any range): NaN and ∞ as themselves.
  const bad = (what: string, value: number) => {
    throw new GpuError(`${op}: loss-scale ${what} is out of range (${value})`);
  };
  for (const key of ["initScale", "growthFactor", "backoffFactor", "growthInterval"] as const) {
    // "2" would compare as a number here and be refused or taken by accident.
    const value: unknown = s[key];
    if (value !== undefined && typeof value !== "number") {
      throw new GpuError(`${op}: loss-scale ${key} is ${JSON.stringify(value)}, not a number`);
    }
  }
  // The scale is an f32 on the GPU: beyond its largest finite value it is ∞, and every step
  // would be skipped.
  const f32Max = 3.4028234663852886e38;
  if (s.initScale !== undefined && !(s.initScale > 0 && s.initScale <= f32Max)) {
    bad("initScale (> 0, at most f32's largest, 3.4e38)", s.initScale);
  }
  if (s.growthFactor !== undefined && !(s.growthFactor > 1 && Number.isFinite(s.growthFactor))) {
    bad("growthFactor (finite, > 1)", s.growthFactor);
  }
  if (s.backoffFactor !== undefined && !(s.backoffFactor > 0 && s.backoffFactor < 1)) {
    bad("backoffFactor (in (0, 1))", s.backoffFactor);
  }
  // The good-step count is an f32 on the GPU, exact up to 2^24: a longer interval never ends.
  const interval = s.growthInterval;
  if (
    interval !== undefined &&
    !(Number.isSafeInteger(interval) && interval >= 1 && interval <= 2 ** 24)
  ) {
    bad("growthInterval (an integer in [1, 2^24])", interval);
  }
}

/** Allocates a state holding scale `init` (default 2^16) and zero counts. */
export function createLossScaleState(
  gpu: Gpu,
  init: number = LOSS_SCALE_DEFAULTS.initScale,
): Tensor {
  checkLossScaleSettings("createLossScaleState", { initScale: init });
  const state = createTensor(gpu, [LOSS_SCALE_STATE.length], "f32", "loss scale state");
  state.upload(Float32Array.from([init, 0, 0, 0]));
  return state;
}

/** Reads the state's four values as named fields (from a download or a checkpoint). */
export function lossScaleValues(state: ArrayLike<number>): LossScaleValues {
  if (state.length !== LOSS_SCALE_STATE.length) {
    throw new GpuError(`lossScaleValues: ${state.length} values, expected 4`);
  }
  return {
    scale: state[LOSS_SCALE_STATE.scale],
    goodSteps: state[LOSS_SCALE_STATE.goodSteps],
    skippedTotal: state[LOSS_SCALE_STATE.skippedTotal],
    lastSkipped: state[LOSS_SCALE_STATE.lastSkipped] !== 0,
  };
}

/** Throws unless `state` is an f32 [4] tensor that fits one binding. */
export function expectLossScaleState(op: string, state: Tensor): void {
  expectShape(op, "loss-scale state", state, [LOSS_SCALE_STATE.length], "f32");
  expectBindable(op, "loss-scale state", state);
}

const WORKGROUP = 256;

const SCALE_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> state: array<f32>;
struct Params { count: u32, xBase: u32, stateBase: u32, _p0: u32 }
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = ${flatIndex(WORKGROUP)};
  if (i >= params.count) { return; }
  x[params.xBase + i] = x[params.xBase + i] * state[params.stateBase + ${LOSS_SCALE_STATE.scale}u];
}
`;

/**
 * Records `x *= S` in place, S read on the GPU from `state` (so the scale the norm kernel updated
 * in the previous step applies without a host read). `x` is any f32 tensor within one binding:
 * the loss gradient dLogits, small.
 */
export function scaleByLossScale(rec: Recorder, args: { x: Tensor; state: Tensor }): void {
  const op = "scaleByLossScale";
  const { x, state } = args;
  expectShape(op, "x", x, x.shape.map(() => -1), "f32");
  expectBindable(op, "x", x);
  expectLossScaleState(op, state);
  if (x.numel === 0) return;
  const gpu = rec.gpu;
  const bx = bindElements(gpu, x.buffer, x.offset, x.numel);
  const bs = bindElements(gpu, state.buffer, state.offset, state.numel);
  if (bx.binding.buffer === bs.binding.buffer) {
    throw new GpuError(`${op}: x ("${x.label}") and the state ("${state.label}") share a buffer`);
  }
  rec.dispatch(
    op,
    getPipeline(gpu, "loss-scale-multiply", SCALE_WGSL),
    [bx.binding, bs.binding],
    grid1d(x.numel, WORKGROUP, gpu.limits.maxComputeWorkgroupsPerDimension),
    new Uint32Array([x.numel, bx.base, bs.base, 0]),
  );
}
