// Bad data files, every case for every task's reader (issue 10): each is a DataError of one line
// naming the file and, where a line is to blame, the line (1-based) — before any tokenizing, let
// alone GPU work — or, for what is valid (a byte-order mark, CRLF line ends, a 5 MB line), read
// as the plain file would be. Missing splits: an error naming the file, the split and what the
// folder holds (with the download hint for BoolQ and QNLI); --dry-run reports them instead.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import { TASKS } from "../tasks/all.ts";
import { DataError, MissingDataError, quote } from "../train/data_files.ts";
import { firstInvalidUtf8 } from "../model/utf8.ts";
import { dryRun } from "../train/dry_run.ts";
import { parseTrainArgs } from "../train/config.ts";
import { runTraining } from "../train/run.ts";
import { tokenizeExamples } from "../train/batches.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { loadTokenizer, TextTokenizer } from "../model/tokenizer.ts";
import { readConfig } from "../model/config.ts";
import { checkTestSplit } from "../train/submission.ts";
import { convertTokenizerDir, convertWordPiece } from "../model/tokenizer_convert.ts";
import {
  copyTree,
  exists,
  rewriteSafetensors,
  VOCAB,
  writeMarkerData,
  writeTinyBert,
} from "./train_fixture.ts";

const ROOT = new URL("../", import.meta.url).pathname;

const TRAIN_TS = new URL("../train.ts", import.meta.url).pathname;

/** train.ts run as a command: its exit code and its stderr (trimmed). */
async function trainCli(args: string[]): Promise<{ code: number; stderr: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN_TS, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: r.code, stderr: new TextDecoder().decode(r.stderr).trim() };
}

/** How to write one task's files, good and bad. */
interface Reader {
  task: Task;
  ext: "jsonl" | "tsv";
  /** The header line of its labeled (train/dev) TSV files; null when they have none. */
  header: string | null;
  /** A header-only file (CoLA's labeled files have none: its test file's header). */
  headerOnly?: string;
  /** A valid labeled line; `text` goes into the first text field. */
  line(text?: string, i?: number): string;
  /** A line with `label` as its label (a JSON value, or a TSV field). */
  labeled(label: unknown): string;
  /** A line without a label: JSONL without the field, TSV with an empty field. */
  unlabeled: string;
  /** A label outside the task's set, as `labeled` takes it, and how the error quotes it. */
  badLabel: [unknown, string];
  /** The first text of an example, where `line(text)` put it. */
  text(e: TaskExample): string;
  /** JSONL: a line without a required field, and that field. */
  missing?: [string, string];
  /** JSONL: a line with a number where a text belongs, that field, and the number. */
  wrongType?: [string, string, string];
  /** TSV: a line with one field too few, and the count it has and needs. */
  short?: [string, number, number];
  /** The message of a label outside the set, after "label <quoted> ". */
  labelProblem: string;
}

const json = (o: Record<string, unknown>) => JSON.stringify(o);
const first = (e: TaskExample) => {
  const input = e.inputs[0];
  return typeof input === "string" ? input : input[0];
};
const without = (o: Record<string, unknown>, key: string) => {
  const copy = { ...o };
  delete copy[key];
  return copy;
};

function jsonlReader(
  task: Task,
  base: Record<string, unknown>,
  textField: string,
  requiredField: string,
  badLabel: unknown,
  labelProblem: string,
  text: (e: TaskExample) => string = first,
): Reader {
  return {
    task,
    ext: "jsonl",
    header: null,
    line: (t, i = 0) => json({ ...base, ...(t === undefined ? {} : { [textField]: t }), idx: i }),
    labeled: (label) => json({ ...base, label }),
    unlabeled: json(without(base, "label")),
    badLabel: [badLabel, quote(badLabel)],
    text,
    missing: [json(without(base, requiredField)), requiredField],
    wrongType: [json({ ...base, [textField]: 3 }), textField, "3"],
    labelProblem,
  };
}

const STSB_HEADER =
  "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore";
const stsbRow = (s1: string, score: string) => `0\tg\tf\ty\t0\tn\tn\t${s1}\tB.\t${score}`;

const READERS: Record<string, Reader> = {
  rte: jsonlReader(
    TASKS.rte,
    { premise: "A dog ran.", hypothesis: "A dog moved.", label: "entailment" },
    "premise",
    "hypothesis",
    "maybe",
    "is not one of entailment, not_entailment (or an id 0-1)",
  ),
  boolq: jsonlReader(
    TASKS.boolq,
    { passage: "Dogs bark.", question: "do dogs bark", label: true },
    "passage",
    "question",
    "maybe",
    "is not one of false, true (or an id 0-1)",
  ),
  copa: jsonlReader(
    TASKS.copa,
    {
      premise: "The man fell.",
      choice1: "He slipped.",
      choice2: "He sang.",
      question: "cause",
      label: 0,
    },
    "premise",
    "choice2",
    2,
    "is not one of 0, 1 (or an id 0-1)",
    // The premise is the start of each choice's text (its final period dropped).
    (e) => e.inputs[0] as string,
  ),
  cb: jsonlReader(
    TASKS.cb,
    { premise: "It rained.", hypothesis: "It was wet.", label: "neutral" },
    "premise",
    "hypothesis",
    "maybe",
    "is not one of entailment, contradiction, neutral (or an id 0-2)",
  ),
  wic: jsonlReader(
    TASKS.wic,
    {
      word: "run",
      sentence1: "I ran home.",
      sentence2: "We ran.",
      start1: 2,
      end1: 5,
      start2: 3,
      end2: 6,
      label: true,
    },
    // The long text goes after the target word, so the spans stay inside it.
    "sentence2",
    "start1",
    "maybe",
    "is not one of false, true (or an id 0-1)",
    (e) => (e.inputs[0] as [string, string])[1],
  ),
  mrpc: {
    task: TASKS.mrpc,
    ext: "tsv",
    header: "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
    line: (t = "A.") => `1\t1\t2\t${t}\tB.`,
    labeled: (label) => `${label}\t1\t2\tA.\tB.`,
    unlabeled: "\t1\t2\tA.\tB.",
    badLabel: ["yes", '"yes"'],
    text: first,
    short: ["1\t1\t2\tA.", 4, 5],
    labelProblem: "is not one of not_equivalent, equivalent (or an id 0-1)",
  },
  qnli: {
    task: TASKS.qnli,
    ext: "tsv",
    header: "index\tquestion\tsentence\tlabel",
    line: (t = "S.", i = 0) => `${i}\tQ?\t${t}\tentailment`,
    labeled: (label) => `0\tQ?\tS.\t${label}`,
    unlabeled: "0\tQ?\tS.\t",
    badLabel: ["maybe", '"maybe"'],
    text: first,
    short: ["0\tQ?\tS.", 3, 4],
    labelProblem: "is not one of entailment, not_entailment (or an id 0-1)",
  },
  cola: {
    task: TASKS.cola,
    ext: "tsv",
    header: null,
    headerOnly: "index\tsentence",
    line: (t = "Fine.") => `gj04\t1\t\t${t}`,
    labeled: (label) => `gj04\t${label}\t\tFine.`,
    unlabeled: "gj04\t\t\tFine.",
    badLabel: ["2", '"2"'],
    text: first,
    short: ["gj04\t1\tFine.", 3, 4],
    labelProblem: "is not one of unacceptable, acceptable (or an id 0-1)",
  },
  stsb: {
    task: TASKS.stsb,
    ext: "tsv",
    header: STSB_HEADER,
    line: (t = "A.") => stsbRow(t, "3.8"),
    labeled: (score) => stsbRow("A.", String(score)),
    unlabeled: stsbRow("A.", ""),
    badLabel: ["n/a", '"n/a"'],
    text: first,
    short: [stsbRow("A.", "1").split("\t").slice(0, 9).join("\t"), 9, 10],
    labelProblem: "is not a number in [0, 5]",
  },
};

const NAMES = Object.keys(READERS);
const enc = new TextEncoder();

/** The file's lines joined with "\n", the header first where the task's files have one. */
function fileText(r: Reader, lines: string[]): string {
  return [...(r.header ? [r.header] : []), ...lines].join("\n") + "\n";
}

/** The line number of `lines[k]` in `fileText(r, lines)`. */
function lineOf(r: Reader, k: number): number {
  return k + 1 + (r.header ? 1 : 0);
}

/** Expects a one-line DataError `<file>:<line>: <problem>` (`<file>: ...` when line is null). */
function expectMessage(e: Error, file: string, line: number | null, problem: string): void {
  assert(e instanceof DataError, `${e.name}: ${e.message}`);
  assert(!/[\n\r\u2028\u2029]/.test(e.message), `not one line: ${JSON.stringify(e.message)}`);
  assertEquals(e.message, `${line === null ? file : `${file}:${line}`}: ${problem}`);
}

async function rejected(r: Reader, path: string, split = "train"): Promise<Error> {
  return await assertRejects(() => r.task.readExamples(path, split), DataError);
}

let dirCount = 0;
async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: `ehft-data-errors-${dirCount++}-` });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Writes `content` to `<dir>/<name>.<ext>` and returns the path. */
async function write(dir: string, r: Reader, name: string, content: string | Uint8Array) {
  const path = `${dir}/${name}.${r.ext}`;
  if (typeof content === "string") await Deno.writeTextFile(path, content);
  else await Deno.writeFile(path, content);
  return path;
}

Deno.test("data errors: empty files, blank lines only, a header only", async () => {
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      const empty = await write(dir, r, `${name}-empty`, "");
      expectMessage(await rejected(r, empty), empty, null, "has no examples (the file is empty)");
      const blank = await write(dir, r, `${name}-blank`, "\n \n\t\r\n\n");
      expectMessage(await rejected(r, blank), blank, null, "has no examples (only blank lines)");
      const bom = await write(dir, r, `${name}-bom`, "\uFEFF");
      expectMessage(await rejected(r, bom), bom, null, "has no examples (only blank lines)");
      if (r.ext === "tsv") {
        const header = await write(dir, r, `${name}-header`, `${r.header ?? r.headerOnly}\r\n\n`);
        expectMessage(
          await rejected(r, header),
          header,
          null,
          "has no examples after its header (line 1)",
        );
      }
    }
  });
});

Deno.test("data errors: a wrong column count, broken JSON, a value that is not an object", async () => {
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      if (r.short) {
        const [line, has, needs] = r.short;
        const file = await write(dir, r, name, fileText(r, [r.line(), line, r.line()]));
        const columns = r.header ? ` (${r.header.split("\t").join(", ")})` : "";
        expectMessage(
          await rejected(r, file),
          file,
          lineOf(r, 1),
          `${has} tab-separated fields, expected ${needs}${columns}`,
        );
        // One too many: a stray tab inside a sentence.
        const long = await write(dir, r, `${name}-tab`, fileText(r, [r.line(), r.line("A\tB.")]));
        const e = await rejected(r, long);
        expectMessage(
          e,
          long,
          lineOf(r, 1),
          `${needs + 1} tab-separated fields, expected ${needs}${columns}`,
        );
        continue;
      }
      const broken = await write(dir, r, name, `${r.line()}\n{"premise": "a",\n${r.line()}\n`);
      const e = await rejected(r, broken);
      assert(e.message.startsWith(`${broken}:2: not valid JSON (`), e.message);
      assert(!e.message.includes("\n"), e.message);
      // A pretty-printed object: its first line is where it breaks.
      const pretty = await write(dir, r, `${name}-pretty`, `{\n  "premise": "a"\n}\n`);
      const p = await rejected(r, pretty);
      assert(p.message.startsWith(`${pretty}:1: not valid JSON (`), p.message);
      assert(p.message.includes("JSONL needs each object on one line"), p.message);
      const arr = await write(dir, r, `${name}-array`, `${r.line()}\n\n[1, 2]\n`);
      expectMessage(await rejected(r, arr), arr, 3, "expected a JSON object, not an array");
      const str = await write(dir, r, `${name}-string`, `"premise"\n`);
      expectMessage(await rejected(r, str), str, 1, "expected a JSON object, not a string");
      // V8 quotes a few characters around the fault: control characters there stay escaped.
      const ctl = await write(dir, r, `${name}-ctl`, `${r.line()}\n{"a": "x\ty\u2028", }\r\n`);
      const c = await rejected(r, ctl);
      assert(c.message.startsWith(`${ctl}:2: not valid JSON (`), c.message);
      assert(!/[\n\r\t\u2028]/.test(c.message), JSON.stringify(c.message));
    }
  });
});

Deno.test("data errors: labels outside the set, a missing label, STS-B's scores", async () => {
  await withDir(async (dir) => {
    // The check of labels comes before any tokenizing: this tokenizer is never called.
    const noTokenizer = {} as TextTokenizer;
    for (const name of NAMES) {
      const r = READERS[name];
      const [bad, quoted] = r.badLabel;
      const file = await write(dir, r, name, fileText(r, [r.line(), r.labeled(bad)]));
      const what = name === "stsb" ? "score" : "label";
      expectMessage(
        await rejected(r, file),
        file,
        lineOf(r, 1),
        `${what} ${quoted} ${r.labelProblem}`,
      );

      // A missing label: JSONL rows read as unlabeled (test splits have none), and training
      // refuses them naming the file and line; a TSV label column's empty field is an error.
      const folder = `${dir}/${name}-nolabel`;
      await Deno.mkdir(folder);
      await Deno.writeTextFile(`${folder}/${r.task.devSplit}.${r.ext}`, fileText(r, [r.line()]));
      const missing = `${folder}/train.${r.ext}`;
      await Deno.writeTextFile(missing, fileText(r, [r.line(), r.line(), r.unlabeled]));
      if (r.ext === "jsonl") {
        const examples = await r.task.readExamples(missing, "train");
        assertEquals(examples.map((e) => e.label === null), [false, false, true]);
        const e = assertThrows(() =>
          tokenizeExamples(noTokenizer, examples, 16, `${name} train`, r.task.truncation)
        );
        assertEquals(
          e.message,
          `${missing}:3: ${name} train: example 2 (idx 2) has no label (training and ` +
            `evaluation need one on every example)`,
        );
        // A reader of one's own that gives NaN: said so, not "no label".
        const nan = examples.map((x, i) => i === 2 ? { ...x, label: NaN } : x);
        assertEquals(
          assertThrows(() => tokenizeExamples(noTokenizer, nan, 16, `${name} train`)).message,
          `${missing}:3: ${name} train: example 2 (idx 2) has label NaN, not a number (training ` +
            `and evaluation need one on every example)`,
        );
        // --dry-run says so, naming the line (and does not fail: a test split may be unlabeled).
        const report = await dryRun(r.task, { data: folder });
        assertEquals(report.splits.train, {
          examples: 3,
          ...(r.task.labels.length > 0
            ? { labels: report.splits.train!.labels, unlabeled: 1 }
            : {}),
        });
        assertEquals(report.notes, [
          `${missing}:3: no label (1 of the 3 train examples has none); training needs a label ` +
          `on every train example`,
        ]);
      } else {
        expectMessage(
          await rejected(r, missing),
          missing,
          lineOf(r, 2),
          `${what} "" ${r.labelProblem}`,
        );
      }
    }
    const stsb = READERS.stsb;
    for (
      const [score, ok] of [
        ["5.5", false],
        ["-1", false],
        ["5.01", false],
        ["0x1", false],
        ["Infinity", false],
        ["1e9", false],
        ["5", true],
        ["0", true],
        ["4.000", true],
        [" 2.5 ", true],
        ["1e0", true],
      ] as const
    ) {
      const file = await write(dir, stsb, "score", fileText(stsb, [stsbRow("A.", score)]));
      if (ok) {
        assertEquals((await stsb.task.readExamples(file, "train"))[0].label, Number(score));
      } else {
        expectMessage(
          await rejected(stsb, file),
          file,
          2,
          `score ${JSON.stringify(score)} is not a number in [0, 5]`,
        );
      }
    }
    // A label of several megabytes is quoted cut short.
    const rte = READERS.rte;
    const huge = await write(dir, rte, "huge-label", `${rte.labeled("x".repeat(3_000_000))}\n`);
    const e = await rejected(rte, huge);
    assert(e.message.length < 300, `${e.message.length} characters`);
    assert(e.message.startsWith(`${huge}:1: label "xxxx`) && e.message.includes("characters)"));
  });
});

Deno.test("data errors: missing fields and wrong types (JSONL)", async () => {
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      if (!r.missing) continue;
      const [line, field] = r.missing;
      const file = await write(dir, r, name, `${r.line()}\n${line}\n`);
      expectMessage(await rejected(r, file), file, 2, `field "${field}" is missing`);
      const [typed, textField, value] = r.wrongType!;
      const wrong = await write(dir, r, `${name}-type`, `${r.line()}\n\n${typed}\n`);
      expectMessage(
        await rejected(r, wrong),
        wrong,
        3,
        `field "${textField}" is not a string (it is ${value})`,
      );
      for (const [idx, shown] of [["3", '"3"'], [-1, "-1"], [1.5, "1.5"], [null, "null"]]) {
        const f = await write(dir, r, `${name}-idx`, `${json({ ...JSON.parse(r.line()), idx })}\n`);
        expectMessage(
          await rejected(r, f),
          f,
          1,
          `field "idx" is not a non-negative integer (it is ${shown})`,
        );
      }
    }
    // Task-specific fields: COPA's question, WiC's character offsets.
    const copa = READERS.copa;
    const q = await write(dir, copa, "q", `${json({ ...JSON.parse(copa.line()), question: 7 })}\n`);
    expectMessage(await rejected(copa, q), q, 1, 'field "question" is not a string (it is 7)');
    const why = await write(
      dir,
      copa,
      "why",
      `${json({ ...JSON.parse(copa.line()), question: "why" })}\n`,
    );
    expectMessage(
      await rejected(copa, why),
      why,
      1,
      'field "question" is "why", not "cause" or "effect"',
    );
    const wic = READERS.wic;
    const offset = await write(
      dir,
      wic,
      "offset",
      `${json({ ...JSON.parse(wic.line()), end2: "6" })}\n`,
    );
    expectMessage(
      await rejected(wic, offset),
      offset,
      1,
      'field "end2" is not a non-negative integer (it is "6")',
    );
  });
});

Deno.test("data errors: invalid UTF-8 names its line; a BOM and CRLF line ends are read", async () => {
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      // Latin-1 "café" on the second example's line.
      const good = enc.encode(fileText(r, [r.line(), r.line("caf_ au lait.")]));
      const bytes = good.slice();
      const at = bytes.lastIndexOf("_".charCodeAt(0));
      bytes[at] = 0xe9;
      const latin1 = await write(dir, r, name, bytes);
      const lineStart = bytes.lastIndexOf(0x0a, at) + 1;
      expectMessage(
        await rejected(r, latin1),
        latin1,
        lineOf(r, 1),
        `not valid UTF-8: byte 0xE9 at byte ${at - lineStart + 1} of the line (save the file ` +
          `as UTF-8)`,
      );
      const utf16 = await write(dir, r, `${name}-utf16`, new Uint8Array([0xff, 0xfe, 0x7b, 0]));
      expectMessage(
        await rejected(r, utf16),
        utf16,
        1,
        "the file is UTF-16 (it begins with a UTF-16 byte-order mark), not UTF-8",
      );

      // A UTF-8 byte-order mark and CRLF line ends: the same examples, the same line numbers.
      const lines = [r.line("Café au lait.", 0), r.line("Naïve — “quoted”.", 1)];
      const plain = await write(dir, r, `${name}-plain`, fileText(r, lines));
      const crlf = await write(
        dir,
        r,
        `${name}-crlf`,
        "\uFEFF" + fileText(r, lines).replaceAll("\n", "\r\n"),
      );
      const [a, b] = await Promise.all([plain, crlf].map((f) => r.task.readExamples(f, "train")));
      const strip = (es: TaskExample[]) => es.map(({ source: _, ...e }) => e);
      assertEquals(strip(b), strip(a));
      assertEquals(a.map(r.text).map((t) => t.includes("Café") || t.includes("café")), [
        true,
        false,
      ]);
      assertEquals(b.map((e) => e.source), [`${crlf}:${lineOf(r, 0)}`, `${crlf}:${lineOf(r, 1)}`]);
      // A CRLF file's fault is still named by its line, and its message stays one line.
      const bad = await write(
        dir,
        r,
        `${name}-crlf-bad`,
        "\uFEFF" + fileText(r, [r.line(), r.labeled(r.badLabel[0])]).replaceAll("\n", "\r\n"),
      );
      const e = await rejected(r, bad);
      assert(e.message.startsWith(`${bad}:${lineOf(r, 1)}: `), e.message);
      assert(!/[\r\n]/.test(e.message), JSON.stringify(e.message));
    }
  });
  // The validator agrees with the strict decoder on the hard cases.
  const cases: [number[], number][] = [
    [[0x61, 0xc3, 0xa9], -1],
    [[0xc0, 0x80], 0], // overlong
    [[0x61, 0xed, 0xa0, 0x80], 1], // a surrogate
    [[0xf4, 0x90, 0x80, 0x80], 0], // past U+10FFFF
    [[0xf0, 0x9f, 0x98, 0x80, 0xe2, 0x82], 4], // truncated at the end
    [[0xe2, 0x28, 0xa1], 0],
  ];
  for (const [bytes, expected] of cases) {
    assertEquals(firstInvalidUtf8(new Uint8Array(bytes)), expected, JSON.stringify(bytes));
    let strict = true;
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
    } catch {
      strict = false;
    }
    assertEquals(strict, expected < 0);
  }
});

Deno.test("data errors: a line of 5 MB is read, its faults are short; tokenized in linear time", async () => {
  const big = "The quick brown fox jumps over the lazy dog. ".repeat(120_000); // 5.4 MB
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      const file = await write(dir, r, name, fileText(r, [r.line(), r.line(big), r.line()]));
      // No time bound here (the tests are not timed): a reader quadratic in a line's length
      // would take hours on these 5 MB, past the suite's limit.
      const examples = await r.task.readExamples(file, "train");
      assertEquals(examples.length, 3);
      // (COPA drops the premise's final period.)
      const text = r.text(examples[1]);
      assert(text.startsWith(big.slice(0, 100)), name);
      assert(text.length >= big.trim().length - 1, `${name}: the long text is read whole`);
      // A fault at the end of a 5 MB line: the message quotes a few characters, not the line.
      const broken = r.ext === "jsonl"
        ? r.line(big).replace(/}$/, ', "x": }')
        : `${r.line(big)}\textra`;
      const bad = await write(dir, r, `${name}-bad`, fileText(r, [r.line(), broken]));
      const e = await rejected(r, bad);
      assert(e.message.startsWith(`${bad}:${lineOf(r, 1)}: `), e.message.slice(0, 300));
      assert(e.message.length < 400, `${name}: ${e.message.length} characters`);
    }
  });
  // Tokenized and cut to max_length (WordPiece over the tiny fixture's vocabulary; BPE is also
  // about linear: see train/batches.ts).
  const tokenizer = TextTokenizer.fromJson(
    convertWordPiece(VOCAB.join("\n") + "\n", { source: "tiny vocab.txt" }),
    {
      vocabSize: VOCAB.length,
      typeVocabSize: 2,
      maxPositions: 64,
      padTokenId: 0,
      positionsFromPadding: false,
    },
    { source: "tiny" },
  );
  const example: TaskExample = { idx: 0, inputs: [[big, "the city"]], label: 1 };
  const split = tokenizeExamples(tokenizer, [example], 64, "rte train", "only_first");
  assertEquals(split.examples[0].inputs[0].ids.length, 64);
});

Deno.test("data errors: a missing split names the file, the split and the folder; --dry-run reports it", async () => {
  await withDir(async (dir) => {
    for (const name of NAMES) {
      const r = READERS[name];
      const folder = `${dir}/${name}`;
      await Deno.mkdir(folder);
      const dev = r.task.devSplit;
      await Deno.writeTextFile(`${folder}/${dev}.${r.ext}`, fileText(r, [r.line(), r.line()]));
      const hint = name === "boolq"
        ? "; with no --data, BoolQ is downloaded into the data cache on first use"
        : name === "qnli"
        ? "; with no --data, QNLI is downloaded into the data cache on first use"
        : "";
      const train = `${folder}/train.${r.ext}`;
      const e = await rejected(r, folder, "train");
      assert(e instanceof MissingDataError, e.name);
      expectMessage(
        e,
        train,
        null,
        `cannot read: no such file (the train split; the folder holds ${dev}.${r.ext})${hint}`,
      );
      // The --data path itself missing.
      const nowhere = await rejected(r, `${folder}/nowhere`, "train");
      expectMessage(nowhere, `${folder}/nowhere`, null, `no such file or folder${hint}`);

      // --dry-run: train and dev present, no test split: reported (null), not an error.
      await Deno.writeTextFile(train, fileText(r, [r.line(), r.line(), r.line()]));
      const report = await dryRun(r.task, { data: folder });
      assertEquals(
        [report.splits.train?.examples, report.splits[dev]?.examples, report.splits.test],
        [3, 2, null],
      );
      assertEquals([report.notes, report.ready], [undefined, true]);
      // With --predict-test, the missing test split is a note too, and a refusal.
      const withTest = await dryRun(r.task, { data: folder, predictTest: true });
      assertEquals(withTest.notes, [
        `${folder}/test.${r.ext}: cannot read: no such file (the test split; the folder holds ` +
        `${
          [`${dev}.${r.ext}`, `train.${r.ext}`].sort().join(", ")
        })${hint}; --predict-test needs it`,
      ]);
      assertEquals(withTest.ready, false);
      // No dev split: a note naming the file (training needs it); still no failure.
      await Deno.remove(`${folder}/${dev}.${r.ext}`);
      const noDev = await dryRun(r.task, { data: folder });
      assertEquals(noDev.splits[dev], null);
      assertEquals(noDev.notes, [
        `${folder}/${dev}.${r.ext}: cannot read: no such file (the ${dev} split; the folder ` +
        `holds train.${r.ext})${hint}; training needs it`,
      ]);
      assertEquals(noDev.ready, false);
      // A malformed split: the reader's one-line error in a note, the summary still made (it
      // failed the dry run with no summary); the test split's only --predict-test reads.
      await Deno.writeTextFile(`${folder}/test.${r.ext}`, "");
      const d = await dryRun(r.task, { data: folder });
      assertEquals(d.splits.test, null);
      const testNote = d.notes!.find((n) => n.startsWith(`${folder}/test.${r.ext}`))!;
      assert(
        testNote.includes("has no examples (the file is empty)") &&
          testNote.endsWith("(only --predict-test reads it)"),
        testNote,
      );
      await Deno.writeTextFile(`${folder}/train.${r.ext}`, "");
      const t = await dryRun(r.task, { data: folder });
      assertEquals([t.ready, t.splits.train], [false, null]);
      assert(
        t.notes!.some((n) =>
          n.startsWith(`${folder}/train.${r.ext}`) && n.includes("has no examples")
        ),
        JSON.stringify(t.notes),
      );
    }
  });
});

Deno.test("data errors: empty texts are kept and noted in one line naming the first (dry run)", async () => {
  await withDir(async (dir) => {
    // CoLA refuses an empty sentence, WiC's target word cannot be in one, COPA joins its texts.
    for (const name of NAMES.filter((n) => !["cola", "wic", "copa"].includes(n))) {
      const r = READERS[name];
      const folder = `${dir}/${name}`;
      await Deno.mkdir(folder);
      const dev = r.task.devSplit;
      await Deno.writeTextFile(`${folder}/${dev}.${r.ext}`, fileText(r, [r.line(), r.line()]));
      const lines = [r.line(), r.line(" \u00a0 "), r.line(""), r.line()];
      await Deno.writeTextFile(`${folder}/train.${r.ext}`, fileText(r, lines));
      const examples = await r.task.readExamples(folder, "train");
      assertEquals(examples.map(r.text).slice(1, 3), [" \u00a0 ", ""]);
      const report = await dryRun(r.task, { data: folder });
      assertEquals(report.splits.train?.examples, 4);
      assertEquals(report.notes, [
        `${name} train: 2 of the 4 examples have an empty text (the first: ` +
        `${folder}/train.${r.ext}:${lineOf(r, 1)}); kept, read as empty`,
      ]);
    }
  });
});

Deno.test("data errors: a CoLA row whose sentence is empty or blank is refused, naming its line", async () => {
  // A whitespace-only sentence was kept (read as empty) where an empty one was refused.
  await withDir(async (dir) => {
    const r = READERS.cola;
    for (const [sentence, what] of [["", "empty"], [" \u00a0 ", "blank (only spaces)"]]) {
      await Deno.writeTextFile(`${dir}/train.tsv`, fileText(r, [r.line(), r.line(sentence)]));
      const e = await rejected(r, dir);
      expectMessage(e, `${dir}/train.tsv`, 2, `the sentence (4th field) is ${what}`);
    }
  });
});

Deno.test("data errors: an STS-B dev split of one example is refused before training, noted by --dry-run", async () => {
  await withDir(async (dir) => {
    const r = READERS.stsb;
    const folder = `${dir}/stsb`;
    await Deno.mkdir(folder);
    await Deno.writeTextFile(`${folder}/train.tsv`, fileText(r, [r.line(), r.line(), r.line()]));
    await Deno.writeTextFile(`${folder}/dev.tsv`, fileText(r, [r.line()]));
    const problem = "stsb dev: 1 example; pearson and spearman need at least 2 to be computed";
    const report = await dryRun(r.task, { data: folder });
    assertEquals([report.notes, report.ready], [[problem], false]);
    await writeTinyBert(`${dir}/model`);
    const out = `${dir}/run`;
    const { code, stderr } = await trainCli(
      [
        "--task",
        "stsb",
        "--model",
        `${dir}/model`,
        "--data",
        folder,
        "--out",
        out,
        "--epochs",
        "1",
      ],
    );
    assertEquals([code, stderr.split("\n").at(-1)], [1, `train: ${problem}`]);
    assert(!stderr.includes("step 1"), stderr);
    // Two examples are enough.
    await Deno.writeTextFile(`${folder}/dev.tsv`, fileText(r, [r.line(), r.line()]));
    assertEquals((await dryRun(r.task, { data: folder })).notes, undefined);
  });
});

Deno.test({
  name:
    "data errors: a task of one's own: labels its loss cannot take, unknown metrics, refused first",
  ...IN_PROCESS_GPU,
  fn: async () => {
    await withDir(async (dir) => {
      await writeTinyBert(`${dir}/model`);
      const train = async (task: Task, folder: string) => {
        const { config } = parseTrainArgs([
          ...["--task", task.name, "--model", `${dir}/model`, "--data", folder],
          ...["--out", `${dir}/run-${task.name}`, "--max-steps", "2", "--batch-size", "2"],
        ]);
        return await runTraining(config, { task, quiet: true });
      };
      // Example 1 of train (line 2) gets a label outside the loss's range.
      const relabel = (task: Task, label: number): Task => ({
        ...task,
        readExamples: async (path, split) =>
          (await task.readExamples(path, split)).map((e, i) =>
            split === "train" && i === 1 ? { ...e, label } : e
          ),
      });
      const cases: [string, number, string][] = [
        ["rte", 2, "bce loss needs 0 or 1 (0 entailment, 1 not_entailment)"],
        ["cb", 3, "ce loss needs a class id in [0, 3) (0 entailment, 1 contradiction, 2 neutral)"],
        ["copa", 2, "ce loss needs a class id in [0, 2)"],
        ["stsb", NaN, "mse loss needs a finite number"],
      ];
      for (const [name, label, need] of cases) {
        const r = READERS[name];
        const folder = `${dir}/${name}`;
        await Deno.mkdir(folder);
        const lines = [r.line("a b", 0), r.line("c d", 1), r.line("e f", 2)];
        await Deno.writeTextFile(`${folder}/train.${r.ext}`, fileText(r, lines));
        await Deno.writeTextFile(`${folder}/${r.task.devSplit}.${r.ext}`, fileText(r, lines));
        const task = relabel(r.task, label);
        const idx = (await r.task.readExamples(folder, "train"))[1].idx;
        const problem = `${folder}/train.${r.ext}:${lineOf(r, 1)}: ${name} train: example 1 ` +
          `(idx ${idx}) has label ${label}; the task's ${need}`;
        const report = await dryRun(task, { data: folder });
        assert(report.notes?.includes(problem), JSON.stringify(report.notes));
        assertEquals(report.ready, false);
        await assertRejects(() => train(task, folder), Error, problem);
        assert(!(await exists(`${dir}/run-${name}/log.jsonl`)), "a step was trained");
      }
      // The same label in a test split (Hugging Face gives test examples -1): noted, but the
      // training, which reads no test labels, would start.
      const rte = READERS.rte;
      await Deno.writeTextFile(
        `${dir}/rte/test.${rte.ext}`,
        fileText(rte, [rte.line("a b", 0), rte.line("c d", 1)]),
      );
      const testLabels: Task = {
        ...rte.task,
        readExamples: async (path, split) =>
          (await rte.task.readExamples(path, split)).map((e) =>
            split === "test" ? { ...e, label: -1 } : e
          ),
      };
      const withTest = await dryRun(testLabels, { data: `${dir}/rte` });
      assert(
        withTest.notes?.some((n) => n.includes("rte test: example 0")),
        JSON.stringify(withTest),
      );
      assertEquals(withTest.ready, true);
      // ...and not counted under a name it does not have.
      assertEquals(withTest.splits.test?.labels, { entailment: 0, not_entailment: 0 });
      // A head that does not fit the loss: refused as early.
      await assertRejects(
        () => train({ ...READERS.rte.task, headClasses: 3 }, `${dir}/rte`),
        Error,
        "task rte: the bce loss reads one output per input, not headClasses 3",
      );
      // A metric train/metrics.ts does not compute: refused before the model is opened.
      const auc = { ...READERS.rte.task, metrics: ["accuracy", "auc"] } as unknown as Task;
      await assertRejects(
        () => train(auc, `${dir}/rte`),
        Error,
        'task rte: metric "auc" is not one this toolkit computes (accuracy, f1, macro_f1, mcc, ' +
          "pearson, spearman)",
      );
    });
  },
});

Deno.test("data errors: --data naming a file is refused by training in one line, noted by --dry-run", async () => {
  // A file would be read as every split: trained, scored and chosen on the same examples.
  await withDir(async (dir) => {
    await writeMarkerData(`${dir}/rte`);
    await writeTinyBert(`${dir}/model`);
    const file = `${dir}/rte/train.jsonl`;
    const out = `${dir}/run`;
    const { code, stderr } = await trainCli(
      ["--task", "rte", "--model", `${dir}/model`, "--data", file, "--out", out, "--epochs", "1"],
    );
    assertEquals(code, 2);
    assertEquals(
      stderr,
      `train: --data ${file} is a file: training reads the train and val splits from a folder ` +
        `in the task's layout (pass the folder that holds it)`,
    );
    assert(!(await exists(out)), "the refused run wrote its folder");

    // --out naming a file, or a path through one: the flag and the path, nothing written.
    const data = `${dir}/rte`;
    for (
      const [bad, problem] of [[file, "is a file, not a folder: give a folder for the run"], [
        `${file}/run`,
        `${file} is a file, not a folder`,
      ]]
    ) {
      const refused = await trainCli(
        ["--task", "rte", "--model", `${dir}/model`, "--data", data, "--out", bad, "--epochs", "1"],
      );
      assertEquals([refused.code, refused.stderr], [
        2,
        `train: --out ${bad}${bad === file ? " " : ": "}${problem}`,
      ]);
    }

    // A task script checks it before it downloads the data (here BoolQ, not cached, offline).
    const boolq = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../tasks/boolq.ts", import.meta.url).pathname, "--out", file],
      env: { XDG_RUNTIME_DIR: "/tmp", EHFT_DATA_CACHE: `${dir}/cache`, EHFT_OFFLINE: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(
      [boolq.code, new TextDecoder().decode(boolq.stderr).trim()],
      [2, `boolq: --out ${file} is a file, not a folder: give a folder for the run`],
    );

    const report = await dryRun(READERS.rte.task, { data: file });
    assertEquals(report.splits.train?.examples, 64);
    assertEquals(report.notes, [
      `${file} is a file: training needs a folder holding the train and val splits`,
    ]);
  });
});

Deno.test("data errors: an MRPC train or dev file without Quality names Quality, not index", async () => {
  await withDir(async (dir) => {
    const r = READERS.mrpc;
    const noLabel = "#1 ID\t#2 ID\t#1 String\t#2 String";
    const has = "its header has #1 ID, #2 ID, #1 String, #2 String";
    await Deno.writeTextFile(`${dir}/train.tsv`, `${noLabel}\n1\t2\tA.\tB.\n`);
    await Deno.writeTextFile(`${dir}/dev.tsv`, `\n${noLabel}\n1\t2\tA.\tB.\n`);
    for (const [split, line] of [["train", 1], ["dev", 2]] as const) {
      const e = await rejected(r, dir, split);
      expectMessage(e, `${dir}/${split}.tsv`, line, `no column "Quality" (${has})`);
    }
    // The test split's file has index instead: without it, index is what is missing.
    await Deno.writeTextFile(`${dir}/test.tsv`, `${noLabel}\n1\t2\tA.\tB.\n`);
    const t = await rejected(r, dir, "test");
    expectMessage(t, `${dir}/test.tsv`, 1, `no column "index" (${has})`);
    // A test-layout file (index, no Quality) is still read unlabeled under any split name (a
    // file given to predict.ts, which reads it as its dev split by default).
    const testFile = `${dir}/test-layout.tsv`;
    await Deno.writeTextFile(testFile, `index\t${noLabel}\n7\t1\t2\tA.\tB.\n`);
    for (const split of ["test", "dev", "train"]) {
      const [e] = await r.task.readExamples(testFile, split);
      assertEquals([e.idx, e.label], [7, null], split);
    }
  });
});

Deno.test("a tokenizer that adds no [CLS] before the text is refused: the head reads position 0", async () => {
  await withDir(async (dir) => {
    await writeMarkerData(`${dir}/rte`);
    await writeTinyBert(`${dir}/model`);
    // The same vocabulary as a tokenizer.json, less its post-processor (BERT's adds [CLS]).
    const json = await convertTokenizerDir(`${dir}/model`);
    await Deno.writeTextFile(
      `${dir}/model/tokenizer.json`,
      JSON.stringify({ ...json, post_processor: null }),
    );
    const { code, stderr } = await trainCli([
      ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/rte`],
      ...["--out", `${dir}/run`, "--max-steps", "2"],
    ]);
    assertEquals(code, 1, stderr);
    assertEquals(
      stderr,
      `train: ${dir}/model/tokenizer.json: the tokenizer adds no special token ([CLS], <s>) ` +
        `before the text, and the classification head reads the first position (its ` +
        `post-processor is missing?)`,
    );
  });
});

Deno.test("data errors: --dry-run with a model not at hand: ready unless the training cannot get it", async () => {
  const data = new URL("../data/superglue/CB", import.meta.url).pathname;
  const task = READERS.cb.task;
  const ready = async (model: string, env: Record<string, string>, revision?: string) => {
    const report = await dryRun(task, {
      data,
      model,
      revision,
      env: { HF_HOME: "/nonexistent", ...env },
    });
    assert(
      report.notes?.some((n) => n.startsWith(`--model ${model}: `)),
      `${report.notes}`,
    );
    return report.ready;
  };
  // A hub id not in the cache: the training downloads it, unless told to stay offline.
  assertEquals(await ready("someone/some-model", {}), true);
  // Said without the hub's "HF_HUB_OFFLINE is set", which the dry run set, not the user.
  const report = await dryRun(task, { data, model: "someone/some-model", env: { HF_HOME: "/x" } });
  assert(
    report.notes?.includes(
      "--model someone/some-model: not in the Hugging Face cache yet, so no token lengths (a " +
        "dry run downloads nothing; the training downloads it)",
    ),
    `${report.notes}`,
  );
  assertEquals(await ready("someone/some-model", { HF_HUB_OFFLINE: "1" }), false);
  // Read as the hub reads them: an empty variable is unset, so the other one decides.
  const emptyFirst = { HF_HUB_OFFLINE: "", TRANSFORMERS_OFFLINE: "1" };
  assertEquals(await ready("someone/some-model", emptyFirst), false);
  // A path that is no folder and no hub id: nothing can get it.
  assertEquals(await ready("/nonexistent/model", {}), false);
  // Something there that is no model, though its path looks like a hub id (paths from the
  // repository root, where the tests run): a file, and a folder given a --revision.
  assertEquals(await ready("data/README.md", {}), false);
  assertEquals(await ready("models/ehft-mini-en", {}, "main"), false);
  // A model folder whose files the training refuses (no weights; a config that contradicts
  // them): not ready, named (it read only config.json and the tokenizer, and said ready).
  await withDir(async (dir) => {
    await copyTree(`${ROOT}models/ehft-mini-en`, `${dir}/m`);
    assertEquals((await dryRun(task, { data, model: `${dir}/m` })).ready, true);
    // A weight that is not finite, which the training refuses as it reads it.
    await copyTree(`${ROOT}models/ehft-mini-en`, `${dir}/nan`);
    const poisoned = "bert.encoder.layer.1.output.dense.weight";
    await rewriteSafetensors(`${dir}/nan/model.safetensors`, (_, tensors) => {
      const t = tensors.get(poisoned)!;
      // NaN in the stored dtype: f16 0x7e00, f32 0x7fc00000.
      if (t.dtype === "F16") (t.data as Uint16Array)[0] = 0x7e00;
      else (t.data as Float32Array)[0] = NaN;
    });
    const nan = await dryRun(task, { data, model: `${dir}/nan` });
    assertEquals(nan.ready, false);
    assert(
      nan.notes!.some((n) => n.startsWith(`--model ${dir}/nan: `) && n.includes("holds NaN")),
      `${nan.notes}`,
    );
    await Deno.remove(`${dir}/m/model.safetensors`);
    const gone = await dryRun(task, { data, model: `${dir}/m` });
    assertEquals(gone.ready, false);
    assert(gone.notes!.some((n) => n.startsWith(`--model ${dir}/m: `)), `${gone.notes}`);
  });
});

Deno.test("data errors: a WiC target word that truncation cuts: --dry-run not ready, --predict-test refused before the training", async () => {
  // The dry run said ready (exit 0) where training refused it; --predict-test found it in the
  // test split only after the training.
  await withDir(async (dir) => {
    const folder = `${dir}/wic`;
    await Deno.mkdir(folder);
    const source = (await Deno.readTextFile(`${ROOT}data/superglue/WiC/train.jsonl`)).split("\n");
    // Examples whose first target word is the 8th word or later: cut at 12 tokens.
    const late = source.filter(Boolean).map((l) => JSON.parse(l)).filter((e) =>
      e.sentence1.slice(0, e.start1).split(" ").length > 8
    ).slice(0, 6);
    assert(late.length === 6, "the shipped WiC data has such examples");
    const lines = (rows: Record<string, unknown>[]) =>
      rows.map((r) => JSON.stringify(r)).join("\n") + "\n";
    const early = source.slice(0, 6).map((l) => JSON.parse(l));
    await Deno.writeTextFile(`${folder}/train.jsonl`, lines(late));
    await Deno.writeTextFile(`${folder}/val.jsonl`, lines(early));
    const unlabeled = late.map(({ label: _, ...rest }) => rest);
    await Deno.writeTextFile(`${folder}/test.jsonl`, lines(unlabeled));
    const model = `${ROOT}models/ehft-mini-en`;
    const report = await dryRun(TASKS.wic, { data: folder, model, maxLength: 12 });
    assertEquals(report.ready, false);
    assert(
      report.notes!.some((n) =>
        n.includes(`${folder}/train.jsonl:1: wic train: example 0`) &&
        n.includes("kept only its first")
      ),
      JSON.stringify(report.notes),
    );
    // At a length that keeps the words: ready.
    const long = await dryRun(TASKS.wic, { data: folder, model, maxLength: 128 });
    assertEquals(long.ready, true, JSON.stringify(long.notes));
    // --predict-test's check before the training, with the model's tokenizer at the run's length.
    await Deno.writeTextFile(`${folder}/train.jsonl`, lines(early));
    const { config } = parseTrainArgs([
      ...["--task", "wic", "--model", model, "--data", folder, "--max-length", "12"],
      ...["--out", `${dir}/run`, "--predict-test"],
    ]);
    const tokenizer = await loadTokenizer(model, await readConfig(`${model}/config.json`));
    await assertRejects(
      () => checkTestSplit(config, TASKS.wic, () => {}, { tokenizer, maxLength: 12 }),
      Error,
      `--predict-test: ${folder}/test.jsonl:1: wic test: example 0`,
    );
    await checkTestSplit(config, TASKS.wic, () => {}, { tokenizer, maxLength: 128 });
  });
});
