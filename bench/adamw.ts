// Throughput of the optimizer side: one fused AdamW step (reads p, g, m, v and writes p, m, v:
// 28 bytes per element) and the global gradient norm with its clip coefficient (reads g: 4 bytes
// per element), on 1M and 11M (BERT-mini-sized) parameters laid out as one arena.

import type { Gpu } from "../kernels/device.ts";
import { adamwStep } from "../kernels/adamw.ts";
import { fill } from "../kernels/fill.ts";
import { gradNormClip, gradNormPartialsLength } from "../kernels/grad_norm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, timeOp } from "./timing.ts";

export async function benchAdamw(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const n of [1 << 20, 11_000_000]) {
    const [p, g, m, v] = ["p", "g", "m", "v"].map((r) => createTensor(gpu, [n], "f32", r));
    const partials = createTensor(gpu, [gradNormPartialsLength(gpu, [g])], "f32", "partials");
    const normCoef = createTensor(gpu, [2], "f32", "normCoef");
    const init = new Recorder(gpu);
    fill(init, p, 0.5);
    fill(init, g, 1e-3);
    fill(init, normCoef, 1);
    await init.submit();

    let step = 0;
    const adamw = await timeOp(gpu, (rec) =>
      adamwStep(rec, {
        param: p,
        grad: g,
        m,
        v,
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weightDecay: 0.01,
        step: ++step,
        gradScale: normCoef,
        gradScaleIndex: 1,
      }), reps);
    rows.push(benchRow("adamw_step", { params: n }, adamw, { bytes: 28 * n }, `[${n}]`));

    const norm = await timeOp(
      gpu,
      (rec) => gradNormClip(rec, { grads: [g], partials, maxNorm: 1, out: normCoef }),
      reps,
    );
    rows.push(benchRow("grad_norm_clip", { params: n }, norm, { bytes: 4 * n }, `[${n}]`));

    for (const t of [p, g, m, v, partials, normCoef]) t.destroy();
  }
  return rows;
}
