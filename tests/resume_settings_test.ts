// --resume reads a run's settings back from its run.json (train/resume_settings.ts): every
// setting as recorded, the typed flags over them, the default --out found from a task script's
// recipe, and a run.json that is not a run's named on one line.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { parseTrainArgs, type Recipe, runSettings } from "../train/config.ts";
import { parseOverRecorded, recordedSettings } from "../train/resume_settings.ts";
import { checkSameSettings } from "../train/run_folder.ts";
import { FlagError } from "../train/flags.ts";

/** A run folder in a new temporary folder whose run.json records the run of `args`. */
async function recordedRun(args: string[]): Promise<{ dir: string; out: string }> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-resume-settings-" });
  const out = `${dir}/run`;
  const { config } = parseTrainArgs([...args, "--out", out]);
  await Deno.mkdir(out);
  await Deno.writeTextFile(`${out}/run.json`, JSON.stringify({ settings: runSettings(config) }));
  return { dir, out };
}

/** The config a resume with `args` parses to, over `recipe` (as trainFromArgs merges them). */
async function resumed(args: string[], recipe: Recipe = {}) {
  const recorded = await recordedSettings(args, recipe);
  assert(recorded !== null, "run.json was not read");
  return parseOverRecorded(args, recipe, recorded, () => undefined).config;
}

const STARTED = [
  ...["--task", "cb", "--model", "/models/bert", "--data", "/data/cb", "--strategy", "ehft"],
  ...["--peft", "lora", "--lora-r", "4", "--lora-alpha", "12", "--max-steps", "300"],
  ...["--lr", "1e-5", "--stage1-lr", "7e-4", "--stage1-ratio", "0.2", "--batch-size", "12"],
  ...["--grad-accum", "3", "--max-length", "96", "--dropout", "0.05", "--no-shuffle"],
  ...["--schedule", "constant", "--warmup-ratio", "0.29", "--weight-decay", "0.01"],
  ...["--max-grad-norm", "0", "--seed", "7", "--seeds", "3", "--eval-every", "25"],
  ...["--checkpoint-every", "0", "--precision", "f16", "--f16-math", "--revision", "main"],
];

Deno.test("resume settings: --out and --resume alone give every recorded setting", async () => {
  const { dir, out } = await recordedRun(STARTED);
  try {
    const expected = runSettings(parseTrainArgs([...STARTED, "--out", out]).config);
    const config = await resumed(["--out", out, "--resume"]);
    assertEquals(runSettings(config), expected);
    assert(config.resume);
    // The same with a setting typed again as it was, and a run folder moved (another --out).
    const moved = `${dir}/moved`;
    await Deno.rename(out, moved);
    const again = await resumed(["--resume", "--seed", "7", `--out=${moved}/`]);
    assertEquals(runSettings(again), { ...expected, out: `${moved}/` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resume settings: a one-stage run without a method keeps them as recorded", async () => {
  // run.json keeps stage 1's share and every method's settings whatever the strategy; typed,
  // --stage1-ratio and --lora-r would be refused with --strategy ft.
  const started = ["--task", "cb", "--model", "m", "--data", "d", "--strategy", "ft"];
  for (const more of [[], ["--seed", "3", "--max-steps", "9"]]) {
    const { dir, out } = await recordedRun([...started, ...more]);
    try {
      const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
      // Values that no one-stage run reads, as another version might have recorded them.
      run.settings = { ...run.settings, stage1Ratio: 0.3, loraR: 4, prefixLength: 2 };
      await Deno.writeTextFile(`${out}/run.json`, JSON.stringify(run));
      const config = await resumed(["--out", out, "--resume"]);
      assertEquals(runSettings(config), { ...run.settings, out });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("resume settings: a typed flag wins over run.json (the run then refuses it)", async () => {
  const { dir, out } = await recordedRun(STARTED);
  try {
    const config = await resumed(["--out", out, "--resume", "--seed", "8", "--peft", "bitfit"]);
    assertEquals([config.seed, config.peft, config.maxSteps], [8, "bitfit", 300]);
    // A typed flag that cannot go with the recorded ones: the resume would refuse it as not the
    // run's, and says so (not as --grad-accum being more than a --batch-size not typed).
    const accum = ["--out", out, "--resume", "--grad-accum", "13"];
    const recorded = await recordedSettings(accum);
    const e = assertThrows(() => parseOverRecorded(accum, {}, recorded!, () => "d"));
    assertEquals(
      e.message,
      `--resume: ${out} was started with other settings (--grad-accum 3 in run.json, 13 now)`,
    );
    // A value its flag does not take is the flag's error, saying where the others came from.
    const bad = ["--out", out, "--resume", "--lr", "abc"];
    const lr = assertThrows(() => parseOverRecorded(bad, {}, recorded!, () => "d"));
    assert(lr.message.startsWith("--resume: --lr: "), lr.message);
    assert(
      lr.message.endsWith(`(the settings not typed are those in ${out}/run.json)`),
      lr.message,
    );
    // A typed --task that is not the run's is refused here, worded as the other settings are.
    const task = await assertRejects(
      () => recordedSettings(["--out", out, "--resume", "--task", "rte"]),
      Error,
    );
    assertEquals(
      task.message,
      `--resume: ${out} was started with other settings (--task "cb" in run.json, "rte" now)`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resume settings: the recorded learning rate replaces a script's", async () => {
  // The task scripts' recipes say 1e-5, which a BERT trains at 3e-5 (recipeLearningRate); a
  // run that trained at the recorded rate resumes at it (train.ts applies recipeLearningRate
  // only to a rate that came from no run.json).
  const { dir, out } = await recordedRun([
    "--task",
    "cb",
    "--model",
    "m",
    "--data",
    "d",
    "--lr",
    "3e-6",
  ]);
  try {
    const recorded = await recordedSettings(["--out", out, "--resume"], { lr: 1e-5 });
    assertEquals(recorded?.recipe.lr, 3e-6);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resume settings: a task script's default folder, and another task's run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-resume-settings-" });
  const cwd = Deno.cwd();
  try {
    Deno.chdir(dir);
    // `deno task cb --resume`: the script's recipe (task, strategy, method) gives runs/cb/....
    const { config } = parseTrainArgs([...STARTED, "--seeds", "1"]);
    assertEquals(config.out, "runs/cb/ehft-lora");
    await Deno.mkdir(config.out, { recursive: true });
    await Deno.writeTextFile(
      `${config.out}/run.json`,
      JSON.stringify({ settings: runSettings(config) }),
    );
    const script: Recipe = { task: "cb", strategy: "ehft", peft: "lora", epochs: 50 };
    const recorded = await recordedSettings(["--resume"], script);
    assertEquals(recorded?.path, "runs/cb/ehft-lora/run.json");
    assertEquals(recorded?.recipe.maxSteps, 300);
    assertEquals(recorded?.recipe.model, "/models/bert");
    // The cb run in the rte script's --out.
    const other = await assertRejects(
      () => recordedSettings(["--resume", "--out", config.out], { task: "rte" }),
      Error,
    );
    assertEquals(
      other.message,
      "--resume: runs/cb/ehft-lora is a run of cb; this script trains rte",
    );
    // A run started in another strategy's default folder (--strategy ft --out runs/cb/ehft-lora)
    // goes on in the folder its run.json was read from, not in its settings' default, runs/cb/ft.
    const ft = parseTrainArgs([...STARTED.slice(0, 6), "--strategy", "ft", "--out", config.out]);
    await Deno.writeTextFile(
      `${config.out}/run.json`,
      JSON.stringify({ settings: runSettings(ft.config) }),
    );
    assertEquals((await resumed(["--resume"], script)).out, "runs/cb/ehft-lora");
    assertEquals((await resumed(["--resume", "--task", "cb"], script)).strategy, "ft");
    // Without --resume, or with no run.json there yet: nothing recorded, the flags start it.
    assertEquals(await recordedSettings(["--out", config.out]), null);
    assertEquals(await recordedSettings(["--resume", "--out", "runs/none"]), null);
    // A file at --out is left to checkRunFolder, which names --out.
    await Deno.writeTextFile("a-file", "");
    assertEquals(await recordedSettings(["--resume", "--out", "a-file"]), null);
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resume settings: a run.json whose settings are not a run's is named", async () => {
  const { dir, out } = await recordedRun(STARTED);
  try {
    const path = `${out}/run.json`;
    const run = JSON.parse(await Deno.readTextFile(path));
    const cases: [unknown, string][] = [
      [
        { ...run, settings: [] },
        `${path}: no "settings" object (not a run.json written by train.ts)`,
      ],
      [
        { settings: { ...run.settings, batchSize: "many" } },
        `${path}: its settings are not a run's: --batch-size: expected an integer ≥ 1, got "many"`,
      ],
      [
        { settings: { ...run.settings, lr: true } },
        `${path}: settings.lr is true, not a value of --lr`,
      ],
      [
        { settings: { ...run.settings, shuffle: "no" } },
        `${path}: settings.shuffle is "no", not a value of --no-shuffle`,
      ],
      [
        { settings: { ...run.settings, strategy: "best" } },
        `${path}: its settings are not a run's: --strategy: "best" is not one of ft, lp, lpft, ` +
        `peft, ehft, ehft-reserve`,
      ],
    ];
    for (const [json, message] of cases) {
      await Deno.writeTextFile(path, JSON.stringify(json));
      const e = await assertRejects(() => recordedSettings(["--out", out, "--resume"]), Error);
      assertEquals(e.message, message);
    }
    // A setting this version has no flag for is left to checkSameSettings, which names it as
    // the file's (exit status 1); a typed flag against a recorded one is the command's (2).
    await Deno.writeTextFile(path, JSON.stringify({ settings: { ...run.settings, newer: 1 } }));
    const config = await resumed(["--out", out, "--resume"]);
    assertEquals(config.seed, 7);
    const settings = runSettings(config) as unknown as Record<string, unknown>;
    const newer = await assertRejects(() => checkSameSettings(out, settings), Error);
    assert(!(newer instanceof FlagError), newer.message);
    assertEquals(
      newer.message,
      `--resume: ${out} was started with other settings (--newer 1 in run.json, not given now): ` +
        "run.json has a setting this ehft does not know",
    );
    await Deno.writeTextFile(path, JSON.stringify({ settings: run.settings }));
    await assertRejects(
      () => checkSameSettings(out, { ...settings, seed: 8 }),
      FlagError,
      `--resume: ${out} was started with other settings (--seed 7 in run.json, 8 now)`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
