// WiC end to end: the shipped files (counts, labels, the target words' character spans), label
// formats, the spans mapped to tokens with the real bert-base-uncased vocabulary (after
// truncation, or a clear error), and a tiny EH-FT run with a fresh WiC head (F = 5·hidden) on a
// synthetic WiC-format task whose label is whether the two target words are the same word;
// predict.ts then predicts WiC with the model it wrote.

import { uniformGenerator as generator } from "../model/init.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import { writeTinyBert } from "./train_fixture.ts";
import { initialHeadValues } from "../model/head.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";
import { loadTokenizer, type TextTokenizer } from "../model/tokenizer.ts";
import { predict } from "../predict.ts";
import { taskByName } from "../tasks/all.ts";
import { rte } from "../tasks/rte.ts";
import { wic, WIC_RECIPE } from "../tasks/wic.ts";
import { assembleBatch, tokenizeExamples } from "../train/batches.ts";
import { parseTrainArgs } from "../train/config.ts";
import { DataError } from "../train/data_files.ts";
import { runTraining } from "../train/run.ts";
import { headFeatures, type TaskExample } from "../train/task.ts";

const DATA = new URL("../data/superglue/WiC", import.meta.url).pathname;
const VOCAB = new URL("../data/tokenizers/bert-base-uncased/vocab.txt", import.meta.url)
  .pathname;

const test = (name: string, fn: () => Promise<void> | void) =>
  Deno.test({ name, ...IN_PROCESS_GPU, fn });

/** The word form an example's span `k` covers. */
function spanText(e: TaskExample, k: 0 | 1): string {
  const text = (e.inputs[0] as [string, string])[k];
  return text.slice(...e.spans![k]);
}

test("wic: the shipped splits read, false 0 / true 1, spans give the target word", async () => {
  const train = await wic.readExamples(DATA, "train");
  const val = await wic.readExamples(DATA, "val");
  const testSplit = await wic.readExamples(`${DATA}/test.jsonl`, "ignored");
  assertEquals([train.length, val.length, testSplit.length], [5428, 638, 1400]);
  for (const [split, n] of [[train, 2714], [val, 319]] as const) {
    assertEquals(split.filter((e) => e.label === 1).length, n);
    assertEquals(split.filter((e) => e.label === 0).length, n);
  }
  assert(testSplit.every((e) => e.label === null), "the test split has no labels");
  assertEquals(testSplit.map((e) => e.idx), Array.from({ length: 1400 }, (_, i) => i));
  assertEquals(wic.labels, ["false", "true"]);
  assertEquals([wic.prediction([0.2]), wic.prediction([-0.2])], ["true", "false"]);

  // Known examples: the offsets are [start, end) of the word form used in each sentence.
  const t0 = train[0]; // "place", label false
  assertEquals(t0.inputs, [[
    "Do you want to come over to my place later?",
    "A political system with no place for the less prominent groups.",
  ]]);
  assertEquals([spanText(t0, 0), spanText(t0, 1), t0.label], ["place", "place", 0]);
  assertEquals(t0.spans, [[31, 36], [27, 32]]);
  assertEquals([spanText(train[2], 0), spanText(train[2], 1)], ["Run", "ran"]); // "run"
  assertEquals([spanText(val[5], 0), spanText(val[5], 1), val[5].label], ["thing", "Things", 1]);
  assertEquals([spanText(val[3], 0), spanText(val[3], 1), val[3].label], ["brush", "brushes", 1]);
  assertEquals([spanText(testSplit[0], 0), spanText(testSplit[0], 1)], ["water", "watering"]);

  // Every val span is the word or an inflection of it: same first letter (irregular forms
  // like "went" for "go" occur in train only), and most are the word itself.
  const raw = (await Deno.readTextFile(`${DATA}/val.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l).word as string
  );
  let exact = 0;
  val.forEach((e, i) => {
    for (const k of [0, 1] as const) {
      const form = spanText(e, k).toLowerCase();
      assertEquals(form[0], raw[i][0], `val idx ${e.idx} span ${k + 1} "${form}" for ${raw[i]}`);
      if (form === raw[i]) exact++;
    }
  });
  assert(exact > 0.55 * 2 * val.length, `${exact} exact word forms`);
  assertEquals(taskByName("wic"), wic);
  assertEquals(headFeatures(wic, 24), 120);
  assertEquals(headFeatures(rte, 24), 24);
  assertEquals([WIC_RECIPE.epochs, WIC_RECIPE.lr, WIC_RECIPE.strategy, WIC_RECIPE.peft], [
    40,
    3e-5,
    "ehft",
    "bitfit",
  ]);
});

test("wic: labels as booleans, strings or 0/1; bad rows name the file and line", async () => {
  const dir = await Deno.makeTempDir();
  const row = (extra: Record<string, unknown>) =>
    JSON.stringify({
      word: "bank",
      sentence1: "The bank of the river.",
      sentence2: "A bank loan.",
      start1: 4,
      end1: 8,
      start2: 2,
      end2: 6,
      idx: 0,
      ...extra,
    });
  try {
    const file = `${dir}/train.jsonl`;
    await Deno.writeTextFile(
      file,
      [true, false, "true", "false", "True", 1, 0, undefined].map((label, idx) =>
        row({ label, idx })
      ).join("\n"),
    );
    const read = await wic.readExamples(dir, "train");
    assertEquals(read.map((e) => e.label), [1, 0, 1, 0, 1, 1, 0, null]);
    assertEquals(read[0].spans, [[4, 8], [2, 6]]);

    const cases: [Record<string, unknown>, string][] = [
      [{ label: "maybe" }, ':2: label "maybe"'],
      [{ start1: -1 }, ':2: field "start1" is not a non-negative integer'],
      [{ end2: 1.5 }, ':2: field "end2" is not a non-negative integer'],
      [{ start2: 6, end2: 6 }, ":2: start2/end2 [6, 6) is not a non-empty range"],
      [{ end1: 99 }, ":2: start1/end1 [4, 99) is not a non-empty range inside its sentence"],
      [{ sentence2: 7 }, ':2: field "sentence2" is not a string'],
    ];
    for (const [i, [extra, message]] of cases.entries()) {
      const bad = `${dir}/case${i}.jsonl`;
      await Deno.writeTextFile(bad, `${row({ label: true })}\n${row({ label: false, ...extra })}`);
      const e = await assertRejects(() => wic.readExamples(bad, "val"), DataError, message);
      assert(e.message.startsWith(bad), e.message);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

let bert: Promise<TextTokenizer> | null = null;
/** The real bert-base-uncased WordPiece tokenizer, from a folder holding its vocab.txt. */
function bertTokenizer(): Promise<TextTokenizer> {
  bert ??= (async () => {
    const dir = await Deno.makeTempDir();
    try {
      await Deno.copyFile(VOCAB, `${dir}/vocab.txt`);
      return await loadTokenizer(dir, {
        vocabSize: 30522,
        typeVocabSize: 2,
        maxPositions: 512,
        padTokenId: 0,
        positionsFromPadding: false,
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  })();
  return bert;
}

test("wic: target words mapped to their tokens with bert-base-uncased", async () => {
  const tok = await bertTokenizer();
  const val = await wic.readExamples(DATA, "val");
  const split = tokenizeExamples(tok, val, 512, "wic val");
  assert(split.hasSpans);
  // val idx 7: "The very easiness of the deed held her back." / "There was an easiness between
  // them.": [CLS] the very ea ##sin ##ess ... [SEP] there was an ea ##sin ##ess ...
  const e7 = split.examples[7];
  const ids = e7.inputs[0].ids;
  const tokens = (a: number, b: number) => tok.decode(ids.slice(a, b)).replace(/ ##/g, "");
  assertEquals(tok.tokenize("easiness"), ["ea", "##sin", "##ess"]);
  assertEquals(e7.spans, [3, 6, 17, 20]);
  assertEquals([...ids.slice(3, 6)], [19413, 11493, 7971]);
  assertEquals([...ids.slice(17, 20)], [19413, 11493, 7971]);
  assertEquals([tokens(3, 6), tokens(17, 20)], ["easiness", "easiness"]);
  assertEquals(ids[13], 102); // [SEP] closes sentence 1 (12 tokens after [CLS])
  // Every val example: the span's tokens decode to the word form at its character offsets.
  split.examples.forEach((te, i) => {
    const [s1, e1, s2, e2] = te.spans!;
    const words = [
      tok.decode(te.inputs[0].ids.slice(s1, e1)),
      tok.decode(te.inputs[0].ids.slice(
        s2,
        e2,
      )),
    ].map((w) => w.replace(/ ##/g, "").replace(/ /g, ""));
    const forms = [spanText(val[i], 0), spanText(val[i], 1)].map((w) =>
      w.toLowerCase().replace(/ /g, "")
    );
    assertEquals(words, forms, `val idx ${val[i].idx}`);
    // Span 1 lies in sentence 1 (after [CLS]), span 2 after the [SEP] that closes it.
    const sep = te.inputs[0].ids.indexOf(102);
    assert(s1 >= 1 && e1 <= sep && s2 > sep, `val idx ${val[i].idx}`);
  });
  // Batches carry [examples × 4] spans, row-relative (right padding keeps them).
  const batch = assembleBatch(
    { padTokenId: 0, positionsFromPadding: false } as Parameters<typeof assembleBatch>[0],
    "bce",
    split.examples.slice(6, 9),
  );
  assertEquals([...batch.spans!.slice(4, 8)], [3, 6, 17, 20]);

  // Truncation that cuts into a target word is an error naming the example, not a clamp.
  const cut = [{ ...val[7], idx: 77 }];
  const e = assertThrows(
    () => tokenizeExamples(tok, cut, 12, "wic val"),
    Error,
    'wic val: example 0 (idx 77): target word 2 "easiness"',
  );
  assert(
    e.message.includes(
      "tokens [3, 6) of text 2, but truncation to 12 tokens kept only its first 4",
    ),
    e.message,
  );
  assert(e.message.includes("--max-length"), e.message);
  // Budget left for both words: longest-first keeps them.
  assertEquals(tokenizeExamples(tok, cut, 22, "wic val").examples[0].spans, [3, 6, 15, 18]);
  // A first-token task's examples must not carry spans (and a WiC split must have them all).
  assertThrows(
    () => tokenizeExamples(tok, [val[0], { ...val[1], spans: undefined }], 512, "mixed"),
    Error,
    "mixed: example 1 (idx 1) lacks target-word spans",
  );
});

// --- A tiny EH-FT run on a synthetic WiC-format task -------------------------------------------

const TARGETS = ["war", "city", "state", "world"];
const CONTEXT = ["the", "people", "time", "company", "four", "five", "six", "was"];

/**
 * WiC rows over the tiny vocabulary: each sentence is three words, one of them (at a random
 * place) the target; the label is whether both targets are the same word (classes alternate).
 */
function syntheticRows(n: number, seed: number): Record<string, unknown>[] {
  const next = generator(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)];
  const sentence = (target: string) => {
    const at = Math.floor(next() * 3);
    const words = [pick(CONTEXT), pick(CONTEXT), pick(CONTEXT)];
    words[at] = target;
    const start = words.slice(0, at).join(" ").length + (at > 0 ? 1 : 0);
    return { text: words.join(" "), start, end: start + target.length };
  };
  return Array.from({ length: n }, (_, idx) => {
    const same = idx % 2 === 1;
    const t1 = pick(TARGETS);
    const t2 = same ? t1 : pick(TARGETS.filter((t) => t !== t1));
    const a = sentence(t1), b = sentence(t2);
    return {
      word: t1,
      sentence1: a.text,
      sentence2: b.text,
      idx,
      label: same,
      start1: a.start,
      end1: a.end,
      start2: b.start,
      end2: b.end,
    };
  });
}

test("wic: EH-FT on a synthetic WiC task with a 5·hidden head; predict.ts predicts WiC", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-wic-" });
  try {
    const model = `${dir}/model`, data = `${dir}/data`, head = `${dir}/head.safetensors`;
    await writeTinyBert(model, false);
    await Deno.mkdir(data);
    const write = (name: string, rows: Record<string, unknown>[]) =>
      Deno.writeTextFile(`${data}/${name}`, rows.map((r) => JSON.stringify(r)).join("\n"));
    await write("train.jsonl", syntheticRows(64, 1));
    const dev = syntheticRows(32, 2);
    // Labels as strings in the dev file: the same task reads both.
    await write("val.jsonl", dev.map((r) => ({ ...r, label: String(r.label) })));
    await write("test.jsonl", dev.map(({ label: _, ...r }) => r));
    for (const r of syntheticRows(4, 3)) {
      assertEquals(
        (r.sentence1 as string).slice(r.start1 as number, r.end1 as number),
        r.word as string,
      );
    }
    // A fresh narrow WiC head: F = 5 · 24, 64 units.
    const H = 24, W = 64;
    const v = initialHeadValues(5 * H, W, 1, 7);
    await writeSafetensors(head, {
      "head.dense.weight": { dtype: "F32", shape: [W, 5 * H], data: v.dense.weight },
      "head.dense.bias": { dtype: "F32", shape: [W], data: v.dense.bias },
      "head.out_proj.weight": { dtype: "F32", shape: [1, W], data: v.outProj.weight },
      "head.out_proj.bias": { dtype: "F32", shape: [1], data: v.outProj.bias },
    });
    const out = `${dir}/run`;
    const { config } = parseTrainArgs([
      ...["--model", model, "--data", data, "--head", head, "--out", out],
      ...["--batch-size", "16", "--dropout", "0", "--schedule", "constant"],
      ...["--max-grad-norm", "0", "--eval-every", "8", "--checkpoint-every", "0"],
      ...["--stage1-lr", "1e-2", "--lr", "1e-2", "--max-steps", "32"],
    ], WIC_RECIPE);
    assertEquals([config.strategy, config.peft], ["ehft", "bitfit"]);
    const metrics = await runTraining(config, { task: wic, quiet: true });
    // Chance is 0.5; this run reaches 0.97 (the WiC features make |w1 − w2| = 0 easy to see).
    assert((metrics.final.accuracy ?? 0) >= 0.9, JSON.stringify(metrics));

    const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
    assertEquals(run.resolved.task.head_input, "wic");
    assertEquals(run.resolved.head_width, W);
    for (const sub of ["stage1", "model"]) {
      const reader = await openSafetensors(`${out}/${sub}/model.safetensors`);
      try {
        assertEquals(reader.tensors.get("head.dense.weight")!.shape, [W, 5 * H], sub);
        assertEquals(reader.metadata.head_features, String(5 * H), sub);
        assertEquals(reader.metadata.task, "wic");
      } finally {
        reader.close();
      }
    }

    // predict.ts on the model it wrote: WiC labels, and the run's dev accuracy.
    const predictions = await predict({
      model: `${out}/model`,
      task: wic,
      data,
      split: "val",
      batchSize: 5,
    });
    assertEquals(predictions.map((p) => p.idx), dev.map((r) => r.idx));
    assert(predictions.every((p) => p.prediction === "true" || p.prediction === "false"));
    const correct = predictions.filter((p, i) => p.prediction === String(dev[i].label)).length;
    assertEquals(correct / dev.length, metrics.final.accuracy, "predict.ts agrees with the run");
    const unlabeled = await predict({
      model: `${out}/model`,
      task: wic,
      data,
      split: "test",
      batchSize: 32,
    });
    assertEquals(unlabeled.map((p) => p.prediction), predictions.map((p) => p.prediction));

    // A WiC head does not serve a first-token task, nor a first-token head WiC.
    await assertRejects(
      () => predict({ model: `${out}/model`, task: rte, data, split: "val", batchSize: 4 }),
      Error,
      "its head takes 120 features, task rte on this backbone (hidden size 24) gives 24",
    );
    const small = initialHeadValues(H, W, 1, 7);
    await writeSafetensors(`${dir}/small.safetensors`, {
      "head.dense.weight": { dtype: "F32", shape: [W, H], data: small.dense.weight },
      "head.dense.bias": { dtype: "F32", shape: [W], data: small.dense.bias },
      "head.out_proj.weight": { dtype: "F32", shape: [1, W], data: small.outProj.weight },
      "head.out_proj.bias": { dtype: "F32", shape: [1], data: small.outProj.bias },
    });
    const wrong = parseTrainArgs([
      ...["--model", model, "--data", data, "--head", `${dir}/small.safetensors`],
      ...["--out", `${dir}/wrong`, "--max-steps", "2"],
    ], WIC_RECIPE).config;
    await assertRejects(
      () => runTraining(wrong, { task: wic, quiet: true }),
      Error,
      "a head of 24 → 1, the model and task need 120 → 1",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
