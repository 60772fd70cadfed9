import { assert, assertEquals, assertThrows } from "./assert.ts";
import { assertClose } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { refGelu, refGeluGrad } from "./gelu_reference.ts";
import { randomValues } from "./random.ts";
import { epilogueVariants, misalignedVariants } from "./matmul_subset.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import {
  matmul,
  MATMUL_VARIANTS,
  type MatmulArgs,
  type MatmulVariant,
  setMatmulTuner,
} from "../kernels/matmul.ts";
import { matmulShapeClass, tuneMatmul } from "../kernels/matmul_autotune.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// The tiled kernels by representatives (tests/matmul_subset.ts): on the odd shapes here each
// stages its operands with scalar loads, a pipeline of its own (seconds to compile on lavapipe,
// about one on NVIDIA's driver); tests/matmul_variants_test.ts checks every variant bitwise
// against these on aligned operands.
const VARIANTS = epilogueVariants();
/** The odd-shape tests' (tests/matmul_subset.ts). */
const ODD_VARIANTS = misalignedVariants();
/** The non-tiled variants and one tiled kernel: the epilogues' odd shapes (the store is shared). */
const ODD_EPILOGUE_VARIANTS = [
  ...MATMUL_VARIANTS.filter((v) => !/^(nn_)?tiled_/.test(v)),
  "tiled_4x4",
] as const satisfies readonly MatmulVariant[];

/** Host-side description of a product, without the tensors. */
type Spec = Omit<MatmulArgs, "a" | "b" | "c" | "bias" | "op" | "variant" | "epilogue">;

/**
 * Float64 reference of the strided batched product, written from the definition: returns the
 * new contents of all of C, and the set of C elements the product writes.
 */
function referenceMatmul(
  s: Spec,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  c: ArrayLike<number>,
  bias?: ArrayLike<number>,
): { out: Float64Array; written: Set<number> } {
  const out = Float64Array.from(c);
  const written = new Set<number>();
  const { m, n, k } = s;
  const lda = s.lda ?? (s.transA ? m : k);
  const ldb = s.ldb ?? (s.transB ? k : n);
  const ldc = s.ldc ?? n;
  const one = { count: 1, strideA: 0, strideB: 0, strideC: 0 };
  const b0 = s.batch0 ?? one;
  const b1 = s.batch1 ?? one;
  const alpha = s.alpha ?? 1;
  for (let i0 = 0; i0 < b0.count; i0++) {
    for (let i1 = 0; i1 < b1.count; i1++) {
      const oa = (s.offsetA ?? 0) + i0 * b0.strideA + i1 * b1.strideA;
      const ob = (s.offsetB ?? 0) + i0 * b0.strideB + i1 * b1.strideB;
      const oc = (s.offsetC ?? 0) + i0 * b0.strideC + i1 * b1.strideC;
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let sum = 0;
          for (let p = 0; p < k; p++) {
            const av = s.transA ? a[oa + p * lda + i] : a[oa + i * lda + p];
            const bv = s.transB ? b[ob + j * ldb + p] : b[ob + p * ldb + j];
            sum += av * bv;
          }
          const idx = oc + i * ldc + j;
          let v = alpha * sum + (bias ? bias[j] : 0);
          if (s.accumulate) v += c[idx];
          out[idx] = v;
          written.add(idx);
        }
      }
    }
  }
  return { out, written };
}

interface Case {
  spec: Spec;
  sizes: { a: number; b: number; c: number };
  bias?: boolean;
  /** GELU epilogue: without the pre-activation, saving it, or GELU's derivative. */
  epilogue?: "gelu" | "geluSave" | "geluGrad";
}

/** Stored sizes of packed, unbatched operands. */
function packedSizes(s: Spec): { a: number; b: number; c: number } {
  return { a: s.m * s.k, b: s.k * s.n, c: s.m * s.n };
}

/**
 * Runs each case on the GPU (each variant), C poisoned with NaN unless accumulating (then it
 * holds random values), and compares all of C: written elements against the float64 reference
 * (tolerance `tol`), the others must be untouched. With an epilogue, the reference applies GELU
 * (or multiplies by GELU's derivative at random pre-activations in [−4, 4)) to the product, and
 * a saved pre-activation (poisoned like C) is checked the same way.
 */
async function runCases(
  gpu: Gpu,
  cases: Case[],
  seed: number,
  tol = 1e-5,
  variants: readonly MatmulVariant[] = VARIANTS,
): Promise<void> {
  for (const variant of variants) {
    const rec = new Recorder(gpu);
    const runs = cases.map((cs, ci) => {
      const hostA = Float32Array.from(randomValues(cs.sizes.a, seed + 10 * ci));
      const hostB = Float32Array.from(randomValues(cs.sizes.b, seed + 10 * ci + 1));
      const hostC = cs.spec.accumulate
        ? Float32Array.from(randomValues(cs.sizes.c, seed + 10 * ci + 2))
        : new Float32Array(cs.sizes.c).fill(NaN);
      const hostBias = cs.bias
        ? Float32Array.from(randomValues(cs.spec.n, seed + 10 * ci + 3))
        : undefined;
      const hostPre = cs.epilogue === "geluGrad"
        ? Float32Array.from(randomValues(cs.sizes.c, seed + 10 * ci + 4), (v) => 4 * v)
        : new Float32Array(cs.sizes.c).fill(NaN);
      const a = tensorFromArray(gpu, hostA, [cs.sizes.a], "A");
      const b = tensorFromArray(gpu, hostB, [cs.sizes.b], "B");
      const c = createTensor(gpu, [cs.sizes.c], "f32", "C");
      const bias = hostBias && tensorFromArray(gpu, hostBias, [cs.spec.n], "bias");
      const pre = cs.epilogue && cs.epilogue !== "gelu"
        ? tensorFromArray(gpu, hostPre, [cs.sizes.c], "preActivation")
        : undefined;
      if (cs.spec.accumulate) c.upload(hostC);
      else fill(rec, c, NaN);
      const epilogue = cs.epilogue === "geluGrad"
        ? { kind: "geluGrad" as const, preActivation: pre! }
        : cs.epilogue
        ? { kind: "gelu" as const, preActivation: pre }
        : undefined;
      matmul(rec, { ...cs.spec, a, b, c, bias, epilogue, variant });
      return { cs, hostA, hostB, hostC, hostBias, hostPre, tensors: [a, b, c, bias, pre], c, pre };
    });
    await rec.submit();
    for (const r of runs) {
      const got = await r.c.download();
      const { out, written } = referenceMatmul(r.cs.spec, r.hostA, r.hostB, r.hostC, r.hostBias);
      const idx = [...written].sort((x, y) => x - y);
      const name = `${variant} ${r.cs.epilogue ?? ""} ${JSON.stringify(r.cs.spec)}`;
      const epilogue = r.cs.epilogue;
      // GELU rounded to float32: far in the negative tail it is below float32's range.
      const want = (i: number) =>
        epilogue === "geluGrad"
          ? out[i] * refGeluGrad(r.hostPre[i])
          : epilogue
          ? Math.fround(refGelu(out[i]))
          : out[i];
      assertClose(name, idx.map((i) => got[i]), idx.map(want), tol);
      for (let i = 0; i < got.length; i++) {
        if (!written.has(i)) {
          assert(Object.is(got[i], r.hostC[i]), `${name}: element ${i} outside C's region changed`);
        }
      }
      if (r.pre) {
        const pre = await r.pre.download();
        if (epilogue === "geluSave") {
          assertClose(`${name} preActivation`, idx.map((i) => pre[i]), idx.map((i) => out[i]), tol);
        }
        for (let i = 0; i < pre.length; i++) {
          if (epilogue !== "geluSave" || !written.has(i)) {
            assert(Object.is(pre[i], r.hostPre[i]), `${name}: preActivation ${i} changed`);
          }
        }
      }
      for (const t of r.tensors) t?.destroy();
    }
  }
}

gpuTest("matmul: odd shapes, every transpose combination, every kind of variant", async (gpu) => {
  const shapes = [[1, 1, 1], [7, 33, 5], [33, 7, 130], [130, 33, 17], [1, 130, 33], [65, 70, 47]];
  const cases: Case[] = [];
  for (const [m, n, k] of shapes) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const spec = { m, n, k, transA, transB };
        cases.push({ spec, sizes: packedSizes(spec) });
      }
    }
  }
  await runCases(gpu, cases, 1000, 1e-5, ODD_VARIANTS);
});

gpuTest("matmul: leading dimensions, offsets, alpha, bias and accumulate", async (gpu) => {
  const cases: Case[] = [];
  for (const [m, n, k] of [[7, 33, 19], [130, 65, 33]]) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const accumulate of [false, true]) {
          const lda = (transA ? m : k) + 3;
          const ldb = (transB ? k : n) + 5;
          const ldc = n + 2;
          const spec: Spec = {
            m,
            n,
            k,
            transA,
            transB,
            lda,
            ldb,
            ldc,
            accumulate,
            offsetA: 11,
            offsetB: 4,
            offsetC: 9,
            alpha: accumulate ? -0.37 : 1.75,
          };
          const sizes = {
            a: 11 + lda * (transA ? k : m) + 2,
            b: 4 + ldb * (transB ? n : k) + 1,
            c: 9 + ldc * m + 3,
          };
          cases.push({ spec, sizes, bias: transA !== transB });
        }
      }
    }
  }
  await runCases(gpu, cases, 2000, 1e-5, ODD_VARIANTS);
});

gpuTest("matmul: both batch levels with their own strides, and broadcast operands", async (gpu) => {
  const m = 7, n = 9, k = 33;
  const cases: Case[] = [];
  for (const [transA, transB] of [[false, false], [true, true], [false, true]]) {
    // Level 0 (count 3) and level 1 (count 2): separate strides, gaps between products, and B
    // shared by level 1 (stride 0).
    const aMat = m * k, bMat = k * n, cMat = m * n;
    const spec: Spec = {
      m,
      n,
      k,
      transA,
      transB,
      offsetA: 5,
      offsetB: 2,
      offsetC: 1,
      alpha: 0.5,
      accumulate: transA,
      batch0: { count: 3, strideA: 2 * aMat + 7, strideB: bMat + 3, strideC: 2 * cMat + 4 },
      batch1: { count: 2, strideA: aMat + 1, strideB: 0, strideC: cMat + 2 },
    };
    const sizes = { a: 5 + 3 * (2 * aMat + 7), b: 2 + 3 * (bMat + 3), c: 1 + 3 * (2 * cMat + 4) };
    cases.push({ spec, sizes });
  }
  await runCases(gpu, cases, 3000, 1e-5, ODD_VARIANTS);
});

gpuTest(
  "matmul: k = 0 gives bias (or leaves C when accumulating), empty products do nothing",
  async (gpu) => {
    await runCases(gpu, [
      { spec: { m: 7, n: 5, k: 0 }, sizes: { a: 1, b: 1, c: 35 }, bias: true },
      { spec: { m: 7, n: 5, k: 0 }, sizes: { a: 1, b: 1, c: 35 } },
      { spec: { m: 7, n: 5, k: 0, accumulate: true }, sizes: { a: 1, b: 1, c: 35 } },
    ], 4000);
    const rec = new Recorder(gpu);
    const t = createTensor(gpu, [4], "f32", "t");
    const u = createTensor(gpu, [4], "f32", "u");
    matmul(rec, { a: t, b: t, c: u, m: 0, n: 4, k: 1 });
    matmul(rec, {
      a: t,
      b: t,
      c: u,
      m: 2,
      n: 2,
      k: 1,
      batch0: { count: 0, strideA: 9, strideB: 9, strideC: 9 },
    });
    assertEquals(rec.length, 0);
  },
);

gpuTest("matmul: batches beyond one dispatch's workgroup limit", async (gpu) => {
  const count0 = 350, count1 = 200; // 70000 products > 65535 workgroups in z
  const spec: Spec = {
    m: 1,
    n: 2,
    k: 3,
    batch0: { count: count0, strideA: 3 * count1, strideB: 6 * count1, strideC: 2 * count1 },
    batch1: { count: count1, strideA: 3, strideB: 6, strideC: 2 },
  };
  const total = count0 * count1;
  // One variant only: 70000 workgroups take seconds on a CPU adapter.
  const sizes = { a: 3 * total, b: 6 * total, c: 2 * total };
  await runCases(gpu, [{ spec, sizes }], 5000, 1e-5, ["tile16"]);
});

gpuTest("matmul: a batch over several z dispatches, in every kernel kind", async (gpu) => {
  // 5 products at a z limit of 2: dispatches of 2, 2 and 1, each must offset z by its zBase.
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const m = 8, n = 8, k = 8, count = 5;
  const spec: Spec = { m, n, k, batch0: { count, strideA: m * k, strideB: k * n, strideC: m * n } };
  const sizes = { a: count * m * k, b: count * k * n, c: count * m * n };
  const kinds: MatmulVariant[] = ["direct4x4", "vec4_4x4", "tiled_4x4", "tile16"];
  await runCases(small, [{ spec, sizes }], 5100, 1e-5, kinds);
});

gpuTest("matmul: k-sliced products of a batch over several z dispatches", async (gpu) => {
  // tile16 slices k at 8192, so k = 8200 is two slices, the second resuming the first's partial
  // sums; those are indexed by the z within the dispatch (3 products at a z limit of 2).
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const m = 5, n = 7, k = 8200, count = 3;
  const spec: Spec = { m, n, k, batch0: { count, strideA: m * k, strideB: k * n, strideC: m * n } };
  const sizes = { a: count * m * k, b: count * k * n, c: count * m * n };
  await runCases(small, [{ spec, sizes }], 5200, 1e-5, ["tile16"]);
});

gpuTest(
  "matmul: per-head attention products over a [B, S, H·D] layout without copies",
  async (gpu) => {
    const B = 2, S = 33, H = 3, D = 7, HD = H * D;
    const q = randomValues(B * S * HD, 61);
    const kk = randomValues(B * S * HD, 62);
    const v = randomValues(B * S * HD, 63);
    const scale = 1 / Math.sqrt(D);
    // Scores [B, H, S, S] = scale · Q_h K_hᵀ, then context [B, S, H·D] = P_h V_h with P = scores.
    const scores = new Float64Array(B * H * S * S);
    const context = new Float64Array(B * S * HD);
    for (let bi = 0; bi < B; bi++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < S; i++) {
          for (let j = 0; j < S; j++) {
            let s = 0;
            for (let d = 0; d < D; d++) {
              s += q[(bi * S + i) * HD + h * D + d] * kk[(bi * S + j) * HD + h * D + d];
            }
            scores[((bi * H + h) * S + i) * S + j] = scale * s;
          }
        }
      }
    }
    const scores32 = Float32Array.from(scores);
    for (let bi = 0; bi < B; bi++) {
      for (let h = 0; h < H; h++) {
        for (let i = 0; i < S; i++) {
          for (let d = 0; d < D; d++) {
            let s = 0;
            for (let j = 0; j < S; j++) {
              s += scores32[((bi * H + h) * S + i) * S + j] * v[(bi * S + j) * HD + h * D + d];
            }
            context[(bi * S + i) * HD + h * D + d] = s;
          }
        }
      }
    }
    for (const variant of VARIANTS) {
      const rec = new Recorder(gpu);
      const tq = tensorFromArray(gpu, Float32Array.from(q), [B, S, HD], "q");
      const tk = tensorFromArray(gpu, Float32Array.from(kk), [B, S, HD], "k");
      const tv = tensorFromArray(gpu, Float32Array.from(v), [B, S, HD], "v");
      const ts = createTensor(gpu, [B, H, S, S], "f32", "scores");
      const tp = tensorFromArray(gpu, scores32, [B, H, S, S], "probs");
      const tc = createTensor(gpu, [B, S, HD], "f32", "context");
      fill(rec, ts, NaN);
      fill(rec, tc, NaN);
      matmul(rec, {
        a: tq,
        b: tk,
        c: ts,
        m: S,
        n: S,
        k: D,
        transB: true,
        lda: HD,
        ldb: HD,
        alpha: scale,
        variant,
        batch0: { count: B, strideA: S * HD, strideB: S * HD, strideC: H * S * S },
        batch1: { count: H, strideA: D, strideB: D, strideC: S * S },
      });
      matmul(rec, {
        a: tp,
        b: tv,
        c: tc,
        m: S,
        n: D,
        k: S,
        ldb: HD,
        ldc: HD,
        variant,
        batch0: { count: B, strideA: H * S * S, strideB: S * HD, strideC: S * HD },
        batch1: { count: H, strideA: S * S, strideB: D, strideC: D },
      });
      await rec.submit();
      assertClose(`${variant} scores`, await ts.download(), scores);
      assertClose(`${variant} context`, await tc.download(), context);
      for (const t of [tq, tk, tv, ts, tp, tc]) t.destroy();
    }
  },
);

gpuTest("matmul: vec4 fast path (edge tiles, aligned strides) and its fallbacks", async (gpu) => {
  const cases: Case[] = [];
  // m, n multiples of 4 (but not of any tile) and k of 4: every transpose takes the vec4 path.
  // Odd m or n: only the operands read along k stay vec4-eligible; the rest fall back.
  for (const [m, n, k] of [[36, 68, 20], [132, 12, 8], [7, 33, 20], [33, 9, 132], [4, 4, 4]]) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const spec = { m, n, k, transA, transB };
        cases.push({ spec, sizes: packedSizes(spec) });
      }
    }
  }
  // Aligned leading dimensions and offsets (vec4), then misaligned ones (fallback), with bias,
  // alpha, accumulate and a batch.
  for (const [pad, off] of [[4, 8], [1, 4], [4, 3]]) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const m = 20, n = 36, k = 12;
        const lda = (transA ? m : k) + pad, ldb = (transB ? k : n) + pad, ldc = n + 1;
        const aMat = lda * (transA ? k : m), bMat = ldb * (transB ? n : k), cMat = ldc * m;
        const spec: Spec = {
          m,
          n,
          k,
          transA,
          transB,
          lda,
          ldb,
          ldc,
          offsetA: off,
          offsetB: off,
          offsetC: 3,
          alpha: 0.75,
          accumulate: transB,
          batch0: { count: 2, strideA: aMat + 4, strideB: bMat + 8, strideC: cMat + 1 },
        };
        cases.push({
          spec,
          sizes: { a: off + 2 * aMat + 4, b: off + 2 * bMat + 8, c: 3 + 2 * cMat + 1 },
          bias: !transA,
        });
      }
    }
  }
  await runCases(gpu, cases, 6000, 1e-5, VARIANTS.filter((v) => v.startsWith("vec4")));
});

gpuTest(
  "matmul: GELU epilogues in every kind of variant, at odd and vec4-aligned shapes",
  async (gpu) => {
    // (The tiled variants by representatives: tests/matmul_subset.ts.)
    const epilogues = ["gelu", "geluSave", "geluGrad"] as const;
    const cases: Case[] = [];
    const shapes = [[1, 1, 1], [7, 33, 5], [33, 7, 130], [36, 68, 20], [65, 70, 47]];
    const odd: Case[] = [];
    for (const [s, [m, n, k]] of shapes.entries()) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          const spec = { m, n, k, transA, transB };
          const epilogue = epilogues[(s + 2 * +transA + +transB) % 3];
          const aligned = [m, n, k].every((d) => d % 4 === 0);
          (aligned ? cases : odd).push({ spec, sizes: packedSizes(spec), bias: transB, epilogue });
        }
      }
    }
    await runCases(gpu, odd, 8500, 1e-5, ODD_EPILOGUE_VARIANTS);
    // Strides, offsets, alpha, accumulate (the epilogue sees the sum) and both batch levels: C and
    // the pre-activation share one layout, gaps between products untouched.
    for (const epilogue of epilogues) {
      const m = 20, n = 12, k = 8, ldc = n + 3, cMat = ldc * m;
      const spec: Spec = {
        m,
        n,
        k,
        transB: true,
        ldc,
        offsetC: 5,
        alpha: 0.75,
        accumulate: epilogue !== "gelu",
        batch0: { count: 2, strideA: m * k, strideB: 0, strideC: 2 * cMat + 2 },
        batch1: { count: 2, strideA: 0, strideB: n * k, strideC: cMat + 1 },
      };
      cases.push({
        spec,
        sizes: { a: 2 * m * k, b: 2 * n * k, c: 5 + 2 * (2 * cMat + 2) },
        bias: true,
        epilogue,
      });
    }
    await runCases(gpu, cases, 8000, 1e-5, epilogueVariants());
  },
);

gpuTest(
  "matmul: GELU epilogues are bitwise reproducible, and alike in every kind of variant",
  async (gpu) => {
    // Every variant sums in the same order and stores through one WGSL function, so as the plain
    // product (tests/matmul_variants_test.ts) the epilogues agree bitwise across variants: the
    // autotune may pick any of them.
    const m = 130, n = 68, k = 36;
    const a = tensorFromArray(gpu, Float32Array.from(randomValues(m * k, 81)), [m, k], "A");
    const b = tensorFromArray(gpu, Float32Array.from(randomValues(n * k, 82)), [n, k], "B");
    let first: Float32Array[] | undefined;
    const variants = epilogueVariants(); // tests/matmul_subset.ts
    for (const variant of variants) {
      const results: Float32Array[][] = [];
      for (let run = 0; run < 2; run++) {
        const c = createTensor(gpu, [m, n], "f32", "C");
        const pre = createTensor(gpu, [m, n], "f32", "pre");
        const d = createTensor(gpu, [m, n], "f32", "D");
        const rec = new Recorder(gpu);
        for (const t of [c, pre, d]) fill(rec, t, NaN);
        const base = { a, b, m, n, k, transB: true, variant };
        matmul(rec, { ...base, c, epilogue: { kind: "gelu", preActivation: pre } });
        matmul(rec, { ...base, c: d, epilogue: { kind: "geluGrad", preActivation: pre } });
        await rec.submit();
        results.push(
          [await c.download(), await pre.download(), await d.download()] as Float32Array[],
        );
        for (const t of [c, pre, d]) t.destroy();
      }
      assertEquals(results[0], results[1], variant);
      first ??= results[0];
      assertEquals(results[0], first, `${variant} against ${variants[0]}`);
    }
    a.destroy();
    b.destroy();
  },
);

gpuTest(
  "matmul: autotune picks a variant per shape class and survives a corrupt cache",
  async (gpu) => {
    const file = await Deno.makeTempFile({ suffix: ".json" });
    try {
      await Deno.writeTextFile(file, "{ not json");
      const shapes = [{ m: 36, n: 20, k: 8, transB: true }];
      const { table } = await tuneMatmul(gpu, { shapes, budgetMs: 5, cacheFile: file });
      const cls = matmulShapeClass(36, 20, 8, false, true);
      assert(MATMUL_VARIANTS.includes(table[cls]), `tuned ${JSON.stringify(table)}`);
      const saved = JSON.parse(await Deno.readTextFile(file));
      assertEquals(saved[gpu.description][cls], table[cls]);
      // The installed choice serves later calls without a variant; results stay correct.
      await runCases(
        gpu,
        [{
          spec: { m: 37, n: 20, k: 8, transB: true },
          sizes: packedSizes({ m: 37, n: 20, k: 8 }),
        }],
        7000,
        1e-5,
        [undefined as unknown as MatmulVariant],
      );
    } finally {
      setMatmulTuner(gpu, undefined);
      await Deno.remove(file);
    }
  },
);

gpuTest("matmul: two runs give bitwise-identical results", async (gpu) => {
  for (const [m, n, k] of [[130, 97, 261], [132, 100, 260]]) {
    await determinism(gpu, m, n, k);
  }
});

async function determinism(gpu: Gpu, m: number, n: number, k: number): Promise<void> {
  const a = tensorFromArray(gpu, Float32Array.from(randomValues(m * k, 71)), [k, m], "A");
  const b = tensorFromArray(gpu, Float32Array.from(randomValues(k * n, 72)), [k, n], "B");
  for (const variant of VARIANTS) {
    const results: Float32Array[] = [];
    for (let run = 0; run < 2; run++) {
      const c = createTensor(gpu, [m, n], "f32", "C");
      const rec = new Recorder(gpu);
      fill(rec, c, NaN);
      matmul(rec, { a, b, c, m, n, k, transA: true, alpha: 0.3, variant });
      await rec.submit();
      results.push((await c.download()) as Float32Array);
      c.destroy();
    }
    assertEquals(results[0], results[1], variant);
  }
  a.destroy();
  b.destroy();
}

gpuTest(
  "matmul: k above lavapipe's per-invocation loop budget (weight gradients over 140000 rows)",
  async (gpu) => {
    // lavapipe stops an invocation after 65,535 loop iterations, silently: unsliced, direct4x4
    // (LoRA's dA and dB, r = 8) summed only the first 65,535 k, tile16 / tile64 far fewer. The
    // launcher cuts k into slices that resume each other's sums, term for term. 140,000 is past
    // the longest slice of every kernel kind (131,072 for vec4 and tiled), so each runs sliced.
    const k = 140000;
    // Multiples of 1/8 below 1: every product is a multiple of 1/64 and every partial sum, below
    // 2^18, is exact in float32, so each variant must give the float64 sum exactly.
    const eighths = (n: number, seed: number) =>
      Float32Array.from(randomValues(n, seed), (x) => Math.trunc(x * 8) / 8);
    const product = (A: Float32Array, B: Float32Array, m: number, n: number) => {
      const sum = new Float64Array(m * n);
      for (let p = 0; p < k; p++) {
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) sum[i * n + j] += A[p * m + i] * B[p * n + j];
        }
      }
      return sum;
    };

    // Every variant (vec4-aligned 8×8), with alpha, bias and accumulate applied once.
    {
      const m = 8, n = 8;
      const hostA = eighths(k * m, 301), hostB = eighths(k * n, 302);
      const hostBias = eighths(n, 303), hostC = eighths(m * n, 304);
      const sum = product(hostA, hostB, m, n);
      const want = Float32Array.from(sum, (x, i) => 0.5 * x + hostBias[i % n] + hostC[i]);
      const a = tensorFromArray(gpu, hostA, [k, m], "a");
      const b = tensorFromArray(gpu, hostB, [k, n], "b");
      const bias = tensorFromArray(gpu, hostBias, [n], "bias");
      const c = createTensor(gpu, [m, n], "f32", "c");
      for (const variant of VARIANTS) {
        c.upload(hostC);
        const rec = new Recorder(gpu);
        matmul(rec, {
          a,
          b,
          c,
          m,
          n,
          k,
          transA: true,
          alpha: 0.5,
          bias,
          accumulate: true,
          variant,
        });
        await rec.submit();
        assertEquals(await c.download(), want, variant);
      }
      for (const t of [a, b, bias, c]) t.destroy();
    }

    // LoRA's dB shape (r = 5, not vec4-aligned: direct4x4), the GELU epilogue applied once.
    {
      const m = 6, n = 5;
      const hostA = eighths(k * m, 305), hostB = eighths(k * n, 306);
      const sum = product(hostA, hostB, m, n);
      const a = tensorFromArray(gpu, hostA, [k, m], "dOut");
      const b = tensorFromArray(gpu, hostB, [k, n], "hidden");
      const c = createTensor(gpu, [m, n], "f32", "c");
      const pre = createTensor(gpu, [m, n], "f32", "pre");
      const rec = new Recorder(gpu);
      matmul(rec, {
        a,
        b,
        c,
        m,
        n,
        k,
        transA: true,
        epilogue: { kind: "gelu", preActivation: pre },
      });
      await rec.submit();
      assertEquals(await pre.download(), Float32Array.from(sum));
      assertClose("gelu", await c.download(), Array.from(sum, refGelu), 1e-6);
      for (const t of [a, b, c, pre]) t.destroy();
    }
  },
);

gpuTest(
  "matmul: out-of-range shapes and strides throw a GpuError naming the op and tensor",
  (gpu) => {
    const rec = new Recorder(gpu);
    const t = (shape: number[], label: string): Tensor => createTensor(gpu, shape, "f32", label);
    const a = t([7, 5], "a"), b = t([5, 3], "b"), c = t([7, 3], "c");
    const base = { op: "testop", a, b, c, m: 7, n: 3, k: 5 };
    matmul(rec, base); // fits exactly
    assertThrows(() => matmul(rec, { ...base, k: 6 }), GpuError, 'testop: A ("a")');
    assertThrows(() => matmul(rec, { ...base, n: 4 }), GpuError, 'testop: B ("b")');
    assertThrows(() => matmul(rec, { ...base, offsetC: 1 }), GpuError, 'testop: C ("c")');
    assertThrows(() => matmul(rec, { ...base, transA: true, lda: 8 }), GpuError, 'testop: A ("a")');
    assertThrows(() => matmul(rec, { ...base, ldb: 2 }), GpuError, "leading dimension 2");
    assertThrows(
      () => matmul(rec, { ...base, batch1: { count: 2, strideA: 0, strideB: 0, strideC: 1 } }),
      GpuError,
      'testop: C ("c")',
    );
    assertThrows(
      () => matmul(rec, { ...base, batch0: { count: 2, strideA: 0, strideB: 0, strideC: 0 } }),
      GpuError,
      "strideC is 0",
    );
    assertThrows(() => matmul(rec, { ...base, m: -1 }), GpuError, "testop: m");
    assertThrows(
      () => matmul(rec, { ...base, bias: t([4], "bias") }),
      GpuError,
      'testop: bias ("bias")',
    );
    const ints = createTensor(gpu, [7, 5], "i32", "ints");
    assertThrows(
      () => matmul(rec, { ...base, a: ints }),
      GpuError,
      'testop: A ("ints") is i32, expected f32 or f16',
    );
    const arena = t([100], "arena");
    const view = arena.view(256, [35], "view");
    assertThrows(
      () => matmul(rec, { ...base, a: view, b: a, c: arena, m: 5, n: 5, k: 7 }),
      GpuError,
      "shares",
    );
    assertThrows(() => matmul(rec, { a, b, c, m: 7, n: 3, k: 6 }), GpuError, "matmul: A");
    assertThrows(
      () => matmul(rec, { ...base, epilogue: { kind: "geluGrad" } as never }),
      GpuError,
      "testop: the geluGrad epilogue needs preActivation",
    );
    assertThrows(
      () => matmul(rec, { ...base, epilogue: { kind: "gelu", preActivation: t([20], "short") } }),
      GpuError,
      'testop: preActivation ("short")',
    );
    assertThrows(
      () => matmul(rec, { ...base, epilogue: { kind: "geluGrad", preActivation: c } }),
      GpuError,
      'testop: C ("c") shares a GPU buffer with preActivation',
    );
    assertThrows(
      () => matmul(rec, { ...base, epilogue: { kind: "gelu", preActivation: a } }),
      GpuError,
      'testop: preActivation ("a") shares a GPU buffer with A',
    );
    assertThrows(
      () => matmul(rec, { ...base, epilogue: { kind: "relu" } as never }),
      GpuError,
      'testop: unknown epilogue "relu"',
    );
    assertEquals(rec.length, 1);
  },
);
