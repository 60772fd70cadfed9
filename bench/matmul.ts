// GEMM throughput through the linear launchers: the forward product and the two backward
// products (dX, dW) at the linear-layer shapes of a BERT-mini (hidden 256, intermediate 1024;
// 512 and 4096 token rows, the training-step row's model), at one square product (1024³), and
// at the linear layers of BERT-base (768 → 768, 768 → 3072, 3072 → 768) and RoBERTa-large
// (1024 → 1024, 1024 → 4096, 4096 → 1024) at the paper's batch of 32 × 128 = 4096 tokens.
//
// Rows use the GEMM's own dimensions: C[m,n] = A[m,k]·B[k,n]. For X[rows,in]·W[out,in]ᵀ that is
// forward m=rows n=out k=in; dX = dY[rows,out]·W[out,in]: m=rows n=in k=out;
// dW = dY[rows,out]ᵀ·X[rows,in]: m=out n=in k=rows. Each product is 2·m·n·k flops.
//
// Precision "f16" rows time the products as the f16 training step runs them (model/encoder.ts,
// precision "f16"): X, W and dY in f16, Y and dX stored in f16, dW in f32, sums in f32.
//
// The rows time whatever variant `matmul` picks by itself (the training step's path): the
// autotune's choice when the tune ran on this device first (bench/kernels.ts tunes the classes of
// `gemmTuneShapes()` unless --no-autotune), its heuristic otherwise. Each row's `variant` names
// the kernel that ran, read off the pipeline `matmul` records (kernels/matmul_autotune.ts).

import type { Gpu } from "../kernels/device.ts";
import { linearBackward, linearForward } from "../kernels/linear.ts";
import {
  linearTuneShapes,
  matmulVariantsUsed,
  type TuneShape,
} from "../kernels/matmul_autotune.ts";
import { splitKCount } from "../kernels/matmul_split.ts";
import type { Recorder } from "../kernels/recorder.ts";
import { createTensor, type DType } from "../kernels/tensor.ts";
import { type BenchPrecision, f16Math, precisionLabel, storagePrecision } from "./precision.ts";
import { type BenchRow, benchRow, timeOp } from "./timing.ts";
import { uniformValues } from "./values.ts";

/** [rows, in, out] of each linear layer measured (bench/openblas_gemm.py gets the same list). */
export const GEMM_SHAPES: [number, number, number][] = [
  [512, 256, 256],
  [512, 256, 1024],
  [4096, 256, 256],
  [4096, 256, 1024],
  [1024, 1024, 1024],
  [4096, 768, 768],
  [4096, 768, 3072],
  [4096, 3072, 768],
  [4096, 1024, 1024],
  [4096, 1024, 4096],
  [4096, 4096, 1024],
];

/** Which model a linear-layer shape [rows, in, out] belongs to, for the rows' `model` field. */
export function gemmModel([rows, inF, outF]: [number, number, number]): string {
  const dims = [inF, outF].sort((a, b) => a - b).join("/");
  if (rows === 1024 && inF === 1024 && outF === 1024) return "square";
  if (dims === "256/256" || dims === "256/1024") return "bert-mini";
  if (dims === "768/768" || dims === "768/3072") return "bert-base";
  if (dims === "1024/1024" || dims === "1024/4096") return "roberta-large";
  return "other";
}

/** The products the rows time, for the autotune. */
export function gemmTuneShapes(
  shapes: readonly [number, number, number][] = GEMM_SHAPES,
  f16Math = false,
): TuneShape[] {
  return shapes.flatMap(([rows, inF, outF]) =>
    linearTuneShapes(rows, [[inF, outF]], true, f16Math)
  );
}

export async function benchMatmul(
  gpu: Gpu,
  reps: number,
  precisions: readonly BenchPrecision[] = ["f32"],
  shapes: readonly [number, number, number][] = GEMM_SHAPES,
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const precision of precisions) {
    for (const shape of shapes) rows.push(...await benchShape(gpu, reps, shape, precision));
  }
  return rows;
}

async function benchShape(
  gpu: Gpu,
  reps: number,
  [tokens, inF, outF]: [number, number, number],
  precision: BenchPrecision,
): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  {
    const model = gemmModel([tokens, inF, outF]);
    const half = f16Math(precision);
    const t = (shape: number[], label: string, dtype: DType = storagePrecision(precision)) =>
      createTensor(gpu, shape, dtype, label);
    const x = t([tokens, inF], "x");
    const w = t([outF, inF], "w");
    const bias = t([outF], "bias", "f32");
    const y = t([tokens, outF], "y");
    const dX = t([tokens, inF], "dX");
    const dW = t([outF, inF], "dW", "f32");
    // Random operands, as bench/torch_step.py's (torch.randn): the rows before 2026-11-28 (run C
    // included) multiplied constants, which a GPU may run at a different clock than varied data.
    for (const [i, tensor] of [x, w, bias, y].entries()) {
      const values = uniformValues(tensor.numel, 11 + i);
      tensor.upload(tensor.dtype === "f32" ? values : new Float16Array(values));
    }

    const ops: [
      "forward" | "dX" | "dW",
      [number, number, number],
      string,
      (rec: Recorder) => void,
    ][] = [
      [
        "forward",
        [tokens, outF, inF],
        `X[${tokens},${inF}]·W[${outF},${inF}]ᵀ+b`,
        (rec) => linearForward(rec, { x, weight: w, bias, out: y, f16Math: half }),
      ],
      [
        "dX",
        [tokens, inF, outF],
        `dY[${tokens},${outF}]·W[${outF},${inF}]`,
        (rec) => linearBackward(rec, { x, weight: w, dOut: y, dX, f16Math: half }),
      ],
      [
        "dW",
        [outF, inF, tokens],
        `dY[${tokens},${outF}]ᵀ·X[${tokens},${inF}]`,
        (rec) => linearBackward(rec, { x, weight: w, dOut: y, dWeight: dW, f16Math: half }),
      ],
    ];
    for (const [product, [m, n, k], shape, record] of ops) {
      const variant = matmulVariantsUsed(gpu, record).join("+");
      const timing = await timeOp(gpu, record, reps);
      // A weight gradient over long k runs as slices summed afterwards (kernels/matmul_split.ts).
      const kSlices = product === "dW" ? splitKCount(m, n, k, true, false, 1) : 1;
      const fields = { m, n, k, product, variant, k_slices: kSlices, model, precision };
      const label = `${product} m=${m} n=${n} k=${k}: ${shape} (${model}${
        precisionLabel(precision)
      })`;
      rows.push(benchRow("gemm", fields, timing, { flops: 2 * m * n * k }, label));
    }
    for (const tensor of [x, w, bias, y, dX, dW]) tensor.destroy();
  }
  return rows;
}
