import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { finiteDifference, randomValues, rng } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import {
  firstTokenBackward,
  firstTokenForward,
  wicPoolBackward,
  wicPoolForward,
} from "../kernels/pooling.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Float64 references. The forward sums are at most S float32 terms, well inside 1e-5.

function refFirstToken(hidden: ArrayLike<number>, B: number, S: number, H: number): Float64Array {
  const out = new Float64Array(B * H);
  for (let b = 0; b < B; b++) for (let c = 0; c < H; c++) out[b * H + c] = hidden[b * S * H + c];
  return out;
}

function refFirstTokenBackward(dOut: ArrayLike<number>, B: number, S: number, H: number) {
  const d = new Float64Array(B * S * H);
  for (let b = 0; b < B; b++) for (let c = 0; c < H; c++) d[b * S * H + c] = dOut[b * H + c];
  return d;
}

/** [start, end) clamped as the kernel does. */
function clampSpan(start: number, end: number, S: number): [number, number] {
  const s = Math.min(start, S);
  return [s, Math.min(Math.max(end, s), S)];
}

function spanMean(
  hidden: ArrayLike<number>,
  b: number,
  c: number,
  span: [number, number],
  S: number,
  H: number,
): number {
  const n = span[1] - span[0];
  if (n === 0) return 0;
  let s = 0;
  for (let t = span[0]; t < span[1]; t++) s += hidden[(b * S + t) * H + c];
  return s / n;
}

function refWic(
  hidden: ArrayLike<number>,
  spans: ArrayLike<number>,
  B: number,
  S: number,
  H: number,
): Float64Array {
  const out = new Float64Array(B * 5 * H);
  for (let b = 0; b < B; b++) {
    const s1 = clampSpan(spans[4 * b], spans[4 * b + 1], S);
    const s2 = clampSpan(spans[4 * b + 2], spans[4 * b + 3], S);
    for (let c = 0; c < H; c++) {
      const w1 = spanMean(hidden, b, c, s1, S, H);
      const w2 = spanMean(hidden, b, c, s2, S, H);
      const o = b * 5 * H + c;
      out[o] = hidden[b * S * H + c];
      out[o + H] = w1;
      out[o + 2 * H] = w2;
      out[o + 3 * H] = Math.abs(w1 - w2);
      out[o + 4 * H] = w1 * w2;
    }
  }
  return out;
}

function refWicBackward(
  hidden: ArrayLike<number>,
  spans: ArrayLike<number>,
  dOut: ArrayLike<number>,
  B: number,
  S: number,
  H: number,
): Float64Array {
  const d = new Float64Array(B * S * H);
  for (let b = 0; b < B; b++) {
    const s1 = clampSpan(spans[4 * b], spans[4 * b + 1], S);
    const s2 = clampSpan(spans[4 * b + 2], spans[4 * b + 3], S);
    for (let c = 0; c < H; c++) {
      const o = b * 5 * H + c;
      d[b * S * H + c] += dOut[o];
      const w1 = spanMean(hidden, b, c, s1, S, H);
      const w2 = spanMean(hidden, b, c, s2, S, H);
      const dAbs = Math.sign(w1 - w2) * dOut[o + 3 * H];
      const dw1 = dOut[o + H] + dAbs + w2 * dOut[o + 4 * H];
      const dw2 = dOut[o + 2 * H] - dAbs + w1 * dOut[o + 4 * H];
      for (let t = s1[0]; t < s1[1]; t++) d[(b * S + t) * H + c] += dw1 / (s1[1] - s1[0]);
      for (let t = s2[0]; t < s2[1]; t++) d[(b * S + t) * H + c] += dw2 / (s2[1] - s2[0]);
    }
  }
  return d;
}

/** Random non-empty spans inside [0, S): some of length 1, some reaching the end, some overlapping. */
function randomSpans(B: number, S: number, seed: number): Uint32Array {
  const next = rng(seed);
  const spans = new Uint32Array(4 * B);
  for (let b = 0; b < B; b++) {
    for (let k = 0; k < 2; k++) {
      const start = Math.floor(next() * S);
      const end = b % 3 === 1 ? S : start + 1 + Math.floor(next() * Math.min(4, S - start));
      spans[4 * b + 2 * k] = start;
      spans[4 * b + 2 * k + 1] = Math.min(end, S);
    }
  }
  return spans;
}

interface Run {
  out: Float32Array;
  dHidden: Float32Array;
}

async function runFirstToken(
  gpu: Gpu,
  hidden: Float32Array,
  dOut: Float32Array,
  shape: [number, number, number],
): Promise<Run> {
  const [B, , H] = shape;
  const h = tensorFromArray(gpu, hidden, shape, "hidden");
  const d = tensorFromArray(gpu, dOut, [B, H], "dOut");
  const out = createTensor(gpu, [B, H], "f32", "out");
  const dHidden = createTensor(gpu, shape, "f32", "dHidden");
  const rec = new Recorder(gpu);
  fill(rec, out, NaN);
  fill(rec, dHidden, NaN);
  firstTokenForward(rec, { hidden: h, out });
  firstTokenBackward(rec, { dOut: d, dHidden });
  await rec.submit();
  const run = {
    out: await out.download() as Float32Array,
    dHidden: await dHidden.download() as Float32Array,
  };
  for (const t of [h, d, out, dHidden]) t.destroy();
  return run;
}

async function runWic(
  gpu: Gpu,
  hidden: Float32Array,
  spans: Uint32Array,
  dOut: Float32Array,
  shape: [number, number, number],
): Promise<Run> {
  const [B, , H] = shape;
  const h = tensorFromArray(gpu, hidden, shape, "hidden");
  const sp = tensorFromArray(gpu, spans, [B, 4], "spans");
  const d = tensorFromArray(gpu, dOut, [B, 5 * H], "dOut");
  const out = createTensor(gpu, [B, 5 * H], "f32", "out");
  const dHidden = createTensor(gpu, shape, "f32", "dHidden");
  const rec = new Recorder(gpu);
  fill(rec, out, NaN);
  fill(rec, dHidden, NaN);
  wicPoolForward(rec, { hidden: h, spans: sp, out });
  wicPoolBackward(rec, { pooled: out, spans: sp, dOut: d, dHidden });
  await rec.submit();
  const run = {
    out: await out.download() as Float32Array,
    dHidden: await dHidden.download() as Float32Array,
  };
  for (const t of [h, sp, d, out, dHidden]) t.destroy();
  return run;
}

const SHAPES: [number, number, number][] = [[1, 1, 1], [3, 7, 5], [2, 13, 33], [5, 9, 130]];

gpuTest("firstToken forward and backward match the reference at odd shapes", async (gpu) => {
  for (const [i, shape] of SHAPES.entries()) {
    const [B, S, H] = shape;
    const hidden = Float32Array.from(randomValues(B * S * H, 10 + i));
    const dOut = Float32Array.from(randomValues(B * H, 20 + i));
    const run = await runFirstToken(gpu, hidden, dOut, shape);
    // A gather and a scatter: exact.
    assertEquals(Array.from(run.out), Array.from(refFirstToken(hidden, B, S, H)), `out [${shape}]`);
    assertEquals(
      Array.from(run.dHidden),
      Array.from(refFirstTokenBackward(dOut, B, S, H)),
      `dHidden [${shape}]`,
    );
  }
});

gpuTest("wicPool forward and backward match the reference at odd shapes", async (gpu) => {
  for (const [i, shape] of SHAPES.entries()) {
    const [B, S, H] = shape;
    const hidden = Float32Array.from(randomValues(B * S * H, 30 + i));
    const spans = randomSpans(B, S, 40 + i);
    const dOut = Float32Array.from(randomValues(B * 5 * H, 50 + i));
    const run = await runWic(gpu, hidden, spans, dOut, shape);
    assertClose(`out [${shape}]`, run.out, refWic(hidden, spans, B, S, H), 1e-5);
    assertClose(
      `dHidden [${shape}]`,
      run.dHidden,
      refWicBackward(hidden, spans, dOut, B, S, H),
      1e-5,
    );
  }
});

gpuTest(
  "wicPool: spans past the sequence are clamped and an empty span pools to 0",
  async (gpu) => {
    const shape: [number, number, number] = [3, 6, 7];
    const [B, S, H] = shape;
    const hidden = Float32Array.from(randomValues(B * S * H, 61));
    // Row 0: end past S; row 1: an empty span and a start past S; row 2: both spans identical.
    const spans = Uint32Array.from([2, 99, 0, 1, 3, 3, 8, 9, 1, 4, 1, 4]);
    const dOut = Float32Array.from(randomValues(B * 5 * H, 62));
    const run = await runWic(gpu, hidden, spans, dOut, shape);
    const out = refWic(hidden, spans, B, S, H);
    assertClose("out", run.out, out, 1e-5);
    for (let c = 0; c < H; c++) {
      assertEquals(run.out[5 * H + H + c], 0, "empty span pools to 0");
      assertEquals(run.out[5 * H + 2 * H + c], 0, "span past the end pools to 0");
    }
    assertClose("dHidden", run.dHidden, refWicBackward(hidden, spans, dOut, B, S, H), 1e-5);
    assert(!run.dHidden.some(Number.isNaN));
  },
);

gpuTest("pooling: the float64 reference backwards match finite differences", () => {
  const [B, S, H] = [2, 5, 3];
  const hidden = randomValues(B * S * H, 71);
  const spans = Uint32Array.from([1, 3, 0, 5, 4, 5, 2, 4]);
  const dOutWic = randomValues(B * 5 * H, 72);
  const dOutFirst = randomValues(B * H, 73);
  const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i] * b[i];
    return s;
  };
  const wicLoss = (x: Float64Array) => dot(refWic(x, spans, B, S, H), dOutWic);
  const firstLoss = (x: Float64Array) => dot(refFirstToken(x, B, S, H), dOutFirst);
  const dWic = refWicBackward(hidden, spans, dOutWic, B, S, H);
  const dFirst = refFirstTokenBackward(dOutFirst, B, S, H);
  for (let i = 0; i < hidden.length; i++) {
    const fdWic = finiteDifference(wicLoss, hidden, i);
    const fdFirst = finiteDifference(firstLoss, hidden, i);
    assert(Math.abs(fdWic - dWic[i]) <= 1e-6 * (1 + Math.abs(dWic[i])), `wic fd at ${i}`);
    assert(Math.abs(fdFirst - dFirst[i]) <= 1e-6 * (1 + Math.abs(dFirst[i])), `first fd at ${i}`);
  }
});

gpuTest("pooling backwards add into dHidden with accumulate", async (gpu) => {
  const shape: [number, number, number] = [2, 7, 9];
  const [B, S, H] = shape;
  const hiddenData = Float32Array.from(randomValues(B * S * H, 81));
  const base = Float32Array.from(randomValues(B * S * H, 82));
  const spansData = randomSpans(B, S, 83);
  const dWicData = Float32Array.from(randomValues(B * 5 * H, 84));
  const dFirstData = Float32Array.from(randomValues(B * H, 85));
  const hidden = tensorFromArray(gpu, hiddenData, shape, "hidden");
  const spans = tensorFromArray(gpu, spansData, [B, 4], "spans");
  const pooled = createTensor(gpu, [B, 5 * H], "f32", "pooled");
  const dWic = tensorFromArray(gpu, dWicData, [B, 5 * H], "dWic");
  const dFirst = tensorFromArray(gpu, dFirstData, [B, H], "dFirst");
  const dHidden = tensorFromArray(gpu, base, shape, "dHidden");
  const rec = new Recorder(gpu);
  wicPoolForward(rec, { hidden, spans, out: pooled });
  wicPoolBackward(rec, { pooled, spans, dOut: dWic, dHidden, accumulate: true });
  firstTokenBackward(rec, { dOut: dFirst, dHidden, accumulate: true });
  await rec.submit();
  const want = refWicBackward(hiddenData, spansData, dWicData, B, S, H);
  const first = refFirstTokenBackward(dFirstData, B, S, H);
  for (let i = 0; i < want.length; i++) want[i] += base[i] + first[i];
  assertClose("dHidden", await dHidden.download() as Float32Array, want, 1e-5);
  for (const t of [hidden, spans, pooled, dWic, dFirst, dHidden]) t.destroy();
});

/** The same GPU, reporting `max` workgroups per grid dimension (forces 2-D grids). */
function withMaxWorkgroupsPerDimension(gpu: Gpu, max: number): Gpu {
  const limits = new Proxy(gpu.limits, {
    get: (target, key) =>
      key === "maxComputeWorkgroupsPerDimension" ? max : Reflect.get(target, key, target),
  });
  return Object.create(gpu, { limits: { value: limits } });
}

gpuTest("pooling: grids past the per-dimension limit spread over x and y", async (gpu) => {
  const shape: [number, number, number] = [5, 9, 130];
  const [B, S, H] = shape;
  const hidden = Float32Array.from(randomValues(B * S * H, 95));
  const spans = randomSpans(B, S, 96);
  const dOut = Float32Array.from(randomValues(B * 5 * H, 97));
  const dFirst = Float32Array.from(randomValues(B * H, 98));
  // 23 workgroups for the backward: a 5 × 5 grid with two past the end.
  const small = withMaxWorkgroupsPerDimension(gpu, 5);
  const wic = await runWic(small, hidden, spans, dOut, shape);
  assertClose("out", wic.out, refWic(hidden, spans, B, S, H), 1e-5);
  assertClose("dHidden", wic.dHidden, refWicBackward(hidden, spans, dOut, B, S, H), 1e-5);
  const first = await runFirstToken(small, hidden, dFirst, shape);
  assertEquals(Array.from(first.out), Array.from(refFirstToken(hidden, B, S, H)));
  assertEquals(Array.from(first.dHidden), Array.from(refFirstTokenBackward(dFirst, B, S, H)));
});

gpuTest("pooling: two runs give bitwise-identical outputs", async (gpu) => {
  const shape: [number, number, number] = [5, 9, 130];
  const [B, S, H] = shape;
  const hidden = Float32Array.from(randomValues(B * S * H, 91));
  const spans = randomSpans(B, S, 92);
  const dOut = Float32Array.from(randomValues(B * 5 * H, 93));
  const first = await runWic(gpu, hidden, spans, dOut, shape);
  const second = await runWic(gpu, hidden, spans, dOut, shape);
  assertEquals(first, second);
  const dFirst = Float32Array.from(randomValues(B * H, 94));
  assertEquals(
    await runFirstToken(gpu, hidden, dFirst, shape),
    await runFirstToken(gpu, hidden, dFirst, shape),
  );
});

gpuTest("pooling: wrong shapes are refused naming the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const t = (shape: number[], dtype: "f32" | "u32" = "f32"): Tensor =>
    createTensor(gpu, shape, dtype, `t[${shape}]`);
  const hidden = t([2, 3, 4]);
  assertThrows(
    () => firstTokenForward(rec, { hidden, out: t([2, 5]) }),
    GpuError,
    "firstTokenForward: out",
  );
  assertThrows(
    () => firstTokenBackward(rec, { dOut: t([3, 4]), dHidden: hidden }),
    GpuError,
    "firstTokenBackward: dOut",
  );
  assertThrows(
    () => wicPoolForward(rec, { hidden, spans: t([2, 4]), out: t([2, 20]) }),
    GpuError,
    "wicPoolForward: spans",
  );
  assertThrows(
    () => wicPoolForward(rec, { hidden, spans: t([2, 4], "u32"), out: t([2, 16]) }),
    GpuError,
    "wicPoolForward: out",
  );
  assertThrows(
    () =>
      wicPoolBackward(rec, {
        pooled: t([2, 20]),
        spans: t([2, 4], "u32"),
        dOut: t([2, 4]),
        dHidden: hidden,
      }),
    GpuError,
    "wicPoolBackward: dOut",
  );
  assertThrows(
    () => firstTokenForward(rec, { hidden: t([2, 0, 4]), out: t([2, 4]) }),
    GpuError,
    "no tokens",
  );
  assertEquals(rec.length, 0);
});
