// Every GEMM variant gives bitwise the same result as every other on this adapter.
//
// This is what makes the autotune (kernels/matmul_autotune.ts) safe for the project's rule that
// the same seed on the same device gives the same result: whichever variant a (noisy) timing
// picks, the numbers are the same. A new or changed variant that rounds differently (a fused
// multiply-add where the others round twice, another summation order, another epilogue) fails
// here. The tune also refuses such a variant at run time, on any adapter.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import { epilogueVariants, misalignedVariants } from "./matmul_subset.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import {
  matmul,
  MATMUL_VARIANTS,
  type MatmulArgs,
  type MatmulVariant,
  untransposedKernel,
  variantFits,
} from "../kernels/matmul.ts";
import { defaultCandidates, matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

type Spec = Omit<MatmulArgs, "a" | "b" | "c" | "bias" | "op" | "variant">;

interface Case {
  spec: Spec;
  /** Stored sizes of A, B and C (elements). */
  sizes: [number, number, number];
  bias: boolean;
  /**
   * The variants compared; default every one. Operands vec4 loads cannot read take the tiled
   * kernels' scalar staging, a pipeline of its own per tiled kernel: the tiled ones there are
   * represented (tests/matmul_subset.ts, whose representatives take each staging form), as NVIDIA's
   * compiler takes about a second a tiled pipeline.
   */
  variants?: readonly MatmulVariant[];
}

function packed(spec: Spec): [number, number, number] {
  return [spec.m * spec.k, spec.k * spec.n, spec.m * spec.n];
}

/** Runs every variant on each case (one submit per case) and compares the bits of all of C. */
async function compareVariants(gpu: Gpu, cases: Case[], seed: number): Promise<void> {
  for (const [ci, cs] of cases.entries()) {
    const [sa, sb, sc] = cs.sizes;
    const tensors: Tensor[] = [];
    const keep = (t: Tensor) => (tensors.push(t), t);
    const a = keep(tensorFromArray(gpu, Float32Array.from(randomValues(sa, seed + ci)), [sa], "A"));
    const b = keep(
      tensorFromArray(gpu, Float32Array.from(randomValues(sb, seed + ci + 1e5)), [sb], "B"),
    );
    const bias = cs.bias
      ? keep(
        tensorFromArray(gpu, Float32Array.from(randomValues(cs.spec.n, seed + ci + 2e5)), [
          cs.spec.n,
        ], "bias"),
      )
      : undefined;
    const initC = Float32Array.from(randomValues(sc, seed + ci + 3e5));
    const rec = new Recorder(gpu);
    const variants = cs.variants ?? MATMUL_VARIANTS;
    const outs = variants.map((variant) => {
      const c = keep(createTensor(gpu, [sc], "f32", `C ${variant}`));
      if (cs.spec.accumulate) c.upload(initC);
      else fill(rec, c, NaN);
      matmul(rec, { ...cs.spec, a, b, c, bias, variant });
      return c;
    });
    await rec.submit();
    const bits = await Promise.all(
      outs.map(async (c) => new Uint32Array((await c.download()).buffer.slice(0))),
    );
    for (const [vi, variant] of variants.entries()) {
      let differ = 0;
      for (let i = 0; i < sc; i++) if (bits[vi][i] !== bits[0][i]) differ++;
      assertEquals(
        differ,
        0,
        `${variant} vs ${variants[0]}: ${differ} of ${sc} elements differ, ` +
          JSON.stringify({ ...cs.spec, bias: cs.bias }),
      );
    }
    for (const t of tensors) t.destroy();
  }
}

gpuTest(
  "matmul variants: bitwise-identical outputs, odd and aligned shapes, transposes, alpha, " +
    "bias, accumulate",
  async (gpu) => {
    // Odd shapes run the vec4 variants' direct4x4 fallback and the tiled kernels' scalar staging;
    // the aligned ones run them for real, edge tiles included (sizes not multiples of the 8×16
    // and 16×8 register tiles' blocks).
    const shapes = [
      [1, 1, 1],
      [7, 33, 5],
      [33, 7, 130],
      [65, 70, 47],
      [64, 64, 64],
      [68, 132, 36],
      [132, 100, 260],
      [96, 256, 64],
    ];
    const epilogues: Partial<Spec>[] = [
      {},
      { alpha: 0.3 },
      { alpha: -1.7, accumulate: true },
    ];
    const cases: Case[] = [];
    for (const [m, n, k] of shapes) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const [i, extra] of epilogues.entries()) {
            const spec = { m, n, k, transA, transB, ...extra };
            const odd = [m, n, k].some((d) => d % 4 !== 0);
            const variants = odd ? misalignedVariants() : undefined;
            cases.push({ spec, sizes: packed(spec), bias: i > 0, variants });
          }
        }
      }
    }
    await compareVariants(gpu, cases, 100);
  },
);

gpuTest(
  "matmul variants: bitwise-identical with row strides, offsets and batches",
  async (gpu) => {
    const cases: Case[] = [];
    // Unbatched, the nn_ variants copy a transposed operand from its offset and row stride.
    for (const batched of [true, false]) {
      for (const aligned of [true, false]) {
        const pad = aligned ? 4 : 3;
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const m = 36, n = 40, k = 48;
            const [aRows, aCols] = transA ? [k, m] : [m, k];
            const [bRows, bCols] = transB ? [n, k] : [k, n];
            const lda = aCols + pad, ldb = bCols + pad, ldc = n + pad;
            const aMat = aRows * lda, bMat = bRows * ldb, cMat = m * ldc;
            const spec: Spec = {
              m,
              n,
              k,
              transA,
              transB,
              lda,
              ldb,
              ldc,
              offsetA: pad,
              offsetB: 2 * pad,
              offsetC: 1,
              alpha: 0.75,
              accumulate: transA,
              ...(batched
                ? {
                  batch0: { count: 2, strideA: aMat + pad, strideB: 0, strideC: 2 * cMat },
                  batch1: { count: 2, strideA: 0, strideB: bMat, strideC: cMat },
                }
                : {}),
            };
            cases.push({
              spec,
              sizes: [pad + 2 * aMat + pad, 2 * pad + 2 * bMat, 1 + 4 * cMat],
              bias: !transB,
              variants: aligned ? undefined : epilogueVariants(),
            });
          }
        }
      }
    }
    await compareVariants(gpu, cases, 900);
  },
);

gpuTest("matmul variants: the aligned cases above really run each variant", (gpu) => {
  // Otherwise the comparison above would only compare direct4x4's fallback with itself.
  const t = (n: number, label: string) => createTensor(gpu, [n], "f32", label);
  const [m, n, k] = [132, 100, 260];
  const a = t(m * k, "A"), b = t(k * n, "B"), c = t(m * n, "C");
  try {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const variant of MATMUL_VARIANTS) {
          const used = matmulVariantsUsed(
            gpu,
            (rec) => matmul(rec, { a, b, c, m, n, k, transA, transB, variant }),
          );
          // An nn_ variant without a transposed operand has nothing to copy: its kernel runs.
          const kernel = transA || transB ? variant : untransposedKernel(variant) ?? variant;
          assertEquals(used, [kernel]);
        }
      }
    }
    // And the probe sees the fallback where there is one.
    const odd = matmulVariantsUsed(
      gpu,
      (rec) => matmul(rec, { a, b, c, m, n, k: k - 1, variant: "vec4_8x16" }),
    );
    assert(odd[0] === "direct4x4", `k = ${k - 1} falls back to direct4x4, got ${odd}`);
    // A tiled kernel stages what vec4 loads cannot read with scalar loads: it runs itself.
    for (const variant of ["tiled_8x8dk16", "tiled_4x4d", "nn_tiled_8x8"] as const) {
      const tiled = matmulVariantsUsed(
        gpu,
        (rec) => matmul(rec, { a, b, c, m, n, k: k - 1, variant }),
      );
      assertEquals(tiled, [untransposedKernel(variant) ?? variant]);
    }
    // An nn_ variant copies nothing where its kernel could not read the copy as vec4s.
    const oddNn = matmulVariantsUsed(
      gpu,
      (rec) => matmul(rec, { a, b, c, m, n, k: k - 1, transB: true, variant: "nn_vec4_8x8" }),
    );
    assertEquals(oddNn, ["direct4x4"]);
    // ...and copies from an offset and a row stride where it can (the unbatched cases above).
    const small = { a, b, c, m: 36, n: 40, k: 48 };
    const used = (args: Partial<MatmulArgs>) =>
      matmulVariantsUsed(gpu, (rec) => matmul(rec, { ...small, ...args }));
    const strided = { transA: true, transB: true, lda: 40, ldb: 52, offsetA: 4, offsetB: 8 };
    assertEquals(used({ ...strided, variant: "nn_tiled_8x8" }), ["nn_tiled_8x8"]);
    // A batched product is not copied: it runs the built-in choice (the tune's reference), not
    // the nn_ variant's kernel on transposed operands, which no tune timed.
    const batch0 = { count: 2, strideA: 0, strideB: 0, strideC: 36 * 40 };
    const batched = used({ transB: true, batch0, variant: "nn_vec4_8x16" });
    assertEquals(batched, used({ transB: true, batch0 }));
    assert(batched[0] !== "vec4_8x16", `${batched}`);
  } finally {
    for (const x of [a, b, c]) x.destroy();
  }
});

gpuTest(
  "matmul variants: one needing more workgroup memory than the device has is refused by name, " +
    "and the autotune does not time it",
  (gpu) => {
    // WebGPU guarantees 16 KiB; the two-buffer tiled kernels need 16.5-25 KiB.
    const small = withLimits(gpu, { maxComputeWorkgroupStorageSize: 16384 });
    for (const v of ["tiled_8x4dk", "tiled_4x4d", "nn_tiled_8x8dk", "tiled_8x8wd"] as const) {
      assert(!variantFits(small, v), v);
      assert(
        variantFits(gpu, v),
        `${v} fits this adapter's ${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    for (const v of ["tiled_8x8", "nn_tiled_4x4w", "vec4_8x8", "tile64"] as const) {
      assert(variantFits(small, v), v);
    }
    const kept = defaultCandidates(false).filter((v) => variantFits(small, v));
    assert(kept.includes("tiled_8x8") && !kept.some((v) => /^(nn_)?tiled_[0-9x]+w?dk?$/.test(v)));
    const [m, n, k] = [132, 100, 260];
    const t = (count: number, label: string) => createTensor(gpu, [count], "f32", label);
    const a = t(m * k, "A"), b = t(k * n, "B"), c = t(m * n, "C");
    try {
      const rec = new Recorder(small);
      assertThrows(
        () => matmul(rec, { a, b, c, m, n, k, variant: "tiled_8x4dk" }),
        GpuError,
        "variant tiled_8x4dk needs 25088 bytes of workgroup memory, more than this device's 16384",
      );
      // An nn_ variant is refused before its copies are recorded.
      assertThrows(
        () => matmul(rec, { a, b, c, m, n, k, transB: true, variant: "nn_tiled_8x8dk" }),
        GpuError,
        "variant nn_tiled_8x8dk needs up to 16896 bytes of workgroup memory",
      );
      assertEquals(rec.length, 0);
    } finally {
      for (const x of [a, b, c]) x.destroy();
    }
  },
);
