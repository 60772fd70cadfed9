// Every GEMM variant at one product, each transpose pair: what the autotune chooses among, side by
// side (the autotune itself times a few candidates at its own representative products).
//
//   deno run -A bench/matmul_variants.ts [--shape 512x1024x256 | --linear 4096x1024x1024]
//     [--variants a,b,...] [--reps 3] [--json]
//
// --shape is m×n×k of C[m,n] = op(A)·op(B), the same for the three transpose pairs; --linear is
// a linear layer's rows×in×out instead, each pair at its own product of that layer (NT its
// forward, rows × out × in; NN its dX, rows × in × out; TN its dW, out × in × rows), the shapes
// bench/gpu.ts's GEMM rows time. Prints, per transpose pair and variant, ms per product and GFLOP/s, and the variant that
// really ran where a misaligned shape makes it direct4x4 (the nn_ variants: NT and TN only). Timed as `deno task bench` times
// (bench/timing.ts: several products per submit, so that a submit's fixed cost does not count;
// the median of up to --reps submits). `--json`: one JSON object per line instead (kernel
// "matmul_variant", product, variant, ran, m, n, k, ms, gflops, per_submit, ...), what
// bench/gpu.ts reads. The f16-arithmetic variants (F16_MATH_VARIANTS) multiply f16 copies of the
// operands with matmul's f16Math, as the encoder's f16 weights and activations with --f16-math.

import { parseArgs } from "node:util";
import { getGpu } from "../kernels/device.ts";
import {
  F16_MATH_VARIANTS,
  isF16MathVariant,
  matmul,
  MATMUL_VARIANTS,
  type MatmulVariant,
  untransposedKernel,
} from "../kernels/matmul.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import { benchRow, timeOp } from "./timing.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    shape: { type: "string" },
    linear: { type: "string" },
    variants: { type: "string" },
    reps: { type: "string", default: "3" },
    json: { type: "boolean", default: false },
  },
  strict: true,
});
if (values.shape !== undefined && values.linear !== undefined) {
  throw new Error("--shape and --linear: choose one");
}
const flag = values.linear !== undefined ? "linear" : "shape";
const text = values.linear ?? values.shape ?? "512x1024x256";
const dims = text.split("x").map(Number);
if (dims.length !== 3 || !dims.every((d) => Number.isInteger(d) && d > 0)) {
  const form = flag === "linear"
    ? "ROWSxINxOUT (e.g. 4096x1024x1024)"
    : "MxNxK (e.g. 512x1024x256)";
  throw new Error(`--${flag}: "${text}" is not ${form}`);
}
/** Each transpose pair's m × n × k. */
const sizes = (() => {
  if (flag === "shape") return { NT: dims, NN: dims, TN: dims };
  const [rows, inF, outF] = dims;
  return { NT: [rows, outF, inF], NN: [rows, inF, outF], TN: [outF, inF, rows] };
})();
const reps = Number(values.reps);
if (!Number.isInteger(reps) || reps < 1) throw new Error(`--reps: "${values.reps}" is not a count`);
const variants = (values.variants?.split(",") ?? MATMUL_VARIANTS) as MatmulVariant[];
const known: readonly MatmulVariant[] = [...MATMUL_VARIANTS, ...F16_MATH_VARIANTS];
for (const v of variants) {
  if (!known.includes(v)) {
    throw new Error(`--variants: unknown "${v}" (known: ${known.join(", ")})`);
  }
}

const gpu = await getGpu();
const values01 = (count: number, seed: number) =>
  Float32Array.from({ length: count }, (_, i) => Math.sin(i * 0.37 + seed));
if (!values.json) {
  const what = flag === "linear" ? `a linear layer of ${dims.join(" × ")}` : dims.join(" × ");
  console.log(`${gpu.description}: ${what}, median of up to ${reps}`);
}
const onCpu = gpu.adapter.info.isFallbackAdapter;
const products = [[false, true, "NT"], [false, false, "NN"], [true, false, "TN"]] as const;
for (const [transA, transB, product] of products) {
  const [m, n, k] = sizes[product];
  const a = tensorFromArray(gpu, values01(m * k, 1), [m * k], "A");
  const b = tensorFromArray(gpu, values01(k * n, 2), [k * n], "B");
  const c = createTensor(gpu, [m * n], "f32", "C");
  const half = variants.some(isF16MathVariant)
    ? [
      tensorFromArray(gpu, Float16Array.from(values01(m * k, 1)), [m * k], "A f16"),
      tensorFromArray(gpu, Float16Array.from(values01(k * n, 2)), [k * n], "B f16"),
    ]
    : null;
  for (const variant of variants) {
    // Without a transposed operand an nn_ variant runs its kernel as is: that kernel's own row.
    if (product === "NN" && untransposedKernel(variant)) continue;
    const f16Math = isF16MathVariant(variant);
    const [x, y] = f16Math ? half! : [a, b];
    const args = { a: x, b: y, c, m, n, k, transA, transB, variant, f16Math };
    // Short submits on a GPU (timed on its clock: bench/timing.ts), so that the 69 bench/gpu.ts
    // asks for fit its 45 s phase; a CPU adapter's submit costs about 12 ms by itself, timed on
    // the host's clock, so it needs longer ones.
    const timing = await timeOp(gpu, (rec) => matmul(rec, args), reps, {
      submitTargetS: onCpu ? 0.1 : 0.02,
      budgetS: onCpu ? 0.3 : 0.1,
      minTimedS: 0.3,
    });
    // A misaligned product runs direct4x4 whatever the variant asked for: say so.
    const [ran] = matmulVariantsUsed(gpu, (rec) => matmul(rec, args));
    const row = benchRow("matmul_variant", { product, variant, ran, m, n, k }, timing, {
      flops: 2 * m * n * k,
    });
    if (values.json) {
      const { shape: _shape, ...fields } = row;
      console.log(JSON.stringify({ ...fields, adapter: gpu.description }));
    } else {
      const note = ran === variant ? "" : ` (ran ${ran})`;
      console.log(
        `${product} ${variant.padEnd(15)} ${row.ms.toFixed(3).padStart(9)} ms ${
          row.gflops!.toFixed(2).padStart(9)
        } GFLOP/s ×${row.per_submit}${note}`,
      );
    }
  }
  for (const t of [a, b, c, ...(half ?? [])]) t.destroy();
}
