import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { fill } from "../kernels/fill.ts";
import { LORA_SPLIT_ROWS, loraBackward, loraForward } from "../kernels/lora.ts";
import { THIN_TN_MAX } from "../kernels/thin_tn.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";

// Float64 references. x: [rows, in], a: [r, in], b: [out, r], g = dOut: [rows, out].

interface Dims {
  rows: number;
  inF: number;
  r: number;
  outF: number;
}

/** hidden = x·aᵀ; out = out0 + scale · hidden·bᵀ. */
function refForward(
  x: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  out0: ArrayLike<number>,
  scale: number,
  { rows, inF, r, outF }: Dims,
): { hidden: Float64Array; out: Float64Array } {
  const hidden = new Float64Array(rows * r);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let p = 0; p < inF; p++) s += x[i * inF + p] * a[j * inF + p];
      hidden[i * r + j] = s;
    }
  }
  const out = Float64Array.from(out0);
  for (let i = 0; i < rows; i++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let j = 0; j < r; j++) s += hidden[i * r + j] * b[o * r + j];
      out[i * outF + o] += scale * s;
    }
  }
  return { hidden, out };
}

function refBackward(
  x: ArrayLike<number>,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  g: ArrayLike<number>,
  scale: number,
  dims: Dims,
): { dX: Float64Array; dA: Float64Array; dB: Float64Array } {
  const { rows, inF, r, outF } = dims;
  const { hidden } = refForward(x, a, b, new Float64Array(rows * outF), scale, dims);
  const dH = new Float64Array(rows * r);
  const dB = new Float64Array(outF * r);
  for (let i = 0; i < rows; i++) {
    for (let o = 0; o < outF; o++) {
      const gv = scale * g[i * outF + o];
      for (let j = 0; j < r; j++) {
        dB[o * r + j] += gv * hidden[i * r + j];
        dH[i * r + j] += gv * b[o * r + j];
      }
    }
  }
  const dA = new Float64Array(r * inF);
  const dX = new Float64Array(rows * inF);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < r; j++) {
      for (let p = 0; p < inF; p++) {
        dA[j * inF + p] += dH[i * r + j] * x[i * inF + p];
        dX[i * inF + p] += dH[i * r + j] * a[j * inF + p];
      }
    }
  }
  return { dX, dA, dB };
}

const f32 = (n: number, seed: number) => Float32Array.from(randomValues(n, seed));
const add = (p: ArrayLike<number>, q: ArrayLike<number>) =>
  Float64Array.from(p, (v, i) => v + q[i]);
const numel = (shape: number[]) => shape.reduce((p, q) => p * q, 1);

const CASES: { xShape: number[]; r: number; outF: number; scale: number }[] = [
  { xShape: [2, 7, 33], r: 7, outF: 130, scale: 2 },
  { xShape: [130, 17], r: 1, outF: 7, scale: 0.5 },
  { xShape: [1, 130], r: 33, outF: 33, scale: 16 / 33 },
  { xShape: [33, 5], r: 8, outF: 1, scale: -1.25 },
];

function dimsOf(xShape: number[], r: number, outF: number): Dims {
  const inF = xShape[xShape.length - 1];
  return { rows: numel(xShape) / inF, inF, r, outF };
}

gpuTest("lora: forward adds the low-rank path into out and keeps hidden", async (gpu) => {
  for (const [s, { xShape, r, outF, scale }] of CASES.entries()) {
    const d = dimsOf(xShape, r, outF);
    const lead = xShape.slice(0, -1);
    const hx = f32(d.rows * d.inF, 10 * s), ha = f32(r * d.inF, 10 * s + 1);
    const hb = f32(outF * r, 10 * s + 2), hout = f32(d.rows * outF, 10 * s + 3);
    const x = tensorFromArray(gpu, hx, xShape, "x");
    const a = tensorFromArray(gpu, ha, [r, d.inF], "a");
    const b = tensorFromArray(gpu, hb, [outF, r], "b");
    const out = tensorFromArray(gpu, hout, [...lead, outF], "out");
    const hidden = createTensor(gpu, [d.rows, r], "f32", "hidden");
    const rec = new Recorder(gpu);
    fill(rec, hidden, NaN);
    loraForward(rec, { x, a, b, scale, hidden, out });
    await rec.submit();
    const ref = refForward(hx, ha, hb, hout, scale, d);
    assertClose(`hidden ${xShape} r=${r}`, await hidden.download(), ref.hidden);
    assertClose(`out ${xShape} r=${r}`, await out.download(), ref.out);
    for (const t of [x, a, b, out, hidden]) t.destroy();
  }
});

type Workspace = "module" | "own" | "hidden";

async function runBackward(
  gpu: Gpu,
  c: { xShape: number[]; r: number; outF: number; scale: number },
  seed: number,
  want: { dX: boolean; dA: boolean; dB: boolean },
  initial: { dX: Float32Array; dA?: Float32Array; dB?: Float32Array },
  accumulate: boolean,
  ws: Workspace,
) {
  const d = dimsOf(c.xShape, c.r, c.outF);
  const lead = c.xShape.slice(0, -1);
  const hx = f32(d.rows * d.inF, seed), ha = f32(c.r * d.inF, seed + 1);
  const hb = f32(c.outF * c.r, seed + 2), hg = f32(d.rows * c.outF, seed + 3);
  const ref = refBackward(hx, ha, hb, hg, c.scale, d);
  const x = tensorFromArray(gpu, hx, c.xShape, "x");
  const a = tensorFromArray(gpu, ha, [c.r, d.inF], "a");
  const b = tensorFromArray(gpu, hb, [c.outF, c.r], "b");
  const g = tensorFromArray(gpu, hg, [...lead, c.outF], "dOut");
  // hidden as the forward pass left it (float32, as the GPU computes it).
  const hidden = tensorFromArray(
    gpu,
    Float32Array.from(refForward(hx, ha, hb, new Float64Array(d.rows * c.outF), c.scale, d).hidden),
    [...lead, c.r],
    "hidden",
  );
  const rec = new Recorder(gpu);
  const dX = want.dX ? outputTensor(rec, c.xShape, "dX", initial.dX) : undefined;
  const dA = want.dA ? outputTensor(rec, [c.r, d.inF], "dA", initial.dA) : undefined;
  const dB = want.dB ? outputTensor(rec, [c.outF, c.r], "dB", initial.dB) : undefined;
  const dHidden = ws === "own"
    ? outputTensor(rec, [d.rows, c.r], "dHidden")
    : ws === "hidden"
    ? hidden
    : undefined;
  const before = rec.length;
  loraBackward(rec, { x, a, b, scale: c.scale, hidden, dOut: g, dX, dA, dB, accumulate, dHidden });
  const launched = rec.labels.slice(before);
  await rec.submit();
  const result = {
    ref,
    dX: dX && await dX.download(),
    dA: dA && await dA.download(),
    dB: dB && await dB.download(),
    launched,
  };
  for (const t of [x, a, b, g, hidden, dX, dA, dB, dHidden]) t?.destroy();
  return result;
}

gpuTest("lora: backward gives dA, dB (poisoned) and adds into dX at odd shapes", async (gpu) => {
  for (const [s, c] of CASES.entries()) {
    const d = dimsOf(c.xShape, c.r, c.outF);
    const initDX = f32(d.rows * d.inF, 700 + s);
    for (const ws of ["module", "own", "hidden"] as Workspace[]) {
      const r = await runBackward(
        gpu,
        c,
        100 + 10 * s,
        { dX: true, dA: true, dB: true },
        {
          dX: initDX,
        },
        false,
        ws,
      );
      const name = `${c.xShape} r=${c.r} workspace=${ws}`;
      assertClose(`dX ${name}`, r.dX!, add(r.ref.dX, initDX));
      assertClose(`dA ${name}`, r.dA!, r.ref.dA);
      assertClose(`dB ${name}`, r.dB!, r.ref.dB);
    }
  }
});

gpuTest(
  "lora: dA and dB over many token rows are summed in row blocks, exactly so",
  async (gpu) => {
    // 1041 rows: 4 blocks of LORA_SPLIT_ROWS and a last one of 17; 512: 2 blocks, no remainder.
    // Rank 5: the block products are thinTnBlocks's, one launch; rank 17 (wider than
    // THIN_TN_MAX on both products): batched matmuls, the last short block its own launch.
    const cases = [[[3, 347, 19], 5], [[2, 256, 9], 5], [[3, 347, 19], 17]] as const;
    for (const [s, [xShape, rank]] of cases.entries()) {
      const c = { xShape: [...xShape], r: rank, outF: 23, scale: 0.75 };
      const d = dimsOf(c.xShape, c.r, c.outF);
      assert(d.rows >= 2 * LORA_SPLIT_ROWS);
      const initDX = f32(d.rows * d.inF, 900 + s);
      const initDA = f32(c.r * d.inF, 910 + s), initDB = f32(c.outF * c.r, 920 + s);
      for (const accumulate of [false, true]) {
        const r = await runBackward(
          gpu,
          c,
          930 + s,
          { dX: true, dA: true, dB: true },
          { dX: initDX, dA: initDA, dB: initDB },
          accumulate,
          "module",
        );
        const name = `${xShape} accumulate=${accumulate}`;
        assertClose(`dX ${name}`, r.dX!, add(r.ref.dX, initDX));
        assertClose(`dA ${name}`, r.dA!, accumulate ? add(r.ref.dA, initDA) : r.ref.dA);
        assertClose(`dB ${name}`, r.dB!, accumulate ? add(r.ref.dB, initDB) : r.ref.dB);
        const rest = d.rows % LORA_SPLIT_ROWS !== 0;
        for (const grad of ["dA", "dB"]) {
          const op = `loraBackward (${grad})`;
          assertEquals(r.launched.filter((l) => l === `${op} blocks`).length, 1, name);
          assert(r.launched.includes(`${op} sum`), `${name}: ${r.launched}`);
          assertEquals(
            r.launched.includes(`${op} last block`),
            rest && rank > THIN_TN_MAX,
            `${name}: ${r.launched}`,
          );
        }
      }
    }
  },
);

gpuTest(
  "lora: backward computes only what is asked; accumulate adds into dA and dB",
  async (gpu) => {
    const c = { xShape: [3, 11, 19], r: 7, outF: 33, scale: 0.75 };
    const d = dimsOf(c.xShape, c.r, c.outF);
    const initDX = f32(d.rows * d.inF, 801), initDA = f32(c.r * d.inF, 802);
    const initDB = f32(c.outF * c.r, 803);
    let r = await runBackward(
      gpu,
      c,
      200,
      { dX: true, dA: true, dB: true },
      {
        dX: initDX,
        dA: initDA,
        dB: initDB,
      },
      true,
      "module",
    );
    assertEquals(r.launched, [
      "loraBackward (dB)",
      "loraBackward (dHidden)",
      "loraBackward (dA)",
      "loraBackward (dX)",
    ]);
    assertClose("dX", r.dX!, add(r.ref.dX, initDX));
    assertClose("dA accumulated", r.dA!, add(r.ref.dA, initDA));
    assertClose("dB accumulated", r.dB!, add(r.ref.dB, initDB));
    r = await runBackward(
      gpu,
      c,
      210,
      { dX: false, dA: false, dB: true },
      { dX: initDX },
      false,
      "module",
    );
    assertEquals(r.launched, ["loraBackward (dB)"]);
    assertClose("dB only", r.dB!, r.ref.dB);
    r = await runBackward(
      gpu,
      c,
      220,
      { dX: false, dA: true, dB: false },
      {
        dX: initDX,
        dA: initDA,
      },
      true,
      "own",
    );
    assertEquals(r.launched, ["loraBackward (dHidden)", "loraBackward (dA)"]);
    assertClose("dA only, accumulated", r.dA!, add(r.ref.dA, initDA));
    r = await runBackward(
      gpu,
      c,
      230,
      { dX: true, dA: false, dB: false },
      { dX: initDX },
      false,
      "module",
    );
    assertEquals(r.launched, ["loraBackward (dHidden)", "loraBackward (dX)"]);
    assertClose("dX only", r.dX!, add(r.ref.dX, initDX));
  },
);

gpuTest("lora: the module workspace grows for a larger layer", async (gpu) => {
  for (const [s, rows] of [7, 1037, 33].entries()) {
    const c = { xShape: [rows, 9], r: 5, outF: 17, scale: 1.5 };
    const initDX = f32(rows * 9, 900 + s);
    const r = await runBackward(
      gpu,
      c,
      300 + 10 * s,
      { dX: true, dA: true, dB: true },
      {
        dX: initDX,
      },
      false,
      "module",
    );
    assertClose(`dX rows=${rows}`, r.dX!, add(r.ref.dX, initDX));
    assertClose(`dA rows=${rows}`, r.dA!, r.ref.dA);
    assertClose(`dB rows=${rows}`, r.dB!, r.ref.dB);
  }
});

gpuTest(
  "lora f16: x, out, dOut and dX in f16 against float64, thin, wide and row-block paths",
  async (gpu) => {
    assert(gpu.hasF16, "this adapter has no shader-f16: the f16 tests cannot run");
    // LoRA takes x, out, dOut and dX in f16 (a, b, hidden, dA and dB stay f32). The reference
    // takes the f16 values as stored, which the kernels load exactly, so hidden, dA and dB keep
    // the f32 bound (1e-5); out and dX are f16(old + low-rank term), one rounding to f16 on
    // store (at most 2^-11 of the value) on top of it. Rank 7: thinMatmul with f16 x and dY;
    // rank 33: matmul (wider than THIN_MAX_N); 1041 rows: dA and dB in row blocks, thinTnBlocks
    // on an f32 and an f16 operand (dHidden and x: A narrow; dY and hidden: B narrow); rank 17
    // there: batched matmuls on f16, the short last block its own launch.
    const f16Tol = 2 ** -11 + 1e-5;
    const f16 = (n: number, seed: number) => Float16Array.from(randomValues(n, seed));
    const cases = [
      { xShape: [2, 7, 33], r: 7, outF: 130, scale: 2 },
      { xShape: [1, 130], r: 33, outF: 33, scale: 16 / 33 },
      { xShape: [3, 347, 19], r: 5, outF: 23, scale: 0.75 },
      { xShape: [3, 347, 19], r: 17, outF: 23, scale: -1.25 },
    ];
    for (const [s, { xShape, r, outF, scale }] of cases.entries()) {
      const d = dimsOf(xShape, r, outF);
      const lead = xShape.slice(0, -1);
      const hx = f16(d.rows * d.inF, 1000 + 10 * s), hg = f16(d.rows * outF, 1001 + 10 * s);
      const hout = f16(d.rows * outF, 1002 + 10 * s), hdX = f16(d.rows * d.inF, 1003 + 10 * s);
      const ha = f32(r * d.inF, 1004 + 10 * s), hb = f32(outF * r, 1005 + 10 * s);
      const x = tensorFromArray(gpu, hx, xShape, "x");
      const g = tensorFromArray(gpu, hg, [...lead, outF], "dOut");
      const out = tensorFromArray(gpu, hout, [...lead, outF], "out");
      const dX = tensorFromArray(gpu, hdX, xShape, "dX");
      assertEquals([x.dtype, g.dtype, out.dtype, dX.dtype], ["f16", "f16", "f16", "f16"]);
      const a = tensorFromArray(gpu, ha, [r, d.inF], "a");
      const b = tensorFromArray(gpu, hb, [outF, r], "b");
      const rec = new Recorder(gpu);
      const hidden = outputTensor(rec, [d.rows, r], "hidden");
      const dA = outputTensor(rec, [r, d.inF], "dA");
      const dB = outputTensor(rec, [outF, r], "dB");
      loraForward(rec, { x, a, b, scale, hidden, out });
      const before = rec.length;
      // The backward from the forward's own (f32) hidden; the reference recomputes it in float64.
      loraBackward(rec, { x, a, b, scale, hidden, dOut: g, dX, dA, dB });
      const launched = rec.labels.slice(before);
      await rec.submit();
      const fwd = refForward(hx, ha, hb, hout, scale, d);
      const bwd = refBackward(hx, ha, hb, hg, scale, d);
      const name = `f16 ${xShape} r=${r}`;
      assertClose(`hidden ${name}`, await hidden.download(), fwd.hidden);
      assertClose(`out ${name}`, await out.download(), fwd.out, f16Tol);
      assertClose(`dX ${name}`, await dX.download(), add(bwd.dX, hdX), f16Tol);
      assertClose(`dA ${name}`, await dA.download(), bwd.dA);
      assertClose(`dB ${name}`, await dB.download(), bwd.dB);
      if (d.rows >= 2 * LORA_SPLIT_ROWS) {
        for (const grad of ["dA", "dB"]) {
          assert(launched.includes(`loraBackward (${grad}) blocks`), `${name}: ${launched}`);
          assertEquals(
            launched.includes(`loraBackward (${grad}) last block`),
            r > THIN_TN_MAX,
            `${name}: ${launched}`,
          );
        }
      }
      for (const t of [x, g, out, dX, a, b, hidden, dA, dB]) t.destroy();
    }
  },
);

gpuTest("lora: the float64 reference backward matches finite differences", () => {
  const d = { rows: 3, inF: 5, r: 2, outF: 4 };
  const scale = 1.75;
  const x = randomValues(d.rows * d.inF, 401);
  const a = randomValues(d.r * d.inF, 402);
  const b = randomValues(d.outF * d.r, 403);
  const g = randomValues(d.rows * d.outF, 404);
  const out0 = randomValues(d.rows * d.outF, 405);
  // Scalar loss L = Σ out ⊙ G, so dL/dout = G.
  const loss = (xv: Float64Array, av: Float64Array, bv: Float64Array) =>
    refForward(xv, av, bv, out0, scale, d).out.reduce((s, y, i) => s + y * g[i], 0);
  const ref = refBackward(x, a, b, g, scale, d);
  const fdX = finiteDifferences((v) => loss(v, a, b), x);
  const fdA = finiteDifferences((v) => loss(x, v, b), a);
  const fdB = finiteDifferences((v) => loss(x, a, v), b);
  assertClose("dX vs finite differences", ref.dX, fdX, 1e-6);
  assertClose("dA vs finite differences", ref.dA, fdA, 1e-6);
  assertClose("dB vs finite differences", ref.dB, fdB, 1e-6);
});

gpuTest("lora: two runs of forward and backward are bitwise identical", async (gpu) => {
  const rows = 517, inF = 33, r = 8, outF = 70, scale = 2;
  const x = tensorFromArray(gpu, f32(rows * inF, 501), [rows, inF], "x");
  const a = tensorFromArray(gpu, f32(r * inF, 502), [r, inF], "a");
  const b = tensorFromArray(gpu, f32(outF * r, 503), [outF, r], "b");
  const g = tensorFromArray(gpu, f32(rows * outF, 504), [rows, outF], "dOut");
  const out0 = f32(rows * outF, 505), dX0 = f32(rows * inF, 506);
  const runs: unknown[] = [];
  for (let run = 0; run < 2; run++) {
    const out = tensorFromArray(gpu, out0, [rows, outF], "out");
    const dX = tensorFromArray(gpu, dX0, [rows, inF], "dX");
    const hidden = createTensor(gpu, [rows, r], "f32", "hidden");
    const dA = createTensor(gpu, [r, inF], "f32", "dA");
    const dB = createTensor(gpu, [outF, r], "f32", "dB");
    const rec = new Recorder(gpu);
    for (const t of [hidden, dA, dB]) fill(rec, t, NaN);
    loraForward(rec, { x, a, b, scale, hidden, out });
    loraBackward(rec, { x, a, b, scale, hidden, dOut: g, dX, dA, dB });
    await rec.submit();
    const got = [out, hidden, dX, dA, dB].map((t) => t.download());
    runs.push(await Promise.all(got));
    for (const t of [out, dX, hidden, dA, dB]) t.destroy();
  }
  assertEquals(runs[0], runs[1]);
  assert((runs[0] as Float32Array[]).every((t) => t.every(Number.isFinite)));
  for (const t of [x, a, b, g]) t.destroy();
});

gpuTest("lora: mismatched shapes throw a GpuError naming the op and tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const t = (shape: number[], label: string) => createTensor(gpu, shape, "f32", label);
  const x = t([2, 7, 5], "x"), a = t([3, 5], "a"), b = t([4, 3], "b");
  const hidden = t([14, 3], "hidden"), out = t([2, 7, 4], "out");
  const base = { x, a, b, scale: 2, hidden, out };
  loraForward(rec, { ...base, hidden: t([2, 7, 3], "hidden3d") }); // [..., r] is accepted too
  assertThrows(
    () => loraForward(rec, { ...base, b: t([4, 2], "b2") }),
    GpuError,
    'loraForward: b ("b2")',
  );
  assertThrows(
    () => loraForward(rec, { ...base, x: t([2, 7, 6], "x6") }),
    GpuError,
    'loraForward: x ("x6")',
  );
  assertThrows(
    () => loraForward(rec, { ...base, hidden: t([14, 4], "h4") }),
    GpuError,
    'loraForward: hidden ("h4")',
  );
  assertThrows(
    () => loraForward(rec, { ...base, out: t([2, 7, 5], "o5") }),
    GpuError,
    'loraForward: out ("o5")',
  );
  assertThrows(() => loraForward(rec, { ...base, scale: NaN }), GpuError, "loraForward: scale");
  const back = { x, a, b, scale: 2, hidden, dOut: out };
  assertThrows(
    () => loraBackward(rec, { ...back, dA: t([5, 3], "dAt") }),
    GpuError,
    'loraBackward: dA ("dAt")',
  );
  assertThrows(
    () => loraBackward(rec, { ...back, dB: t([3, 4], "dBt") }),
    GpuError,
    'loraBackward: dB ("dBt")',
  );
  assertThrows(
    () => loraBackward(rec, { ...back, dX: t([14, 5], "dXflat") }),
    GpuError,
    'loraBackward: dX ("dXflat")',
  );
  assertThrows(
    () => loraBackward(rec, { ...back, dA: t([3, 5], "dA"), dHidden: t([14, 2], "dH") }),
    GpuError,
    'loraBackward: dHidden ("dH")',
  );
  const dA = t([3, 5], "dA");
  assertThrows(
    () => loraBackward(rec, { ...back, dA, dB: dA.view(0, [4, 3], "dB in dA") }),
    GpuError,
    'loraBackward: dA ("dA") shares GPU memory with dB ("dB in dA")',
  );
  assertEquals(rec.length, 2);
});
