// One product of random f16/f32 operands run once per variant (or arithmetic) in one submit, for
// the f16 matmul tests (tests/matmul_f16_test.ts, tests/matmul_f16_math_test.ts): the outputs
// come back with the host values the kernels read, for a float64 reference.

import type { Gpu } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { matmul, type MatmulArgs, type MatmulVariant } from "../kernels/matmul.ts";
import { Recorder } from "../kernels/recorder.ts";
import {
  createTensor,
  type DType,
  type HostArray,
  type Tensor,
  tensorFromArray,
} from "../kernels/tensor.ts";
import { randomValues } from "./random.ts";

export interface F16Case {
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  /** Operand dtypes (default f16). */
  a?: DType;
  b?: DType;
  c: DType;
  bias?: boolean;
  accumulate?: boolean;
  alpha?: number;
  epilogue?: "gelu" | "geluSave" | "geluGrad";
  /** The saved pre-activation's dtype (default f32). */
  pre?: DType;
}

/** What one run multiplies with: a variant (default: matmul's own choice), f16 arithmetic. */
export interface F16Run {
  variant?: MatmulVariant;
  f16Math?: boolean;
}

function host(dtype: DType | undefined, values: Float64Array): Float32Array | Float16Array {
  return dtype === "f32" ? Float32Array.from(values) : Float16Array.from(values);
}

/**
 * Runs `cs` once per entry of `runs` (one submit); returns the outputs (C and the saved
 * pre-activation) and the host inputs: A, B, the bias, the old C and the GELU' input.
 */
export async function runF16Products(
  gpu: Gpu,
  cs: F16Case,
  seed: number,
  runs: readonly F16Run[],
) {
  const { m, n, k } = cs;
  const tensors: Tensor[] = [];
  const keep = (t: Tensor) => (tensors.push(t), t);
  const upload = (dtype: DType | undefined, size: number, s: number, name: string) => {
    const data = host(dtype, randomValues(size, s));
    return { data, t: keep(tensorFromArray(gpu, data, [size], name)) };
  };
  const A = upload(cs.a, m * k, seed, "A");
  const B = upload(cs.b, k * n, seed + 1, "B");
  const bias = cs.bias ? upload("f32", n, seed + 2, "bias") : undefined;
  const oldC = host(cs.c, randomValues(m * n, seed + 3));
  const preType = cs.pre ?? "f32";
  const preIn = host(preType, randomValues(m * n, seed + 4).map((v) => 3 * v));
  const rec = new Recorder(gpu);
  const outs = runs.map(({ variant, f16Math }, ri) => {
    const c = keep(createTensor(gpu, [m * n], cs.c, `C ${ri}`));
    // Outputs are poisoned with NaN (in f16 the bits 0x7e00, which `fill` writes), so that an
    // element the kernel leaves unwritten fails the bound instead of reading as 0.
    if (cs.accumulate) c.upload(oldC);
    else fill(rec, c, NaN);
    let pre: Tensor | undefined;
    if (cs.epilogue === "geluSave" || cs.epilogue === "geluGrad") {
      pre = keep(createTensor(gpu, [m * n], preType, `pre ${ri}`));
      if (cs.epilogue === "geluGrad") pre.upload(preIn);
      else fill(rec, pre, NaN);
    }
    const args: MatmulArgs = {
      a: A.t,
      b: B.t,
      c,
      m,
      n,
      k,
      transA: cs.transA,
      transB: cs.transB,
      bias: bias?.t,
      accumulate: cs.accumulate,
      alpha: cs.alpha,
      variant,
      f16Math,
      epilogue: cs.epilogue === "gelu"
        ? { kind: "gelu" }
        : cs.epilogue === "geluSave"
        ? { kind: "gelu", preActivation: pre }
        : cs.epilogue === "geluGrad"
        ? { kind: "geluGrad", preActivation: pre! }
        : undefined,
    };
    matmul(rec, args);
    return { c, pre };
  });
  await rec.submit();
  const results: { c: HostArray; pre?: HostArray }[] = [];
  for (const o of outs) {
    results.push({ c: await o.c.download(), pre: o.pre ? await o.pre.download() : undefined });
  }
  for (const t of tensors) t.destroy();
  return { a: A.data, b: B.data, bias: bias?.data, oldC, preIn, results };
}
