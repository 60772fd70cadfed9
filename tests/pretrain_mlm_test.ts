// Masked-language-model pretraining (train/pretrain.ts, model/mlm_head.ts, train/mlm_data.ts,
// kernels/gather_rows.ts, kernels/vocab_cross_entropy.ts: the loss and each row's argmax):
//
// - the MLM loss and every gradient (the word table's including the tied decoder's share) against
//   PyTorch's float64 BertForMaskedLM (tests/fixtures/tiny-bert-mlm, tools/make_mlm_fixture.py),
//   with the encoder test's bounds: logits within 1e-4 relative (assertClose), the loss within
//   1e-4 relative, every gradient within 1e-3 of its tensor's largest reference magnitude (the
//   attention key biases, exactly zero in exact math, against their key weights' gradients);
// - gatherRows against host references at odd shapes (the argmax, vocabCrossEntropyForward's, is
//   checked against its host reference in tests/vocab_cross_entropy_test.ts);
// - packing and BERT masking statistics;
// - a short end-to-end pretrain() on the fixture model: the held-out loss falls, the outputs
//   exist, and a run stopped after a checkpoint resumes to the same bytes as one that was not.

import { dropoutSteps } from "./encoder_step.ts";
import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { randomValues, rng } from "./random.ts";
import { GpuError } from "../kernels/device.ts";
import {
  gatherRowsBackward,
  gatherRowsForward,
  NOT_SELECTED,
  selectionSlots,
} from "../kernels/gather_rows.ts";
import { Recorder, submittedCounts } from "../kernels/recorder.ts";
import { type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import { type ModelConfig, readConfig } from "../model/config.ts";
import { openSafetensors, type SafetensorsReader } from "../model/safetensors.ts";
import { MLM_IDS, mlmInitialValues, readReference, TINY_BERT_MLM } from "./train_fixture.ts";
import {
  batchIndices,
  generator,
  maskBatch,
  type MaskingIds,
  type MlmBatch,
  packDocuments,
} from "../train/mlm_data.ts";
import {
  pretrain,
  PRETRAIN_ADAMW,
  Pretrainer,
  type PretrainOptions,
  saveMlmModel,
} from "../train/pretrain.ts";

const FIXTURE = TINY_BERT_MLM;
const IDS = MLM_IDS;

interface Fixture {
  config: ModelConfig;
  model: SafetensorsReader;
  ref: Map<string, Float64Array>;
  B: number;
  S: number;
}

let loaded: Promise<Fixture> | null = null;

function fixture(): Promise<Fixture> {
  loaded ??= (async () => {
    const config = await readConfig(`${FIXTURE}config.json`);
    const model = await openSafetensors(`${FIXTURE}model.safetensors`);
    const { ref, shapes } = await readReference(`${FIXTURE}reference.safetensors`);
    const [B, S] = shapes.get("input_ids")!;
    return { config, model, ref, B, S };
  })();
  return loaded;
}

/** The fixture's batch (its input ids already masked) as a Pretrainer takes it. */
function referenceBatch(f: Fixture): MlmBatch {
  const u32 = (n: string) => Uint32Array.from(f.ref.get(n)!);
  return {
    batch: f.B,
    seqLen: f.S,
    inputIds: u32("input_ids"),
    attentionMask: u32("attention_mask"),
    positions: u32("positions"),
    targets: u32("targets"),
  };
}

/** The fixture's starting values in pretrain()'s form. */
function initialValues(f: Fixture): Promise<PretrainOptions["initial"]> {
  return mlmInitialValues(f.config, f.model);
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** max |a − e| / scale. */
function maxError(actual: ArrayLike<number>, expected: ArrayLike<number>, scale: number): number {
  assertEquals(actual.length, expected.length);
  let err = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
  }
  return scale === 0 ? (err === 0 ? 0 : Infinity) : err / scale;
}

/** max |a − e| / (|e| + mean|e|), assertClose's measure. */
function maxRelative(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let mean = 0;
  for (let i = 0; i < expected.length; i++) mean += Math.abs(expected[i]);
  mean /= expected.length;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (Math.abs(expected[i]) + mean));
  }
  return worst;
}

// -------------------------------------------------------------------------------------------------
// The fixture

gpuTest("tiny-bert-mlm: MLM loss, logits and every gradient match PyTorch", async (gpu) => {
  const f = await fixture();
  const { B, S } = f;
  // An arena larger than the batch: every tensor is used through views.
  const trainer = new Pretrainer(gpu, f.config, {
    maxBatch: B + 1,
    maxSeq: S + 4,
    adamw: PRETRAIN_ADAMW,
    dropout: 0,
  });
  try {
    const params = trainer.parameters();
    assertEquals(new Set(params.keys()), new Set(f.model.tensors.keys()), "parameter names");
    for (const [n, t] of params) t.upload(await f.model.readF32(n));
    const batch = referenceBatch(f);
    const m = batch.positions.length;

    const grads = async () => {
      const out = new Map<string, Float32Array>();
      for (const [n, t] of trainer.encoder.gradients()) {
        out.set(`${f.config.prefix}.${n}`, await t.download() as Float32Array);
      }
      for (const [n, t] of trainer.head.gradients()) {
        out.set(n, await t.download() as Float32Array);
      }
      return out;
    };
    const loss = await trainer.lossAndGradients(batch);
    const ours = await grads();
    // The head's logits at the masked rows (the first M rows of its arena).
    const logitsTensor = trainer.head["logits"] as Tensor;
    const logits = await logitsTensor.view(0, [m, f.config.vocabSize]).download();

    const refLoss = f.ref.get("loss")![0];
    const lossErr = Math.abs(loss - refLoss) / Math.abs(refLoss);
    assert(lossErr <= 1e-4, `loss ${loss}, expected ${refLoss}`);
    assertClose("logits at the masked rows", logits, f.ref.get("logits")!, 1e-4);

    assertEquals(new Set(ours.keys()), new Set(f.model.tensors.keys()), "a gradient per tensor");
    let worst = 0, worstName = "";
    for (const [n, g] of ours) {
      const ref = f.ref.get(`grad.${n}`)!;
      let scale = maxAbs(ref);
      if (/attention\.self\.key\.bias$/.test(n)) {
        const weight = maxAbs(f.ref.get(`grad.${n.replace(/bias$/, "weight")}`)!);
        assert(scale <= 1e-12 * weight, `${n}: reference not ~0`);
        scale = weight;
      }
      const e = maxError(g, ref, scale);
      assert(e <= 1e-3, `gradient of ${n} is off by ${e.toExponential(2)} of its max`);
      if (e > worst) [worst, worstName] = [e, n];
    }
    // The padding row of the word table gets the decoder's share only; it must be there.
    const word = ours.get(`${f.config.prefix}.embeddings.word_embeddings.weight`)!;
    const h = f.config.hiddenSize, pad = f.config.padTokenId;
    const refWord = f.ref.get(`grad.${f.config.prefix}.embeddings.word_embeddings.weight`)!;
    const padRow = refWord.subarray(pad * h, (pad + 1) * h);
    assert(maxAbs(padRow) > 1e-4, "reference padding row");
    const padErr = maxError(word.subarray(pad * h, (pad + 1) * h), padRow, maxAbs(padRow));
    assert(padErr <= 1e-3, `the padding row's decoder gradient is off by ${padErr} of its max`);

    // A second call gives the same bits: gradients are overwritten, not accumulated.
    const loss2 = await trainer.lossAndGradients(batch);
    assertEquals(loss2, loss, "loss on a second call");
    const again = await grads();
    for (const [n, g] of ours) assertEquals(again.get(n), g, `gradient of ${n} on a second call`);

    console.log(
      `tiny-bert-mlm: loss rel. error ${lossErr.toExponential(2)}, logits max rel. ${
        maxRelative(logits, f.ref.get("logits")!).toExponential(2)
      }, worst gradient ${worst.toExponential(2)} of its max (${worstName}), word table ${
        maxError(word, refWord, maxAbs(refWord)).toExponential(2)
      } (padding row ${padErr.toExponential(2)} of its own max), M = ${m}`,
    );
  } finally {
    trainer.destroy();
  }
});

gpuTest(
  "tiny-bert-mlm: in parts (gradAccum), the loss and every gradient are the whole batch's",
  async (gpu) => {
    // pretrain --grad-accum K: each part's loss and gradients weighted by its share of the batch's
    // masked tokens, summed; the decoder's share of the word table added once, at the end.
    const f = await fixture();
    const { B, S } = f;
    const batch = referenceBatch(f);
    for (const gradAccum of [2, B]) {
      const trainer = new Pretrainer(gpu, f.config, {
        maxBatch: B,
        maxSeq: S,
        adamw: PRETRAIN_ADAMW,
        dropout: 0,
        gradAccum,
      });
      try {
        for (const [n, t] of trainer.parameters()) t.upload(await f.model.readF32(n));
        const loss = await trainer.lossAndGradients(batch);
        const refLoss = f.ref.get("loss")![0];
        assert(
          Math.abs(loss - refLoss) <= 1e-4 * Math.abs(refLoss),
          `K=${gradAccum}: loss ${loss}`,
        );
        const grads = [...trainer.encoder.gradients()].map(([n, t]) =>
          [`${f.config.prefix}.${n}`, t] as const
        );
        for (const [n, t] of [...grads, ...trainer.head.gradients()]) {
          const ref = f.ref.get(`grad.${n}`)!;
          let scale = maxAbs(ref);
          if (/attention\.self\.key\.bias$/.test(n)) {
            scale = maxAbs(f.ref.get(`grad.${n.replace(/bias$/, "weight")}`)!);
          }
          const e = maxError(await t.download() as Float32Array, ref, scale);
          assert(e <= 1e-3, `K=${gradAccum}: gradient of ${n} is off by ${e.toExponential(2)}`);
        }
        // Held-out evaluation in parts: the whole batch's loss and tokens.
        const held = await trainer.evaluate(batch);
        assertEquals(held.tokens, batch.positions.length);
        assert(Math.abs(held.lossSum / held.tokens - refLoss) <= 1e-4 * Math.abs(refLoss), "held");
      } finally {
        trainer.destroy();
      }
    }
  },
);

gpuTest("Pretrainer: each part of a step draws dropout masks of its own", async (gpu) => {
  // Step t's part i is the encoder's dropout step t·K + i (K = gradAccum).
  const f = await fixture();
  const { B, S } = f;
  const batch = referenceBatch(f);
  for (const gradAccum of [1, 2]) {
    const trainer = new Pretrainer(gpu, f.config, {
      maxBatch: B,
      maxSeq: S,
      adamw: PRETRAIN_ADAMW,
      dropout: 0.1,
      gradAccum,
    });
    const steps = dropoutSteps(trainer.encoder);
    try {
      for (const [n, t] of trainer.parameters()) t.upload(await f.model.readF32(n));
      for (let step = 0; step < 3; step++) await trainer.step(batch, 1e-4, step);
      const want = Array.from({ length: 3 * gradAccum }, (_, i) => i);
      assertEquals(steps, want, `K=${gradAccum}`);
    } finally {
      trainer.destroy();
    }
  }
});

gpuTest(
  "Pretrainer: steps handed to the GPU a layer at a time are bit for bit the same",
  async (gpu) => {
    const f = await fixture();
    const { B, S } = f;
    const batch = referenceBatch(f);
    const run = async (flushEvery: number) => {
      const trainer = new Pretrainer(gpu, f.config, {
        maxBatch: B,
        maxSeq: S,
        adamw: PRETRAIN_ADAMW,
        dropout: 0.1,
        dropoutSeed: 5,
        flushEvery,
      });
      try {
        for (const [n, t] of trainer.parameters()) t.upload(await f.model.readF32(n));
        const before = submittedCounts(gpu).submits;
        for (let step = 0; step < 2; step++) await trainer.step(batch, 1e-3, step);
        const submits = submittedCounts(gpu).submits - before;
        const out = new Map<string, Uint32Array>();
        for (const [n, t] of trainer.parameters()) {
          out.set(n, new Uint32Array((await t.download() as Float32Array).buffer));
        }
        return { out, submits };
      } finally {
        trainer.destroy();
      }
    };
    const whole = await run(Infinity);
    const parted = await run(1); // a part after every layer, forward and backward
    assert(parted.submits > whole.submits, `${parted.submits} vs ${whole.submits} submits`);
    for (const [n, bits] of whole.out) assertEquals(parted.out.get(n), bits, n);
  },
);

// -------------------------------------------------------------------------------------------------
// Kernels

/** Distinct rows of [0, n), `m` of them, in a seeded random order. */
function distinctRows(n: number, m: number, seed: number): Uint32Array {
  const next = rng(seed);
  const all = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Uint32Array.from(all.slice(0, m));
}

gpuTest(
  "saveMlmModel: F16 refuses a weight past its range rather than write infinity",
  async (gpu) => {
    const f = await fixture();
    const trainer = new Pretrainer(gpu, f.config, {
      maxBatch: 1,
      maxSeq: 4,
      adamw: PRETRAIN_ADAMW,
      dropout: 0,
    });
    const dir = await Deno.makeTempDir();
    try {
      const params = trainer.parameters();
      for (const [n, t] of params) t.upload(await f.model.readF32(n));
      await saveMlmModel(`${dir}/ok`, trainer, "F16");
      const [name, tensor] = [...params].find(([n]) => n.endsWith(".bias"))!;
      const values = await f.model.readF32(name);
      values[1] = -70000;
      tensor.upload(values);
      const e = await assertRejects(() => saveMlmModel(`${dir}/past`, trainer, "F16"), Error);
      assertEquals(
        e.message,
        `${dir}/past/model.safetensors: "${name}" holds -70000 (element 1), beyond F16's range ` +
          "(±65504): such a model is saved with --model-dtype f32 (the run's last checkpoint is kept)",
      );
      await assertMissing(`${dir}/past/model.safetensors`);
      await saveMlmModel(`${dir}/f32`, trainer, "F32");
    } finally {
      trainer.destroy();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest("gatherRows: forward exact, backward writes every row, at odd shapes", async (base) => {
  const cases: [number, number, number, number?][] = [
    [1, 1, 1],
    [37, 13, 11],
    [5, 7, 5], // every row selected
    [300, 13, 97, 3], // 16 workgroups in a 2-D grid of at most 3 per dimension
  ];
  for (const [k, [n, h, m, limit]] of cases.entries()) {
    const gpu = limit ? withLimits(base, { maxComputeWorkgroupsPerDimension: limit }) : base;
    const xs = Float32Array.from(randomValues(n * h, 10 + k));
    const dOuts = Float32Array.from(randomValues(m * h, 20 + k));
    const rowIds = distinctRows(n, m, 30 + k);
    const slots = selectionSlots(rowIds, n);
    const x = tensorFromArray(gpu, xs, [n, h], "x");
    const rows = tensorFromArray(gpu, rowIds, [m], "rows");
    const dOut = tensorFromArray(gpu, dOuts, [m, h], "dOut");
    const slot = tensorFromArray(gpu, slots, [n], "slot");
    const rec = new Recorder(gpu);
    const out = outputTensor(rec, [m, h], "out");
    const dX = outputTensor(rec, [n, h], "dX"); // NaN: an unwritten element fails
    gatherRowsForward(rec, { x, rows, out });
    gatherRowsBackward(rec, { dOut, slot, dX });
    await rec.submit();
    const want = new Float32Array(m * h);
    for (let i = 0; i < m; i++) want.set(xs.subarray(rowIds[i] * h, (rowIds[i] + 1) * h), i * h);
    assertEquals(await out.download(), want, `forward [${n}, ${h}] → ${m}`);
    const wantDx = new Float32Array(n * h);
    let selected = 0;
    for (let r = 0; r < n; r++) {
      if (slots[r] === NOT_SELECTED) continue;
      selected++;
      wantDx.set(dOuts.subarray(slots[r] * h, (slots[r] + 1) * h), r * h);
    }
    assertEquals(selected, m);
    assertEquals(await dX.download(), wantDx, `backward [${n}, ${h}] ← ${m}`);
    for (const t of [x, rows, dOut, slot, out, dX]) t.destroy();
  }
});

gpuTest("gatherRows: repeated rows gather; a row out of range gives NaN", async (gpu) => {
  const n = 6, h = 3;
  const xs = Float32Array.from(randomValues(n * h, 5));
  const rowIds = Uint32Array.from([4, 4, 0, 6, 0xffffffff]);
  const x = tensorFromArray(gpu, xs, [n, h], "x");
  const rows = tensorFromArray(gpu, rowIds, [rowIds.length], "rows");
  const rec = new Recorder(gpu);
  const out = outputTensor(rec, [rowIds.length, h], "out", new Float32Array(rowIds.length * h));
  gatherRowsForward(rec, { x, rows, out });
  await rec.submit();
  const got = await out.download();
  assertEquals(got.slice(0, 3), xs.slice(12, 15));
  assertEquals(got.slice(3, 6), xs.slice(12, 15));
  assertEquals(got.slice(6, 9), xs.slice(0, 3));
  for (let i = 9; i < 15; i++) assert(Number.isNaN(got[i]), `element ${i} is ${got[i]}`);
  for (const t of [x, rows, out]) t.destroy();
});

Deno.test("pretrain: AdamW as BERT's pretraining (β 0.9 / 0.999, ε 1e-6, decay 0.01, clip 1)", () => {
  assertEquals(PRETRAIN_ADAMW, {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-6,
    weightDecay: 0.01,
    maxGradNorm: 1,
  });
});

Deno.test("selectionSlots: inverts the rows; refuses duplicates and rows out of range", () => {
  const slots = selectionSlots([3, 0, 5], 7);
  assertEquals(
    Array.from(slots),
    [1, NOT_SELECTED, NOT_SELECTED, 0, NOT_SELECTED, 2, NOT_SELECTED],
  );
  assertEquals(Array.from(selectionSlots([], 2)), [NOT_SELECTED, NOT_SELECTED]);
  assertThrows(() => selectionSlots([1, 4, 1], 7), GpuError, "selected twice");
  assertThrows(() => selectionSlots([7], 7), GpuError, "not in [0, 7)");
  assertThrows(() => selectionSlots([-1], 7), GpuError, "not in [0, 7)");
  assertThrows(() => selectionSlots([1.5], 7), GpuError, "not in [0, 7)");
  assertThrows(() => selectionSlots([0], 0), GpuError, "not in [0, 0)");
});

// -------------------------------------------------------------------------------------------------
// Data

Deno.test("packDocuments: stays in documents, respects maxTokens, splits long sentences", () => {
  // Token ids encode (document, sentence, index) so that every token is traceable.
  const next = rng(7);
  const docs: number[][][] = [];
  for (let d = 0; d < 30; d++) {
    const doc: number[][] = [];
    const count = Math.floor(next() * 5);
    for (let s = 0; s < count; s++) {
      const len = next() < 0.15 ? 0 : 1 + Math.floor(next() * (next() < 0.2 ? 25 : 6));
      doc.push(Array.from({ length: len }, (_, i) => d * 10000 + s * 100 + i));
    }
    docs.push(doc);
  }
  for (const maxTokens of [1, 5, 8]) {
    const packed = packDocuments(docs, maxTokens);
    const docOf = (t: number) => Math.floor(t / 10000);
    let k = 0;
    for (const [d, doc] of docs.entries()) {
      const tokens = doc.flat();
      const mine: number[] = [];
      while (k < packed.length && docOf(packed[k][0]) === d) {
        const seq = packed[k++];
        assert(seq.length >= 1 && seq.length <= maxTokens, `length ${seq.length} > ${maxTokens}`);
        for (const t of seq) assertEquals(docOf(t), d, "a sequence crosses documents");
        mine.push(...seq);
      }
      // Every token once, in order.
      assertEquals(mine, tokens, `document ${d} at maxTokens ${maxTokens}`);
      // A sentence that fits is never split; a longer one is cut into maxTokens-long pieces.
      for (const sentence of doc) {
        if (sentence.length === 0) continue;
        const holders = packed.filter((seq) => seq.some((t) => sentence.includes(t)));
        if (sentence.length <= maxTokens) assertEquals(holders.length, 1, "split sentence");
        else assertEquals(holders.length >= Math.ceil(sentence.length / maxTokens), true);
      }
    }
    assertEquals(k, packed.length, "every sequence belongs to a document, in order");
  }
  assertEquals(packDocuments([[[1, 2, 3, 4, 5, 6, 7]]], 3).map((s) => [...s]), [
    [1, 2, 3],
    [4, 5, 6],
    [7],
  ]);
  assertEquals(packDocuments([[[1, 2], [3]], [[4]]], 8).map((s) => [...s]), [[1, 2, 3], [4]]);
  assertThrows(() => packDocuments([], 0), Error, "not a positive integer");
});

Deno.test("maskBatch: 15% chosen, 80/10/10, specials never chosen or drawn", () => {
  const next = rng(11);
  let tokens = 0, chosen = 0, expected = 0, masked = 0, kept = 0, replaced = 0;
  // Sequences of 30 tokens or more, where the forced choice (0.85^30 < 1%) hardly counts.
  let longTokens = 0, longChosen = 0;
  for (let draw = 0; draw < 500; draw++) {
    const sequences = Array.from({ length: 8 }, () => {
      const len = 1 + Math.floor(next() * 40);
      return Uint32Array.from({ length: len }, () => 5 + Math.floor(next() * 96));
    });
    const b = maskBatch(sequences, IDS, generator(1000 + draw));
    const S = 2 + Math.max(...sequences.map((s) => s.length));
    assertEquals([b.batch, b.seqLen], [8, S]);
    for (let i = 1; i < b.positions.length; i++) {
      assert(b.positions[i] > b.positions[i - 1], "positions ascending");
    }
    const chosenAt = new Map<number, number>();
    b.positions.forEach((p, i) => chosenAt.set(p, b.targets[i]));
    sequences.forEach((seq, r) => {
      const row = r * S;
      let here = 0;
      for (let c = 0; c < S; c++) {
        const at = row + c, id = b.inputIds[at];
        const real = c < seq.length + 2;
        assertEquals(b.attentionMask[at], real ? 1 : 0);
        if (c === 0) assertEquals(id, IDS.cls);
        else if (c === seq.length + 1) assertEquals(id, IDS.sep);
        else if (!real) assertEquals(id, IDS.pad);
        const target = chosenAt.get(at);
        if (target === undefined) {
          if (c >= 1 && c <= seq.length) assertEquals(id, seq[c - 1], "an unchosen token changed");
          continue;
        }
        assert(c >= 1 && c <= seq.length, `a special position (${r}, ${c}) was chosen`);
        assertEquals(target, seq[c - 1], "target is the original token");
        here++;
        if (id === IDS.mask) masked++;
        else if (id === target) kept++;
        else {
          assert(!IDS.special.has(id) && id < IDS.vocabSize, `replacement ${id} is special`);
          replaced++;
        }
      }
      assert(here >= 1, "a non-empty sequence with nothing chosen");
      tokens += seq.length;
      chosen += here;
      if (seq.length >= 30) {
        longTokens += seq.length;
        longChosen += here;
      }
      // 15% of the tokens, plus the forced one where the draw chose none.
      expected += 0.15 * seq.length + 0.85 ** seq.length;
    });
  }
  const share = (k: number) => k / chosen;
  const non = 96; // non-special ids: a random replacement equals the target 1 time in 96
  console.log(
    `maskBatch: ${chosen} of ${tokens} tokens chosen (${(100 * chosen / tokens).toFixed(2)}%, ` +
      `expected ${(100 * expected / tokens).toFixed(2)}%; ${
        (100 * longChosen / longTokens).toFixed(2)
      }% in sequences of ≥ 30); mask ${(100 * share(masked)).toFixed(2)}%, random ${
        (100 * share(replaced)).toFixed(2)
      }%, kept ${(100 * share(kept)).toFixed(2)}%`,
  );
  assert(Math.abs(chosen / expected - 1) < 0.03, `chosen ${chosen}, expected ${expected}`);
  const longShare = longChosen / longTokens;
  assert(Math.abs(longShare - 0.15) < 0.01, `${longShare} of long sequences' tokens chosen`);
  assert(Math.abs(share(masked) - 0.8) < 0.02, `mask share ${share(masked)}`);
  assert(Math.abs(share(replaced) - 0.1 * (1 - 1 / non)) < 0.015, `random ${share(replaced)}`);
  assert(Math.abs(share(kept) - (0.1 + 0.1 / non)) < 0.015, `kept share ${share(kept)}`);
});

Deno.test("maskBatch: deterministic per seed; an empty sequence; at least one chosen", () => {
  const seqs = [Uint32Array.from([5, 6, 7]), Uint32Array.from([]), Uint32Array.from([9])];
  const a = maskBatch(seqs, IDS, generator(42));
  assertEquals(maskBatch(seqs, IDS, generator(42)), a, "same seed, same batch");
  let differs = false;
  for (let s = 0; s < 20 && !differs; s++) {
    const b = maskBatch(seqs, IDS, generator(43 + s));
    differs = b.positions.join() !== a.positions.join() || b.inputIds.join() !== a.inputIds.join();
  }
  assert(differs, "other seeds give other batches");
  // The empty row: [CLS] [SEP] and padding, nothing chosen; the one-token row: its token chosen.
  assertEquals([...a.inputIds.subarray(5, 10)], [2, 3, 0, 0, 0]);
  assertEquals([...a.attentionMask.subarray(5, 10)], [1, 1, 0, 0, 0]);
  assert(![...a.positions].some((p) => p >= 5 && p < 10), "the empty row has no chosen token");
  assert([...a.positions].includes(11), "the one-token row's token is chosen");
  // Probability 0: exactly one forced choice per non-empty sequence.
  const forced = maskBatch(seqs, IDS, generator(1), 0);
  assertEquals(forced.positions.length, 2);
  const noSpecial: MaskingIds = { ...IDS, vocabSize: 5 };
  assertThrows(() => maskBatch(seqs, noSpecial, generator(1)), Error, "every token id is special");
  assertThrows(() => maskBatch([], IDS, generator(1)), Error, "no sequences");
});

Deno.test("maskBatch: special ids in the text ([UNK], a literal [SEP], [MASK], ...) are never chosen", () => {
  // The fixture's specials: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4 (as text tokenizes to them).
  const specials = [...IDS.special];
  const next = rng(23);
  let eligible = 0, chosen = 0, expected = 0, longEligible = 0, longChosen = 0;
  const check = (sequences: Uint32Array[], seed: number) => {
    const b = maskBatch(sequences, IDS, generator(seed));
    const S = b.seqLen;
    const chosenAt = new Set(b.positions);
    b.targets.forEach((t) => assert(!IDS.special.has(t), `special id ${t} is a target`));
    sequences.forEach((seq, r) => {
      let here = 0, e = 0;
      seq.forEach((t, i) => {
        const at = r * S + 1 + i;
        if (IDS.special.has(t)) {
          assert(!chosenAt.has(at), `special ${t} at (${r}, ${i + 1}) chosen`);
          assertEquals(b.inputIds[at], t, "a special token in the text changed");
        } else {
          e++;
          if (chosenAt.has(at)) here++;
        }
      });
      // At least one eligible token chosen where there is one; none where there is none.
      assertEquals(here >= 1, e >= 1, `row ${r}: ${here} chosen of ${e} eligible`);
      eligible += e;
      chosen += here;
      expected += 0.15 * e + (e > 0 ? 0.85 ** e : 0);
      if (e >= 30) {
        longEligible += e;
        longChosen += here;
      }
    });
    return b;
  };
  // The reviewer's case: 7 [UNK]s in 14 tokens, over 200 seeds.
  const unks = Uint32Array.from([1, 5, 1, 6, 1, 7, 1, 8, 1, 9, 1, 10, 1, 11]);
  for (let seed = 0; seed < 200; seed++) check([unks], seed);
  // Sequences about half specials (each of them), and rows of specials only.
  for (let draw = 0; draw < 400; draw++) {
    const sequences = Array.from({ length: 8 }, (_, r) => {
      const len = 1 + Math.floor(next() * 120);
      const onlySpecial = r === 7 && draw % 4 === 0;
      return Uint32Array.from(
        { length: len },
        () =>
          onlySpecial || next() < 0.5
            ? specials[Math.floor(next() * specials.length)]
            : 5 + Math.floor(next() * 96),
      );
    });
    check(sequences, 5000 + draw);
  }
  console.log(
    `maskBatch with specials: ${chosen} of ${eligible} eligible tokens chosen (${
      (100 * chosen / eligible).toFixed(2)
    }%, expected ${(100 * expected / eligible).toFixed(2)}%; ${
      (100 * longChosen / longEligible).toFixed(2)
    }% in rows of ≥ 30 eligible)`,
  );
  assert(Math.abs(chosen / expected - 1) < 0.03, `chosen ${chosen}, expected ${expected}`);
  const longShare = longChosen / longEligible;
  assert(Math.abs(longShare - 0.15) < 0.01, `${longShare} of long rows' eligible tokens chosen`);
  // A row of specials only gets nothing chosen; a batch of such rows has no position at all.
  const none = maskBatch([Uint32Array.from([1, 3, 4, 2, 0, 1])], IDS, generator(3));
  assertEquals([none.positions.length, none.targets.length], [0, 0]);
  assertEquals([...none.inputIds], [2, 1, 3, 4, 2, 0, 1, 3]);
  // Probability 0: the forced choice is the one eligible token.
  for (let seed = 0; seed < 50; seed++) {
    const one = maskBatch([Uint32Array.from([1, 4, 1, 9, 3, 1])], IDS, generator(seed), 0);
    assertEquals([...one.positions, ...one.targets], [4, 9]);
  }
});

Deno.test("batchIndices: each sequence once per epoch, a new order per epoch", () => {
  for (const [count, size] of [[24, 4], [23, 4], [7, 7], [10, 3]]) {
    const perEpoch = Math.floor(count / size);
    const orders: string[] = [];
    for (let epoch = 0; epoch < 3; epoch++) {
      const seen: number[] = [];
      for (let s = 0; s < perEpoch; s++) {
        const step = epoch * perEpoch + s;
        const idx = batchIndices(count, size, 5, step);
        assertEquals(idx.length, size);
        assertEquals(batchIndices(count, size, 5, step), idx, "deterministic");
        seen.push(...idx);
      }
      assertEquals(new Set(seen).size, perEpoch * size, `no repeats in epoch ${epoch}`);
      for (const i of seen) assert(i < count);
      if (count % size === 0) {
        // Nothing dropped: every sequence exactly once.
        assertEquals(seen.toSorted((x, y) => x - y), [...Array(count).keys()], `epoch ${epoch}`);
      }
      orders.push(seen.join());
    }
    assert(new Set(orders).size > 1, `[${count}, ${size}]: the order changes between epochs`);
  }
  assertThrows(() => batchIndices(3, 4, 1, 0), Error, "do not fill one batch");
});

// -------------------------------------------------------------------------------------------------
// End to end

/**
 * Toy sequences with a learnable pattern: arithmetic progressions mod 10 over ids 5..14 (a masked
 * token follows from its neighbours).
 */
function toyCorpus(count: number, seed: number): Uint32Array[] {
  const next = rng(seed);
  return Array.from({ length: count }, () => {
    const len = 4 + Math.floor(next() * 7);
    const start = Math.floor(next() * 10), step = 1 + Math.floor(next() * 2);
    return Uint32Array.from({ length: len }, (_, i) => 5 + (start + step * i) % 10);
  });
}

async function readLog(dir: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(`${dir}/log.jsonl`);
  return text.split("\n").filter((l) => l.length > 0).map((l) => JSON.parse(l));
}

/** A log record without its timing. */
function untimed(r: Record<string, unknown>): Record<string, unknown> {
  const { seconds: _, ...rest } = r;
  return rest;
}

gpuTest(
  "pretrain: held-out loss falls; outputs; a stopped run resumes bit for bit",
  async (gpu) => {
    const f = await fixture();
    const initial = await initialValues(f);
    const root = await Deno.makeTempDir({ prefix: "ehft-pretrain-test-" });
    const N = 30;
    const options = (out: string): PretrainOptions => ({
      config: f.config,
      initial,
      ids: IDS,
      train: toyCorpus(40, 1),
      heldOut: toyCorpus(8, 2),
      out,
      steps: N,
      batchSize: 4,
      maxSeq: 12,
      schedule: { name: "linear", lr: 3e-3, total: N, warmupRatio: 0.1 },
      adamw: PRETRAIN_ADAMW,
      seed: 9,
      evalEvery: 10,
      checkpointEvery: N / 2,
      logEvery: 1,
      evalSequences: 8,
      resume: false,
      modelDtype: "F32",
      quiet: true,
    });
    try {
      // A: straight through.
      const a = `${root}/a`;
      let t0 = performance.now();
      // The log is appended to, one file throughout (it was rewritten whole at every line).
      const logFiles = new Set<number | null>();
      const resultA = await pretrain(gpu, {
        ...options(a),
        onLog: () => void logFiles.add(Deno.statSync(`${a}/log.jsonl`).ino),
      });
      const secondsA = (performance.now() - t0) / 1000;
      assertEquals(logFiles.size, 1, "log.jsonl replaced while the run wrote it");
      const logA = await readLog(a);
      const evals = logA.filter((r) => "held_out_loss" in r);
      assertEquals(evals.map((r) => r.step), [0, 10, 20, N]);
      const first = evals[0].held_out_loss as number, last = evals[evals.length - 1];
      const lastLoss = last.held_out_loss as number;
      assert(lastLoss < 0.8 * first, `held-out loss ${first} → ${lastLoss}`);
      assertEquals(resultA.heldOut?.loss, lastLoss);
      assertEquals(
        logA.filter((r) => "loss" in r).map((r) => r.step),
        [...Array(N)].map((_, i) => i + 1),
      );
      for (const r of logA) {
        if ("loss" in r) assert(Number.isFinite(r.loss) && Number.isFinite(r.grad_norm), "finite");
      }
      await Deno.stat(`${a}/checkpoint.safetensors`);
      const config = JSON.parse(await Deno.readTextFile(`${a}/model/config.json`));
      assertEquals(config.architectures, ["BertForMaskedLM"]);
      assertEquals(config.vocab_size, f.config.vocabSize);
      const saved = await openSafetensors(`${a}/model/model.safetensors`);
      try {
        assertEquals(new Set(saved.tensors.keys()), new Set(f.model.tensors.keys()), "saved names");
        assert(
          !saved.tensors.has("cls.predictions.decoder.weight"),
          "the tied decoder is not saved",
        );
        // The head trained: its output bias moved.
        const bias = await saved.readF32("cls.predictions.bias");
        assert(maxError(bias, initial.head.bias, 1) > 1e-4, "cls.predictions.bias did not move");
      } finally {
        saved.close();
      }

      // B: the same run, stopped by an error from onLog at the first record after the step-N/2
      // checkpoint (step N/2 + 1's loss record: the per-step order is log → eval → checkpoint, so
      // the record of step N/2 itself comes before its checkpoint is written).
      const b = `${root}/b`;
      t0 = performance.now();
      let stopped = false;
      await pretrain(gpu, {
        ...options(b),
        onLog: (r) => {
          if (r.step === N / 2 + 1 && "loss" in r) {
            stopped = true;
            throw new Error("stop here");
          }
        },
      }).then(
        () => assert(false, "run B should have stopped"),
        (e) => assertEquals((e as Error).message, "stop here"),
      );
      assert(stopped);
      await assertMissing(`${b}/model`);
      const logB = await readLog(b);
      assertEquals(logB.at(-1)?.step, N / 2 + 1, "the stopped run logged past its checkpoint");
      // Resume: continues from the checkpoint at N/2 (the log past it is dropped).
      const resumedSteps: number[] = [];
      const resultB = await pretrain(gpu, {
        ...options(b),
        resume: true,
        onLog: (r) => void ("loss" in r && resumedSteps.push(r.step as number)),
      });
      // It did resume (a run from scratch would end in the same bytes too).
      assertEquals(resumedSteps, [...Array(N / 2)].map((_, i) => N / 2 + 1 + i), "resumed steps");
      assert(resultB.tokens < resultA.tokens, "the resumed run trained on fewer tokens");
      const secondsB = (performance.now() - t0) / 1000;
      assertEquals(resultB.heldOut, resultA.heldOut, "final held-out evaluation");
      const bytes = (p: string) => Deno.readFile(p);
      assertEquals(
        await bytes(`${b}/model/model.safetensors`),
        await bytes(`${a}/model/model.safetensors`),
        "model.safetensors after resume",
      );
      assertEquals(
        await bytes(`${b}/checkpoint.safetensors`),
        await bytes(`${a}/checkpoint.safetensors`),
        "checkpoint.safetensors after resume",
      );
      assertEquals((await readLog(b)).map(untimed), logA.map(untimed), "log.jsonl after resume");
      console.log(
        `pretrain: held-out loss ${first.toFixed(4)} → ${lastLoss.toFixed(4)} (accuracy ${
          ((evals[0].held_out_accuracy as number) * 100).toFixed(1)
        }% → ${((last.held_out_accuracy as number) * 100).toFixed(1)}%); run A ${
          secondsA.toFixed(1)
        } s, stopped + resumed ${secondsB.toFixed(1)} s`,
      );
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

async function assertMissing(path: string): Promise<void> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  throw new Error(`${path} exists`);
}
