// Throughput of LayerNorm and GELU, forward and backward, at BERT-like activation shapes.
// GB/s counts the bytes each op must move at least (every input read once, every output written
// once); LayerNorm reads x more than once, so its true traffic is higher.

import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { geluBackward, geluForward } from "../kernels/gelu.ts";
import { layerNormBackward, layerNormForward } from "../kernels/layernorm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { type BenchRow, benchRow, timeOp } from "./timing.ts";

export async function benchLayerNorm(gpu: Gpu, reps: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const [n, h] of [[4096, 256], [1024, 1024]]) {
    const made: Tensor[] = [];
    const make = (s: number[], label: string) => {
      const t = createTensor(gpu, s, "f32", label);
      made.push(t);
      return t;
    };
    const x = make([n, h], "x");
    const gamma = make([h], "gamma");
    const beta = make([h], "beta");
    const out = make([n, h], "out");
    const mean = make([n], "mean");
    const rstd = make([n], "rstd");
    const dOut = make([n, h], "dOut");
    const dX = make([n, h], "dX");
    const dGamma = make([h], "dGamma");
    const dBeta = make([h], "dBeta");
    const init = new Recorder(gpu);
    fill(init, x, 0.5);
    fill(init, gamma, 1);
    fill(init, beta, 0);
    fill(init, dOut, 0.25);
    layerNormForward(init, { x, gamma, beta, out, mean, rstd, eps: 1e-12 });
    await init.submit();

    const elems = n * h;
    const cases: [string, number, (rec: Recorder) => void][] = [
      [
        "layernorm_forward",
        4 * (2 * elems + 2 * h + 2 * n),
        (rec) => layerNormForward(rec, { x, gamma, beta, out, mean, rstd, eps: 1e-12 }),
      ],
      [
        "layernorm_backward",
        4 * (3 * elems + 3 * h + 2 * n),
        (rec) => layerNormBackward(rec, { x, gamma, mean, rstd, dOut, dX, dGamma, dBeta }),
      ],
      ["gelu_forward", 4 * 2 * elems, (rec) => geluForward(rec, { x, out })],
      ["gelu_backward", 4 * 3 * elems, (rec) => geluBackward(rec, { x, dOut, dX })],
    ];
    for (const [kernel, bytes, record] of cases) {
      const timing = await timeOp(gpu, record, reps);
      rows.push(benchRow(kernel, { rows: n, hidden: h }, timing, { bytes }, `${n}×${h}`));
    }
    for (const t of made) t.destroy();
  }
  return rows;
}
