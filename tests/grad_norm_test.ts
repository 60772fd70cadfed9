import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { beyondOneBinding, slicedValues } from "./binding_slices.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/device.ts";
import { adamwStep } from "../kernels/adamw.ts";
import { fill } from "../kernels/fill.ts";
import {
  gradNormClip,
  gradNormPartialsLength,
  SUM_SQUARES_PER_SLOT,
} from "../kernels/grad_norm.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Error bound. Σg² is accumulated in f32 by a fixed tree: per chunk of 4096 elements each thread
// adds 16 squares in order, then its 4 chunk sums (a slot is 16384 elements), a 256-wide tree
// joins the threads (8 levels); the final workgroup adds ⌈slots/256⌉ partials per thread in order
// and joins them in another 8 levels. Squares round once. For positive terms the relative error of
// such a sum is at most depth · 2^-24 with depth = 1 + 16 + 4 + 8 + ⌈n/2^22⌉ + 8, so ≈ 2.3e-6 for
// n ≈ 1e6; the norm's relative error is half that plus one rounding of the sqrt. The tests assert
// this worst case for their n (tighter than the brief's 1e-5).
function normBound(n: number): number {
  return (37 + Math.ceil(n / 2 ** 22)) * 2 ** -24 / 2 + 2 ** -24;
}

const SHAPES = [[1], [7], [33], [13, 10], [17, 61], [3, 1, 5471]]; // last: 16413, two slots

function makeGrads(gpu: Gpu, seed: number, scale = 1) {
  const host = SHAPES.map((s, i) => {
    const n = s.reduce((a, b) => a * b, 1);
    return Float32Array.from(randomValues(n, seed + i), (x) => scale * x);
  });
  const tensors = host.map((h, i) => tensorFromArray(gpu, h, SHAPES[i], `grad${i}`));
  return { host, tensors };
}

function referenceNorm(host: ArrayLike<number>[]): number {
  let s = 0;
  for (const h of host) for (let i = 0; i < h.length; i++) s += h[i] * h[i];
  return Math.sqrt(s);
}

function relErr(actual: number, expected: number): number {
  return Math.abs(actual - expected) / Math.abs(expected);
}

async function run(
  gpu: Gpu,
  grads: Tensor[],
  maxNorm: number,
): Promise<{ out: Float32Array; partials: Float32Array; launches: number }> {
  const rec = new Recorder(gpu);
  const partials = createTensor(gpu, [gradNormPartialsLength(gpu, grads)], "f32", "partials");
  const out = createTensor(gpu, [2], "f32", "normCoef");
  fill(rec, partials, NaN);
  fill(rec, out, NaN);
  await rec.submit();
  gradNormClip(rec, { grads, partials, maxNorm, out });
  const launches = rec.length;
  await rec.submit();
  const result = {
    out: (await out.download()) as Float32Array,
    partials: (await partials.download()) as Float32Array,
    launches,
  };
  partials.destroy();
  out.destroy();
  return result;
}

gpuTest("gradNormClip: norm over odd-sized tensors matches float64", async (gpu) => {
  const { host, tensors } = makeGrads(gpu, 1);
  const expected = referenceNorm(host);
  const { out, partials, launches } = await run(gpu, tensors, 1);
  assertEquals(launches, SHAPES.length + 1);
  assertEquals(partials.length, SHAPES.length + 1, "16413 elements take two slots");
  assert(partials.every((x) => Number.isFinite(x)), "every partial written");
  const n = host.reduce((a, h) => a + h.length, 0);
  assert(relErr(out[0], expected) <= normBound(n), `norm ${out[0]} vs ${expected}`);
  tensors.forEach((t) => t.destroy());
});

gpuTest("gradNormClip: clip coefficient below and above maxNorm, and maxNorm 0", async (gpu) => {
  const { host, tensors } = makeGrads(gpu, 2);
  const norm = referenceNorm(host); // ≈ 42
  for (const maxNorm of [1, 0.25 * norm, norm * 0.999]) {
    const { out } = await run(gpu, tensors, maxNorm);
    const coef = Math.min(maxNorm / (norm + 1e-6), 1);
    assert(coef < 1);
    // The coefficient's error is the norm's plus one f32 division (≤ 2.5 ulp in WGSL).
    assert(relErr(out[1], coef) <= normBound(20000) + 3 * 2 ** -24, `coef ${out[1]} vs ${coef}`);
  }
  for (const maxNorm of [norm * 1.001, 1e6]) {
    const { out } = await run(gpu, tensors, maxNorm);
    assertEquals(out[1], 1, `maxNorm ${maxNorm} above the norm: no clipping`);
  }
  const { out } = await run(gpu, tensors, 0);
  assertEquals(out[1], 1, "maxNorm 0: no clipping");
  assert(relErr(out[0], norm) <= normBound(20000));
  tensors.forEach((t) => t.destroy());
});

gpuTest("gradNormClip: a small norm's clip coefficient keeps torch's + 1e-6", async (gpu) => {
  // At a norm of ~5e-4 the 1e-6 moves the coefficient by 2e-3 relative: maxNorm / norm would show.
  const host = Float32Array.from(randomValues(1000, 7), (x) => 3e-5 * x);
  const t = tensorFromArray(gpu, host, [host.length], "small grad");
  const norm = referenceNorm([host]);
  const { out } = await run(gpu, [t], 0.5 * norm);
  const coef = 0.5 * norm / (norm + 1e-6);
  assert(relErr(out[1], coef) <= normBound(1000) + 3 * 2 ** -24, `coef ${out[1]} vs ${coef}`);
  t.destroy();
});

gpuTest("gradNormClip: more slots than one grid row (a 2-D grid)", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const n = 3 * SUM_SQUARES_PER_SLOT; // 3 slots: a 2 × 2 grid of workgroups
  const host = Float32Array.from(randomValues(n, 8));
  const t = tensorFromArray(small, host, [n], "grad");
  const { out, partials } = await run(small, [t], 0);
  assert(partials.every((x) => Number.isFinite(x)), "every partial written");
  const norm = referenceNorm([host]);
  assert(relErr(out[0], norm) <= normBound(n), `norm ${out[0]} vs ${norm}`);
  t.destroy();
});

gpuTest("gradNormClip: about a million elements stay within the stated bound", async (gpu) => {
  const n = 1_000_003;
  const host = Float32Array.from(randomValues(n, 3), (x) => x * 1e-3);
  const t = tensorFromArray(gpu, host, [n], "big grad");
  const { out } = await run(gpu, [t], 1);
  const expected = referenceNorm([host]);
  const err = relErr(out[0], expected);
  assert(err <= normBound(n), `norm ${out[0]} vs ${expected}: relative error ${err}`);
  t.destroy();
});

gpuTest("gradNormClip: back-to-back views of one arena are reduced as one range", async (gpu) => {
  const sizes = [7, 33, 130, 1037, 16387]; // 17594 elements: two slots in one range
  const lead = 5; // views start off 256-byte boundaries
  const total = lead + sizes.reduce((a, b) => a + b, 0) + 3;
  const host = Float32Array.from(randomValues(total, 4));
  const arena = tensorFromArray(gpu, host, [total], "grad arena");
  let at = lead;
  const views = sizes.map((n, i) => {
    const v = arena.view(at * 4, [n], `g${i}`);
    at += n;
    return v;
  });
  assertEquals(gradNormPartialsLength(gpu, views), 2);
  const { out, launches } = await run(gpu, views, 2);
  assertEquals(launches, 2, "one range, one finish");
  const inside = host.subarray(lead, at);
  const norm = referenceNorm([inside]);
  assert(relErr(out[0], norm) <= normBound(inside.length), `norm ${out[0]} vs ${norm}`);
  // A gap between views splits the range.
  const gapped = [arena.view(0, [4]), arena.view(20, [7])];
  assertEquals(gradNormPartialsLength(gpu, gapped), 2);
  const g2 = await run(gpu, gapped, 2);
  assertEquals(g2.launches, 3);
  const norm2 = referenceNorm([host.subarray(0, 4), host.subarray(5, 12)]);
  assert(relErr(g2.out[0], norm2) <= normBound(11));
  arena.destroy();
});

gpuTest("gradNormClip: no gradients give norm 0 and coefficient 1", async (gpu) => {
  const empty = createTensor(gpu, [0, 3], "f32", "empty");
  for (const grads of [[], [empty]]) {
    const { out, launches } = await run(gpu, grads, 1);
    assertEquals(launches, 1);
    assertEquals(Array.from(out), [0, 1]);
  }
  empty.destroy();
});

gpuTest("gradNormClip: two runs are bitwise identical", async (gpu) => {
  const { tensors } = makeGrads(gpu, 5);
  const a = await run(gpu, tensors, 0.5);
  const b = await run(gpu, tensors, 0.5);
  assertEquals(a.out, b.out);
  assertEquals(a.partials, b.partials);
  tensors.forEach((t) => t.destroy());
});

gpuTest("gradNormClip: AdamW reads the coefficient as its gradient scale", async (gpu) => {
  const { host, tensors } = makeGrads(gpu, 6);
  const rec = new Recorder(gpu);
  const partials = createTensor(gpu, [gradNormPartialsLength(gpu, tensors)], "f32", "partials");
  const out = createTensor(gpu, [2], "f32", "normCoef");
  const k = 4; // the [17, 61] gradient
  const p0 = Float32Array.from(randomValues(host[k].length, 60));
  const p = tensorFromArray(gpu, p0, SHAPES[k], "p");
  const m = createTensor(gpu, SHAPES[k], "f32", "m");
  const v = createTensor(gpu, SHAPES[k], "f32", "v");
  const h = { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
  gradNormClip(rec, { grads: tensors, partials, maxNorm: 1, out });
  adamwStep(rec, { param: p, grad: tensors[k], m, v, ...h, gradScale: out, gradScaleIndex: 1 });
  await rec.submit();
  const [, coef] = await out.download();
  assert(coef < 0.1, "clipped");
  // After one step from zero state m = (1−β1)·g·c, v = (1−β2)·(g·c)².
  const gs = Float64Array.from(host[k], (g) => g * coef);
  assertClose("m", await m.download(), gs.map((g) => 0.1 * g), 1e-5);
  assertClose("v", await v.download(), gs.map((g) => 0.001 * g * g), 1e-5);
  for (const t of [...tensors, partials, out, p, m, v]) t.destroy();
});

gpuTest("gradNormClip: bad arguments name the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const g = createTensor(gpu, [SUM_SQUARES_PER_SLOT + 1], "f32", "g");
  const small = createTensor(gpu, [1], "f32", "scratch");
  const out = createTensor(gpu, [2], "f32", "out");
  const out3 = createTensor(gpu, [3], "f32", "out3");
  const ints = createTensor(gpu, [4], "i32", "ints");
  assertThrows(
    () => gradNormClip(rec, { grads: [g], partials: small, maxNorm: 1, out }),
    GpuError,
    'gradNormClip: partials ("scratch") has 1 elements, these grads need 2',
  );
  assertThrows(
    () => gradNormClip(rec, { grads: [g], partials: out3, maxNorm: 1, out: out3 }),
    GpuError,
    'gradNormClip: out ("out3") has shape [3], expected [2]',
  );
  assertThrows(
    () => gradNormClip(rec, { grads: [g, ints], partials: out3, maxNorm: 1, out }),
    GpuError,
    'gradNormClip: grads[1] ("ints") is i32',
  );
  assertThrows(
    () => gradNormClip(rec, { grads: [g], partials: out3, maxNorm: -1, out }),
    GpuError,
    "gradNormClip: maxNorm",
  );
  assertEquals(rec.length, 0);
  for (const t of [g, small, out, out3, ints]) t.destroy();
});

gpuTest(
  "gradNormClip: a gradient larger than one storage binding is reduced in slices",
  async (gpu) => {
    const n = beyondOneBinding(gpu);
    if (n === null) return;
    const host = slicedValues(n);
    const g = tensorFromArray(gpu, host, [n], "huge grad");
    const { out, launches } = await run(gpu, [g], 0);
    assertEquals(launches, 3, "two slices and the finish");
    const expected = referenceNorm([host]);
    // The last 4099 elements (the second slice) are 100× larger, so a lost slice would show.
    const err = relErr(out[0], expected);
    assert(err <= normBound(n), `norm ${out[0]} vs ${expected}: relative error ${err}`);
    g.destroy();
  },
);

gpuTest(
  "gradNormClip: a binding too small for one slice is an error, not an endless loop",
  (gpu) => {
    // A limit below any adapter's (WebGPU guarantees 128 MiB), as a test may set: slices of 0
    // elements cut a range forever, until the heap ran out.
    const small = withLimits(gpu, { maxStorageBufferBindingSize: 40000 });
    assertThrows(
      () => gradNormPartialsLength(small, [createTensor(gpu, [100], "f32", "g")]),
      GpuError,
      "a storage binding of 40000 bytes holds no slice of 16384 elements",
    );
  },
);
