// The pieces of the loop that need no GPU: strategies as stage lists, the learning-rate schedule,
// the seeded data order, batch padding, predictions and the best-score bookkeeping.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import type { ModelConfig } from "../model/config.ts";
import { assembleBatch, DataStream, epochOrder, tokenizeExamples } from "../train/batches.ts";
import type { TextTokenizer } from "../model/tokenizer.ts";
import { predictionOf, updateBest } from "../train/evaluate.ts";
import { isNoDecayName } from "../train/optimizer.ts";
import { parseTrainArgs } from "../train/config.ts";
import { checkSameSchedule } from "../train/run_folder.ts";
import { summarizeSeeds } from "../train/run.ts";
import { learningRate, warmupSteps } from "../train/schedule.ts";
import { resolveStages, stage1Steps } from "../train/strategy.ts";

const budget = { totalSteps: 100, stage1Ratio: 0.1, lr: 1e-5, stage1Lr: 5e-4 };

Deno.test("strategies resolve to stages", () => {
  const ft = resolveStages({ ...budget, strategy: "ft", peft: null });
  assertEquals(ft, [{
    name: "main",
    steps: 100,
    lr: 1e-5,
    trains: { head: true, backbone: "all", peft: false },
    freshHead: true,
  }]);
  const lp = resolveStages({ ...budget, strategy: "lp", peft: null, lr: 5e-4 });
  assertEquals(lp.map((s) => [s.name, s.steps, s.lr, s.trains.backbone]), [
    ["main", 100, 5e-4, "none"],
  ]);
  const peft = resolveStages({ ...budget, strategy: "peft", peft: "lora", lr: 5e-4 });
  assertEquals(peft[0].trains, { head: true, backbone: "peft", peft: true });
  const lpft = resolveStages({ ...budget, strategy: "lpft", peft: null });
  assertEquals(lpft.map((s) => [s.name, s.steps, s.lr, s.trains.backbone, s.trains.peft]), [
    ["stage1", 10, 5e-4, "none", false],
    ["stage2", 90, 1e-5, "all", false],
  ]);
  assert(!lpft[1].restoreBackbone && !lpft[1].freshHead);
  const ehft = resolveStages({ ...budget, strategy: "ehft", peft: "bitfit" });
  assertEquals(ehft[0].trains, { head: true, backbone: "peft", peft: true });
  assertEquals(ehft[1], {
    name: "stage2",
    steps: 90,
    lr: 1e-5,
    trains: { head: true, backbone: "all", peft: false },
    restoreBackbone: true,
    dropPeft: true,
  });
  const reserve = resolveStages({ ...budget, strategy: "ehft-reserve", peft: "prefix" });
  assertEquals(reserve[1].trains, { head: true, backbone: "all", peft: true });
  assert(reserve[1].restoreBackbone && !reserve[1].dropPeft);
  assertThrows(() => resolveStages({ ...budget, strategy: "ehft", peft: null }), Error, "--peft");
  assertThrows(() => resolveStages({ ...budget, strategy: "ft", peft: "lora" }), Error, "no PEFT");
  // Stage 1 gets round(ratio · total) steps, at least 1, leaving Stage 2 at least 1.
  assertEquals([stage1Steps(100, 0.1), stage1Steps(7, 0.1), stage1Steps(2, 0.9)], [10, 1, 1]);
  assertEquals(stage1Steps(25, 0.1), 3);
  // Guards a dropped lower clamp: round(0.1) is 0, yet Stage 1 must run at least one step.
  assertEquals(stage1Steps(10, 0.01), 1);
  // Guards loosened checks: one step cannot be split, and a ratio of 1 leaves no Stage 2.
  assertThrows(() => stage1Steps(1, 0.5), Error, "at least 2 steps");
  assertThrows(() => stage1Steps(10, 1), Error, "not in (0, 1)");
  // Guards Stage 1 of ehft-reserve: PEFT + head from a fresh head, as ehft (not lpft's head only).
  assertEquals(reserve[0], {
    name: "stage1",
    steps: 10,
    lr: 5e-4,
    trains: { head: true, backbone: "peft", peft: true },
    freshHead: true,
  });
});

Deno.test("schedule: linear warmup then linear decay to 0, as Hugging Face's", () => {
  const s = { name: "linear" as const, lr: 1, total: 100, warmupRatio: 0.1 };
  assertEquals(warmupSteps(s), 10);
  // Guards ⌈⌉ or rounding for the documented ⌊warmupRatio · total⌋: 2.5 warmup steps are 2.
  const odd = { ...s, total: 25 };
  assertEquals([warmupSteps(odd), learningRate(odd, 2)], [2, 1]);
  // ...of the exact product: 0.29 · 100 is 28.999999999999996 in float64.
  const exact = [[0.29, 100], [0.58, 50], [0.57, 100], [0.1, 99], [0.06, 1000]];
  assertEquals(
    exact.map(([warmupRatio, total]) => warmupSteps({ ...s, warmupRatio, total })),
    [29, 29, 57, 9, 60],
  );
  assertEquals([0, 5, 10, 55, 99].map((d) => learningRate(s, d)), [0, 0.5, 1, 0.5, 1 / 90]);
  const none = { ...s, warmupRatio: 0, total: 4 };
  assertEquals([0, 1, 2, 3].map((d) => learningRate(none, d)), [1, 0.75, 0.5, 0.25]);
  const constant = { ...s, name: "constant" as const };
  // The same warmup, then the full rate (get_constant_schedule_with_warmup); none without one.
  assertEquals([0, 5, 10, 50, 99].map((d) => learningRate(constant, d)), [0, 0.5, 1, 1, 1]);
  const flat = { ...constant, warmupRatio: 0 };
  assertEquals([0, 50, 99].map((d) => learningRate(flat, d)), [1, 1, 1]);
});

Deno.test("data order: a seeded shuffle per epoch, file order without shuffling", () => {
  const a = epochOrder(50, 42, 0, true);
  assertEquals([...a].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  assertEquals(epochOrder(50, 42, 0, true), a);
  assert(epochOrder(50, 42, 1, true).join() !== a.join(), "epochs differ");
  assert(epochOrder(50, 43, 0, true).join() !== a.join(), "seeds differ");
  assertEquals(epochOrder(5, 42, 3, false), [0, 1, 2, 3, 4]);
  // 10 examples in batches of 4: 3 batches per epoch, the last short; step 3 starts epoch 1.
  const stream = new DataStream(10, 4, 7, false);
  assertEquals([0, 1, 2, 3].map((s) => stream.examples(s)), [
    [0, 1, 2, 3],
    [4, 5, 6, 7],
    [8, 9],
    [0, 1, 2, 3],
  ]);
  const shuffled = new DataStream(10, 4, 7, true);
  const epoch1 = [3, 4, 5].flatMap((s) => shuffled.examples(s));
  assertEquals(epoch1, epochOrder(10, 7, 1, true));
  // Guards a stale order: one stream walking across the epoch boundary reshuffles at step 3.
  const walked = new DataStream(10, 4, 7, true);
  const steps = [0, 1, 2, 3, 4, 5].map((s) => walked.examples(s));
  assertEquals(steps.slice(3).flat(), epochOrder(10, 7, 1, true));
  // Guards the Fisher–Yates bounds (i > 0, j in [0, i]): the seeded orders runs are recorded with.
  assertEquals(epochOrder(10, 7, 0, true), [8, 7, 4, 3, 9, 2, 1, 5, 6, 0]);
  assertEquals(epochOrder(10, 7, 1, true), [4, 1, 9, 6, 8, 5, 2, 0, 3, 7]);
});

Deno.test("batches are padded to their longest row, with each model's positions", () => {
  const bert = { padTokenId: 0, positionsFromPadding: false } as ModelConfig;
  const ex = (ids: number[], label: number) => ({
    inputs: [{ ids: Uint32Array.from(ids), types: new Uint32Array(ids.length) }],
    label,
  });
  const b = assembleBatch(bert, "bce", [ex([2, 7, 3], 1), ex([2, 3], 0)]);
  assertEquals([b.examples, b.encoder.batch, b.encoder.seqLen], [2, 2, 3]);
  assertEquals(Array.from(b.encoder.inputIds!), [2, 7, 3, 2, 3, 0]);
  assertEquals(Array.from(b.encoder.attentionMask!), [1, 1, 1, 1, 1, 0]);
  assertEquals(Array.from(b.encoder.positionIds!), [0, 1, 2, 0, 1, 2]);
  assert(b.targets instanceof Float32Array);
  const roberta = { padTokenId: 1, positionsFromPadding: true } as ModelConfig;
  const r = assembleBatch(roberta, "ce", [ex([0, 7, 2], 2), ex([0, 2], 0)]);
  assertEquals(Array.from(r.encoder.inputIds!), [0, 7, 2, 0, 2, 1]);
  assertEquals(Array.from(r.encoder.positionIds!), [2, 3, 4, 2, 3, 1]);
  assert(r.targets instanceof Uint32Array);
  assertEquals([...r.targets], [2, 0]);
  // A literal <pad> in the text (the tokenizer gives its id): HF's create_position_ids_from_input_ids
  // gives it padding_idx and counts on without it, as the tokenizer's batches (predict.ts) do.
  const literal = assembleBatch(roberta, "ce", [ex([0, 7, 1, 8, 2], 0)]);
  assertEquals(Array.from(literal.encoder.positionIds!), [2, 3, 1, 4, 5]);
  // Two inputs per example (multiple choice): rows are example-major.
  const two = {
    inputs: [ex([2, 5], 0).inputs[0], ex([2, 6, 7], 0).inputs[0]],
    label: 1,
  };
  const m = assembleBatch(bert, "ce", [two]);
  assertEquals([m.examples, m.encoder.batch, m.encoder.seqLen, [...m.targets]], [1, 2, 3, [1]]);
  // Labels a typed array would change without a word (1.5 to class 1, -1 to 4294967295).
  for (const label of [1.5, -1, NaN]) {
    assertThrows(
      () => assembleBatch(bert, "ce", [ex([2, 3], 0), ex([2, 3], label)]),
      Error,
      `assembleBatch: example 1's label ${label} is not a class id (an integer ≥ 0) for loss ce`,
    );
  }
  assertThrows(
    () => assembleBatch(bert, "mse", [ex([2, 3], Infinity)]),
    Error,
    "assembleBatch: example 0's label Infinity is not a finite number (loss mse)",
  );
});

Deno.test("predictions, best scores, the no-decay rule and seed summaries", () => {
  assertEquals(predictionOf("bce", [0.3]), 1);
  assertEquals(predictionOf("bce", [-0.3]), 0);
  assertEquals(predictionOf("ce", [0.1, 2, -1]), 1);
  // Guards >= for >: a logit of exactly 0 (probability 0.5) is class 0; ties go to the first.
  assertEquals(predictionOf("bce", [0]), 0);
  assertEquals(predictionOf("ce", [1, 2, 2]), 1);
  assertEquals(predictionOf("mse", [3.5]), 3.5);
  assertEquals(updateBest({}, { accuracy: 0.5, pearson: null }), { accuracy: 0.5, pearson: null });
  assertEquals(updateBest({ accuracy: 0.7, f1: 0.2 }, { accuracy: 0.6, f1: 0.4 }), {
    accuracy: 0.7,
    f1: 0.4,
  });
  assertEquals(updateBest({ pearson: 0.3 }, { pearson: null }), { pearson: 0.3 });
  // An undefined r (constant predictions) is no best: any later value replaces it.
  assertEquals(updateBest({ pearson: null }, { pearson: -0.2 }), { pearson: -0.2 });
  for (const n of ["bert.encoder.layer.0.output.dense.bias", "head.out_proj.bias"]) {
    assert(isNoDecayName(n), n);
  }
  assert(isNoDecayName("bert.embeddings.LayerNorm.weight"));
  assert(isNoDecayName("bert.encoder.layer.3.attention.output.LayerNorm.weight"));
  for (
    const n of [
      "bert.embeddings.word_embeddings.weight",
      "head.dense.weight",
      "lora.encoder.layer.0.attention.self.query.lora_A.weight",
      "prefix.encoder.layer.0.key",
    ]
  ) {
    assert(!isNoDecayName(n), n);
  }
  const summary = summarizeSeeds({
    "1": { final: { accuracy: 0.5 }, best: { accuracy: 0.75 } },
    "2": { final: { accuracy: 0.7 }, best: { accuracy: 0.75 } },
  });
  assertEquals(summary.final.accuracy!.toFixed(6), "0.600000");
  assertEquals(summary.std.final.accuracy!.toFixed(6), "0.100000");
  assertEquals(summary.best, { accuracy: 0.75 });
  assertEquals(summary.std.best, { accuracy: 0 });
});

Deno.test("schedule: --resume of a run whose warmup was the product rounded down, where that differs, is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const write = (folder: string, schedule: Record<string, unknown>) =>
      Deno.writeTextFile(
        `${folder}/run.json`,
        JSON.stringify({
          settings: {},
          resolved: { schedule, stages: [{ name: "main", steps: 50 }] },
        }),
      );
    const config = (ratio: string, ...more: string[]) =>
      parseTrainArgs([
        ...["--task", "rte", "--model", dir, "--data", dir, "--out", dir],
        ...["--warmup-ratio", ratio, ...more],
      ]).config;
    // Started before warmup_steps was recorded, when 0.58 · 50 gave 28.
    await write(dir, { name: "linear", warmup_ratio: 0.58 });
    const refusal = (folder: string) =>
      `--resume: ${folder} was started when --warmup-ratio 0.58 gave its stage of 50 steps 28 ` +
      "warmup steps (a rounding error); it now gives 29, so the resumed run would be neither " +
      "(--overwrite to restart it)";
    await assertRejects(() => checkSameSchedule(dir, dir, config("0.58")), Error, refusal(dir));
    // Where the product was no rounding error, the old runs resume; so do the new ones.
    await write(dir, { name: "linear", warmup_ratio: 0.5 });
    await checkSameSchedule(dir, dir, config("0.5"));
    const recorded = {
      name: "linear",
      warmup_ratio: 0.58,
      constant_warmup: true,
      warmup_steps: [29],
    };
    await write(dir, recorded);
    await checkSameSchedule(dir, dir, config("0.58"));
    // A constant run from before it warmed up had no warmup to round: it is refused for that.
    await write(dir, { name: "constant", warmup_ratio: 0.58 });
    await assertRejects(
      () => checkSameSchedule(dir, dir, config("0.58", "--schedule", "constant")),
      Error,
      `--resume: ${dir} was started when --schedule constant had no warmup`,
    );
    // With several seeds, a finished seed's rates count too: seed 2, not yet started, is refused.
    await Deno.remove(`${dir}/run.json`);
    for (const seed of ["seed-1", "seed-2"]) await Deno.mkdir(`${dir}/${seed}`);
    await write(`${dir}/seed-1`, { name: "linear", warmup_ratio: 0.58 });
    await assertRejects(
      () => checkSameSchedule(`${dir}/seed-2`, dir, config("0.58")),
      Error,
      refusal(`${dir}/seed-1`),
    );
    await write(`${dir}/seed-1`, recorded);
    await checkSameSchedule(`${dir}/seed-2`, dir, config("0.58"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizeExamples: a split of 150 000 inputs (a spread over its rows overflowed the stack)", () => {
  // Three tokens per input: only the size of the split matters here.
  const stub = {
    encodeBatch: (inputs: readonly unknown[]) => {
      const n = inputs.length;
      return {
        batch: n,
        seqLen: 3,
        inputIds: new Uint32Array(3 * n).fill(7),
        typeIds: new Uint32Array(3 * n),
        lengths: new Array(n).fill(3),
        fellBack: [],
      };
    },
  } as unknown as TextTokenizer;
  const examples = Array.from({ length: 150_000 }, (_, idx) => ({ idx, inputs: ["a"], label: 0 }));
  const split = tokenizeExamples(stub, examples, 16, "big train");
  assertEquals([split.examples.length, split.longest], [150_000, 3]);
});
