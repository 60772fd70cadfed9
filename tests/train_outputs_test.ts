// What a run leaves in its folder (run.json, log.jsonl, metrics.json, model/ in the checkpoint
// contract that predict.ts reads, the LoRA adapter), --seeds K, and the task shapes beyond one
// binary logit: multiple choice (two encoder inputs per example, cross-entropy over their
// logits) and regression (MSE, correlation metrics).

import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { captureStderr } from "./stderr.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  markerExamples,
  readLogRecords,
  writeJson,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { exists, lockFolder } from "../model/atomic_write.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { predict } from "../predict.ts";
import { parseTrainArgs, type TrainConfig } from "../train/config.ts";
import { FlagError } from "../train/flags.ts";
import { runTraining, type SeedsMetrics } from "../train/run.ts";
import type { Task, TaskExample } from "../train/task.ts";
import { rte } from "../tasks/rte.ts";
import { cb as cbTask } from "../tasks/cb.ts";

interface Setup {
  dir: string;
  args: string[];
}
let setup: Promise<Setup> | null = null;

function prepare(): Promise<Setup> {
  setup ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-outputs-" });
    // Removed when the module unloads, whichever tests a filter picked.
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    await writeTinyBert(`${dir}/model`, false);
    // As bert-base-uncased's config says (the saved model's must not: it has no MLM head).
    const config = JSON.parse(await Deno.readTextFile(`${dir}/model/config.json`));
    await writeJson(`${dir}/model/config.json`, { ...config, architectures: ["BertForMaskedLM"] });
    await writeMarkerData(`${dir}/data`);
    await writeNarrowHead(`${dir}/head.safetensors`);
    const args = [
      ...["--model", `${dir}/model`, "--data", `${dir}/data`, "--head", `${dir}/head.safetensors`],
      ...["--batch-size", "16", "--dropout", "0"],
    ];
    return { dir, args };
  })();
  return setup;
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, ...IN_PROCESS_GPU, fn });

test("train: run.json, log.jsonl, metrics.json and model/ as predict.ts reads it", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/lora`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "peft", "--peft", "lora"],
    ...["--lr", "1e-2", "--epochs", "2", "--eval-every", "3", "--warmup-ratio", "0.25"],
  ]);
  const metrics = await runTraining(config, { task: rte, quiet: true });

  const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
  assertEquals(run.settings.strategy, "peft");
  assertEquals(run.settings.peft, "lora");
  assertEquals(run.settings.lr, 1e-2);
  assertEquals(run.resolved.total_steps, 8);
  assertEquals(run.resolved.batches_per_epoch, 4);
  assertEquals(run.resolved.max_length, 33);
  assertEquals(run.resolved.head_width, 64);
  assertEquals(run.resolved.dropout, { hidden: 0, attention: 0 });
  assertEquals(run.resolved.stages.length, 1);
  // --head gave the head: the stage did not start from a new one.
  assertEquals(run.resolved.stages[0].freshHead, false);
  assertEquals(run.resolved.adamw.beta2, 0.98);
  // The model folder's real path: what report.ts tells models apart by, however it was spelled.
  assertEquals(run.resolved.model.real_dir, await Deno.realPath(`${dir}/model`));
  // The saved model is a backbone with the EH-FT head: transformers' base class, not the MLM one.
  const saved = JSON.parse(await Deno.readTextFile(`${out}/model/config.json`));
  assertEquals(saved.architectures, ["BertModel"]);

  const log = await readLogRecords(out);
  const steps = log.filter((l) => "loss" in l);
  assertEquals(steps.map((l) => l.step), [1, 2, 3, 4, 5, 6, 7, 8]);
  for (const l of steps) {
    assertEquals(Object.keys(l), ["stage", "step", "loss", "lr", "grad_norm"]);
    assertEquals(l.stage, "main");
    assert(Number.isFinite(l.loss) && l.grad_norm > 0, JSON.stringify(l));
  }
  // Warmup over ⌊0.25 · 8⌋ = 2 steps, then linear decay to 0.
  assertClose(
    "lr",
    steps.map((l) => l.lr),
    [0, 0.5, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6].map((x) => x * 1e-2),
    1e-12,
  );
  const evals = log.filter((l) => "metrics" in l);
  assertEquals(evals.map((l) => l.step), [3, 6, 8]);
  assertEquals(evals[2].metrics, metrics.final);
  assertEquals(
    metrics.best.accuracy,
    Math.max(...evals.map((l) => l.metrics.accuracy)),
  );
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/metrics.json`)), metrics);

  // model/: LoRA merged into the weights, loadable as it is; the adapter beside it.
  const model = await openSafetensors(`${out}/model/model.safetensors`);
  assertEquals(model.metadata.task, "rte");
  assertEquals(model.metadata.peft_state, "merged");
  assertEquals(model.metadata.head_hidden, "64");
  assert(![...model.tensors.keys()].some((n) => n.startsWith("lora.")));
  model.close();
  for (const f of ["config.json", "tokenizer.json"]) await Deno.stat(`${out}/model/${f}`);
  const adapter = JSON.parse(await Deno.readTextFile(`${out}/adapter/adapter_config.json`));
  assertEquals([adapter.peft_type, adapter.r, adapter.lora_alpha], ["LORA", 8, 16]);
  await Deno.stat(`${out}/adapter/head.safetensors`);

  const predictions = await predict({
    model: `${out}/model`,
    task: rte,
    data: `${dir}/data`,
    split: "val",
    batchSize: 16,
  });
  const gold = markerExamples(32, 2).map((e) => e.label);
  const correct = predictions.filter((p, i) => p.prediction === gold[i]).length;
  assertEquals(correct / gold.length, metrics.final.accuracy, "predict.ts agrees with the run");
});

test("train: --seeds 2 runs into seed-<n>/ and averages the metrics", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/seeds`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "lp", "--seed", "5"],
    ...["--seeds", "2", "--max-steps", "4", "--lr", "1e-2", "--eval-every", "2"],
  ]);
  // The data is read (and tokenized, the model hashed) once for all the seeds.
  const reads: string[] = [];
  const task: Task = {
    ...rte,
    readExamples: (path, split) => (reads.push(split), rte.readExamples(path, split)),
  };
  const summary = await runTraining(config, { task, quiet: true }) as SeedsMetrics;
  assertEquals(reads, ["train", rte.devSplit]);
  const one = JSON.parse(await Deno.readTextFile(`${out}/seed-5/metrics.json`));
  const two = JSON.parse(await Deno.readTextFile(`${out}/seed-6/metrics.json`));
  assertEquals(summary.seeds, { "5": one, "6": two });
  assertClose(
    "mean",
    [summary.final.accuracy!],
    [(one.final.accuracy + two.final.accuracy) / 2],
    1e-12,
  );
  assertClose(
    "std",
    [summary.std.final.accuracy!],
    [Math.abs(one.final.accuracy - two.final.accuracy) / 2],
    1e-12,
  );
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/metrics.json`)), summary);
  const runs = [`${out}/seed-5`, `${out}/seed-6`];
  const settings = await Promise.all(
    runs.map(async (r) => JSON.parse(await Deno.readTextFile(`${r}/run.json`)).settings.seed),
  );
  assertEquals(settings, [5, 6]);
  // Different seeds, different data orders: the first losses differ.
  const firstLoss = async (r: string) =>
    JSON.parse((await Deno.readTextFile(`${r}/log.jsonl`)).split("\n")[0]).loss;
  assert((await firstLoss(runs[0])) !== (await firstLoss(runs[1])));
});

test("train --seeds: a finished seed folder that is not this run's seed is refused, not averaged", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/seeds-foreign`;
  const flags = [
    ...["--task", "rte", ...args, "--out", out, "--strategy", "lp", "--seed", "5"],
    ...["--seeds", "2", "--max-steps", "2", "--lr", "1e-2"],
  ];
  await runTraining(parseTrainArgs(flags).config, { task: rte, quiet: true });
  // Killed before its summary, while another train.ts wrote a run of its own into seed-6 (an
  // lr of its own): the resumed summary took it as seed 6, without a word.
  await Deno.remove(`${out}/metrics.json`);
  const runJson = `${out}/seed-6/run.json`;
  const run = JSON.parse(await Deno.readTextFile(runJson));
  await Deno.writeTextFile(
    runJson,
    JSON.stringify({ ...run, settings: { ...run.settings, lr: 0.5 } }),
  );
  const resume = parseTrainArgs([...flags, "--resume"]).config;
  await assertRejects(
    () => runTraining(resume, { task: rte, quiet: true }),
    Error,
    `${out}/seed-6 holds a finished run that is not this run's seed 6 (--lr 0.5 in run.json, ` +
      "0.01 now): move it away, or --overwrite the run",
  );
  await Deno.remove(runJson);
  await assertRejects(
    () => runTraining(resume, { task: rte, quiet: true }),
    Error,
    `${out}/seed-6 holds a metrics.json but no run.json: not a seed of this run`,
  );
  assert(!(await exists(`${out}/metrics.json`)), "a summary was written");
  // --overwrite refuses while another process trains in a seed folder (`--out <out>/seed-5
  // --resume`): it took the folder from under it, and that run wrote into the new one.
  const release = await lockedByAnother(`${out}/seed-5`);
  try {
    await assertRejects(
      () =>
        runTraining(parseTrainArgs([...flags, "--overwrite"]).config, { task: rte, quiet: true }),
      Error,
      `--overwrite: ${out}/seed-5 is in use: another train.ts is running in it`,
    );
    assert(await exists(`${out}/seed-5/metrics.json`), "the seed folder in use was removed");
  } finally {
    await release();
  }
});

/**
 * Locks `dir` in another process, as a running train.ts holds its folder; returns what lets it go.
 */
async function lockedByAnother(dir: string): Promise<() => Promise<void>> {
  const holder = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const f = await Deno.open(${JSON.stringify(dir)}, { read: true });` +
      `console.log(await f.tryLock(true)); await Deno.stdin.readable.getReader().read();`,
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const lines = holder.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await lines.read()).value?.trim(), "true");
  return async () => {
    await holder.stdin.close();
    await holder.status;
    lines.releaseLock();
  };
}

/** A task made in memory from the marker examples (the path is ignored). */
function memoryTask(
  name: string,
  shape: Pick<Task, "headClasses" | "loss" | "metrics">,
  make: (row: Record<string, unknown>, other: Record<string, unknown>) => TaskExample,
): Task {
  return {
    name,
    labels: [],
    devSplit: "val",
    ...shape,
    readExamples: (_path, split) => {
      const rows = markerExamples(split === "train" ? 64 : 32, split === "train" ? 11 : 12);
      return Promise.resolve(rows.map((r, i) => make(r, rows[i ^ 1])));
    },
    prediction: (logits) => logits[0],
  };
}

test("train: multiple choice (two inputs, CE over their logits) learns", async () => {
  const { dir, args } = await prepare();
  // Which of two hypotheses is the marker word: the example's own, or its neighbour's.
  const choice = memoryTask(
    "choice",
    { headClasses: 1, loss: "ce", metrics: ["accuracy"] },
    (row, other) => {
      const positive = row.label === "not_entailment" ? row : other;
      const negative = positive === row ? other : row;
      const first = (row.idx as number) % 4 < 2;
      const pair = (r: Record<string, unknown>): [string, string] => [
        row.premise as string,
        r.hypothesis as string,
      ];
      return {
        idx: row.idx as number,
        inputs: first ? [pair(positive), pair(negative)] : [pair(negative), pair(positive)],
        label: first ? 0 : 1,
      };
    },
  );
  const { config } = parseTrainArgs([
    ...["--task", "choice", ...args, "--out", `${dir}/choice`, "--strategy", "ft"],
    ...["--lr", "3e-3", "--max-steps", "24", "--batch-size", "8", "--schedule", "constant"],
    ...["--max-grad-norm", "0", "--eval-every", "0"],
  ]);
  const metrics = await runTraining(config, { task: choice, quiet: true });
  assert(metrics.final.accuracy! >= 0.95, JSON.stringify(metrics));
  const run = JSON.parse(await Deno.readTextFile(`${dir}/choice/run.json`));
  assertEquals(run.resolved.task.inputs_per_example, 2);
});

test("train: regression (MSE) reports correlations", async () => {
  const { dir, args } = await prepare();
  const regression = memoryTask(
    "score",
    { headClasses: 1, loss: "mse", metrics: ["pearson", "spearman"] },
    (row) => ({
      idx: row.idx as number,
      inputs: [[row.premise as string, row.hypothesis as string]],
      label: row.label === "not_entailment" ? 4 : 1,
    }),
  );
  const { config } = parseTrainArgs([
    ...["--task", "score", ...args, "--out", `${dir}/score`, "--strategy", "ft"],
    ...["--lr", "3e-3", "--max-steps", "16", "--schedule", "constant", "--eval-every", "0"],
  ]);
  const metrics = await runTraining(config, { task: regression, quiet: true });
  assertEquals(Object.keys(metrics.final), ["pearson", "spearman"]);
  assert(metrics.final.pearson! > 0.5, JSON.stringify(metrics));
});

test("train: a run folder another process holds is refused, and left as it was", async () => {
  // A double launch, or a --resume / --overwrite while the run goes on: the folder is locked
  // (an advisory lock on the folder itself, dropped when the process ends).
  const { dir, args } = await prepare();
  const out = `${dir}/locked`;
  const run = (...more: string[]) => {
    const { config } = parseTrainArgs([
      ...["--task", "rte", ...args, "--out", out, "--strategy", "ft", "--max-steps", "2"],
      ...more,
    ]);
    return runTraining(config, { task: rte, quiet: true });
  };
  const first = await run();
  const files = async () => {
    const names: string[] = [];
    for await (const e of Deno.readDir(out)) names.push(e.name);
    return names.sort();
  };
  const before = await files();
  const runJson = await Deno.readTextFile(`${out}/run.json`);
  const other = await Deno.open(out, { read: true });
  try {
    assert(await other.tryLock(true), "the test could not lock the folder");
    for (const more of [["--resume"], ["--overwrite"], []]) {
      let message = "";
      await run(...more).catch((e) => message = e.message);
      assertEquals(
        message,
        `--out ${out} is in use: another train.ts is running in it (wait for it to end, or ` +
          `choose another --out)`,
        more.join(" "),
      );
    }
    assertEquals(await files(), before);
    assertEquals(await Deno.readTextFile(`${out}/run.json`), runJson);
  } finally {
    other.close();
  }
  // Another process holding it (as a running train.ts does): refused the same way.
  const release = await lockedByAnother(out);
  let refused = "";
  await run("--resume").catch((e) => refused = e.message);
  assert(refused.startsWith(`--out ${out} is in use`), refused);
  await release();
  // Released: the run is the same as ever. afterRun (train.ts's --predict-test) runs while the
  // folder is still locked; it is free once runTraining has returned.
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "ft", "--max-steps", "2"],
    "--resume",
  ]);
  let during: unknown = null;
  const metrics = await runTraining(config, {
    task: rte,
    quiet: true,
    afterRun: async () => {
      during = await lockFolder(out);
    },
  });
  assertEquals([metrics, during], [first, "held"]);
  const after = await lockFolder(out);
  assert(after !== null && after !== "held", "the folder is still locked");
  after.close();
});

test("train --resume: a --schedule constant run from before it warmed up is refused", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/constant`;
  const run = (...more: string[]) => {
    const { config } = parseTrainArgs([
      ...["--task", "rte", ...args, "--out", out, "--strategy", "ft", "--max-steps", "4"],
      ...["--schedule", "constant", ...more],
    ]);
    return runTraining(config, { task: rte, quiet: true });
  };
  await run();
  const path = `${out}/run.json`;
  const runJson = JSON.parse(await Deno.readTextFile(path));
  assertEquals(runJson.resolved.schedule, {
    name: "constant",
    warmup_ratio: 0.1,
    constant_warmup: true,
    warmup_steps: [0],
  });
  // As such a run left it, killed before its end (no metrics.json).
  delete runJson.resolved.schedule.constant_warmup;
  await Deno.writeTextFile(path, JSON.stringify(runJson));
  await Deno.remove(`${out}/metrics.json`);
  let message = "";
  await run("--resume").catch((e) => message = e.message);
  assertEquals(
    message,
    `--resume: ${out} was started when --schedule constant had no warmup; it now warms up over ` +
      `--warmup-ratio 0.1 of each stage, so the resumed run would be neither (--overwrite to ` +
      `restart it)`,
  );
});

test("runTraining refuses resume with overwrite from a library caller's config, as the flags do", async () => {
  // A program told to resume with resume: true, keeping overwrite: true from its first run,
  // would otherwise remove the run it meant to continue.
  const { dir, args } = await prepare();
  const { config } = parseTrainArgs([...["--task", "rte", ...args, "--out", `${dir}/modes`]]);
  let message = "";
  await runTraining({ ...config, resume: true, overwrite: true }, { task: rte, quiet: true })
    .catch((e) => message = e.message);
  assertEquals(message, "--resume and --overwrite: choose one");
});

test("runTraining refuses a library caller's unknown strategy, method, schedule or precision first", async () => {
  // An unknown strategy ran as a two-stage PEFT one and failed only after the model was loaded.
  // Named as a config's keys (the caller gave no flags).
  const { dir, args } = await prepare();
  const out = `${dir}/choices`;
  const { config } = parseTrainArgs([...["--task", "rte", ...args, "--out", out]]);
  const cases: [Partial<TrainConfig>, string][] = [
    [
      { strategy: "ehft-bitfit" as TrainConfig["strategy"] },
      'runTraining: config.strategy is "ehft-bitfit", not one',
    ],
    [
      { peft: "adapter" as TrainConfig["peft"] },
      'runTraining: config.peft is "adapter", not one of bitfit, lora',
    ],
    [
      { strategy: "ft" },
      "runTraining: config.peft bitfit: strategy ft uses no PEFT method (use config.strategy peft",
    ],
    [
      { peft: null },
      "runTraining: config.peft: strategy ehft needs a PEFT method (bitfit, lora, prefix)",
    ],
    [
      { schedule: "cosine" as TrainConfig["schedule"] },
      'runTraining: config.schedule is "cosine", not one of',
    ],
    [
      { precision: "bf16" as TrainConfig["precision"] },
      'runTraining: config.precision is "bf16", not one of',
    ],
  ];
  for (const [edit, expected] of cases) {
    const e = await assertRejects(() => runTraining({ ...config, ...edit }, { task: rte }));
    assert(e instanceof FlagError && e.message.startsWith(expected), e.message);
  }
  assertEquals(await exists(out), false, "nothing written");
  // A run that cannot open its model leaves no empty --out behind; a folder that was there stays.
  const missing = { ...config, model: `${dir}/no-model` };
  await assertRejects(() => runTraining(missing, { task: rte, quiet: true }), Error, "no-model");
  assertEquals(await exists(out), false, "an empty --out left behind");
  // With several seeds too: nothing is written before the model opens.
  const seeds = { ...missing, seeds: 2 };
  await assertRejects(() => runTraining(seeds, { task: rte, quiet: true }), Error, "no-model");
  assertEquals(await exists(out), false, "a --seeds run's folder left behind");
  await Deno.mkdir(out);
  await assertRejects(() => runTraining(missing, { task: rte, quiet: true }), Error, "no-model");
  assertEquals(await exists(out), true, "a folder that was there removed");
  // A run folder given for the model in it: named.
  const fake = `${dir}/fake-run`;
  await Deno.mkdir(`${fake}/model`, { recursive: true });
  await Deno.copyFile(`${dir}/model/config.json`, `${fake}/model/config.json`);
  await Deno.writeTextFile(`${fake}/run.json`, "{}");
  await assertRejects(
    () => runTraining({ ...config, model: fake }, { task: rte, quiet: true }),
    Error,
    `${fake} is a run folder, not a model: its model is ${fake}/model`,
  );
});

test("train: two runs started at once on a new --out: one is refused, the other ends", async () => {
  // Each reads its data only once released: the one holding the folder's lock waits there, so
  // the other's refusal (and whatever it does on failing) comes first. The one refused must not
  // remove the folder it saw missing at its start (it did: the other then failed to write).
  const { dir, args } = await prepare();
  const out = `${dir}/race`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "ft", "--max-steps", "2"],
  ]);
  let release = () => {};
  const released = new Promise<void>((r) => release = r);
  const waiting: Task = {
    ...rte,
    readExamples: async (data, split) => {
      await released;
      return await rte.readExamples(data, split);
    },
  };
  const settled = (p: Promise<unknown>) => p.then(() => null, (e: Error) => e.message);
  const runs = [0, 1].map(() => settled(runTraining(config, { task: waiting, quiet: true })));
  const [first, refusal] = await Promise.race(runs.map((p, i) => p.then((r) => [i, r] as const)));
  assert(refusal?.startsWith(`--out ${out} is in use`), `${refusal}`);
  release();
  assertEquals(await runs[1 - first], null, "the other run failed");
  assert(await exists(`${out}/metrics.json`), "the other run did not end");
});

test("train: an evaluation whose predictions are all one class says so, in the log and the line", async () => {
  const { dir, args } = await prepare();
  // A head whose logit is 3 for every input (every prediction class 1, lr 1e-30) and a linear
  // probe that learns the marker in 4 steps at lr 0.1 (both classes predicted), each checked
  // against predict.ts on the same model.
  await writeNarrowHead(`${dir}/constant-head.safetensors`, 64, 7, [3]);
  const noted: boolean[] = [];
  const runs = [["one-class", "constant-head", "ft", "1e-30"], ["mixed", "head", "lp", "1e-1"]];
  for (const [name, head, strategy, lr] of runs) {
    const out = `${dir}/${name}`;
    const { config } = parseTrainArgs([
      ...["--task", "rte", ...args, "--out", out, "--strategy", strategy, "--lr", lr],
      ...["--head", `${dir}/${head}.safetensors`, "--max-steps", "4"],
    ]);
    const text = await captureStderr(() => runTraining(config, { task: rte }));
    const evaluations = (await readLogRecords(out)).filter((l) => "metrics" in l);
    const last = evaluations[evaluations.length - 1];
    const predictions = await predict({
      model: `${out}/model`,
      task: rte,
      data: `${dir}/data`,
      split: "val",
      batchSize: 16,
    });
    const classes = new Set(predictions.map((p) => p.prediction));
    const only = classes.size === 1 ? [...classes][0] : undefined;
    assertEquals(last.one_class, only, `${name}: log.jsonl's last evaluation`);
    const line = text.split("\n").find((l) => l.startsWith("main step 4:"));
    assertEquals(line?.endsWith(` (every prediction "${only}")`), only !== undefined, line);
    noted.push(only !== undefined);
  }
  assertEquals(noted, [true, false], "one run with one class, one with both");
});

test("train: CB's macro-F1 averages its three classes on a dev set that lacks one", async () => {
  const { dir, args } = await prepare();
  // SuperGLUE's F1 for CB: a class the dev set lacks and the model never predicts scores 0 and
  // counts (macro_f1 over the task's labels, not over those that occur). Every prediction is
  // "entailment" (a head whose logits are 3, 0, 0); the dev set holds entailment and
  // contradiction only.
  const data = `${dir}/cb-data`;
  await Deno.mkdir(data, { recursive: true });
  const cb = (n: number, seed: number, labels: string[]) =>
    markerExamples(n, seed).map((e, i) =>
      JSON.stringify({ ...e, label: labels[i % labels.length] })
    )
      .join("\n") + "\n";
  await Deno.writeTextFile(
    `${data}/train.jsonl`,
    cb(8, 1, ["entailment", "contradiction", "neutral"]),
  );
  await Deno.writeTextFile(`${data}/val.jsonl`, cb(6, 2, ["entailment", "contradiction"]));
  await writeNarrowHead(`${dir}/cb-head.safetensors`, 64, 7, [3, 0, 0]);
  const out = `${dir}/cb`;
  const { config } = parseTrainArgs([
    ...["--task", "cb", ...args, "--data", data, "--head", `${dir}/cb-head.safetensors`],
    ...["--out", out, "--strategy", "ft", "--lr", "1e-30", "--max-steps", "1"],
  ]);
  const metrics = await runTraining(config, { task: cbTask, quiet: true });
  // Entailment: precision 3/6, recall 1, F1 2/3; contradiction and neutral 0.
  assertClose("accuracy", [metrics.final.accuracy!], [0.5], 1e-12);
  assertClose("macro_f1 over 3 classes", [metrics.final.macro_f1!], [2 / 9], 1e-12);
});

test("train: without --checkpoint-every, a checkpoint every second evaluation over 21 of them", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/cadence`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "lp", "--lr", "1e-2"],
    ...["--max-steps", "21", "--eval-every", "1"],
  ]);
  const written: number[] = [];
  const rename = Deno.rename;
  Deno.rename = async (from: string | URL, to: string | URL) => {
    await rename(from, to);
    if (String(to).endsWith("/checkpoint.safetensors")) {
      const evaluations = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n")
        .filter((l) => l.includes('"metrics"'));
      written.push(evaluations.length);
    }
  };
  try {
    await runTraining(config, { task: rte, quiet: true });
  } finally {
    Deno.rename = rename;
  }
  const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
  assertEquals([run.resolved.eval_every, run.resolved.checkpoint_every], [1, 2]);
  assertEquals(written, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20], "the evaluations before each");
});

test("train: each progress line shows its block's mean loss (the steps since the line before)", async () => {
  const { dir, args } = await prepare();
  const out = `${dir}/progress`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", ...args, "--out", out, "--strategy", "ft", "--lr", "1e-3"],
    ...["--max-steps", "8", "--eval-every", "3"],
  ]);
  const text = await captureStderr(() => runTraining(config, { task: rte }));
  const lines = [...text.matchAll(/main step (\d+)\/8 loss ([0-9.]+) /g)];
  const losses = (await readLogRecords(out)).filter((l) => "loss" in l).map((l) =>
    l.loss as number
  );
  // Blocks end at the evaluations (steps 3 and 6) and the run's end.
  assertEquals(lines.map((m) => Number(m[1])), [3, 6, 8]);
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  assertEquals(
    lines.map((m) => m[2]),
    [losses.slice(0, 3), losses.slice(3, 6), losses.slice(6)].map((b) => mean(b).toFixed(4)),
  );
  assert(new Set(losses.map((l) => l.toFixed(4))).size > 1, "the steps' losses differ");
});
