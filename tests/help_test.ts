// `--help` of train.ts, the task scripts, predict.ts and report.ts (train/help.ts): every flag of
// each parser is listed, each stated default is what the parser gives, and `--help` / `-h`
// print the text and exit 0 without running anything.

import { assert, assertEquals } from "./assert.ts";
import { FLAGS as PREDICT_FLAGS } from "../predict.ts";
import { FLAGS as REPORT_FLAGS } from "../report.ts";
import { CB_MINI_RECIPE, CB_RECIPE } from "../tasks/cb.ts";
import { TASKS } from "../tasks/all.ts";
import { parseTrainArgs, TRAIN_FLAGS, type TrainConfig } from "../train/config.ts";
import { PREDICT_HELP, REPORT_HELP, taskHelp, TRAIN_HELP } from "../train/help.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A flag's entry: from `--name` to the next line that starts a flag. */
function entry(help: string, name: string): string {
  const at = help.search(new RegExp(`--${name}\\b`));
  assert(at >= 0, `--${name} is not in the help`);
  const next = help.indexOf("\n  --", at);
  return help.slice(at, next < 0 ? undefined : next);
}

/** The first word after "(default " in a flag's entry. */
function stated(help: string, name: string): string {
  const m = entry(help, name).match(/\(default ([^\s,;)]+)/);
  assert(m, `--${name}: no "(default ...)" in ${JSON.stringify(entry(help, name))}`);
  return m[1];
}

Deno.test("help: every flag of each parser is listed", () => {
  const names = (flags: object) => [...Object.keys(flags), "debug"];
  for (const name of names(TRAIN_FLAGS)) entry(TRAIN_HELP, name);
  for (const [task, spec] of Object.entries(TASKS)) {
    const help = taskHelp(task, {}, undefined);
    assert(help.startsWith(`usage: deno task ${task} `), help.split("\n")[0]);
    for (const name of names(TRAIN_FLAGS)) {
      if (name !== "task") entry(help, name);
    }
    assert(TRAIN_HELP.includes(spec.name), `--task: ${spec.name} is not listed`);
  }
  for (const name of names(PREDICT_FLAGS)) entry(PREDICT_HELP, name);
  for (const name of names(REPORT_FLAGS)) entry(REPORT_HELP, name);
});

Deno.test("help: each stated default is the parser's", () => {
  const parse = (...extra: string[]) =>
    parseTrainArgs(["--task", "rte", "--model", "m", "--data", "d", ...extra]).config;
  const base = parse();
  const defaults: [flag: string, value: unknown][] = [
    ["strategy", base.strategy],
    ["peft", base.peft],
    ["epochs", base.epochs],
    ["stage1-ratio", base.stage1Ratio],
    ["lr", base.lr],
    ["batch-size", base.batchSize],
    ["precision", base.precision],
    ["schedule", base.schedule],
    ["warmup-ratio", base.warmupRatio],
    ["weight-decay", base.weightDecay],
    ["max-grad-norm", base.maxGradNorm],
    ["lora-r", parse("--peft", "lora").loraR],
    ["lora-alpha", parse("--peft", "lora").loraAlpha],
    ["prefix-length", parse("--peft", "prefix").prefixLength],
    ["seed", base.seed],
    ["seeds", base.seeds],
  ];
  for (const [flag, value] of defaults) {
    assertEquals(Number(stated(TRAIN_HELP, flag)) || stated(TRAIN_HELP, flag), value, `--${flag}`);
  }
  // Stage 1's rate, per method, and linear probing's.
  const stage1 = entry(TRAIN_HELP, "stage1-lr");
  const rate = (cfg: TrainConfig) => String(cfg.stage1Lr);
  for (
    const [method, args] of [["BitFit", []], ["LoRA", ["--peft", "lora"]], ["Prefix", [
      "--peft",
      "prefix",
    ]], ["linear probing", ["--strategy", "lpft"]]] as const
  ) {
    assert(stage1.includes(`${method} ${rate(parse(...args))}`), `--stage1-lr: ${method}`);
  }
  // The defaults that are not numbers: the out folder, the model's limit, each epoch.
  assert(entry(TRAIN_HELP, "out").includes("runs/<task>/<strategy>[-<peft>]"));
  assertEquals(base.out, "runs/rte/ehft-bitfit");
  assertEquals([base.maxLength, base.evalEvery, base.checkpointEvery], [null, null, null]);
  // predict.ts's batch size.
  assertEquals(stated(PREDICT_HELP, "batch-size"), "32");
});

Deno.test("help: a task script's help states its recipes", () => {
  const help = taskHelp("cb", CB_RECIPE, CB_MINI_RECIPE);
  assert(help.includes(`--epochs ${CB_MINI_RECIPE.epochs} --lr ${CB_MINI_RECIPE.lr}`), help);
  assert(
    help.includes(`--epochs ${CB_RECIPE.epochs} --lr ${CB_RECIPE.lr} (0.00003 for a BERT)`),
    help,
  );
  // The flags a recipe sets point to it, not to train.ts's defaults; the others keep theirs.
  const flags = help.slice(help.indexOf("\n\n  --"));
  for (const flag of ["strategy", "peft", "epochs", "lr", "batch-size", "max-length"]) {
    assert(entry(flags, flag).includes("(default: the recipe above)"), entry(flags, flag));
  }
  assertEquals(stated(flags, "stage1-ratio"), stated(TRAIN_HELP, "stage1-ratio"));
  assertEquals(stated(TRAIN_HELP, "epochs"), "10");
});

Deno.test("help: --help and -h print it and exit 0, running nothing", async () => {
  const cases: [string, string[], string][] = [
    ["train.ts", ["--help"], TRAIN_HELP],
    ["train.ts", ["--epochs", "3", "-h"], TRAIN_HELP],
    ["tasks/cb.ts", ["--help"], taskHelp("cb", CB_RECIPE, CB_MINI_RECIPE)],
    ["predict.ts", ["-h"], PREDICT_HELP],
    ["report.ts", ["--help"], REPORT_HELP],
  ];
  for (const [script, args, help] of cases) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}${script}`, ...args],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = (b: Uint8Array) => new TextDecoder().decode(b);
    assertEquals([out.code, dec(out.stdout), dec(out.stderr)], [0, help + "\n", ""], script);
  }
});
