// The task files on the real shipped data (data/superglue, data/glue) and on small files written
// here: split sizes, the exact encoder inputs of known examples (COPA's connective and
// lower-casing), HF label ids, unlabeled test splits, and the tolerant-but-strict parsing (labels
// as names, booleans, integers or strings; a UTF-8 byte-order mark; tabs only, quotes as text;
// malformed lines as errors naming the file and line).

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { boolq } from "../tasks/boolq.ts";
import { cb, CB_RECIPE } from "../tasks/cb.ts";
import { cola, COLA_RECIPE } from "../tasks/cola.ts";
import { copa, COPA_RECIPE, copaText } from "../tasks/copa.ts";
import { mrpc, MRPC_RECIPE } from "../tasks/mrpc.ts";
import { qnli, QNLI_RECIPE } from "../tasks/qnli.ts";
import { stsb, STSB_RECIPE } from "../tasks/stsb.ts";
import { BOOLQ_RECIPE } from "../tasks/boolq.ts";
import { TASKS } from "../tasks/all.ts";
import { wic } from "../tasks/wic.ts";
import { DataError, labelId, readJsonl, readTsv, tsvColumn } from "../train/data_files.ts";
import type { Task, TaskExample } from "../train/task.ts";

const DATA = new URL("../data/", import.meta.url).pathname;

async function tempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-tasks-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Reads `text` written to `<dir>/<name>` as split `split` of `task`. */
async function readText(
  task: Task,
  dir: string,
  name: string,
  text: string,
  split = "val",
): Promise<TaskExample[]> {
  await Deno.writeTextFile(`${dir}/${name}`, text);
  return await task.readExamples(`${dir}/${name}`, split);
}

/** Expects a DataError whose message starts with the file and holds `message`. */
async function rejects(task: Task, dir: string, name: string, text: string, message: string) {
  await Deno.writeTextFile(`${dir}/${name}`, text);
  const e = await assertRejects(() => task.readExamples(`${dir}/${name}`, "x"), DataError, message);
  assert(e.message.startsWith(`${dir}/${name}`), e.message);
}

function counts(examples: TaskExample[]): number[] {
  const out: number[] = [];
  for (const e of examples) if (e.label !== null) out[e.label] = (out[e.label] ?? 0) + 1;
  return out;
}

Deno.test("tasks: every task is registered with the paper's recipe", () => {
  assertEquals(Object.keys(TASKS).sort(), [
    "boolq",
    "cb",
    "cola",
    "copa",
    "mrpc",
    "qnli",
    "rte",
    "stsb",
    "wic",
  ]);
  for (const [name, task] of Object.entries(TASKS)) assertEquals(task.name, name);
  const epochs = [
    CB_RECIPE,
    COPA_RECIPE,
    MRPC_RECIPE,
    COLA_RECIPE,
    STSB_RECIPE,
    BOOLQ_RECIPE,
    QNLI_RECIPE,
  ]
    .map((r) => [r.task, r.epochs, r.maxLength]);
  assertEquals(epochs, [
    ["cb", 400, 512],
    ["copa", 400, 256],
    ["mrpc", 60, 512],
    ["cola", 20, 512],
    ["stsb", 20, 512],
    ["boolq", 40, 512],
    ["qnli", 10, 512],
  ]);
  for (const r of [CB_RECIPE, COPA_RECIPE, MRPC_RECIPE, COLA_RECIPE, STSB_RECIPE, QNLI_RECIPE]) {
    assertEquals([r.strategy, r.peft, r.lr, r.batchSize, r.stage1Ratio], [
      "ehft",
      "bitfit",
      1e-5,
      32,
      0.1,
    ]);
  }
  // Heads and losses as the official code has them.
  const shape = (t: Task) => [t.headClasses, t.loss, t.metrics.join(",")];
  assertEquals(shape(cb), [3, "ce", "accuracy,macro_f1"]);
  assertEquals(shape(copa), [1, "ce", "accuracy"]);
  assertEquals(shape(mrpc), [1, "bce", "f1,accuracy"]);
  assertEquals(shape(cola), [1, "bce", "mcc"]);
  assertEquals(shape(stsb), [1, "mse", "pearson,spearman"]);
  assertEquals(shape(boolq), [1, "bce", "accuracy"]);
  assertEquals(shape(qnli), [1, "bce", "accuracy"]);
  assertEquals([boolq.truncation, boolq.dataDir, typeof boolq.resolveData], [
    "only_first",
    undefined,
    "function",
  ]);
  assertEquals([qnli.dataDir, typeof qnli.resolveData], [undefined, "function"]);
  assertEquals(
    [cb, copa, mrpc, cola, stsb, boolq, qnli].map((t) => t.truncation ?? "longest_first"),
    [
      "only_first",
      "longest_first",
      "longest_first",
      "longest_first",
      "longest_first",
      "only_first",
      "only_first",
    ],
  );
});

Deno.test("cb: the shipped splits with HF label ids (entailment 0, contradiction 1, neutral 2)", async () => {
  const train = await cb.readExamples(`${DATA}superglue/CB`, "train");
  const val = await cb.readExamples(`${DATA}superglue/CB`, "val");
  assertEquals([train.length, val.length], [250, 56]);
  assertEquals(counts(train), [115, 119, 16]);
  assertEquals(counts(val), [23, 28, 5]);
  assertEquals([val[0].idx, val[0].label, val[1].label], [0, 1, 2]); // contradiction, neutral
  assertEquals(val[0].inputs, [[
    "Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own " +
    "portion of titanic anatomy to shaft? Did he think he was helping?",
    "Valence was helping",
  ]]);
  assertEquals(cb.labels, ["entailment", "contradiction", "neutral"]);
  assertEquals(
    [cb.prediction([0.1, 0.2, -1]), cb.prediction([2, 0, 1]), cb.prediction([0, 0, 3])],
    ["contradiction", "entailment", "neutral"],
  );
});

Deno.test("copa: two texts per example, the connective and the choice lower-cased", async () => {
  const train = await copa.readExamples(`${DATA}superglue/COPA`, "train");
  const val = await copa.readExamples(`${DATA}superglue/COPA`, "val");
  assertEquals([train.length, val.length], [400, 100]);
  assertEquals(counts(train), [195, 205]);
  assertEquals(counts(val), [55, 45]);
  // cause: " because "
  assertEquals(train[0].inputs, [
    "My body cast a shadow over the grass because the sun was rising.",
    "My body cast a shadow over the grass because the grass was cut.",
  ]);
  assertEquals(train[0].label, 0);
  // effect: " so "
  assertEquals(val[0].inputs, [
    "The man turned on the faucet so the toilet filled with water.",
    "The man turned on the faucet so water flowed from the spout.",
  ]);
  assertEquals([val[0].idx, val[0].label], [0, 1]);
  // The train split's two stray spaces: after a premise's period (idx 209), before a choice (128).
  const byIdx = (i: number) => train.find((e) => e.idx === i)!;
  assertEquals(
    byIdx(209).inputs[0],
    "The parents forbade their children from watching the movie because the movie was rated R.",
  );
  assertEquals(
    byIdx(128).inputs[0],
    "The trip took a long time because the driver talked the whole way.",
  );
  assertEquals(copaText("It rained.", "effect", "I stayed in."), "It rained so i stayed in.");
  assertEquals(copaText("Why?", "cause", "X"), "Why? because x");
  assertEquals(
    [copa.prediction([0.1, 0.3]), copa.prediction([0.3, 0.1]), copa.prediction([1, 1])],
    [
      1,
      0,
      0,
    ],
  );
  await tempDir(async (dir) => {
    const row = { premise: "A.", choice1: "B.", choice2: "C.", question: "cause", idx: 3 };
    const [unlabeled] = await readText(copa, dir, "test.jsonl", JSON.stringify(row));
    assertEquals([unlabeled.idx, unlabeled.label, unlabeled.inputs], [3, null, [
      "A because b.",
      "A because c.",
    ]]);
    // Labels as integers or strings.
    const labeled = await readText(
      copa,
      dir,
      "labels.jsonl",
      [0, "1", 1].map((label) => JSON.stringify({ ...row, label })).join("\n"),
    );
    assertEquals(labeled.map((e) => e.label), [0, 1, 1]);
    await rejects(copa, dir, "bad.jsonl", JSON.stringify({ ...row, label: 2 }), ":1: label 2");
    await rejects(
      copa,
      dir,
      "bad.jsonl",
      `${JSON.stringify(row)}\n${JSON.stringify({ ...row, question: "why" })}`,
      ':2: field "question" is "why"',
    );
  });
});

Deno.test("cola: no header in train/dev, `index, sentence` in test; unacceptable 0", async () => {
  const dir = `${DATA}glue/CoLA`;
  const [train, dev, test] = await Promise.all(
    ["train", "dev", "test"].map((s) => cola.readExamples(dir, s)),
  );
  assertEquals([train.length, dev.length, test.length], [8551, 1043, 1063]);
  assertEquals(counts(train), [2528, 6023]);
  assertEquals(counts(dev), [322, 721]);
  assertEquals(train[0], {
    idx: 0,
    inputs: ["Our friends won't buy this analysis, let alone the next one we propose."],
    label: 1,
    source: `${dir}/train.tsv:1`,
  });
  // dev.tsv has no final newline: its last row still counts.
  assertEquals(dev[1042].idx, 1042);
  assertEquals(test[0], {
    idx: 0,
    inputs: ["Bill whistled past the house."],
    label: null,
    source: `${dir}/test.tsv:2`,
  });
  assert(test.every((e) => e.label === null));
  assertEquals(test[1062].idx, 1062);
  assertEquals([cola.prediction([0.5]), cola.prediction([-0.5])], ["acceptable", "unacceptable"]);
  await tempDir(async (d) => {
    await rejects(
      cola,
      d,
      "a.tsv",
      "gj04\t1\t\tFine.\ngj04\t1\t\tA\tB\n",
      ":2: 5 tab-separated fields",
    );
    await rejects(cola, d, "b.tsv", "gj04\t1\tFine.\n", ":1: 3 tab-separated fields, expected 4");
    await rejects(cola, d, "c.tsv", "gj04\t2\t\tFine.\n", ':1: label "2"');
    await rejects(cola, d, "d.tsv", "index\tsentence\n0\tA.\nx\tB.\n", ':3: field "index" is "x"');
    // CRLF line ends and quotes as text.
    const rows = await readText(cola, d, "e.tsv", 'gj04\t0\t*\t"Quoted, he said.\r\n\r\n');
    assertEquals(rows, [
      { idx: 0, inputs: ['"Quoted, he said.'], label: 0, source: `${d}/e.tsv:1` },
    ]);
  });
});

Deno.test("mrpc: a byte-order mark, quotes as text, Quality as the label, an unlabeled test", async () => {
  const dir = `${DATA}glue/MRPC`;
  const bytes = await Deno.readFile(`${dir}/train.tsv`);
  assertEquals([...bytes.subarray(0, 3)], [0xef, 0xbb, 0xbf]);
  const [train, dev, test] = await Promise.all(
    ["train", "dev", "test"].map((s) => mrpc.readExamples(dir, s)),
  );
  assertEquals([train.length, dev.length, test.length], [3668, 408, 1725]);
  assertEquals(counts(train), [1194, 2474]);
  assertEquals(counts(dev), [129, 279]);
  assertEquals(train[0], {
    idx: 0,
    inputs: [[
      'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his ' +
      "evidence.",
      'Referring to him as only "the witness", Amrozi accused his brother of deliberately ' +
      "distorting his evidence.",
    ]],
    label: 1,
    source: `${dir}/train.tsv:2`,
  });
  assertEquals(train[1].label, 0);
  // An unbalanced quote is text: the row still has its five fields.
  assertEquals(
    (dev[0].inputs[0] as string[])[1],
    '"The foodservice pie business does not fit our long-term growth strategy.',
  );
  assertEquals([test[0].idx, test[0].label, test[1724].idx], [0, null, 1724]);
  assert((test[0].inputs[0] as string[])[0].startsWith("PCCW's chief operating officer"));
  assertEquals([mrpc.prediction([1]), mrpc.prediction([-1])], ["equivalent", "not_equivalent"]);
  await tempDir(async (d) => {
    const header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n";
    await rejects(
      mrpc,
      d,
      "a.tsv",
      `${header}1\t1\t2\tA\n`,
      ":2: 4 tab-separated fields, expected 5",
    );
    await rejects(mrpc, d, "b.tsv", `${header}yes\t1\t2\tA\tB\n`, ':2: label "yes"');
    await rejects(
      mrpc,
      d,
      "c.tsv",
      "Q\t#1 ID\t#2 ID\t#1 Text\t#2 String\n1\t1\t2\tA\tB\n",
      ':1: no column "#1 String"',
    );
    await rejects(mrpc, d, "d.tsv", header, "has no examples");
  });
});

Deno.test("stsb: the score as the label (0-5), none in test, the prediction is the score", async () => {
  const dir = `${DATA}glue/STS-B`;
  const [train, dev, test] = await Promise.all(
    ["train", "dev", "test"].map((s) => stsb.readExamples(dir, s)),
  );
  assertEquals([train.length, dev.length, test.length], [5749, 1500, 1379]);
  assertEquals(train[0], {
    idx: 0,
    inputs: [["A plane is taking off.", "An air plane is taking off."]],
    label: 5,
    source: `${dir}/train.tsv:2`,
  });
  assertEquals(train[1].label, 3.8);
  assert(train.every((e) => e.label! >= 0 && e.label! <= 5));
  assertEquals([dev[1].label, dev[1].inputs[0]], [4.75, [
    "A young child is riding a horse.",
    "A child is riding a horse.",
  ]]);
  assertEquals([test[0].idx, test[0].label], [0, null]);
  assert(test.every((e) => e.label === null));
  assertEquals(stsb.labels, []);
  assertEquals(stsb.prediction([3.25]), 3.25);
  await tempDir(async (d) => {
    const header =
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n";
    const row = (score: string) => `0\tg\tf\ty\t0\tn\tn\tA.\tB.\t${score}\n`;
    await rejects(
      stsb,
      d,
      "a.tsv",
      header + row("5.1"),
      ':2: score "5.1" is not a number in [0, 5]',
    );
    await rejects(stsb, d, "b.tsv", header + row(""), ':2: score ""');
    await rejects(stsb, d, "c.tsv", header + row("n/a"), ':2: score "n/a"');
  });
});

Deno.test("boolq: pair(passage, question), labels as booleans or strings, false 0 / true 1", async () => {
  await tempDir(async (dir) => {
    const row = (label: unknown, idx: number) =>
      JSON.stringify({ question: `q${idx}`, passage: `p${idx}`, idx, label });
    const rows = await readText(
      boolq,
      dir,
      "val.jsonl",
      [true, false, "true", "false", "True", "FALSE", 1, 0].map(row).join("\n") + "\n",
    );
    assertEquals(rows.map((e) => e.label), [1, 0, 1, 0, 1, 0, 1, 0]);
    assertEquals(rows[2].inputs, [["p2", "q2"]]);
    const [test] = await readText(
      boolq,
      dir,
      "test.jsonl",
      JSON.stringify({ question: "q", passage: "p", idx: 4 }),
    );
    assertEquals([test.idx, test.label], [4, null]);
    await rejects(boolq, dir, "a.jsonl", `${row(true, 0)}\n${row("yes", 1)}`, ':2: label "yes"');
    await rejects(boolq, dir, "b.jsonl", `${row(true, 0)}\n${row(2, 1)}`, ":2: label 2");
    await rejects(
      boolq,
      dir,
      "c.jsonl",
      JSON.stringify({ question: "q", idx: 0 }),
      ':1: field "passage"',
    );
    assertEquals([boolq.prediction([0.2]), boolq.prediction([-0.2])], ["true", "false"]);
  });
});

Deno.test("qnli: pair(sentence, question), entailment 0, an unlabeled test", async () => {
  await tempDir(async (dir) => {
    const dev = await readText(
      qnli,
      dir,
      "dev.tsv",
      "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis.\tentailment\n" +
        '7\t"Why?\tBecause "so.\tnot_entailment\n',
      "dev",
    );
    assertEquals(dev, [
      { idx: 0, inputs: [["This.", "What?"]], label: 0, source: `${dir}/dev.tsv:2` },
      { idx: 7, inputs: [['Because "so.', '"Why?']], label: 1, source: `${dir}/dev.tsv:3` },
    ]);
    const test = await readText(
      qnli,
      dir,
      "test.tsv",
      "index\tquestion\tsentence\n3\tQ?\tS.\n",
      "test",
    );
    assertEquals(test, [
      { idx: 3, inputs: [["S.", "Q?"]], label: null, source: `${dir}/test.tsv:2` },
    ]);
    await rejects(
      qnli,
      dir,
      "a.tsv",
      "index\tquestion\tsentence\tlabel\n0\tQ\tS\tmaybe\n",
      ':2: label "maybe"',
    );
    await rejects(
      qnli,
      dir,
      "b.tsv",
      "index\tquestion\tsentence\tlabel\n0\tQ\tS\n",
      ":2: 3 tab-separated fields, expected 4",
    );
    assertEquals([qnli.prediction([0.2]), qnli.prediction([-0.2])], [
      "not_entailment",
      "entailment",
    ]);
  });
});

Deno.test("data files: readTsv, labelId and a byte-order mark in JSONL", async () => {
  await tempDir(async (dir) => {
    const file = `${dir}/t.tsv`;
    await Deno.writeTextFile(file, '\uFEFFa\tb\r\n\n"x\ty"\r\n  \n1\t\n');
    const table = await readTsv(file, { header: true });
    assertEquals(table.header, ["a", "b"]);
    assertEquals(table.rows, [{ line: 3, fields: ['"x', 'y"'] }, { line: 5, fields: ["1", ""] }]);
    const plain = await readTsv(file, { header: false, columns: 2 });
    assertEquals([plain.header, plain.rows.length, plain.rows[0].fields], [null, 3, ["a", "b"]]);
    await assertRejects(
      () => readTsv(file, { header: false, columns: 3 }),
      DataError,
      `${file}:1: 2 tab-separated fields, expected 3`,
    );
    await Deno.writeTextFile(file, "a\tb\n1\t2\t3\n");
    await assertRejects(
      () => readTsv(file, { header: true }),
      DataError,
      `${file}:2: 3 tab-separated fields, expected 2 (a, b)`,
    );
    await assertRejects(
      () => readTsv(`${dir}/none.tsv`, { header: true }),
      DataError,
      "cannot read",
    );

    // A byte-order mark before the first JSON object (CB written by a BOM-adding editor).
    await Deno.writeTextFile(
      `${dir}/val.jsonl`,
      '\uFEFF{"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0}\n',
    );
    assertEquals((await readJsonl(`${dir}/val.jsonl`)).length, 1);
    assertEquals((await cb.readExamples(dir, "val"))[0].label, 2);
  });
  const L = ["false", "true"];
  assertEquals(
    [true, false, "true", "False", " TRUE ", 1, "0", null, undefined].map((v) =>
      labelId("f", 1, v, L)
    ),
    [1, 0, 1, 0, 1, 1, 0, null, null],
  );
  // -1: Hugging Face datasets' "no label", in their test splits' exports.
  assertEquals([-1, "-1"].map((v) => labelId("f", 1, v, L)), [null, null]);
  // …unless the task names a label so.
  assertEquals(["-1", "0", "1", -1].map((v) => labelId("f", 1, v, ["-1", "0", "1"])), [0, 1, 2, 0]);
  assertEquals(labelId("f", 1, "neutral", ["entailment", "contradiction", "neutral"]), 2);
  for (const bad of [2, -2, 0.5, "2", "yes", {}, [0]]) {
    assertThrows(() => labelId("f.jsonl", 9, bad, L), DataError, "f.jsonl:9: label");
  }
});

Deno.test("data files as they are saved elsewhere: CR line ends, BOMs inside, archives, arrays", async () => {
  await tempDir(async (dir) => {
    const rte = (i: number) =>
      JSON.stringify({ premise: `p${i}`, hypothesis: `h${i}`, label: "entailment", idx: i });
    const jsonl = `${dir}/train.jsonl`;
    // A classic Mac's CR alone: two examples, not one line of both.
    await Deno.writeTextFile(jsonl, `${rte(0)}\r${rte(1)}\r`);
    assertEquals((await readJsonl(jsonl)).map((r) => r.line), [1, 2]);
    const tsv = `${dir}/t.tsv`;
    await Deno.writeTextFile(tsv, "a\tb\r1\t2\r3\t4");
    assertEquals((await readTsv(tsv, { header: true })).rows.length, 2);
    // Two files joined with cat, the second with its own byte-order mark; a header saved with
    // two; a header cell with a stray space after its name.
    await Deno.writeTextFile(jsonl, `\uFEFF${rte(0)}\n\uFEFF${rte(1)}\n`);
    assertEquals((await readJsonl(jsonl)).length, 2);
    await Deno.writeTextFile(tsv, "\uFEFF\uFEFFa\tscore \n1\t2\n");
    assertEquals((await readTsv(tsv, { header: true })).header, ["a", "score"]);
    // An archive given for a data file.
    await Deno.writeFile(jsonl, new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0x14, 0, 0, 0]));
    await assertRejects(
      () => readJsonl(jsonl),
      DataError,
      `${jsonl}: is a zip archive, not a text file: unpack it and pass its folder`,
    );
    // A text file may begin with "PAR1"; a Parquet file ends with it too.
    await Deno.writeTextFile(`${dir}/t2.tsv`, "PAR1\tb\n1\t2\n");
    assertEquals((await readTsv(`${dir}/t2.tsv`, { header: true })).header, ["PAR1", "b"]);
    // V8's own "(line 1 column 27)" contradicted the file's line; an array is not JSON Lines.
    await Deno.writeTextFile(jsonl, `${rte(0)}\n${rte(1)} ${rte(2)}\n`);
    const after = await assertRejects(() => readJsonl(jsonl), DataError);
    assert(after.message.startsWith(`${jsonl}:2: not valid JSON (`), after.message);
    assert(!after.message.includes("(line"), after.message);
    assert(
      after.message.endsWith("more after the line's first value: JSONL holds one object a line)"),
    );
    await Deno.writeTextFile(jsonl, `[\n ${rte(0)}\n]\n`);
    await assertRejects(
      () => readJsonl(jsonl),
      DataError,
      "a JSON array: JSONL holds one object a line, not an array of them",
    );
    // An invisible character in a message is shown: the header seemed to hold "Quality".
    await Deno.writeTextFile(tsv, "Quality\u200b\tb\n1\t2\n");
    const quality = await readTsv(tsv, { header: true });
    assertThrows(
      () => tsvColumn(quality, "Quality"),
      DataError,
      'no column "Quality" (its header has Quality\\u200b, b)',
    );
  });
});

Deno.test("WiC: offsets count characters (Python's), labels as the other tasks take them", async () => {
  await tempDir(async (dir) => {
    const row = (label: unknown) => ({
      word: "class",
      sentence1: "😀🎉 the class met.",
      sentence2: "a class",
      start1: 7,
      end1: 12,
      start2: 2,
      end2: 7,
      idx: 0,
      label,
    });
    await Deno.writeTextFile(
      `${dir}/val.jsonl`,
      [row("0"), row("1"), row(-1)].map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    const examples = await wic.readExamples(dir, "val");
    const [s1] = examples[0].inputs[0] as [string, string];
    assertEquals(s1.slice(...examples[0].spans![0]), "class");
    assertEquals(examples.map((e) => e.label), [0, 1, null]);
  });
});

Deno.test("CoLA: a test file's header may name its first column id or idx", async () => {
  await tempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/test.tsv`, "id\tsentence\n0\tA sentence.\n1\tAnother.\n");
    const examples = await cola.readExamples(dir, "test");
    assertEquals(examples.map((e) => [e.idx, e.inputs[0], e.label]), [
      [0, "A sentence.", null],
      [1, "Another.", null],
    ]);
  });
});
