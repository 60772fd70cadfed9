// Every GEMM variant at one product, each transpose pair: what the autotune chooses among, side by
// side (the autotune itself times a few candidates at its own representative products).
//
//   deno run -A bench/matmul_variants.ts [--shape 512x1024x256] [--variants a,b,...] [--reps 3]
//
// --shape is m×n×k of C[m,n] = op(A)·op(B); prints, per transpose pair (NT is a linear layer's
// forward, NN its dX, TN its dW) and variant, the fastest of --reps submits in ms and GFLOP/s
// (and the variant that really ran, where a misaligned shape makes it direct4x4).

import { parseArgs } from "node:util";
import { getGpu } from "../kernels/device.ts";
import { matmul, MATMUL_VARIANTS, type MatmulVariant } from "../kernels/matmul.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    shape: { type: "string", default: "512x1024x256" },
    variants: { type: "string" },
    reps: { type: "string", default: "3" },
  },
  strict: true,
});
const dims = values.shape!.split("x").map(Number);
if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d > 0)) {
  throw new Error(`--shape: "${values.shape}" is not MxNxK (e.g. 512x1024x256)`);
}
const [m, n, k] = dims;
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps: "${values.reps}" is not a count`);
const variants = (values.variants?.split(",") ?? MATMUL_VARIANTS) as MatmulVariant[];
for (const v of variants) {
  if (!MATMUL_VARIANTS.includes(v)) {
    throw new Error(`--variants: unknown "${v}" (known: ${MATMUL_VARIANTS.join(", ")})`);
  }
}

const gpu = await getGpu();
const values01 = (count: number, seed: number) =>
  Float32Array.from({ length: count }, (_, i) => Math.sin(i * 0.37 + seed));
const a = tensorFromArray(gpu, values01(m * k, 1), [m * k], "A");
const b = tensorFromArray(gpu, values01(k * n, 2), [k * n], "B");
const c = createTensor(gpu, [m * n], "f32", "C");
console.log(`${gpu.description}: ${m} × ${n} × ${k}, fastest of ${reps}`);
for (
  const [transA, transB, name] of [[false, true, "NT"], [false, false, "NN"], [
    true,
    false,
    "TN",
  ]] as const
) {
  for (const variant of variants) {
    let best = Infinity;
    // One untimed run compiles the pipeline.
    for (let r = 0; r <= reps; r++) {
      const rec = new Recorder(gpu);
      matmul(rec, { a, b, c, m, n, k, transA, transB, variant });
      const t0 = performance.now();
      await rec.submit();
      await gpu.device.queue.onSubmittedWorkDone();
      if (r > 0) best = Math.min(best, performance.now() - t0);
    }
    const gflops = (2 * m * n * k) / best / 1e6;
    // A misaligned product runs direct4x4 whatever the variant asked for: say so.
    const ran = matmulVariantsUsed(
      gpu,
      (rec) => matmul(rec, { a, b, c, m, n, k, transA, transB, variant }),
    );
    const note = ran[0] === variant ? "" : ` (ran ${ran[0]})`;
    console.log(
      `${name} ${variant.padEnd(15)} ${best.toFixed(2).padStart(9)} ms ${
        gflops.toFixed(2).padStart(9)
      } GFLOP/s${note}`,
    );
  }
}
for (const t of [a, b, c]) t.destroy();
