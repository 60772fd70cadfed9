// The learning-rate schedule of one stage, as Hugging Face's get_linear_schedule_with_warmup:
// the update after `done` earlier updates of a stage of `total` runs at
//   lr · done / W                        while done < W (W = ⌊warmupRatio · total⌋)
//   lr · max(0, (total − done) / (total − W))   afterwards,
// so with a warmup the first update runs at lr 0 (it still moves Adam's moments), and the last
// at lr / (total − W). `constant` warms up alike and then keeps lr, as
// get_constant_schedule_with_warmup (`--warmup-ratio 0`: lr throughout). Every stage has its own
// schedule.

/** A learning-rate schedule: linear decay after warmup, or constant after warmup. */
export type ScheduleName = "linear" | "constant";

export const SCHEDULE_NAMES: readonly ScheduleName[] = ["linear", "constant"];

/** One stage's learning-rate schedule (see `learningRate`). */
export interface Schedule {
  /** Linear decay or constant after the warmup. */
  name: ScheduleName;
  /** Peak learning rate. */
  lr: number;
  /** Updates of the stage. */
  total: number;
  /** Warmup share of the updates. */
  warmupRatio: number;
}

/**
 * Warmup updates of a schedule: ⌊warmupRatio · total⌋, of the exact product (0.29 · 100 is
 * 28.999999999999996 in float64: a product within rounding of a whole number is that number).
 */
export function warmupSteps(s: Schedule): number {
  const x = s.warmupRatio * s.total;
  const whole = Math.round(x);
  return Math.abs(x - whole) <= 1e-9 * Math.max(1, x) ? whole : Math.floor(x);
}

/** The learning rate of the update that follows `done` updates of the stage. */
export function learningRate(s: Schedule, done: number): number {
  const w = warmupSteps(s);
  if (done < w) return (s.lr * done) / w;
  if (s.name === "constant") return s.lr;
  return s.lr * Math.max(0, (s.total - done) / Math.max(1, s.total - w));
}
