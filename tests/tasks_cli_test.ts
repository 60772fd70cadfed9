// The task scripts as a user runs them, as subprocesses in the repository root: `--dry-run` (one
// JSON object on the last line of stdout, exit 0 whichever splits are missing, exit 1 naming
// file and line on a malformed file, token lengths with a model at hand) and the end-to-end
// `deno task cb --max-steps 4 --model <tiny fixture>` run that writes every output file.

import { assert, assertEquals } from "./assert.ts";
import { writeTinyBert } from "./train_fixture.ts";
import { openSafetensors } from "../model/safetensors.ts";

const ROOT = new URL("../", import.meta.url).pathname;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
  /** The last line of stdout, parsed. */
  json: () => Record<string, unknown>;
}

async function run(args: string[], cwd = ROOT): Promise<Result> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { EHFT_OFFLINE: "1", HF_HUB_OFFLINE: "1", XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  return {
    code: out.code,
    stdout,
    stderr,
    json: () => {
      const lines = stdout.trim().split("\n");
      return JSON.parse(lines[lines.length - 1]);
    },
  };
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

// Task scripts with no --model measure token lengths with the shipped model (models/ehft-mini-en,
// max length 128); train.ts with no --model (cola here) has no model to measure with.
test("--dry-run: rte, copa, cola and stsb on the shipped data", async () => {
  const [rte, copa, cola, stsb] = await Promise.all([
    run(["run", "-A", "tasks/rte.ts", "--dry-run"]),
    run(["run", "-A", "tasks/copa.ts", "--dry-run"]),
    run(["run", "-A", "train.ts", "--task", "cola", "--dry-run"]),
    run(["run", "-A", "tasks/stsb.ts", "--dry-run", "--epochs", "3"]),
  ]);
  for (const r of [rte, copa, cola, stsb]) assertEquals(r.code, 0, r.stderr);
  assertEquals(rte.json(), {
    task: "rte",
    data: "data/superglue/RTE",
    splits: {
      train: {
        examples: 2490,
        labels: { entailment: 1249, not_entailment: 1241 },
        max_tokens: 293,
        truncated: 360,
      },
      val: {
        examples: 277,
        labels: { entailment: 146, not_entailment: 131 },
        max_tokens: 266,
        truncated: 38,
      },
      test: null,
    },
    max_tokens: 293,
    max_length: 128,
    ready: true,
  });
  assertEquals(copa.json(), {
    task: "copa",
    data: "data/superglue/COPA",
    splits: {
      train: { examples: 400, labels: { "0": 195, "1": 205 }, max_tokens: 26, truncated: 0 },
      val: { examples: 100, labels: { "0": 55, "1": 45 }, max_tokens: 28, truncated: 0 },
      test: null,
    },
    max_tokens: 28,
    max_length: 128,
    ready: true,
  });
  assertEquals(cola.json(), {
    task: "cola",
    data: "data/glue/CoLA",
    splits: {
      train: { examples: 8551, labels: { unacceptable: 2528, acceptable: 6023 } },
      dev: { examples: 1043, labels: { unacceptable: 322, acceptable: 721 } },
      test: { examples: 1063 },
    },
    max_tokens: null,
    ready: true,
  });
  assertEquals(stsb.json(), {
    task: "stsb",
    data: "data/glue/STS-B",
    splits: {
      train: { examples: 5749, max_tokens: 129, truncated: 1 },
      dev: { examples: 1500, max_tokens: 93, truncated: 0 },
      test: { examples: 1379, max_tokens: 86, truncated: 0 },
    },
    max_tokens: 129,
    max_length: 128,
    ready: true,
  });
});

test("--dry-run: missing splits are null, a bad file fails naming its line, token lengths", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-dry-run-" });
  try {
    await Deno.mkdir(`${dir}/data`);
    await Deno.copyFile(`${ROOT}data/glue/CoLA/dev.tsv`, `${dir}/data/dev.tsv`);
    await Deno.writeTextFile(`${dir}/bad.tsv`, "gj04\t1\t\tFine.\ngj04\t1\tBroken.\n");
    await writeTinyBert(`${dir}/model`, false);
    const [partial, nowhere, bad, tokens, flag] = await Promise.all([
      run(["run", "-A", "tasks/cola.ts", "--dry-run", "--data", `${dir}/data`]),
      run(["run", "-A", "tasks/cb.ts", "--dry-run", "--data", `${dir}/nowhere`]),
      run(["run", "-A", "tasks/cola.ts", "--dry-run", "--data", `${dir}/bad.tsv`]),
      run([
        ...["run", "-A", "tasks/copa.ts", "--dry-run", "--model", `${dir}/model`],
        ...["--max-length", "20"],
      ]),
      run(["run", "-A", "tasks/cb.ts", "--dry-run", "--epochs", "many"]),
    ]);
    // A leading "--" (npm's habit: `deno task cb -- --epochs many`) is no flag of its own.
    const dashed = await run(["run", "-A", "tasks/cb.ts", "--", "--dry-run", "--epochs", "many"]);
    assertEquals([dashed.code, dashed.stderr.trim()], [2, flag.stderr.trim()]);
    // A split the training needs is missing: reported, and the status says it would not start.
    assertEquals(partial.code, 1, partial.stderr);
    assertEquals(partial.json().ready, false);
    assertEquals(partial.json().splits, {
      train: null,
      dev: {
        examples: 1043,
        labels: { unacceptable: 322, acceptable: 721 },
        max_tokens: 36,
        truncated: 0,
      },
      test: null,
    });
    assertEquals([nowhere.code, nowhere.json().ready], [1, false], nowhere.stderr);
    assertEquals(nowhere.json().splits, { train: null, val: null, test: null });
    assert(nowhere.stderr.includes("no such file or folder"), nowhere.stderr);
    assertEquals(bad.code, 1);
    assert(bad.stderr.includes(`${dir}/bad.tsv:2: 3 tab-separated fields`), bad.stderr);
    assertEquals(tokens.code, 0, tokens.stderr);
    // The tiny model's 101-word vocabulary: unknown words are one [UNK] token each.
    const report = tokens.json() as {
      splits: Record<string, { max_tokens: number; truncated: number }>;
      max_tokens: number;
      max_length: number;
    };
    assertEquals(report.max_length, 20);
    assert(report.max_tokens > 20, JSON.stringify(report));
    assertEquals(
      report.max_tokens,
      Math.max(report.splits.train.max_tokens, report.splits.val.max_tokens),
    );
    assert(report.splits.train.truncated > 0, JSON.stringify(report));
    assertEquals(flag.code, 2);
    assert(flag.stderr.includes("--epochs"), flag.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("deno task cb --max-steps 4 --model <tiny fixture> writes every output file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-task-cb-" });
  try {
    await writeTinyBert(`${dir}/model`, false);
    // CB ships no test split: the shipped folder's copy with one made of five dev rows.
    const data = `${dir}/CB`;
    await Deno.mkdir(data);
    for (const f of ["train.jsonl", "val.jsonl"]) {
      await Deno.copyFile(`${ROOT}data/superglue/CB/${f}`, `${data}/${f}`);
    }
    const testRows = (await Deno.readTextFile(`${data}/val.jsonl`)).trim().split("\n").slice(0, 5)
      .map((l) => {
        const { label: _label, ...row } = JSON.parse(l);
        return JSON.stringify(row);
      });
    await Deno.writeTextFile(`${data}/test.jsonl`, testRows.join("\n") + "\n");
    const out = `${dir}/run`;
    const r = await run([
      ...["task", "cb", "--max-steps", "4", "--model", `${dir}/model`, "--out", out],
      ...["--data", data, "--batch-size", "4", "--max-length", "32", "--predict-test"],
    ]);
    assertEquals(r.code, 0, r.stderr);
    // --predict-test loads predict.ts from inside a task script (no import cycle may hang it).
    assert(r.stderr.includes(`5 test predictions written to ${out}/CB.jsonl`), r.stderr);
    const names = async (path: string) => {
      const found: string[] = [];
      for await (const e of Deno.readDir(path)) found.push(e.name);
      return found.sort();
    };
    assertEquals(await names(out), [
      "CB.jsonl",
      "log.jsonl",
      "metrics.json",
      "model",
      "run.json",
      "stage1",
    ]);
    for (const sub of ["model", "stage1"]) {
      assertEquals(await names(`${out}/${sub}`), [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
      ]);
    }
    const run_ = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
    const s = run_.settings;
    assertEquals(
      [s.task, s.strategy, s.peft, s.lr, s.maxSteps, s.epochs, s.data],
      // The tiny fixture is a BERT: the recipe's 1e-5 becomes the paper's BERT-Large 3e-5.
      ["cb", "ehft", "bitfit", 3e-5, 4, null, data],
    );
    const t = run_.resolved.task;
    assertEquals([t.loss, t.head_classes, t.train_examples, t.dev_examples, t.dev_split], [
      "ce",
      3,
      250,
      56,
      "val",
    ]);
    const steps = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((l) => "loss" in l);
    assertEquals(steps.map((l) => l.step), [1, 2, 3, 4]);
    const metrics = JSON.parse(await Deno.readTextFile(`${out}/metrics.json`));
    assertEquals(Object.keys(metrics.final), ["accuracy", "macro_f1"]);
    assert(metrics.final.accuracy >= 0 && metrics.final.accuracy <= 1, JSON.stringify(metrics));
    const weights = await openSafetensors(`${out}/model/model.safetensors`);
    weights.close();
    assertEquals(weights.metadata.max_length, "32");
    // predict.ts on the run's model reads the examples at the run's --max-length (kept in the
    // weights' metadata), so its dev predictions score what metrics.json says.
    const predicted = await run([
      ...["run", "-A", "predict.ts", "--model", `${out}/model`, "--task", "cb"],
      ...["--data", data, "--out", `${dir}/val.jsonl`],
    ]);
    assertEquals(predicted.code, 0, predicted.stderr);
    const gold = (await Deno.readTextFile(`${data}/val.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l).label);
    const guesses = (await Deno.readTextFile(`${dir}/val.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l).prediction);
    const right = guesses.filter((g, i) => g === gold[i]).length;
    assertEquals(right / gold.length, metrics.final.accuracy);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("a task script run from another folder finds its shipped data, as its shipped model", async () => {
  const elsewhere = await Deno.makeTempDir({ prefix: "ehft-elsewhere-" });
  try {
    const r = await run(["run", "-A", `${ROOT}tasks/cb.ts`, "--dry-run"], elsewhere);
    assertEquals(r.code, 0, r.stderr);
    const report = r.json() as { data: string; splits: { train: { examples: number } } };
    assertEquals([report.data, report.splits.train.examples], [`${ROOT}data/superglue/CB`, 250]);
  } finally {
    await Deno.remove(elsewhere, { recursive: true });
  }
});

test("a task script of one's own (a Task and runTaskScript from mod.ts): --dry-run and a short run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-own-task-" });
  try {
    await Deno.mkdir(`${dir}/data`);
    for (const [split, n] of [["train", 8], ["dev", 4]] as const) {
      const rows = Array.from(
        { length: n },
        (_, i) => `the film was ${i % 2 ? "good" : "bad"}\t${i % 2}`,
      );
      await Deno.writeTextFile(
        `${dir}/data/${split}.tsv`,
        ["sentence\tlabel", ...rows].join("\n") + "\n",
      );
    }
    await Deno.writeTextFile(
      `${dir}/my_task.ts`,
      `import { labelId, readTsv, runTaskScript, splitFile, type Task, tsvColumn } from "${ROOT}mod.ts";
const LABELS = ["negative", "positive"];
const task: Task = {
  name: "sst2", labels: LABELS, headClasses: 1, loss: "bce", metrics: ["accuracy"], devSplit: "dev",
  async readExamples(path, split) {
    const file = await splitFile(path, split, "tsv");
    const table = await readTsv(file, { header: true });
    const [s, l] = [tsvColumn(table, "sentence"), tsvColumn(table, "label")];
    return table.rows.map(({ line, fields }, i) => ({
      source: \`\${file}:\${line}\`, idx: i, inputs: [fields[s]], label: labelId(file, line, fields[l], LABELS),
    }));
  },
  prediction: (logits) => LABELS[logits[0] > 0 ? 1 : 0],
};
await runTaskScript(task, { epochs: 1 });
`,
    );
    // Its --help is run as the script is (train.ts and deno task know only the toolkit's tasks).
    const help = await run(["run", "-A", `${dir}/my_task.ts`, "--help"]);
    assertEquals(help.code, 0, help.stderr);
    const usage = help.stdout.split("\n").slice(0, 3).join("\n");
    assertEquals(usage, `usage: deno run -A ${dir}/my_task.ts [flags]\n\nFine-tunes on sst2.`);
    // The recipe names no task: the script's own is the one trained.
    const dry = await run(["run", "-A", `${dir}/my_task.ts`, "--data", `${dir}/data`, "--dry-run"]);
    assertEquals(dry.code, 0, dry.stderr);
    assertEquals(dry.json().splits, {
      train: { examples: 8, labels: { negative: 4, positive: 4 } },
      dev: { examples: 4, labels: { negative: 2, positive: 2 } },
      test: null,
    });
    await writeTinyBert(`${dir}/model`);
    const trained = await run([
      ...["run", "-A", `${dir}/my_task.ts`, "--data", `${dir}/data`, "--model", `${dir}/model`],
      ...["--max-steps", "2", "--batch-size", "4", "--out", `${dir}/run`],
    ]);
    assertEquals(trained.code, 0, trained.stderr);
    const runJson = JSON.parse(await Deno.readTextFile(`${dir}/run/run.json`));
    assertEquals(runJson.settings.task, "sst2");
    assert(await Deno.stat(`${dir}/run/metrics.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
