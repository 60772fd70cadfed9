// Leaderboard submission files (train/submission.ts): each task's exact format from synthetic
// predictions, the errors, and train.ts --predict-test end to end on the tiny fixture.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  exists,
  markerExamples,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { writeSafetensors } from "../model/safetensors.ts";
import { predict } from "../predict.ts";
import { trainFromArgs } from "../train.ts";
import { parseTrainArgs } from "../train/config.ts";
import { FlagError } from "../train/flags.ts";
import {
  checkTestSplit,
  predictTestSet,
  runFolders,
  SUBMISSION_FORMATS,
  submissionText,
  testSplitWarning,
  writeTestSubmissions,
} from "../train/submission.ts";
import { rte } from "../tasks/rte.ts";
import { taskByName } from "../tasks/all.ts";
import { BOOLQ_DATASET } from "../tasks/boolq.ts";
import { QNLI_DATASET } from "../tasks/qnli.ts";

const test = (name: string, fn: () => Promise<void> | void) =>
  Deno.test({ name, ...IN_PROCESS_GPU, fn });

test("submission: SuperGLUE JSONL per task, labels as the leaderboard names them", () => {
  assertEquals(
    submissionText("rte", [
      { idx: 0, prediction: "not_entailment" },
      { idx: 1, prediction: "entailment" },
      { idx: 2, prediction: 1 },
    ]),
    '{"idx":0,"label":"not_entailment"}\n{"idx":1,"label":"entailment"}\n' +
      '{"idx":2,"label":"not_entailment"}\n',
  );
  assertEquals(
    submissionText("cb", [
      { idx: 0, prediction: "neutral" },
      { idx: 1, prediction: "contradiction" },
      { idx: 2, prediction: 0 },
    ]),
    '{"idx":0,"label":"neutral"}\n{"idx":1,"label":"contradiction"}\n' +
      '{"idx":2,"label":"entailment"}\n',
  );
  // BoolQ and WiC: the strings "true"/"false", as jiant writes them for the leaderboard.
  for (const task of ["boolq", "wic"]) {
    assertEquals(
      submissionText(task, [
        { idx: 3, prediction: "true" },
        { idx: 4, prediction: "false" },
        { idx: 5, prediction: "True" },
        { idx: 6, prediction: 0 },
      ]),
      '{"idx":3,"label":"true"}\n{"idx":4,"label":"false"}\n{"idx":5,"label":"true"}\n' +
        '{"idx":6,"label":"false"}\n',
      task,
    );
  }
  // COPA: the right choice's index as a JSON number.
  assertEquals(
    submissionText("copa", [
      { idx: 0, prediction: 1 },
      { idx: 1, prediction: 0 },
      { idx: 2, prediction: "1" },
    ]),
    '{"idx":0,"label":1}\n{"idx":1,"label":0}\n{"idx":2,"label":1}\n',
  );
});

test("submission: GLUE TSV per task with the header line", () => {
  assertEquals(
    submissionText("cola", [
      { idx: 0, prediction: "acceptable" },
      { idx: 1, prediction: "unacceptable" },
    ]),
    "index\tprediction\n0\t1\n1\t0\n",
  );
  assertEquals(
    submissionText("mrpc", [
      { idx: 0, prediction: "equivalent" },
      { idx: 1, prediction: "not_equivalent" },
      { idx: 2, prediction: 1 },
    ]),
    "index\tprediction\n0\t1\n1\t0\n2\t1\n",
  );
  assertEquals(
    submissionText("qnli", [
      { idx: 0, prediction: "not_entailment" },
      { idx: 1, prediction: "entailment" },
    ]),
    "index\tprediction\n0\tnot_entailment\n1\tentailment\n",
  );
  // STS-B: the score clipped to the 0–5 scale, three decimals.
  assertEquals(
    submissionText("stsb", [
      { idx: 0, prediction: 3.14159 },
      { idx: 1, prediction: -0.2 },
      { idx: 2, prediction: 5.7 },
      { idx: 3, prediction: 2 },
    ]),
    "index\tprediction\n0\t3.142\n1\t0.000\n2\t5.000\n3\t2.000\n",
  );
});

test("submission: file names and label maps of all nine tasks", () => {
  assertEquals(
    Object.fromEntries(Object.entries(SUBMISSION_FORMATS).map(([k, f]) => [k, f.file])),
    {
      rte: "RTE.jsonl",
      cb: "CB.jsonl",
      boolq: "BoolQ.jsonl",
      wic: "WiC.jsonl",
      copa: "COPA.jsonl",
      mrpc: "MRPC.tsv",
      qnli: "QNLI.tsv",
      cola: "CoLA.tsv",
      stsb: "STS-B.tsv",
    },
  );
  // The task's own label names come first (so a task that names its labels differently works).
  assertEquals(
    submissionText("rte", [{ idx: 0, prediction: "yes" }], ["no", "yes"]),
    '{"idx":0,"label":"not_entailment"}\n',
  );
});

test("submission: bad predictions are errors that name the task and the example", () => {
  assertThrows(
    () => submissionText("rte", [{ idx: 7, prediction: "maybe" }]),
    Error,
    'rte: prediction "maybe" for idx 7: not one of entailment, not_entailment',
  );
  assertThrows(() => submissionText("cb", [{ idx: 0, prediction: 3 }]), Error, "cb: prediction 3");
  assertThrows(
    () => submissionText("stsb", [{ idx: 0, prediction: Number.NaN }]),
    Error,
    "not a finite score",
  );
  assertThrows(
    () => submissionText("copa", [{ idx: 1, prediction: 0 }, { idx: 1, prediction: 1 }]),
    Error,
    "copa: two test predictions for idx 1",
  );
  assertThrows(() => submissionText("mnli", []), Error, "mnli: no leaderboard submission format");
});

test("submission: runFolders follows --seeds", () => {
  const { config } = parseTrainArgs(["--task", "rte", "--model", "m", "--data", "d", "--out", "o"]);
  assertEquals(runFolders(config), ["o"]);
  assertEquals(runFolders({ ...config, seed: 5, seeds: 3 }), ["o/seed-5", "o/seed-6", "o/seed-7"]);
});

interface Setup {
  dir: string;
  args: string[];
}
let setup: Promise<Setup> | null = null;

function prepare(): Promise<Setup> {
  setup ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-submission-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    await writeTinyBert(`${dir}/model`, false);
    await writeMarkerData(`${dir}/data`, 16, 8);
    // The test split: no labels, its own idx values.
    const test = markerExamples(6, 3).map(({ label: _label, ...row }, i) => ({
      ...row,
      idx: 100 + i,
    }));
    await Deno.writeTextFile(
      `${dir}/data/test.jsonl`,
      test.map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    await writeNarrowHead(`${dir}/head.safetensors`, 16);
    const args = [
      ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
      ...["--head", `${dir}/head.safetensors`, "--max-steps", "2", "--batch-size", "4"],
    ];
    return { dir, args };
  })();
  return setup;
}

let predictTestRun: Promise<{ out: string; submission: string }> | null = null;

/**
 * `<dir>/run`: train.ts --predict-test on the fixture, trained once whichever test asks first,
 * and the RTE.jsonl it wrote (later tests write that file again).
 */
function trainedRun(): Promise<{ out: string; submission: string }> {
  predictTestRun ??= (async () => {
    const { dir, args } = await prepare();
    const out = `${dir}/run`;
    await trainFromArgs([...args, "--out", out, "--predict-test"], {}, rte);
    return { out, submission: await Deno.readTextFile(`${out}/RTE.jsonl`) };
  })();
  return predictTestRun;
}

test("train --predict-test: RTE.jsonl with one line per test example, as predict() says", async () => {
  const { dir } = await prepare();
  const { out, submission } = await trainedRun();
  await Deno.stat(`${out}/metrics.json`);
  const lines = submission.trimEnd().split("\n");
  assertEquals(lines.length, 6);
  const rows = lines.map((l) => JSON.parse(l));
  assertEquals(rows.map((r) => r.idx), [100, 101, 102, 103, 104, 105]);
  for (const r of rows) {
    assertEquals(Object.keys(r), ["idx", "label"]);
    assert(["entailment", "not_entailment"].includes(r.label), JSON.stringify(r));
  }
  const predictions = await predict({
    model: `${out}/model`,
    task: rte,
    data: `${dir}/data`,
    split: "test",
    batchSize: 4,
  });
  assertEquals(rows.map((r) => r.label), predictions.map((p) => p.prediction));
});

/** The finished run in `<dir>/run` (trainedRun: the same in any test order), with its config. */
async function finishedRun() {
  const { dir, args } = await prepare();
  const { out } = await trainedRun();
  return { dir, out, config: parseTrainArgs([...args, "--out", out]).config };
}

test("train --predict-test is kept in run.json: a plain --resume writes a missing submission", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/requested`;
  await trainFromArgs([...args, "--out", out, "--predict-test"], {}, rte);
  const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
  assertEquals(run.requests, { predict_test: true });
  // Killed before the submission was written (a scheduler's time limit), requeued with the run
  // folder alone: it was finished without the file, in silence.
  const written = await Deno.readTextFile(`${out}/RTE.jsonl`);
  await Deno.remove(`${out}/RTE.jsonl`);
  await trainFromArgs(["--out", out, "--resume"], {}, rte);
  assertEquals(await Deno.readTextFile(`${out}/RTE.jsonl`), written);
  // Once written, a plain --resume leaves it as it is (no second pass over the test split).
  const before = await Deno.stat(`${out}/RTE.jsonl`);
  await trainFromArgs(["--out", out, "--resume"], {}, rte);
  assertEquals((await Deno.stat(`${out}/RTE.jsonl`)).ino, before.ino);
});

test("predict-test: a missing test split or a prefix model is reported, not an error", async () => {
  const { dir, out, config } = await finishedRun();
  await Deno.mkdir(`${dir}/no-test`, { recursive: true });
  await Deno.copyFile(`${dir}/data/train.jsonl`, `${dir}/no-test/train.jsonl`);
  const lines: string[] = [];
  const results = await writeTestSubmissions(
    { ...config, data: `${dir}/no-test` },
    rte,
    (l) => lines.push(l),
  );
  assertEquals(results, [{ skipped: `no test split: ${dir}/no-test/test.jsonl does not exist` }]);
  assertEquals(lines, [
    `predict-test: ${out}: skipped: no test split: ${dir}/no-test/test.jsonl does not exist`,
  ]);
  assertEquals(
    await predictTestSet(out, { ...config, data: `${dir}/data/train.jsonl` }, rte),
    {
      skipped: `no test split: --data ${dir}/data/train.jsonl is a file (pass the task's ` +
        `folder, with test.jsonl)`,
    },
  );

  // A model that keeps prefix rows: predict.ts refuses it, so --predict-test says so.
  const prefixRun = `${dir}/prefix-run`;
  await Deno.mkdir(`${prefixRun}/model`, { recursive: true });
  await writeSafetensors(`${prefixRun}/model/model.safetensors`, {
    "prefix.key": { dtype: "F32", shape: [1], data: new Float32Array([0.5]) },
  });
  const prefix = await predictTestSet(prefixRun, config, rte);
  assert(
    "skipped" in prefix && prefix.skipped.includes('prefix-tuning rows ("prefix.key")'),
    JSON.stringify(prefix),
  );
});

test("train --predict-test: a test split with a repeated idx is refused before the training", async () => {
  const { dir, args } = await prepare();
  const data = `${dir}/repeated`;
  await writeMarkerData(data, 16, 8);
  const rows = markerExamples(3, 3).map(({ label: _label, ...row }, i) => ({ ...row, idx: i % 2 }));
  await Deno.writeTextFile(`${data}/test.jsonl`, rows.map((r) => JSON.stringify(r)).join("\n"));
  const out = `${dir}/repeated-run`;
  await assertRejects(
    () => trainFromArgs([...args, "--data", data, "--out", out, "--predict-test"], {}, rte),
    Error,
    `${data}/test.jsonl:3: idx 0 again (first at ${data}/test.jsonl:1): --predict-test writes ` +
      `one prediction per idx`,
  );
  assert(!(await exists(out)), "the run started");
});

test("train --predict-test: no test split or a prefix-keeping model is refused before the training", async () => {
  const { dir, args } = await prepare();
  const data = `${dir}/without-test`;
  await writeMarkerData(data, 16, 8);
  const out = `${dir}/without-test-run`;
  await assertRejects(
    () => trainFromArgs([...args, "--data", data, "--out", out, "--predict-test"], {}, rte),
    FlagError,
    `--predict-test: no test split: ${data}/test.jsonl does not exist (pass --data with a ` +
      `folder that has it)`,
  );
  await assertRejects(
    () =>
      trainFromArgs(
        [...args, "--out", out, "--predict-test", "--strategy", "peft", "--peft", "prefix"],
        {},
        rte,
      ),
    FlagError,
    "--predict-test: --strategy peft --peft prefix keeps the prefix-tuning rows",
  );
  assert(!(await exists(out)), "the run started");
  // A finished run's --resume reads its own data folder (another --data is refused): the advice
  // is to put the test split there.
  await trainFromArgs([...args, "--data", data, "--out", out], {}, rte);
  await assertRejects(
    () => trainFromArgs(["--out", out, "--resume", "--predict-test"], {}, rte),
    FlagError,
    `--predict-test: no test split: ${data}/test.jsonl does not exist (put the test split ` +
      `there: --resume reads the run's own data folder)`,
  );
});

test("train --dry-run --predict-test notes what training would refuse before it starts", async () => {
  const { dir, args } = await prepare();
  const report = await trainFromArgs(
    [...args, "--out", `${dir}/dry`, "--dry-run", "--predict-test", "--strategy", "peft"]
      .concat(["--peft", "prefix"]),
    {},
    rte,
  ) as { notes?: string[] };
  assertEquals(report.notes, [
    "--predict-test: --strategy peft --peft prefix keeps the prefix-tuning rows in the final " +
    "model, which predict.ts does not apply",
  ]);
  assert(!(await exists(`${dir}/dry`)), "a dry run wrote its folder");
  // Without a test split too: the settings are refused whatever the data.
  const data = `${dir}/dry-no-test`;
  await writeMarkerData(data, 16, 8);
  const noTest = await trainFromArgs(
    [...args, "--data", data, "--dry-run", "--predict-test", "--strategy", "peft"]
      .concat(["--peft", "prefix"]),
    {},
    rte,
  ) as { notes?: string[] };
  assertEquals(noTest.notes?.length, 2, JSON.stringify(noTest.notes));
  assert(noTest.notes![0].includes("--predict-test needs it"), noTest.notes![0]);
  assert(noTest.notes![1].includes("keeps the prefix-tuning rows"), noTest.notes![1]);
});

test("submissionText: lines in idx order, as jiant writes them, whatever the order given", () => {
  const predictions = [5, 2, 9].map((idx) => ({ idx, logits: [0], prediction: 1 }));
  assertEquals(
    submissionText("rte", predictions, ["entailment", "not_entailment"]),
    [2, 5, 9].map((idx) => `{"idx":${idx},"label":"not_entailment"}`).join("\n") + "\n",
  );
  assertEquals(submissionText("mrpc", predictions), "index\tprediction\n2\t1\n5\t1\n9\t1\n");
});

const ROOT = new URL("../", import.meta.url).pathname;

/** `n` examples with idx `first`, `first + 1`, ... */
const idxRange = (n: number, first = 0) =>
  Array.from({ length: n }, (_, i) => ({ idx: first + i }));

test("submission: the official test split sizes, as the downloads pin them", () => {
  assertEquals(
    Object.fromEntries(Object.entries(SUBMISSION_FORMATS).map(([k, f]) => [k, f.testExamples])),
    {
      rte: 3000,
      cb: 250,
      boolq: 3245,
      wic: 1400,
      copa: 500,
      mrpc: 1725,
      qnli: 5463,
      cola: 1063,
      stsb: 1379,
    },
  );
  const pinned = (files: { path: string; rows: number }[], path: string) =>
    files.find((f) => f.path === path)?.rows;
  assertEquals(
    pinned(BOOLQ_DATASET.files, "BoolQ/test.jsonl"),
    SUBMISSION_FORMATS.boolq.testExamples,
  );
  assertEquals(pinned(QNLI_DATASET.files, "QNLI/test.tsv"), SUBMISSION_FORMATS.qnli.testExamples);
});

test("testSplitWarning: a short, long or renumbered test split is one line; the official one none", () => {
  assertEquals(
    testSplitWarning("rte", "data/superglue/RTE/test.jsonl", idxRange(120)),
    "data/superglue/RTE/test.jsonl: 120 examples; the SuperGLUE leaderboard expects 3000 " +
      "(RTE.jsonl will be incomplete)",
  );
  assertEquals(
    testSplitWarning("cola", "t/test.tsv", idxRange(1064)),
    "t/test.tsv: 1064 examples; the GLUE leaderboard expects 1063 (CoLA.tsv will have 1 extra " +
      "row)",
  );
  assertEquals(testSplitWarning("cb", "t/test.jsonl", idxRange(250)), null);
  // In any order: the file is written in idx order.
  assertEquals(testSplitWarning("cb", "t/test.jsonl", idxRange(250).reverse()), null);
  assertEquals(
    testSplitWarning("boolq", "t/test.jsonl", idxRange(3250)),
    "t/test.jsonl: 3250 examples; the SuperGLUE leaderboard expects 3245 (BoolQ.jsonl will " +
      "have 5 extra rows)",
  );
  assertEquals(
    testSplitWarning("cb", "t/test.jsonl", idxRange(250, 1)),
    "t/test.jsonl: 250 examples, but no idx 0, idx 250 found; the SuperGLUE leaderboard " +
      "expects idx 0..249 (CB.jsonl will not match it)",
  );
  assertEquals(
    testSplitWarning("stsb", "t/test.tsv", [...idxRange(1378), { idx: 5000 }]),
    "t/test.tsv: 1379 examples, but no index 1378, index 5000 found; the GLUE leaderboard " +
      "expects index 0..1378 (STS-B.tsv will not match it)",
  );
  assertEquals(
    testSplitWarning("copa", "t/test.jsonl", []),
    "t/test.jsonl: 0 examples; the SuperGLUE leaderboard expects 500 (COPA.jsonl will be " +
      "incomplete)",
  );
});

/** checkTestSplit over `data` for `task`, and the lines it logs. */
async function checkLines(task: string, data: string): Promise<string[]> {
  const { config } = parseTrainArgs(["--task", task, "--model", "m", "--data", data, "--out", "o"]);
  const lines: string[] = [];
  const warning = await checkTestSplit(config, taskByName(task), (l) => lines.push(l));
  assertEquals(warning === null ? [] : [`predict-test: ${warning}`], lines);
  return lines;
}

/** A copy of the shipped CoLA folder whose test.tsv is `head -n 100` of it: 99 of 1063 rows. */
async function colaHead(name: string): Promise<string> {
  const short = `${(await prepare()).dir}/${name}`;
  await Deno.mkdir(short, { recursive: true });
  for (const split of ["train", "dev"]) {
    await Deno.copyFile(`${ROOT}data/glue/CoLA/${split}.tsv`, `${short}/${split}.tsv`);
  }
  const lines = (await Deno.readTextFile(`${ROOT}data/glue/CoLA/test.tsv`)).split("\n");
  await Deno.writeTextFile(`${short}/test.tsv`, lines.slice(0, 100).join("\n") + "\n");
  return short;
}

test("checkTestSplit: the shipped test splits are the leaderboards'; a head -n 100 copy is not", async () => {
  for (
    const [task, data] of [
      ["wic", "data/superglue/WiC"],
      ["cola", "data/glue/CoLA"],
      ["mrpc", "data/glue/MRPC"],
      ["stsb", "data/glue/STS-B"],
    ]
  ) {
    assertEquals(await checkLines(task, `${ROOT}${data}`), [], task);
  }
  const short = await colaHead("cola-head");
  assertEquals(await checkLines("cola", short), [
    `predict-test: ${short}/test.tsv: 99 examples; the GLUE leaderboard expects 1063 (CoLA.tsv ` +
    `will be incomplete)`,
  ]);
});

test("train --predict-test: a shortened test split is written whole, with one warning line", async () => {
  const { dir, out, config } = await finishedRun();
  const lines: string[] = [];
  const [result] = await writeTestSubmissions(config, rte, (l) => lines.push(l));
  const warning = `${dir}/data/test.jsonl: 6 examples; the SuperGLUE leaderboard expects 3000 ` +
    `(RTE.jsonl will be incomplete)`;
  assertEquals(result, { written: `${out}/RTE.jsonl`, examples: 6, warning });
  assertEquals(lines, [
    `predict-test: 6 test predictions written to ${out}/RTE.jsonl`,
    `predict-test: ${warning}`,
  ]);
  assertEquals((await Deno.readTextFile(`${out}/RTE.jsonl`)).trimEnd().split("\n").length, 6);

  // The official count, idx 0..2999: no warning.
  const full = `${dir}/full`;
  await writeMarkerData(full, 16, 8);
  const rows = markerExamples(3000, 4).map(({ label: _label, ...row }) => row);
  await Deno.writeTextFile(`${full}/test.jsonl`, rows.map((r) => JSON.stringify(r)).join("\n"));
  const fullLines: string[] = [];
  const [fullResult] = await writeTestSubmissions(
    { ...config, data: full, batchSize: 500 },
    rte,
    (l) => fullLines.push(l),
  );
  assertEquals(fullResult, { written: `${out}/RTE.jsonl`, examples: 3000 });
  assertEquals(fullLines, [`predict-test: 3000 test predictions written to ${out}/RTE.jsonl`]);
});

test("train --dry-run --predict-test: the warning line on stderr, none for the shipped split", async () => {
  const short = await colaHead("cola-dry");
  const dryRun = async (data: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "train.ts", "--task", "cola", "--data", data, "--dry-run"]
        .concat(["--predict-test"]),
      cwd: ROOT,
      env: { EHFT_OFFLINE: "1", HF_HUB_OFFLINE: "1", XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    const notes: string[] = JSON.parse(new TextDecoder().decode(out.stdout)).notes ?? [];
    const lines = stderr.split("\n").filter((l) => l.includes("predict-test:"));
    return { lines, notes: notes.filter((n) => n.startsWith("predict-test:")) };
  };
  const [shortened, shipped] = await Promise.all([dryRun(short), dryRun("data/glue/CoLA")]);
  const warning = `predict-test: ${short}/test.tsv: 99 examples; the GLUE leaderboard expects ` +
    `1063 (CoLA.tsv will be incomplete)`;
  // Once on stderr, as the dry run's other notes, and in the report's notes.
  assertEquals(shortened, { lines: [`dry run: ${warning}`], notes: [warning] });
  assertEquals(shipped, { lines: [], notes: [] });
});
