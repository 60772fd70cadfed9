// The one row type and the one timing loop shared by every kernel benchmark.
//
// A WebGPU submit has a fixed cost (about 12 ms on lavapipe) that would swamp a small kernel, so
// an op is recorded R times into one submit and the per-op time is the submit's time divided by R.
// R is calibrated during warm-up so that a submit lasts about `submitTargetS`; the timed submits
// then stop after about `budgetS` (but 3 at least unless that would exceed `minTimedS`), so that
// the heavy shapes on a CPU adapter keep the whole bench short.

import type { Gpu } from "../kernels/device.ts";
import { gpuClockByDefault, Recorder, TIMED_DISPATCHES } from "../kernels/recorder.ts";

/**
 * One measured op. `kernel` is a snake_case name; the numeric shape fields (m, n, k; rows,
 * hidden; ...) and string tags (product) sit beside it. Exactly one of `gflops` (compute-bound
 * ops: useful floating-point operations per second) or `gbps` (memory-bound ops: the bytes the op
 * must move at least, per second) is set.
 */
export interface BenchRow {
  kernel: string;
  /** The shape in words, for the table only; JSON carries the numeric fields instead. */
  shape: string;
  /** Milliseconds per op: the median timed submit divided by `per_submit`. */
  ms: number;
  gflops?: number;
  gbps?: number;
  per_submit: number;
  timed_submits: number;
  warmup_submits: number;
  [field: string]: string | number | boolean | undefined;
}

export interface Timing {
  /** Milliseconds per op. */
  ms: number;
  /** What `ms` was read from: the GPU's timestamps, or the host's clock (see timeOp). */
  clock: "gpu" | "wall";
  /** Ops per submit (R). */
  perSubmit: number;
  /** Submits timed; `ms` comes from their median. */
  timed: number;
  /** Untimed submits before them (warm-up and calibration of R). */
  warmups: number;
}

export interface TimingOptions {
  /** A timed submit should last about this long (seconds). Default 0.1. */
  submitTargetS?: number;
  /** Timed submits stop after about this much time (seconds). Default 0.6. */
  budgetS?: number;
  /** An op heavier than this (seconds) a submit gets no more warm-up submits and R stays 1. A
   * first submit above it but below ten times it is run once more, and the second decides (the
   * first may have compiled the op's pipeline). Default 0.5. */
  heavyS?: number;
  /** Every op gets 3 timed submits unless 3 would take longer than this (seconds); then as
   * many as fit, at least 1. Default 3. */
  minTimedS?: number;
  /** Upper bound on R. Default 256. */
  maxPerSubmit?: number;
  /** After the warm-up submits that choose R, more go on for this long (seconds of the host's
   * clock). Default 0. */
  warmupS?: number;
  /**
   * timeOp only: time the GPU's own span of each submit with timestamp queries. By default where
   * the adapter has them and is not a CPU one; `true`: wherever it has them; `false`: never.
   */
  gpuClock?: boolean;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Runs `batch(r)` (which performs r ops and returns the seconds they took) adaptively: warm-up
 * submits that also pick r, then the median of up to `reps` timed batches: as many as fit
 * `budgetS`, but at least 3 unless those would take longer than `minTimedS`.
 */
export async function measure(
  batch: (r: number) => number | Promise<number>,
  reps: number,
  options: TimingOptions = {},
): Promise<Timing> {
  const target = options.submitTargetS ?? 0.1;
  const budget = options.budgetS ?? 0.6;
  const heavy = options.heavyS ?? 0.5;
  const minTimedS = options.minTimedS ?? 3;
  const maxR = options.maxPerSubmit ?? 256;

  let r = 1;
  let t = await batch(r);
  let warmups = 1;
  // lavapipe compiles a kernel's pipeline inside its first submit (a second or more for a large
  // GEMM), which made a light op look heavy: R stayed 1 and the row timed one submit's fixed
  // cost. A first submit that heavy is run once more, unless it is heavy past doubt.
  if (t >= heavy && t < 10 * heavy) {
    t = await batch(r);
    warmups++;
  }
  // The first submit of an op pays for first touches of its buffers; a heavy op needs no second
  // warm-up, the others get one more and, while a submit is far below the target, a larger R.
  // t includes the fixed submit cost, so R grows in steps until a submit really is long enough.
  if (t < heavy) {
    for (let step = 0; step < 6; step++) {
      if (warmups >= 2 && (t >= target / 2 || r >= maxR)) break;
      if (t < target) r = Math.min(maxR, Math.max(r + 1, Math.ceil(r * Math.min(10, target / t))));
      t = await batch(r);
      warmups++;
    }
  }
  const least = Math.min(3, Math.max(1, Math.floor(minTimedS / t)));
  const timed = Math.max(1, Math.min(reps, Math.max(least, Math.floor(budget / t))));
  const warmEnd = performance.now() + (options.warmupS ?? 0) * 1000;
  for (; performance.now() < warmEnd; warmups++) {
    await batch(r);
  }
  const times: number[] = [];
  for (let i = 0; i < timed; i++) times.push(await batch(r));
  return { ms: (median(times) * 1000) / r, clock: "wall", perSubmit: r, timed, warmups };
}

/** The devices whose GPU clock a first op has warmed up (see timeOp). */
const warmedUp = new WeakSet<Gpu>();

/**
 * Times the op that `record` records: each batch records it r times into one Recorder and
 * submits them. On a GPU with timestamp queries, a batch's time is the GPU's span from the start
 * of its first dispatch to the end of its last (each dispatch in its own timed pass): what the
 * GPU spends on the ops, as a CUDA event pair or a synchronised loop of many calls measures
 * PyTorch's. Otherwise (a CPU adapter, no timestamps, `gpuClock: false`), the host's clock from
 * the submit until the GPU has finished: bind groups, encoding and the submit's fixed cost
 * included (about 12 ms a submit on lavapipe, 11 on the H200, 2026-11-27), which R
 * ops per submit spread thin. The launcher calls are never timed; a pipeline compiled inside
 * the first submit (lavapipe) falls in a warm-up submit (see `measure`).
 */
export async function timeOp(
  gpu: Gpu,
  record: (rec: Recorder) => void,
  reps: number,
  options: TimingOptions = {},
): Promise<Timing> {
  const rec = new Recorder(gpu);
  const gpuClock = options.gpuClock === undefined
    ? gpuClockByDefault(gpu)
    : options.gpuClock && gpu.hasTimestampQuery;
  if (!gpuClock) {
    return measure(
      async (r) => {
        for (let i = 0; i < r; i++) record(rec);
        const start = performance.now();
        await rec.submit();
        await gpu.device.queue.onSubmittedWorkDone();
        return (performance.now() - start) / 1000;
      },
      reps,
      options,
    );
  }
  // R ops a submit must stay within what one submit can time: the op's dispatches counted on a
  // recording that is never submitted.
  const probe = new Recorder(gpu);
  record(probe);
  const maxR = Math.floor(TIMED_DISPATCHES / Math.max(1, probe.length));
  if (maxR < 1) return timeOp(gpu, record, reps, { ...options, gpuClock: false });
  // A GPU idle for a while (compiling, tuning) runs its first seconds slowly: on the H200
  // (2026-11-28) the first five GEMM rows after the autotune's 25 s gave 11.7-24.0 TFLOP/s, the
  // same products 29-33 TFLOP/s in f16 right after and in the variants' process; with a second of
  // warm-up the first three still gave 22.5-29.7 against 33.0-35.0 in f16 later in the same
  // process. The first op a process times on the GPU's clock is warmed up for 3 s first.
  const warmupS = options.warmupS ?? (warmedUp.has(gpu) ? 0 : 3);
  warmedUp.add(gpu);
  const timing = await measure(
    async (r) => {
      for (let i = 0; i < r; i++) record(rec);
      return (await rec.submitTimed()) / 1e9;
    },
    reps,
    // R need not outgrow a fixed cost here, only the clock's resolution.
    {
      ...options,
      submitTargetS: options.submitTargetS ?? 0.02,
      maxPerSubmit: Math.min(options.maxPerSubmit ?? 256, maxR),
      warmupS,
    },
  );
  return { ...timing, clock: "gpu" };
}

/** What an op does per call: floating-point operations, or bytes it must move at least. */
export type Work = { flops: number } | { bytes: number };

/**
 * A row from a timing: `fields` are the kernel's shape fields (in output order), `shape` the
 * human-readable shape for the table (default: the fields as `name=value`).
 */
export function benchRow(
  kernel: string,
  fields: Record<string, string | number | boolean>,
  timing: Timing,
  work: Work,
  shape?: string,
): BenchRow {
  const rate = "flops" in work
    ? { gflops: work.flops / (timing.ms * 1e6) }
    : { gbps: work.bytes / (timing.ms * 1e6) };
  return {
    kernel,
    ...fields,
    ms: timing.ms,
    ...rate,
    clock: timing.clock,
    per_submit: timing.perSubmit,
    timed_submits: timing.timed,
    warmup_submits: timing.warmups,
    shape: shape ?? Object.entries(fields).map(([k, v]) => `${k}=${v}`).join(" "),
  };
}
