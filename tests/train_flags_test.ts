// train.ts's flags (train/config.ts): defaults by strategy and method, a task script's recipe
// yielding to what the user typed, and one-line errors that name the flag.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  BERT_LARGE_LR,
  checkConfigChoices,
  checkConfigValues,
  parseTrainArgs,
  type Recipe,
  recipeLearningRate,
  type TrainConfig,
} from "../train/config.ts";
import { checkRunFolder, FlagError } from "../train/flags.ts";
import { DEFAULT_CHECKPOINTS, defaultCheckpointEvery } from "../train/prepare.ts";
import { defaultMainLr, defaultStage1Lr } from "../train/strategy.ts";

const BASE = ["--task", "rte", "--model", "m", "--data", "d"];

function parse(args: string[], recipe: Recipe = {}) {
  return parseTrainArgs([...BASE, ...args], recipe).config;
}

function fails(args: string[], message: string, recipe: Recipe = {}): void {
  const e = assertThrows(() => parseTrainArgs([...BASE, ...args], recipe), FlagError);
  assert(e.message.includes(message), `"${e.message}" should include "${message}"`);
  assert(!e.message.includes("\n"), e.message);
}

Deno.test("train flags: defaults by strategy and PEFT method", () => {
  const ehft = parse([]);
  assertEquals(
    [ehft.strategy, ehft.peft, ehft.stage1Lr, ehft.lr, ehft.stage1Ratio, ehft.batchSize],
    ["ehft", "bitfit", 5e-4, 1e-5, 0.1, 32],
  );
  assertEquals([ehft.epochs, ehft.maxSteps, ehft.seed, ehft.seeds], [10, null, 42, 1]);
  assertEquals(
    [ehft.weightDecay, ehft.maxGradNorm, ehft.warmupRatio, ehft.schedule, ehft.shuffle],
    [0.1, 0.1, 0.1, "linear", true],
  );
  assertEquals([ehft.loraR, ehft.loraAlpha, ehft.prefixLength], [8, 16, 16]);
  assertEquals([ehft.dropout, ehft.maxLength, ehft.evalEvery, ehft.head], [null, null, null, null]);
  assertEquals(ehft.out, "runs/rte/ehft-bitfit");
  assertEquals([ehft.precision, parse(["--precision", "f16"]).precision], ["f32", "f16"]);
  assertEquals(parse(["--peft", "prefix"]).stage1Lr, 5e-3);
  assertEquals(parse(["--peft", "lora"]).stage1Lr, 5e-4);
  const lp = parse(["--strategy", "lp"]);
  assertEquals([lp.peft, lp.lr, lp.stage1Lr], [null, 5e-4, null]);
  const lpft = parse(["--strategy", "lpft"]);
  assertEquals([lpft.peft, lpft.lr, lpft.stage1Lr], [null, 1e-5, 5e-4]);
  const ft = parse(["--strategy", "ft"]);
  assertEquals([ft.peft, ft.lr, ft.stage1Lr], [null, 1e-5, null]);
  const peft = parse(["--strategy", "peft", "--peft", "prefix"]);
  assertEquals([peft.peft, peft.lr, peft.stage1Lr], ["prefix", 5e-3, null]);
  const typed = parse(["--max-steps", "7", "--no-shuffle", "--dropout", "0", "--eval-every", "0"]);
  assertEquals([typed.epochs, typed.maxSteps, typed.shuffle, typed.dropout, typed.evalEvery], [
    null,
    7,
    false,
    0,
    0,
  ]);
  // A task's default data folder.
  const { config } = parseTrainArgs(
    ["--task", "rte", "--model", "m"],
    {},
    (t) => t === "rte" ? "data/superglue/RTE" : undefined,
  );
  assertEquals(config.data, "data/superglue/RTE");
});

Deno.test("train flags: a checkpoint at evaluations by default, about 20 a run at most", () => {
  // Every evaluation's step, or every k-th: CB's recipe (400 epochs of 8 steps) writes 20, not 400.
  assertEquals(DEFAULT_CHECKPOINTS, 20);
  assertEquals(defaultCheckpointEvery(8, 3200), 160);
  assertEquals(defaultCheckpointEvery(78, 780), 78);
  assertEquals(defaultCheckpointEvery(8, 160), 8);
  assertEquals(defaultCheckpointEvery(8, 161), 16);
  assertEquals(defaultCheckpointEvery(1, 10_000), 500);
  assertEquals(defaultCheckpointEvery(1, 21), 2);
});

Deno.test("train flags: a recipe's defaults yield to what the user typed", () => {
  const recipe: Recipe = {
    task: "rte",
    strategy: "ehft",
    peft: "lora",
    stage1Lr: 1e-3,
    lr: 2e-5,
    epochs: 3,
  };
  const own = parse([], recipe);
  assertEquals([own.strategy, own.peft, own.stage1Lr, own.lr, own.epochs], [
    "ehft",
    "lora",
    1e-3,
    2e-5,
    3,
  ]);
  // An explicit --strategy ft drops the recipe's PEFT method and Stage-1 lr, and keeps its lr,
  // the full fine-tuning's (a baseline beside the recipe's run trained at ft's default instead).
  const ft = parse(["--strategy", "ft"], recipe);
  assertEquals([ft.strategy, ft.peft, ft.lr, ft.stage1Lr, ft.epochs], ["ft", null, 2e-5, null, 3]);
  // lp and peft train the head or the method last: their own lr; ehft-reserve keeps all.
  const lp = parse(["--strategy", "lp"], recipe);
  assertEquals([lp.peft, lp.lr, lp.stage1Lr], [null, defaultMainLr("lp", null), null]);
  const peft = parse(["--strategy", "peft"], recipe);
  assertEquals([peft.peft, peft.lr, peft.stage1Lr], ["lora", defaultMainLr("peft", "lora"), null]);
  const reserve = parse(["--strategy", "ehft-reserve"], recipe);
  assertEquals([reserve.peft, reserve.lr, reserve.stage1Lr], ["lora", 2e-5, 1e-3]);
  const lpft = parse(["--strategy", "lpft"], recipe);
  assertEquals([lpft.peft, lpft.lr, lpft.stage1Lr], [null, 2e-5, defaultStage1Lr("lpft", null)]);
  // Another PEFT method drops the recipe's stage-1 lr (it was the recipe method's).
  const prefix = parse(["--peft", "prefix"], recipe);
  assertEquals([prefix.peft, prefix.stage1Lr, prefix.lr], ["prefix", 5e-3, 2e-5]);
  // --max-steps typed replaces the recipe's epochs.
  const steps = parse(["--max-steps", "50"], recipe);
  assertEquals([steps.epochs, steps.maxSteps], [null, 50]);
  fails(["--task", "cb"], "this script trains rte, not cb", recipe);
});

Deno.test("train flags: errors are one line and name the flag", () => {
  fails(["--stratgy", "ft"], "unknown flag --stratgy (did you mean --strategy?)");
  fails(["--lora-rank", "4"], "unknown flag --lora-rank (did you mean --lora-r");
  fails(["--peft", "lora", "--strategy", "ft"], "--peft lora: strategy ft uses no PEFT method");
  fails(["--strategy", "lp", "--peft", "bitfit"], "strategy lp uses no PEFT method");
  fails(["--strategy", "nope"], '--strategy: "nope" is not one of ft, lp, lpft, peft, ehft');
  fails(["--peft", "adapter"], '--peft: "adapter" is not one of bitfit, lora, prefix');
  // A task script's recipe is data too: its strategy was taken unchecked.
  const typo = { strategy: "EHFT" } as unknown as Recipe;
  fails([], '--strategy: "EHFT" is not one of ft, lp, lpft, peft, ehft', typo);
  // A config written by hand in JavaScript may leave out peft (none) and precision (f32).
  const loose = { strategy: "ft", schedule: "linear" } as unknown as TrainConfig;
  checkConfigChoices(loose);
  assertThrows(() => checkConfigChoices({ ...loose, strategy: "ehft" }), FlagError, "needs a PEFT");
  fails(["--lr", "abc"], '--lr: expected a number > 0, got "abc"');
  fails(["--lr", "0"], "--lr: expected a number > 0");
  fails(["--lr", "-1"], "--lr");
  fails(["--stage1-lr=-1"], "--stage1-lr: expected a number > 0");
  fails(["--batch-size", "0"], '--batch-size: expected an integer ≥ 1, got "0"');
  fails(["--batch-size", "2.5"], "--batch-size: expected an integer");
  fails(["--epochs", "x"], "--epochs: expected an integer");
  fails(["--max-steps=-3"], "--max-steps: expected an integer");
  fails(["--stage1-ratio", "1"], "--stage1-ratio: expected a number > 0 and < 1");
  fails(["--dropout", "1"], "--dropout: expected a number ≥ 0 and < 1");
  fails(["--precision", "bf16"], '--precision: "bf16" is not one of f32, f16');
  fails(["--warmup-ratio", "nan"], "--warmup-ratio: expected a number");
  fails(["--max-grad-norm=-0.1"], "--max-grad-norm: expected a number ≥ 0");
  fails(["--eval-every=-1"], "--eval-every: expected an integer ≥ 0");
  fails(["--lora-r", "0"], "--lora-r: expected an integer ≥ 1");
  fails(["--schedule", "cosine"], '--schedule: "cosine" is not one of linear, constant');
  fails(["--epochs", "3", "--max-steps", "9"], "--epochs and --max-steps: give one budget");
  fails(["--strategy", "ft", "--stage1-lr", "1e-3"], "--stage1-lr: strategy ft has one stage");
  fails(["--strategy", "peft", "--stage1-ratio", "0.2"], "--stage1-ratio: strategy peft has one");
  fails(["--resume", "--overwrite"], "--resume and --overwrite: choose one");
  fails(["--max-steps", "1"], "--max-steps: strategy ehft has two stages, so needs at least 2");
  const missing = assertThrows(() => parseTrainArgs(["--model", "m"]), FlagError);
  assertEquals(missing.message, "--task is required");
  const noData = assertThrows(() => parseTrainArgs(["--task", "x", "--model", "m"]), FlagError);
  assertEquals(noData.message, "--data is required (this task has no default data folder)");
});

Deno.test({
  name: "train.ts: bad flags exit 2 with one line on stderr; a model it cannot open, 1",
  fn: async () => {
    const run = async (...args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../train.ts", import.meta.url).pathname, ...args],
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: r.code, stderr: new TextDecoder().decode(r.stderr).trim() };
    };
    const typo = await run("--task", "rte", "--modle", "x");
    assertEquals(typo, { code: 2, stderr: "train: unknown flag --modle (did you mean --model?)" });
    const peft = await run("--task", "rte", "--model", "m", "--peft", "lora", "--strategy", "ft");
    assertEquals(peft.code, 2);
    assert(peft.stderr.startsWith("train: --peft lora: strategy ft uses no PEFT method"));
    const task = await run("--task", "nope", "--model", "m");
    assertEquals(task.code, 2);
    assert(task.stderr.startsWith('train: --task: unknown task "nope"'), task.stderr);
    for (const r of [typo, peft, task]) assert(!r.stderr.includes("\n"), r.stderr);
    // The flags are fine: what they name fails (status 1, as any failure after the flags).
    const dir = await Deno.makeTempDir();
    try {
      const model = await run("--task", "rte", "--model", `${dir}/none`, "--out", `${dir}/run`);
      assertEquals(model.code, 1, model.stderr);
      assert(model.stderr.startsWith(`train: ${dir}/none`), model.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("train flags: a recipe's 1e-5 becomes the paper's 3e-5 for BERT models only", () => {
  const recipe: Recipe = { task: "rte", strategy: "ehft", peft: "bitfit", lr: 1e-5 };
  const base = ["--model", "m", "--data", "d"];
  const lr = (args: string[], modelType: string, r: Recipe = recipe) => {
    const { config, typed } = parseTrainArgs([...base, ...args], r);
    return recipeLearningRate(config, r, typed, modelType);
  };
  assertEquals(lr([], "bert"), BERT_LARGE_LR);
  assertEquals(lr([], "roberta"), 1e-5);
  assertEquals(lr(["--lr", "1e-5"], "bert"), 1e-5); // typed: kept
  assertEquals(lr(["--lr", "2e-5"], "bert"), 2e-5);
  assertEquals(lr([], "bert", { ...recipe, lr: 3e-5 }), 3e-5); // WiC's own recipe
  assertEquals(lr(["--strategy", "ft"], "bert"), 3e-5);
});

Deno.test("train flags: --out the file system's root or the home folder is refused", async () => {
  await assertRejects(
    () => checkRunFolder("/"),
    FlagError,
    "--out / is the file system's root: give the run a folder of its own (e.g. runs/<task>)",
  );
  const home = await Deno.makeTempDir();
  const before = Deno.env.get("HOME");
  Deno.env.set("HOME", home);
  try {
    await assertRejects(() => checkRunFolder(`${home}/`), FlagError, "is your home folder");
    await checkRunFolder(`${home}/runs/rte`); // a folder of its own inside it is fine
  } finally {
    if (before === undefined) Deno.env.delete("HOME");
    else Deno.env.set("HOME", before);
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("train flags: an --out that takes no file is refused before any work (probeRunFolder)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/ro`);
    await Deno.mkdir(`${dir}/elsewhere`);
    // Deno allowed to write elsewhere only: what a read-only mount or folder looks like (root,
    // as tests may run, writes through file permissions).
    // What `code` prints, run as a script that may write in ${dir}/elsewhere only.
    const limited = async (name: string, code: string) => {
      await Deno.writeTextFile(`${dir}/${name}`, code);
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-read",
          "--allow-env",
          `--allow-write=${dir}/elsewhere`,
          `${dir}/${name}`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return new TextDecoder().decode(r.stdout).trim();
    };
    const probe = (out: string) =>
      limited(
        "probe.ts",
        `import { probeRunFolder } from "${new URL("../train/flags.ts", import.meta.url)}";
try { await probeRunFolder(${JSON.stringify(out)}); console.log("ok"); }
catch (e) { console.log(e.message); }`,
      );
    for (const out of [`${dir}/ro`, `${dir}/ro/new/run`]) {
      const said = await probe(out);
      assert(said.startsWith(`--out ${out}: cannot write in ${dir}/ro: `), said);
    }
    assertEquals(await probe(`${dir}/elsewhere/run`), "ok");
    // runTraining probes too (a library caller's run), before the model or data are read.
    const said = await limited(
      "run.ts",
      `import { parseTrainArgs, runTraining } from "${new URL("../mod.ts", import.meta.url)}";
import { rte } from "${new URL("../tasks/rte.ts", import.meta.url)}";
const { config } = parseTrainArgs(["--task", "rte", "--model", "no-model", "--data", "no-data",
  "--out", ${JSON.stringify(`${dir}/ro/run`)}]);
try { await runTraining(config, { task: rte, quiet: true }); } catch (e) { console.log(e.message); }`,
    );
    assert(said.startsWith(`--out ${dir}/ro/run: cannot write in ${dir}/ro: `), said);
    assertEquals([...Deno.readDirSync(`${dir}/ro`)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train config: runTraining's config is checked as its flags would be", () => {
  const config = parse(["--strategy", "ehft", "--peft", "lora", "--max-steps", "20"]);
  checkConfigValues(config);
  // A task of one's own may be named freely; what a method or strategy does not use is not read.
  checkConfigValues({ ...config, task: "my task", prefixLength: -1 });
  const ft = parse(["--strategy", "ft"]);
  checkConfigValues({ ...ft, stage1Ratio: 7, stage1Lr: 3, loraR: 0 });
  // A hand-written config may leave out what earlier versions had no setting for.
  const { precision: _p, gradAccum: _g, ...older } = ft;
  checkConfigValues(older as TrainConfig);
  const refused = (changed: Partial<TrainConfig>, message: string) => {
    const e = assertThrows(() => checkConfigValues({ ...config, ...changed }), FlagError);
    assertEquals(e.message, message);
  };
  refused(
    { warmupRatio: 5 },
    'runTraining: config.warmupRatio: expected a number ≥ 0 and < 1, got "5"',
  );
  refused({ seeds: 0 }, 'runTraining: config.seeds: expected an integer in [1, 1000], got "0"');
  refused({ lr: -1 }, 'runTraining: config.lr: expected a number > 0, got "-1"');
  refused({ lr: NaN }, "runTraining: config.lr is NaN, not a value of --lr");
  // The named choices, in a config's words too.
  const choice = (changed: Partial<TrainConfig>, message: string) => {
    const e = assertThrows(
      () => checkConfigChoices({ ...config, ...changed }, "runTraining"),
      FlagError,
    );
    assertEquals(e.message, message);
  };
  choice(
    { precision: "F16" as TrainConfig["precision"] },
    'runTraining: config.precision is "F16", not one of f32, f16',
  );
  choice(
    { peft: null },
    "runTraining: config.peft: strategy ehft needs a PEFT method (bitfit, lora, prefix)",
  );
  refused(
    { epochs: 3 },
    "runTraining: config.epochs and config.maxSteps: give one budget, not both",
  );
  refused({ maxSteps: null }, "runTraining: config has no budget: give epochs or maxSteps");
  refused(
    { out: undefined as unknown as string },
    "runTraining: config.out is undefined: give the run folder",
  );
  refused(
    { batchSize: "32" as unknown as number },
    'runTraining: config.batchSize is "32", where its flag gives 32',
  );
  refused(
    { shuffle: "no" as unknown as boolean },
    'runTraining: config.shuffle is "no", not a value of --no-shuffle',
  );
  refused(
    { resume: "false" as unknown as boolean },
    'runTraining: config.resume is "false", not true or false',
  );
  // A misspelt key was ignored: the run trained at the default rate.
  const misspelt = (key: string, message: string) => {
    const e = assertThrows(() => checkConfigValues({ ...config, [key]: 1 }), FlagError);
    assertEquals(e.message, message);
  };
  misspelt(
    "learningRate",
    "runTraining: config.learningRate is not a setting (did you mean config.lr?)",
  );
  misspelt(
    "batch_size",
    "runTraining: config.batch_size is not a setting (did you mean config.batchSize?)",
  );
  misspelt(
    "wamupRatio",
    "runTraining: config.wamupRatio is not a setting (did you mean config.warmupRatio?)",
  );
  misspelt("zzz", "runTraining: config.zzz is not a setting (TrainConfig lists them)");
  // A two-stage run without a stage-1 rate of its own trains stage 1 at the main rate.
  checkConfigValues({ ...config, stage1Lr: null });
  refused({ loraR: 2.5 }, 'runTraining: config.loraR: expected an integer ≥ 1, got "2.5"');
});
