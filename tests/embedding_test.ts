import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues, rng } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import {
  blockPlan,
  buildEmbeddingPlan,
  createEmbeddingPlanTensors,
  embeddingBackward,
  embeddingForward,
  type EmbeddingPlanTensors,
  RUN_BLOCK,
} from "../kernels/embedding.ts";
import { fill } from "../kernels/fill.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// ---- float64 references ----

function refForward(
  ids: Uint32Array,
  pids: Uint32Array,
  tids: Uint32Array,
  word: ArrayLike<number>,
  position: ArrayLike<number>,
  tokenType: ArrayLike<number>,
  h: number,
): Float64Array {
  const out = new Float64Array(ids.length * h);
  for (let t = 0; t < ids.length; t++) {
    for (let c = 0; c < h; c++) {
      out[t * h + c] = word[ids[t] * h + c] + tokenType[tids[t] * h + c] +
        position[pids[t] * h + c];
    }
  }
  return out;
}

/** dTable[id] = Σ dOut[t] over the tokens t with that id (rows of absent ids are 0). */
function refBackward(ids: Uint32Array, dOut: ArrayLike<number>, rows: number, h: number) {
  const grad = new Float64Array(rows * h);
  for (let t = 0; t < ids.length; t++) {
    for (let c = 0; c < h; c++) grad[ids[t] * h + c] += dOut[t * h + c];
  }
  return grad;
}

// ---- helpers ----

function randomIds(n: number, bound: number, seed: number): Uint32Array {
  const next = rng(seed);
  const ids = Uint32Array.from({ length: n }, () => Math.floor(next() * bound));
  // Repeated ids on purpose: the scatter-add must sum several tokens into one row.
  if (n > 2) ids[n - 1] = ids[0];
  if (n > 4) ids[n - 2] = ids[1];
  return ids;
}

function f32(n: number, seed: number): Float32Array {
  return Float32Array.from(randomValues(n, seed));
}

function plansFor(gpu: Gpu, ids: Uint32Array[], extra: number): EmbeddingPlanTensors[] {
  return ids.map((x, i) => {
    const p = createEmbeddingPlanTensors(gpu, x.length + extra, `plan ${i}`);
    p.update(x);
    return p;
  });
}

interface Problem {
  n: number;
  h: number;
  v: number;
  p: number;
  types: number;
  ids: Uint32Array;
  pids: Uint32Array;
  tids: Uint32Array;
  word: Float32Array;
  position: Float32Array;
  tokenType: Float32Array;
  dOut: Float32Array;
}

function problem(n: number, h: number, v: number, seed: number): Problem {
  const p = 5;
  const types = 2;
  return {
    n,
    h,
    v,
    p,
    types,
    ids: randomIds(n, v, seed),
    pids: randomIds(n, p, seed + 1),
    tids: randomIds(n, types, seed + 2),
    word: f32(v * h, seed + 3),
    position: f32(p * h, seed + 4),
    tokenType: f32(types * h, seed + 5),
    dOut: f32(n * h, seed + 6),
  };
}

function upload(gpu: Gpu, pr: Problem) {
  return {
    ids: tensorFromArray(gpu, pr.ids, [pr.n], "ids"),
    positionIds: tensorFromArray(gpu, pr.pids, [pr.n], "positionIds"),
    typeIds: tensorFromArray(gpu, pr.tids, [pr.n], "typeIds"),
    word: tensorFromArray(gpu, pr.word, [pr.v, pr.h], "word"),
    position: tensorFromArray(gpu, pr.position, [pr.p, pr.h], "position"),
    tokenType: tensorFromArray(gpu, pr.tokenType, [pr.types, pr.h], "tokenType"),
    out: createTensor(gpu, [pr.n, pr.h], "f32", "out"),
    dOut: tensorFromArray(gpu, pr.dOut, [pr.n, pr.h], "dOut"),
    dWord: createTensor(gpu, [pr.v, pr.h], "f32", "dWord"),
    dPosition: createTensor(gpu, [pr.p, pr.h], "f32", "dPosition"),
    dTokenType: createTensor(gpu, [pr.types, pr.h], "f32", "dTokenType"),
  };
}

/** Records the backward into all three of `t`'s gradient tables, `plans` in the order of ids. */
function backwardAll(
  rec: Recorder,
  t: ReturnType<typeof upload>,
  plans: EmbeddingPlanTensors[],
  accumulate = false,
): void {
  embeddingBackward(rec, {
    dOut: t.dOut,
    wordPlan: plans[0],
    positionPlan: plans[1],
    typePlan: plans[2],
    dWord: t.dWord,
    dPosition: t.dPosition,
    dTokenType: t.dTokenType,
    accumulate,
  });
}

function destroyAll(ts: Record<string, Tensor>): void {
  for (const t of Object.values(ts)) t.destroy();
}

/** Rows of `ids`'s table that no token uses. */
function absentRows(ids: Uint32Array, rows: number): number[] {
  const used = new Set(ids);
  return Array.from({ length: rows }, (_, r) => r).filter((r) => !used.has(r));
}

// Float32 sums of up to 130 terms of magnitude ≤ 1 (the whole batch on one row when V = 1):
// the observed error is a few ulps of the row's magnitude, well inside 1e-5.
const TOL = 1e-5;

const CASES: [number, number, number][] = [
  [1, 1, 1],
  [1, 33, 1000],
  [7, 5, 7],
  [7, 1, 1000],
  [7, 33, 1],
  [33, 33, 7],
  [33, 5, 1],
  [33, 1, 1000],
  [130, 5, 1000],
  [130, 33, 7],
  [130, 1, 1],
  [130, 33, 1000],
];

gpuTest("embedding: forward and backward match float64 at odd shapes", async (gpu) => {
  for (const [i, [n, h, v]] of CASES.entries()) {
    const what = `N=${n} H=${h} V=${v}`;
    const pr = problem(n, h, v, 1000 + 17 * i);
    const t = upload(gpu, pr);
    const plans = plansFor(gpu, [pr.ids, pr.pids, pr.tids], 3);
    const rec = new Recorder(gpu);
    for (const g of [t.out, t.dWord, t.dPosition, t.dTokenType]) fill(rec, g, NaN);
    embeddingForward(rec, t);
    backwardAll(rec, t, plans);
    await rec.submit();
    const out = await t.out.download();
    assertClose(
      `forward ${what}`,
      out,
      refForward(pr.ids, pr.pids, pr.tids, pr.word, pr.position, pr.tokenType, h),
      TOL,
    );
    const refs = [
      refBackward(pr.ids, pr.dOut, v, h),
      refBackward(pr.pids, pr.dOut, pr.p, h),
      refBackward(pr.tids, pr.dOut, pr.types, h),
    ];
    const grads = [t.dWord, t.dPosition, t.dTokenType];
    const names = ["dWord", "dPosition", "dTokenType"];
    // Overwrite mode: rows of absent ids must be 0 although the gradients were poisoned.
    for (let k = 0; k < 3; k++) {
      assertClose(`${names[k]} ${what}`, await grads[k].download(), refs[k], TOL);
    }

    // Accumulate mode adds into existing gradients and leaves absent rows bitwise untouched.
    const inits = [f32(v * h, 7 * i + 1), f32(pr.p * h, 7 * i + 2), f32(pr.types * h, 7 * i + 3)];
    grads.forEach((g, k) => g.upload(inits[k]));
    backwardAll(rec, t, plans, true);
    await rec.submit();
    const allIds = [pr.ids, pr.pids, pr.tids];
    for (let k = 0; k < 3; k++) {
      const got = await grads[k].download();
      const want = refs[k].map((x, j) => x + inits[k][j]);
      assertClose(`accumulated ${names[k]} ${what}`, got, want, TOL);
      for (const r of absentRows(allIds[k], got.length / h)) {
        assertEquals(got.slice(r * h, r * h + h), inits[k].slice(r * h, r * h + h), `row ${r}`);
      }
    }
    destroyAll(t);
    for (const p of plans) p.destroy();
  }
});

gpuTest("embedding: frozen tables are optional and reused plans follow each batch", async (gpu) => {
  const h = 5;
  const v = 33;
  const plan = createEmbeddingPlanTensors(gpu, 130, "reused plan");
  for (const [s, n] of [7, 130, 1, 33].entries()) {
    const ids = randomIds(n, v, 50 + s);
    const dOut = f32(n * h, 60 + s);
    const dOutT = tensorFromArray(gpu, dOut, [n, h], "dOut");
    const dWord = createTensor(gpu, [v, h], "f32", "dWord");
    const untouched = createTensor(gpu, [5, h], "f32", "untouched position grad");
    plan.update(ids);
    const rec = new Recorder(gpu);
    fill(rec, dWord, NaN);
    fill(rec, untouched, 3);
    // Only dWord: no position or type plan is needed.
    embeddingBackward(rec, { dOut: dOutT, wordPlan: plan, dWord });
    await rec.submit();
    assertClose(`dWord N=${n}`, await dWord.download(), refBackward(ids, dOut, v, h), TOL);
    assert((await untouched.download()).every((x) => x === 3));
    // Nothing to compute records nothing.
    embeddingBackward(rec, { dOut: dOutT, wordPlan: plan });
    assertEquals(rec.length, 0);
    for (const t of [dOutT, dWord, untouched]) t.destroy();
  }
  plan.destroy();
});

gpuTest("embedding: forward and backward are bitwise deterministic", async (gpu) => {
  // Few rows, many tokens: every gradient row sums many terms.
  const pr = problem(130, 33, 7, 77);
  const t = upload(gpu, pr);
  const plans = plansFor(gpu, [pr.ids, pr.pids, pr.tids], 0);
  const init = f32(7 * 33, 78);
  const runs: Float32Array[][] = [];
  for (let run = 0; run < 2; run++) {
    const rec = new Recorder(gpu);
    fill(rec, t.out, NaN);
    embeddingForward(rec, t);
    backwardAll(rec, t, plans);
    await rec.submit();
    const got = [
      await t.out.download(),
      await t.dWord.download(),
      await t.dPosition.download(),
      await t.dTokenType.download(),
    ] as Float32Array[];
    t.dWord.upload(init);
    embeddingBackward(rec, { dOut: t.dOut, wordPlan: plans[0], dWord: t.dWord, accumulate: true });
    await rec.submit();
    got.push(await t.dWord.download() as Float32Array);
    runs.push(got);
  }
  assertEquals(runs[0], runs[1]);
  destroyAll(t);
  for (const p of plans) p.destroy();
});

gpuTest(
  "embedding: sliced tables (small binding limit, unaligned view) match float64",
  async (gpu) => {
    const v = 1000;
    const n = 130;
    for (const [h, bindingLimit] of [[5, 700], [33, 2000], [1, 300]]) {
      const pr = problem(n, h, v, 300 + h);
      // Consecutive ids cross many slice boundaries; the last row and repeats are hit too.
      for (let k = 0; k < 70; k++) pr.ids[k] = k;
      pr.ids[70] = v - 1;
      pr.ids[71] = v - 1;
      pr.ids[72] = 35;
      const t = upload(gpu, pr);
      // The word table as a view 12 bytes into its buffer: slices start at aligned offsets before
      // their first row.
      const backing = createTensor(gpu, [v * h + 3], "f32", "word backing");
      const word = backing.view(12, [v, h], "word view");
      word.upload(pr.word);
      const plans = plansFor(gpu, [pr.ids, pr.pids, pr.tids], 0);
      const rec = new Recorder(gpu);
      for (const g of [t.out, t.dWord, t.dPosition]) fill(rec, g, NaN);
      const before = rec.length;
      embeddingForward(rec, { ...t, word, bindingLimit });
      assert(rec.length - before > 10, `expected many slices, got ${rec.length - before}`);
      embeddingBackward(rec, {
        dOut: t.dOut,
        wordPlan: plans[0],
        positionPlan: plans[1],
        dWord: t.dWord,
        dPosition: t.dPosition,
        bindingLimit,
      });
      await rec.submit();
      assertClose(
        `sliced forward H=${h}`,
        await t.out.download(),
        refForward(pr.ids, pr.pids, pr.tids, pr.word, pr.position, pr.tokenType, h),
        TOL,
      );
      assertClose(
        `sliced dWord H=${h}`,
        await t.dWord.download(),
        refBackward(pr.ids, pr.dOut, v, h),
        TOL,
      );
      assertClose(
        `sliced dPosition H=${h}`,
        await t.dPosition.download(),
        refBackward(pr.pids, pr.dOut, pr.p, h),
        TOL,
      );
      // Accumulating into an unaligned gradient view works slice by slice too.
      const gBacking = createTensor(gpu, [v * h + 3], "f32", "grad backing");
      const dWordView = gBacking.view(12, [v, h], "dWord view");
      const init = f32(v * h, 400 + h);
      dWordView.upload(init);
      embeddingBackward(rec, {
        dOut: t.dOut,
        wordPlan: plans[0],
        dWord: dWordView,
        accumulate: true,
        bindingLimit,
      });
      await rec.submit();
      const got = await dWordView.download();
      const want = refBackward(pr.ids, pr.dOut, v, h).map((x, j) => x + init[j]);
      assertClose(`sliced accumulated dWord H=${h}`, got, want, TOL);
      for (const r of absentRows(pr.ids, v)) {
        assertEquals(got.slice(r * h, r * h + h), init.slice(r * h, r * h + h), `row ${r}`);
      }
      // Overwriting an unaligned view is refused up front (its zero fill needs aligned slices).
      assertThrows(
        () => embeddingBackward(rec, { dOut: t.dOut, wordPlan: plans[0], dWord: dWordView }),
        GpuError,
        "embeddingBackward: dWord",
      );
      destroyAll(t);
      backing.destroy();
      gBacking.destroy();
      for (const p of plans) p.destroy();
    }
  },
);

gpuTest(
  "embedding: an id occurring more often than lavapipe's per-invocation loop budget",
  async (gpu) => {
    // Token type 0 of a 128 × 512 single-segment batch occurs 65,536 times; lavapipe stops an
    // invocation after 65,535 loop iterations and kept the partial sum. Here type 0 occurs 66,000
    // times (1,032 blocks of the long-run path), type 2 about 34,000, type 1 100 times (long
    // too: two blocks), type 3 never.
    const n = 100_000, h = 3, types = 4;
    const next = rng(77);
    const tids = new Uint32Array(n).fill(2);
    for (let t = 0, placed = 0; placed < 66_000; t++) {
      if (t % 3 !== 1) {
        tids[t] = 0;
        placed++;
      }
    }
    for (let i = 0; i < 100; i++) tids[Math.floor(next() * n)] = 1;
    const counts = [0, 1, 2, 3].map((id) => tids.filter((x) => x === id).length);
    assert(counts[0] > 65_535 && counts[1] > 0 && counts[2] > 32_768 && counts[3] === 0);
    // Multiples of 1/64 below 1: every partial sum is exact in float32, so the gradient must be
    // the float64 sum exactly.
    const dOutHost = Float32Array.from(randomValues(n * h, 78), (x) => Math.trunc(x * 64) / 64);
    const want = refBackward(tids, dOutHost, types, h);
    const init = f32(types * h, 79);
    const dOut = tensorFromArray(gpu, dOutHost, [n, h], "dOut");
    const dTokenType = createTensor(gpu, [types, h], "f32", "dTokenType");
    const [typePlan] = plansFor(gpu, [tids], 0);
    const rec = new Recorder(gpu);
    fill(rec, dTokenType, NaN);
    embeddingBackward(rec, { dOut, typePlan, dTokenType });
    await rec.submit();
    assertEquals(await dTokenType.download(), Float32Array.from(want));
    dTokenType.upload(init);
    embeddingBackward(rec, { dOut, typePlan, dTokenType, accumulate: true });
    await rec.submit();
    const got = await dTokenType.download();
    assertClose("accumulated", got, Array.from(want, (x, i) => x + init[i]), 1e-7);
    assertEquals(got.slice(3 * h), init.slice(3 * h), "the absent type's row");
    for (const t of [dOut, dTokenType, typePlan]) t.destroy();
  },
);

gpuTest("embedding: an id occurring 65,536 times (a whole number of blocks)", async (gpu) => {
  // Token type 0 of a 128 × 512 single-segment batch: a run of exactly 1,024 blocks. An
  // off-by-one at a multiple of the block (one block too many or too few) loses or double-counts
  // a block's sum.
  const n = 65_536, h = 1;
  const tids = new Uint32Array(n);
  // Multiples of 1/64: the float32 sum is exact.
  const dOutHost = Float32Array.from(randomValues(n * h, 80), (x) => Math.trunc(x * 64) / 64);
  const dOut = tensorFromArray(gpu, dOutHost, [n, h], "dOut");
  const dTokenType = createTensor(gpu, [2, h], "f32", "dTokenType");
  const [typePlan] = plansFor(gpu, [tids], 0);
  const rec = new Recorder(gpu);
  fill(rec, dTokenType, NaN);
  embeddingBackward(rec, { dOut, typePlan, dTokenType });
  await rec.submit();
  assertEquals(await dTokenType.download(), Float32Array.from(refBackward(tids, dOutHost, 2, h)));
  for (const t of [dOut, dTokenType, typePlan]) t.destroy();
});

gpuTest(
  "embedding: long runs (blocks) in a sliced word table, overwritten and accumulated",
  async (gpu) => {
    // Runs of 64 tokens (RUN_BLOCK: summed whole by one invocation), 65 (two blocks), 150 and
    // 300, in slices of 28 rows (h = 5, 700 bytes), among short runs; padding-like tokens parked
    // before the first group.
    assertEquals(RUN_BLOCK, 64);
    const v = 1000, h = 5, bindingLimit = 700;
    const counts: [number, number][] = [[3, 300], [27, 1], [500, 150], [998, 64], [999, 65]];
    const ids: number[] = [];
    for (const [id, count] of counts) for (let k = 0; k < count; k++) ids.push(id);
    for (let k = 0; k < 40; k++) ids.push(100 + 7 * k);
    const next = rng(91);
    for (let i = ids.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [ids[i], ids[j]] = [ids[j], ids[i]];
    }
    // Five tokens of id 1 first, parked as the encoder parks padding tokens.
    const idArray = Uint32Array.from([1, 1, 1, 1, 1, ...ids]);
    const n = idArray.length;
    // Multiples of 1/64 below 1: every partial sum is exact in float32, so each gradient must be
    // the float64 sum exactly, and each accumulated one that sum added to the old value once.
    const dOutHost = Float32Array.from(randomValues(n * h, 92), (x) => Math.trunc(x * 64) / 64);
    const dOut = tensorFromArray(gpu, dOutHost, [n, h], "dOut");
    const dWord = createTensor(gpu, [v, h], "f32", "dWord");
    // Tokens 0 … 4 are in no group: they give no gradient.
    const parked = 5;
    const byId = new Map<number, number[]>();
    for (let t = parked; t < n; t++) byId.set(idArray[t], [...(byId.get(idArray[t]) ?? []), t]);
    const uniqueIds = [...byId.keys()].sort((a, b) => a - b);
    const offsets = [parked];
    const tokens = Array.from({ length: parked }, (_, t) => t);
    for (const id of uniqueIds) (tokens.push(...byId.get(id)!), offsets.push(tokens.length));
    const planTensors = createEmbeddingPlanTensors(gpu, n, "long plan");
    planTensors.update({
      uniqueIds: Uint32Array.from(uniqueIds),
      offsets: Uint32Array.from(offsets),
      tokens: Uint32Array.from(tokens),
    });
    assertEquals(planTensors.longRuns.length / 4, 3, "three long runs");
    const want = refBackward(idArray.subarray(parked), dOutHost.subarray(parked * h), v, h);
    const rec = new Recorder(gpu);
    fill(rec, dWord, NaN);
    embeddingBackward(rec, { dOut, wordPlan: planTensors, dWord, bindingLimit });
    await rec.submit();
    assertEquals(await dWord.download(), Float32Array.from(want), "overwritten");
    const init = f32(v * h, 93);
    dWord.upload(init);
    embeddingBackward(rec, { dOut, wordPlan: planTensors, dWord, bindingLimit, accumulate: true });
    await rec.submit();
    const again = await dWord.download();
    assertEquals(again, Float32Array.from(want, (x, i) => x + init[i]), "accumulated");
    for (const r of absentRows(Uint32Array.from(uniqueIds), v)) {
      assertEquals(again.slice(r * h, r * h + h), init.slice(r * h, r * h + h), `row ${r}`);
    }
    for (const t of [dOut, dWord, planTensors]) t.destroy();
  },
);

gpuTest("embedding: blockPlan cuts the runs longer than RUN_BLOCK tokens into blocks", () => {
  // Runs of 3, 65, 64 and 129 tokens after 2 parked ones.
  const offsets = Uint32Array.from([2, 5, 70, 134, 263]);
  const { runs, blocks } = blockPlan(offsets);
  assertEquals(Array.from(runs), [1, 5, 70, 0, 3, 134, 263, 2]);
  assertEquals(Array.from(blocks), [0, 0, 1, 1, 1]);
  assertEquals(blockPlan(Uint32Array.from([0, 64])).runs.length, 0);
});

gpuTest("embedding: forward on a 2-D grid (past maxComputeWorkgroupsPerDimension)", async (gpu) => {
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
  const pr = problem(9, 65, 7, 81); // 585 outputs: 3 workgroups of 256, a 2 × 2 grid
  const t = upload(small, pr);
  const rec = new Recorder(small);
  fill(rec, t.out, NaN);
  embeddingForward(rec, t);
  await rec.submit();
  const want = refForward(pr.ids, pr.pids, pr.tids, pr.word, pr.position, pr.tokenType, pr.h);
  assertClose("forward", await t.out.download(), want, TOL);
  destroyAll(t);
});

gpuTest(
  "embedding: backward on a 2-D grid (past maxComputeWorkgroupsPerDimension)",
  async (gpu) => {
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
    // 5 distinct ids × 130 columns: 3 workgroups of 256, a 2 × 2 grid.
    const h = 130, v = 6;
    const ids = Uint32Array.from([0, 3, 1, 3, 4, 0, 2, 2, 1]);
    const dOutHost = f32(ids.length * h, 82);
    const dOut = tensorFromArray(small, dOutHost, [ids.length, h], "dOut");
    const dWord = createTensor(small, [v, h], "f32", "dWord");
    const [wordPlan] = plansFor(small, [ids], 0);
    const rec = new Recorder(small);
    fill(rec, dWord, NaN);
    embeddingBackward(rec, { dOut, wordPlan, dWord });
    await rec.submit();
    assertClose("dWord", await dWord.download(), refBackward(ids, dOutHost, v, h), TOL);
    for (const t of [dOut, dWord, wordPlan]) t.destroy();
  },
);

gpuTest("embedding: out-of-range ids give NaN rows and never read out of bounds", async (gpu) => {
  for (const bindingLimit of [undefined, 500]) {
    const pr = problem(33, 5, 100, 90);
    pr.ids[3] = 100;
    pr.ids[4] = 0xffffffff;
    pr.pids[5] = 5;
    pr.tids[6] = 2;
    const t = upload(gpu, pr);
    const rec = new Recorder(gpu);
    fill(rec, t.out, 7);
    embeddingForward(rec, { ...t, bindingLimit });
    await rec.submit();
    const out = await t.out.download();
    const clamped = { ids: pr.ids.slice(), pids: pr.pids.slice(), tids: pr.tids.slice() };
    for (const a of Object.values(clamped)) a.fill(0, 3, 7);
    const want = refForward(
      clamped.ids,
      clamped.pids,
      clamped.tids,
      pr.word,
      pr.position,
      pr.tokenType,
      5,
    );
    for (let tok = 0; tok < 33; tok++) {
      const row = Array.from(out.slice(tok * 5, tok * 5 + 5));
      if (tok >= 3 && tok <= 6) {
        assert(row.every(Number.isNaN), `token ${tok}: ${row}`);
      } else {
        assertClose(`token ${tok}`, row, want.slice(tok * 5, tok * 5 + 5), TOL);
      }
    }
    destroyAll(t);
  }
});

Deno.test("embedding: plans group token positions by sorted id, in token order", () => {
  const plan = buildEmbeddingPlan(new Uint32Array([5, 2, 5, 0, 2, 5, 70000]));
  assertEquals(plan.uniqueIds, new Uint32Array([0, 2, 5, 70000]));
  assertEquals(plan.offsets, new Uint32Array([0, 1, 3, 6, 7]));
  assertEquals(plan.tokens, new Uint32Array([3, 1, 4, 0, 2, 5, 6]));
  const empty = buildEmbeddingPlan(new Uint32Array(0));
  assertEquals(empty.uniqueIds.length, 0);
  assertEquals(empty.offsets, new Uint32Array([0]));
  const big = buildEmbeddingPlan(new Uint32Array([0xffffffff, 0, 0xffffffff]));
  assertEquals(big.uniqueIds, new Uint32Array([0, 0xffffffff]));
  assertEquals(big.tokens, new Uint32Array([1, 0, 2]));
});

Deno.test("embedding: float64 reference backward matches finite differences", () => {
  const h = 3;
  const v = 6;
  const p = 4;
  const ids = new Uint32Array([2, 5, 2, 0, 2, 1, 5]);
  const pids = new Uint32Array([0, 1, 2, 3, 0, 1, 2]);
  const tids = new Uint32Array([0, 1, 1, 0, 0, 1, 0]);
  const n = ids.length;
  const w = randomValues(n * h, 5); // f = Σ out · w, so dOut = w
  const tables = [randomValues(v * h, 1), randomValues(p * h, 2), randomValues(2 * h, 3)];
  const f = (k: number) => (x: Float64Array) => {
    const ts = tables.map((t, j) => (j === k ? x : t));
    const out = refForward(ids, pids, tids, ts[0], ts[1], ts[2], h);
    return out.reduce((s, o, i) => s + o * w[i], 0);
  };
  const grads = [refBackward(ids, w, v, h), refBackward(pids, w, p, h), refBackward(tids, w, 2, h)];
  for (let k = 0; k < 3; k++) {
    const fd = finiteDifferences(f(k), tables[k]);
    assertClose(`table ${k}`, fd, grads[k], 1e-6);
  }
  // Row 2 of the word table sums three tokens; rows 3 and 4 are absent (gradient 0).
  assert(grads[0][3 * h] === 0 && grads[0][4 * h] === 0);
});

gpuTest("embedding: shape and plan errors name the op and the tensor", (gpu) => {
  const pr = problem(7, 5, 9, 11);
  const t = upload(gpu, pr);
  const rec = new Recorder(gpu);
  const bad = (shape: number[], dtype: "f32" | "u32" = "f32") =>
    createTensor(gpu, shape, dtype, "bad");
  assertThrows(
    () => embeddingForward(rec, { ...t, out: bad([7, 6]) }),
    GpuError,
    'embeddingForward: out ("bad")',
  );
  assertThrows(
    () => embeddingForward(rec, { ...t, ids: bad([7]) }),
    GpuError,
    'embeddingForward: ids ("bad") is f32',
  );
  assertThrows(
    () => embeddingForward(rec, { ...t, typeIds: bad([8], "u32") }),
    GpuError,
    "embeddingForward: typeIds",
  );
  assertThrows(
    () => embeddingForward(rec, { ...t, position: bad([5, 4]) }),
    GpuError,
    "embeddingForward: position",
  );
  assertThrows(
    () => embeddingForward(rec, { ...t, bindingLimit: 8 }),
    GpuError,
    "does not fit",
  );
  const [plan, shortPlan] = plansFor(gpu, [pr.ids, pr.ids.slice(1)], 0);
  assertThrows(
    () => embeddingBackward(rec, { dOut: t.dOut, wordPlan: plan, dWord: bad([9, 4]) }),
    GpuError,
    'embeddingBackward: dWord ("bad")',
  );
  assertThrows(
    () => embeddingBackward(rec, { dOut: t.dOut, dWord: t.dWord }),
    GpuError,
    "embeddingBackward: dWord is given without wordPlan",
  );
  assertThrows(
    () => embeddingBackward(rec, { dOut: t.dOut, wordPlan: shortPlan, dWord: t.dWord }),
    GpuError,
    "embeddingBackward: wordPlan",
  );
  assertThrows(
    () => embeddingBackward(rec, { dOut: t.dOut, positionPlan: plan, dPosition: t.dPosition }),
    GpuError,
    "positionPlan holds id",
  );
  assertThrows(
    () => embeddingBackward(rec, { dOut: bad([7, 5], "u32"), wordPlan: plan, dWord: t.dWord }),
    GpuError,
    "embeddingBackward: dOut",
  );
  assertThrows(() => plan.update(new Uint32Array(8)), GpuError, "maxTokens");
  assertEquals(rec.length, 0);
  destroyAll(t);
});

gpuTest("embedding: a word table above the storage binding limit (roberta-large)", async (gpu) => {
  const h = 1024;
  const rowBytes = h * 4;
  const maxBinding = gpu.limits.maxStorageBufferBindingSize;
  // The first slice of a table at offset 0 holds every row that fits in one binding.
  const boundary = Math.floor(maxBinding / rowBytes);
  // roberta-large's vocabulary where that exceeds one binding (lavapipe: 128 MiB), otherwise the
  // smallest table clearly above this adapter's limit.
  const v = Math.max(50265, boundary + 4099);
  if (v * rowBytes > gpu.limits.maxBufferSize) {
    // Skipped: this adapter cannot even allocate a buffer that large.
    console.log(`skipped: a ${v} x ${h} f32 table exceeds maxBufferSize`);
    return;
  }
  assert(v * rowBytes > maxBinding);
  // Cheap deterministic values (random ones would take seconds to generate at this size).
  const value = (r: number, c: number) => (((r * 7919 + c * 104729) % 2039) - 1019.5) / 1024;
  const wordHost = new Float32Array(v * h);
  for (let r = 0; r < v; r++) {
    for (let c = 0; c < h; c++) wordHost[r * h + c] = value(r, c);
  }
  // A row well past the boundary, inside the table whatever the adapter's binding limit.
  const far = boundary + Math.min(7777, v - boundary - 5);
  const ids = new Uint32Array([
    0,
    1,
    boundary - 1,
    boundary,
    boundary + 1,
    v - 1,
    boundary - 1,
    v - 1,
    12345,
    boundary,
    far,
    0,
    v - 2,
  ]);
  const n = ids.length;
  const positions = 514;
  const pids = Uint32Array.from(ids, (_, i) => (i * 37 + 2) % positions);
  const tids = new Uint32Array(n);
  const positionHost = f32(positions * h, 1);
  const typeHost = f32(h, 2);
  const dOutHost = f32(n * h, 3);
  const word = createTensor(gpu, [v, h], "f32", "roberta-large word");
  word.upload(wordHost);
  const dWord = createTensor(gpu, [v, h], "f32", "roberta-large dWord");
  const t = {
    ids: tensorFromArray(gpu, ids, [n], "ids"),
    positionIds: tensorFromArray(gpu, pids, [n], "positionIds"),
    typeIds: tensorFromArray(gpu, tids, [n], "typeIds"),
    position: tensorFromArray(gpu, positionHost, [positions, h], "position"),
    tokenType: tensorFromArray(gpu, typeHost, [1, h], "tokenType"),
    out: createTensor(gpu, [n, h], "f32", "out"),
    dOut: tensorFromArray(gpu, dOutHost, [n, h], "dOut"),
  };
  const plan = createEmbeddingPlanTensors(gpu, 64, "word plan");
  plan.update(ids);

  const rec = new Recorder(gpu);
  fill(rec, t.out, NaN);
  fill(rec, dWord, NaN);
  const before = rec.length;
  embeddingForward(rec, { ...t, word });
  assertEquals(rec.length - before, Math.ceil(v / boundary));
  embeddingBackward(rec, { dOut: t.dOut, wordPlan: plan, dWord });
  await rec.submit();
  assertClose(
    "forward",
    await t.out.download(),
    refForward(ids, pids, tids, wordHost, positionHost, typeHost, h),
    TOL,
  );

  // Rows of the ids, and untouched rows on both sides of the boundary and at the ends.
  const rowsOf = async (r: number, count: number) =>
    await dWord.view(r * rowBytes, [count * h]).download() as Float32Array;
  const expectRow = (r: number) => {
    const g = new Float64Array(h);
    ids.forEach((id, tok) => {
      if (id === r) { for (let c = 0; c < h; c++) g[c] += dOutHost[tok * h + c]; }
    });
    return g;
  };
  const checked = [0, 1, 2, boundary - 2, boundary - 1, boundary, boundary + 1, boundary + 2];
  checked.push(12345, far, v - 3, v - 2, v - 1);
  const overwrite = new Map<number, Float32Array>();
  for (const r of checked) {
    const got = await rowsOf(r, 1);
    const want = expectRow(r);
    if (want.every((x) => x === 0)) assert(got.every((x) => x === 0), `untouched row ${r}`);
    else assertClose(`dWord row ${r}`, got, want, TOL);
    overwrite.set(r, got);
  }

  // Accumulating again doubles the rows of the ids (exactly) and leaves the others at 0.
  embeddingBackward(rec, { dOut: t.dOut, wordPlan: plan, dWord, accumulate: true });
  await rec.submit();
  for (const r of checked) {
    assertEquals(await rowsOf(r, 1), overwrite.get(r)!.map((x) => 2 * x), `accumulated row ${r}`);
  }
  word.destroy();
  dWord.destroy();
  plan.destroy();
  destroyAll(t);
});
