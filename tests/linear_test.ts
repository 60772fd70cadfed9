import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { refGelu, refGeluGrad } from "./gelu_reference.ts";
import { gpuTest, outputTensor } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { linearBackward, linearForward, SUM_BLOCK_ROWS } from "../kernels/linear.ts";
import { Recorder } from "../kernels/recorder.ts";
import { isF16MathVariant } from "../kernels/matmul.ts";
import { matmulVariantsUsed } from "../kernels/matmul_autotune.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

// Float64 references. x: [rows, in], w: [out, in], b: [out], g = dY: [rows, out].

function refForward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  rows: number,
  inF: number,
  outF: number,
): Float64Array {
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w[o * inF + i];
      y[r * outF + o] = s;
    }
  }
  return y;
}

function refBackward(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  g: ArrayLike<number>,
  rows: number,
  inF: number,
  outF: number,
): { dX: Float64Array; dW: Float64Array; dB: Float64Array } {
  const dX = new Float64Array(rows * inF);
  const dW = new Float64Array(outF * inF);
  const dB = new Float64Array(outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      const gv = g[r * outF + o];
      dB[o] += gv;
      for (let i = 0; i < inF; i++) {
        dX[r * inF + i] += gv * w[o * inF + i];
        dW[o * inF + i] += gv * x[r * inF + i];
      }
    }
  }
  return { dX, dW, dB };
}

const f32 = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
const add = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Float64Array.from(a, (v, i) => v + b[i]);
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Input shapes [..., in] with their out features: odd sizes, k (= in, or rows for dW) not a multiple of 16. */
const SHAPES: { xShape: number[]; outF: number }[] = [
  { xShape: [2, 7, 33], outF: 130 },
  { xShape: [130, 17], outF: 7 },
  { xShape: [1, 130], outF: 1 },
  { xShape: [33, 5], outF: 33 },
  { xShape: [7], outF: 65 },
];

gpuTest("linear: forward with and without bias at odd shapes", async (gpu) => {
  for (const [s, { xShape, outF }] of SHAPES.entries()) {
    const inF = xShape[xShape.length - 1];
    const rows = numel(xShape) / inF;
    const hx = f32(rows * inF, 10 * s),
      hw = f32(outF * inF, 10 * s + 1),
      hb = f32(outF, 10 * s + 2);
    const x = tensorFromArray(gpu, hx, xShape, "x");
    const w = tensorFromArray(gpu, hw, [outF, inF], "w");
    const b = tensorFromArray(gpu, hb, [outF], "b");
    const outShape = [...xShape.slice(0, -1), outF];
    const y1 = createTensor(gpu, outShape, "f32", "y1");
    const y2 = createTensor(gpu, outShape, "f32", "y2");
    const rec = new Recorder(gpu);
    fill(rec, y1, NaN);
    fill(rec, y2, NaN);
    linearForward(rec, { x, weight: w, bias: b, out: y1 });
    linearForward(rec, { x, weight: w, out: y2 });
    await rec.submit();
    assertClose(`y+b ${xShape}`, await y1.download(), refForward(hx, hw, hb, rows, inF, outF));
    assertClose(`y ${xShape}`, await y2.download(), refForward(hx, hw, null, rows, inF, outF));
    for (const t of [x, w, b, y1, y2]) t.destroy();
  }
});

gpuTest(
  "linear: GELU in the forward's epilogue, with and without the pre-activation",
  async (gpu) => {
    for (const [s, { xShape, outF }] of SHAPES.entries()) {
      const inF = xShape[xShape.length - 1];
      const rows = numel(xShape) / inF;
      // Inputs scaled so that the pre-activations cover GELU's curved part and both tails.
      const hx = f32(rows * inF, 10 * s + 700).map((v) => 2 * v),
        hw = f32(outF * inF, 10 * s + 701),
        hb = f32(outF, 10 * s + 702);
      const x = tensorFromArray(gpu, hx, xShape, "x");
      const w = tensorFromArray(gpu, hw, [outF, inF], "w");
      const b = tensorFromArray(gpu, hb, [outF], "b");
      const outShape = [...xShape.slice(0, -1), outF];
      const rec = new Recorder(gpu);
      const y1 = outputTensor(rec, outShape, "y1");
      const pre = outputTensor(rec, outShape, "pre");
      const y2 = outputTensor(rec, outShape, "y2");
      linearForward(rec, {
        x,
        weight: w,
        bias: b,
        out: y1,
        activation: "gelu",
        preActivation: pre,
      });
      linearForward(rec, { x, weight: w, out: y2, activation: "gelu" });
      await rec.submit();
      const withBias = refForward(hx, hw, hb, rows, inF, outF);
      const noBias = refForward(hx, hw, null, rows, inF, outF);
      // Rounded to float32: far in the negative tail gelu is below float32's range (0 there).
      const gelu32 = (v: number) => Math.fround(refGelu(v));
      assertClose(`pre ${xShape}`, await pre.download(), withBias);
      assertClose(`gelu(y+b) ${xShape}`, await y1.download(), withBias.map(gelu32));
      assertClose(`gelu(y) ${xShape}`, await y2.download(), noBias.map(gelu32));
      for (const t of [x, w, b, y1, y2, pre]) t.destroy();
    }
  },
);

gpuTest("linear: GELU's derivative in the epilogue of the backward's dX", async (gpu) => {
  for (const [s, { xShape, outF }] of SHAPES.entries()) {
    const inF = xShape[xShape.length - 1];
    const rows = numel(xShape) / inF;
    const lead = xShape.slice(0, -1);
    // x = gelu(u): dX is the gradient with respect to u.
    const hu = f32(rows * inF, 10 * s + 800).map((v) => 3 * v);
    const hx = Float32Array.from(hu, refGelu);
    const hw = f32(outF * inF, 10 * s + 801), hg = f32(rows * outF, 10 * s + 802);
    const u = tensorFromArray(gpu, hu, xShape, "u");
    const x = tensorFromArray(gpu, hx, xShape, "x");
    const w = tensorFromArray(gpu, hw, [outF, inF], "w");
    const g = tensorFromArray(gpu, hg, [...lead, outF], "dY");
    const rec = new Recorder(gpu);
    const dU = outputTensor(rec, xShape, "dU");
    const dW = outputTensor(rec, [outF, inF], "dW");
    const dB = outputTensor(rec, [outF], "dB");
    linearBackward(rec, { x, weight: w, dOut: g, dX: dU, dWeight: dW, dBias: dB, geluInput: u });
    await rec.submit();
    const ref = refBackward(hx, hw, hg, rows, inF, outF);
    const want = ref.dX.map((v, i) => v * refGeluGrad(hu[i]));
    assertClose(`dU ${xShape}`, await dU.download(), want);
    assertClose(`dW ${xShape}`, await dW.download(), ref.dW);
    assertClose(`dB ${xShape}`, await dB.download(), ref.dB);
    for (const t of [u, x, w, g, dU, dW, dB]) t.destroy();
  }
});

/** Runs linearBackward with the given outputs requested; returns the downloads. */
async function runBackward(
  gpu: Gpu,
  xShape: number[],
  outF: number,
  seed: number,
  want: { dX: boolean; dW: boolean; dB: boolean },
  initial: { dX?: Float32Array; dW?: Float32Array; dB?: Float32Array },
  flags: { accumulate?: boolean; accumulateDX?: boolean },
) {
  const inF = xShape[xShape.length - 1];
  const rows = numel(xShape) / inF;
  const lead = xShape.slice(0, -1);
  const hx = f32(rows * inF, seed), hw = f32(outF * inF, seed + 1), hg = f32(rows * outF, seed + 2);
  const x = tensorFromArray(gpu, hx, xShape, "x");
  const w = tensorFromArray(gpu, hw, [outF, inF], "w");
  const g = tensorFromArray(gpu, hg, [...lead, outF], "dY");
  const rec = new Recorder(gpu);
  const dX = want.dX ? outputTensor(rec, xShape, "dX", initial.dX) : undefined;
  const dW = want.dW ? outputTensor(rec, [outF, inF], "dW", initial.dW) : undefined;
  const dB = want.dB ? outputTensor(rec, [outF], "dB", initial.dB) : undefined;
  const before = rec.length;
  linearBackward(rec, { x, weight: w, dOut: g, dX, dWeight: dW, dBias: dB, ...flags });
  const launched = rec.labels.slice(before);
  await rec.submit();
  const result = {
    ref: refBackward(hx, hw, hg, rows, inF, outF),
    dX: dX && await dX.download(),
    dW: dW && await dW.download(),
    dB: dB && await dB.download(),
    launched,
  };
  for (const t of [x, w, g, dX, dW, dB]) t?.destroy();
  return result;
}

gpuTest("linear: backward gives dX, dW and db at odd shapes (outputs poisoned)", async (gpu) => {
  for (const [s, { xShape, outF }] of SHAPES.entries()) {
    const all = { dX: true, dW: true, dB: true };
    const r = await runBackward(gpu, xShape, outF, 100 + 10 * s, all, {}, {});
    assertClose(`dX ${xShape}`, r.dX!, r.ref.dX);
    assertClose(`dW ${xShape}`, r.dW!, r.ref.dW);
    assertClose(`dB ${xShape}`, r.dB!, r.ref.dB);
  }
});

gpuTest(
  "linear: backward computes only what is asked, overwriting or accumulating",
  async (gpu) => {
    const xShape = [3, 11, 19], outF = 33, inF = 19, rows = 33;
    const initDX = f32(rows * inF, 901), initDW = f32(outF * inF, 902), initDB = f32(outF, 903);
    // Frozen weight and bias: only dX, accumulated into the residual stream's gradient.
    let r = await runBackward(gpu, xShape, outF, 200, { dX: true, dW: false, dB: false }, {
      dX: initDX,
    }, { accumulateDX: true, accumulate: false });
    assertEquals(r.launched, ["linearBackward (dX)"]);
    assertClose("dX accumulated", r.dX!, add(r.ref.dX, initDX));
    // First layer: no dX; parameter gradients accumulated (gradient accumulation over batches).
    r = await runBackward(gpu, xShape, outF, 210, { dX: false, dW: true, dB: true }, {
      dW: initDW,
      dB: initDB,
    }, { accumulate: true });
    assertEquals(r.launched, ["linearBackward (dWeight)", "linearBackward (dBias)"]);
    assertClose("dW accumulated", r.dW!, add(r.ref.dW, initDW));
    assertClose("dB accumulated", r.dB!, add(r.ref.dB, initDB));
    // accumulate and accumulateDX are independent.
    r = await runBackward(gpu, xShape, outF, 220, { dX: true, dW: true, dB: true }, {
      dX: initDX,
    }, { accumulateDX: true, accumulate: false });
    assertClose("dX accumulated (2)", r.dX!, add(r.ref.dX, initDX));
    assertClose("dW overwritten", r.dW!, r.ref.dW);
    assertClose("dB overwritten", r.dB!, r.ref.dB);
    r = await runBackward(gpu, xShape, outF, 230, { dX: true, dW: true, dB: false }, {
      dW: initDW,
    }, { accumulateDX: false, accumulate: true });
    assertEquals(r.launched.length, 2);
    assertClose("dX overwritten", r.dX!, r.ref.dX);
    assertClose("dW accumulated (2)", r.dW!, add(r.ref.dW, initDW));
  },
);

gpuTest("linear: parameter gradients summed over many rows", async (gpu) => {
  // 1037 rows: dW and db are float32 sums of 1037 terms (db in 4 interleaved slices). The
  // rounding error, ~eps·sqrt(rows) times the partial sums, stays within the usual 1e-5 bound.
  const r = await runBackward(gpu, [1037, 7], 33, 300, { dX: true, dW: true, dB: true }, {}, {});
  assertClose("dX", r.dX!, r.ref.dX);
  assertClose("dW (1037 rows)", r.dW!, r.ref.dW);
  assertClose("dB (1037 rows)", r.dB!, r.ref.dB);
  // From 2·SUM_BLOCK_ROWS rows on db is two passes (blocks of rows, then the blocks): a partial
  // last block, two column groups, accumulated onto what was there.
  const rows = 2 * SUM_BLOCK_ROWS + 29, outF = 70;
  const initDB = f32(outF, 310);
  const s = await runBackward(gpu, [rows, 5], outF, 320, { dX: false, dW: false, dB: true }, {
    dB: initDB,
  }, { accumulate: true });
  assertEquals(s.launched, ["linearBackward (dBias) blocks", "linearBackward (dBias)"]);
  assertClose(`dB (${rows} rows, accumulated)`, s.dB!, add(s.ref.dB, initDB));
});

gpuTest("linear: accumulating two-pass bias gradients twice in a row", async (gpu) => {
  // Only the pass over the blocks adds into dB: the blocks pass overwrites its workspace, which
  // every call shares, so that a second call does not add onto the first one's block sums.
  const rows = 2 * SUM_BLOCK_ROWS + 29, outF = 70;
  const initDB = f32(outF, 330);
  for (let run = 0; run < 2; run++) {
    const s = await runBackward(gpu, [rows, 5], outF, 340, { dX: false, dW: false, dB: true }, {
      dB: initDB,
    }, { accumulate: true });
    assertClose(`dB (run ${run})`, s.dB!, add(s.ref.dB, initDB));
  }
});

gpuTest(
  "linear: the bias gradient is the documented fixed-order float32 sum, bitwise",
  async (gpu) => {
    // kernels/linear.ts's column sum: 4 interleaved slices of each block of rows (all rows below
    // 2·SUM_BLOCK_ROWS), each added in increasing row order in float32, then the slices in order;
    // from 2·SUM_BLOCK_ROWS rows on the same again over the blocks' sums. Loading several rows
    // before adding them must not change that order: db is compared bit for bit with it, at sizes
    // whose slices end inside an unrolled batch. Magnitudes spread over e^±3 so that another order
    // would round differently.
    const SLICES = 4;
    const f32Sum = (v: ArrayLike<number>, rows: number, cols: number, blockRows: number) => {
      const blocks = Math.ceil(rows / blockRows);
      const out = new Float32Array(blocks * cols);
      for (let b = 0; b < blocks; b++) {
        const end = Math.min(rows, (b + 1) * blockRows);
        for (let c = 0; c < cols; c++) {
          let t = 0;
          for (let q = 0; q < SLICES; q++) {
            let s = 0;
            for (let r = b * blockRows + q; r < end; r += SLICES) {
              s = Math.fround(
                s + v[r * cols + c],
              );
            }
            t = Math.fround(t + s);
          }
          out[b * cols + c] = t;
        }
      }
      return out;
    };
    const inF = 3, outF = 70;
    for (const [s, rows] of [61, 2 * SUM_BLOCK_ROWS - 1, 2 * SUM_BLOCK_ROWS + 45, 1037].entries()) {
      const g = Float32Array.from(
        randomValues(rows * outF, 900 + s),
        (v, i) => v * Math.exp(3 * Math.sin(i)),
      );
      const blocks = Math.ceil(rows / SUM_BLOCK_ROWS);
      const want = rows < 2 * SUM_BLOCK_ROWS
        ? f32Sum(g, rows, outF, rows)
        : f32Sum(f32Sum(g, rows, outF, SUM_BLOCK_ROWS), blocks, outF, blocks);
      const x = tensorFromArray(gpu, f32(rows * inF, 910 + s), [rows, inF], "x");
      const w = tensorFromArray(gpu, f32(outF * inF, 920 + s), [outF, inF], "w");
      const dY = tensorFromArray(gpu, g, [rows, outF], "dY");
      const rec = new Recorder(gpu);
      const dB = outputTensor(rec, [outF], "dB");
      linearBackward(rec, { x, weight: w, dOut: dY, dBias: dB });
      await rec.submit();
      assertEquals(await dB.download(), want, `db (${rows} rows)`);
      for (const t of [x, w, dY, dB]) t.destroy();
    }
  },
);

gpuTest(
  "linear: f16 dY's bias gradient (linear_column_sum_f16), one pass and two, against float64",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    // x and dY stored in f16 (dW and db f32, as linearBackward requires). The kernel loads each
    // f16 exactly into f32 and sums in f32, and the reference sums the same f16 values in float64,
    // so f16 storage adds no error of its own: what remains is the f32 sums' rounding, as for f32
    // inputs, and the usual 1e-5 bound holds (a slice adds at most 128 terms in order here,
    // ~128 · 2^-24 of the terms' size in the worst case, far less in practice). The same values
    // in f32 go through the f32 kernel in the same order: db must be bitwise that.
    // 511 rows: one pass (below 2·SUM_BLOCK_ROWS); 513: two, 3 blocks the last of 1 row; 1037:
    // 5 blocks the last of 13. 70 columns: two workgroups of 64 columns, the second partial.
    const inF = 5, outF = 70;
    for (const [s, rows] of [2 * SUM_BLOCK_ROWS - 1, 2 * SUM_BLOCK_ROWS + 1, 1037].entries()) {
      const hx = Float16Array.from(randomValues(rows * inF, 600 + 10 * s));
      const hg = Float16Array.from(randomValues(rows * outF, 601 + 10 * s));
      const w = tensorFromArray(gpu, f32(outF * inF, 602 + 10 * s), [outF, inF], "w");
      const x = tensorFromArray(gpu, hx, [rows, inF], "x f16");
      const g16 = tensorFromArray(gpu, hg, [rows, outF], "dY f16");
      const g32 = tensorFromArray(gpu, Float32Array.from(hg), [rows, outF], "dY f32");
      assertEquals([x.dtype, g16.dtype, g32.dtype], ["f16", "f16", "f32"]);
      const rec = new Recorder(gpu);
      const dW = outputTensor(rec, [outF, inF], "dW");
      const dB = outputTensor(rec, [outF], "dB");
      const dB32 = outputTensor(rec, [outF], "dB from f32");
      const before = rec.length;
      linearBackward(rec, { x, weight: w, dOut: g16, dWeight: dW, dBias: dB });
      const launched = rec.labels.slice(before);
      linearBackward(rec, { x, weight: w, dOut: g32, dBias: dB32 });
      await rec.submit();
      const ref = refBackward(hx, new Float64Array(outF * inF), hg, rows, inF, outF);
      const got = await dB.download();
      assertEquals(
        launched.filter((l) => l.startsWith("linearBackward (dBias)")),
        rows < 2 * SUM_BLOCK_ROWS
          ? ["linearBackward (dBias)"]
          : ["linearBackward (dBias) blocks", "linearBackward (dBias)"],
      );
      assertClose(`dB f16 (${rows} rows)`, got, ref.dB);
      assertClose(`dW f16 (${rows} rows)`, await dW.download(), ref.dW);
      assertEquals(got, await dB32.download(), `dB f16 against f32 (${rows} rows)`);
      for (const t of [w, x, g16, g32, dW, dB, dB32]) t.destroy();
    }
  },
);

gpuTest("linear: the float64 reference backward matches finite differences", () => {
  const rows = 3, inF = 5, outF = 4;
  const x = randomValues(rows * inF, 401);
  const w = randomValues(outF * inF, 402);
  const b = randomValues(outF, 403);
  const g = randomValues(rows * outF, 404);
  // Scalar loss L = Σ Y ⊙ G, so dL/dY = G.
  const loss = (xv: Float64Array, wv: Float64Array, bv: Float64Array) =>
    refForward(xv, wv, bv, rows, inF, outF).reduce((s, y, i) => s + y * g[i], 0);
  const ref = refBackward(x, w, g, rows, inF, outF);
  const fdX = finiteDifferences((v) => loss(v, w, b), x);
  const fdW = finiteDifferences((v) => loss(x, v, b), w);
  const fdB = finiteDifferences((v) => loss(x, w, v), b);
  assertClose("dX vs finite differences", ref.dX, fdX, 1e-6);
  assertClose("dW vs finite differences", ref.dW, fdW, 1e-6);
  assertClose("dB vs finite differences", ref.dB, fdB, 1e-6);
});

gpuTest("linear: two runs of forward and backward are bitwise identical", async (gpu) => {
  const rows = 517, inF = 33, outF = 70;
  const x = tensorFromArray(gpu, f32(rows * inF, 501), [rows, inF], "x");
  const w = tensorFromArray(gpu, f32(outF * inF, 502), [outF, inF], "w");
  const b = tensorFromArray(gpu, f32(outF, 503), [outF], "b");
  const g = tensorFromArray(gpu, f32(rows * outF, 504), [rows, outF], "dY");
  const runs: (Float32Array | Float16Array | Int32Array | Uint32Array)[][] = [];
  for (let run = 0; run < 2; run++) {
    const y = createTensor(gpu, [rows, outF], "f32", "y");
    const dX = createTensor(gpu, [rows, inF], "f32", "dX");
    const dW = createTensor(gpu, [outF, inF], "f32", "dW");
    const dB = createTensor(gpu, [outF], "f32", "dB");
    const rec = new Recorder(gpu);
    for (const t of [y, dX, dW, dB]) fill(rec, t, NaN);
    linearForward(rec, { x, weight: w, bias: b, out: y });
    linearBackward(rec, { x, weight: w, dOut: g, dX, dWeight: dW, dBias: dB });
    await rec.submit();
    runs.push([await y.download(), await dX.download(), await dW.download(), await dB.download()]);
    for (const t of [y, dX, dW, dB]) t.destroy();
  }
  assertEquals(runs[0], runs[1]);
  assert(runs[0].every((a) => a.every(Number.isFinite)));
  for (const t of [x, w, b, g]) t.destroy();
});

gpuTest("linear: mismatched shapes throw a GpuError naming the op and tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const t = (shape: number[], label: string) => createTensor(gpu, shape, "f32", label);
  const x = t([2, 7, 5], "x"), w = t([3, 5], "w"), y = t([2, 7, 3], "y");
  assertThrows(
    () => linearForward(rec, { x: t([2, 7, 6], "x6"), weight: w, out: y }),
    GpuError,
    'linearForward: x ("x6") has shape [2, 7, 6], expected [2, 7, 5]',
  );
  assertThrows(
    () => linearForward(rec, { x, weight: w, out: t([14, 3], "flat") }),
    GpuError,
    'linearForward: out ("flat")',
  );
  assertThrows(
    () => linearForward(rec, { x, weight: w, bias: t([5], "b5"), out: y }),
    GpuError,
    'linearForward: bias ("b5")',
  );
  assertThrows(
    () => linearBackward(rec, { x, weight: w, dOut: y, dWeight: t([5, 3], "dWt") }),
    GpuError,
    'linearBackward: dWeight ("dWt")',
  );
  assertThrows(
    () => linearBackward(rec, { x, weight: w, dOut: t([2, 7, 4], "g4") }),
    GpuError,
    'linearBackward: dOut ("g4")',
  );
  assertThrows(
    () => linearBackward(rec, { x, weight: w, dOut: y, dX: t([2, 7, 3], "dXbad") }),
    GpuError,
    'linearBackward: dX ("dXbad")',
  );
  assertThrows(
    () => linearForward(rec, { x, weight: createTensor(gpu, [3, 5], "i32", "wi"), out: y }),
    GpuError,
    'linearForward: weight ("wi") is i32, expected f32 or f16',
  );
  assertThrows(
    () => linearForward(rec, { x, weight: w, out: y, preActivation: t([2, 7, 3], "pre") }),
    GpuError,
    'linearForward: preActivation ("pre") given without an activation',
  );
  assertThrows(
    () =>
      linearForward(rec, {
        x,
        weight: w,
        out: y,
        activation: "gelu",
        preActivation: t([2, 7, 4], "pre4"),
      }),
    GpuError,
    'linearForward: preActivation ("pre4")',
  );
  assertThrows(
    () => linearForward(rec, { x, weight: w, out: y, activation: "tanh" as "gelu" }),
    GpuError,
    'linearForward: unknown activation "tanh"',
  );
  const dX = t([2, 7, 5], "dX");
  assertThrows(
    () => linearBackward(rec, { x, weight: w, dOut: y, dX, geluInput: t([2, 7, 4], "u4") }),
    GpuError,
    'linearBackward: geluInput ("u4")',
  );
  assertThrows(
    () => linearBackward(rec, { x, weight: w, dOut: y, geluInput: t([2, 7, 5], "u") }),
    GpuError,
    'linearBackward: geluInput ("u") given without dX',
  );
  assertThrows(
    () =>
      linearBackward(rec, {
        x,
        weight: w,
        dOut: y,
        dX,
        accumulateDX: true,
        geluInput: t([2, 7, 5], "u"),
      }),
    GpuError,
    "linearBackward: geluInput cannot be used with accumulateDX",
  );
  // Outputs written by different products of one call: WebGPU cannot see them meet.
  const square = t([5, 5], "square"), xs = t([5, 5], "xs"), ds = t([5, 5], "ds");
  assertThrows(
    () => linearBackward(rec, { x: xs, weight: square, dOut: ds, dX: ds, dWeight: ds }),
    GpuError,
    'linearBackward: dX ("ds") shares GPU memory with dWeight ("ds")',
  );
  assertThrows(
    () => linearBackward(rec, { x: xs, weight: square, dOut: ds, dX: xs }),
    GpuError,
    'linearBackward: dX ("xs") shares GPU memory with x ("xs")',
  );
  assertEquals(rec.length, 0);
});

gpuTest("linear f16Math: forward, dX and dW all multiply in f16, f32 operands too", (gpu) => {
  // A LayerNorm's f32 output times an f16 weight copy, an f32 residual gradient: all three
  // products take the f16-arithmetic kernels (which round f32 operands as they read them).
  const x = createTensor(gpu, [64, 32], "f32", "x");
  const w = createTensor(gpu, [48, 32], "f16", "w");
  const out = createTensor(gpu, [64, 48], "f32", "out");
  const dX = createTensor(gpu, [64, 32], "f32", "dX");
  const dW = createTensor(gpu, [48, 32], "f32", "dW");
  for (const f16Math of [true, false]) {
    const used = matmulVariantsUsed(gpu, (rec) => {
      linearForward(rec, { x, weight: w, out, f16Math });
      linearBackward(rec, { x, weight: w, dOut: out, dX, dWeight: dW, f16Math });
    });
    assertEquals(used.length, 3);
    assertEquals(used.map((v) => isF16MathVariant(v)), [f16Math, f16Math, f16Math]);
  }
  for (const t of [x, w, out, dX, dW]) t.destroy();
});
