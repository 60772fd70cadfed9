// The flags of every entry point, audited as tables of argv → the exact one-line error, or
// accepted (with the setting it gives): train.ts (and the task scripts, over their recipes),
// predict.ts and report.ts; the parser's rules (unknown flags with the closest known one, a
// switch given a value, a missing or empty value, a single dash, positionals, a flag given
// twice: the last wins); contradictions typed by the user; a task script's own defaults never
// conflicting; and runMain as every entry point uses it, in subprocesses: one line on stderr,
// exit code 1 (2 for a FlagError: the command refused as typed), the stack only with --debug,
// whatever was thrown and wherever.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { numberFlag, type Recipe, TRAIN_FLAGS, type TrainConfig } from "../train/config.ts";
import { parseTrainArgs } from "../train/config.ts";
import { errorLine, FlagError, tuneFlags } from "../train/flags.ts";
import { parsePredictArgs, type PredictArgs } from "../predict.ts";
import { parseReportArgs } from "../report.ts";
import { TASKS } from "../tasks/all.ts";
import { STRATEGY_NAMES, usesPeft } from "../train/strategy.ts";
import { PEFT_NAMES } from "../peft/method.ts";

const BASE = ["--task", "rte", "--model", "m", "--data", "d"];

/**
 * An argv and what it must give: the exact error message (or its start, when it ends in "…"),
 * or settings of the config.
 */
type Row = [string[], string | Partial<TrainConfig>];

function outcome<T>(fn: () => T): T | string {
  try {
    return fn();
  } catch (e) {
    assert(e instanceof FlagError, `not a FlagError: ${e}`);
    assert(!e.message.includes("\n"), e.message);
    return e.message;
  }
}

async function asyncOutcome<T>(fn: () => Promise<T>): Promise<T | string> {
  try {
    return await fn();
  } catch (e) {
    assert(!(e as Error).message.includes("\n"), (e as Error).message);
    return (e as Error).message;
  }
}

function checkTrainRows(rows: Row[], recipe: Recipe = {}): void {
  for (const [args, expected] of rows) {
    const got = outcome(() => parseTrainArgs([...BASE, ...args], recipe).config);
    const what = args.join(" ");
    if (typeof expected === "string" && expected.endsWith("…")) {
      assert(typeof got === "string" && got.startsWith(expected.slice(0, -1)), `${what}: ${got}`);
    } else if (typeof expected === "string") {
      assertEquals(got, expected, what);
    } else {
      assert(typeof got !== "string", `${what}: ${got}`);
      const picked = Object.fromEntries(
        Object.keys(expected).map((k) => [k, got[k as keyof TrainConfig]]),
      );
      assertEquals(picked, expected, what);
    }
  }
}

// Every flag of train.ts: a value it accepts and one it refuses (type, range, allowed values).
const TRAIN_ROWS: Record<keyof typeof TRAIN_FLAGS, Row[]> = {
  task: [
    [["--task=rte"], { task: "rte" }],
    [["--task", "../x"], '--task: "../x" is not a task name (like rte)'],
    [["--task"], "--task: expected a value"],
  ],
  model: [
    [["--model", "org/name"], { model: "org/name" }],
    [["--model="], '--model: expected a value, got ""'],
  ],
  revision: [
    [["--revision", "refs/pr/1"], { revision: "refs/pr/1" }],
    [
      ["--revision", "../../etc"],
      '--revision: invalid revision "../../etc": expected a branch, tag or commit hash made of ' +
      'letters, digits, ".", "_", "-" and "/" (no "..", no leading "/" or ".")',
    ],
    [["--revision=/abs"], '--revision: invalid revision "/abs": …'],
    [
      ["--model", "tests", "--revision", "main"],
      "--revision main: --model tests is a local folder; a revision applies only to hub ids",
    ],
  ],
  data: [
    [["--data", "elsewhere"], { data: "elsewhere" }],
    [["--data", ""], '--data: expected a value, got ""'],
  ],
  strategy: [
    [["--strategy", "ft"], { strategy: "ft", peft: null }],
    [["--strategy", "FT"], '--strategy: "FT" is not one of ft, lp, lpft, peft, ehft, ehft-reserve'],
  ],
  peft: [
    [["--peft", "LoRA"], { peft: "lora" }],
    [["--peft", "adapter"], '--peft: "adapter" is not one of bitfit, lora, prefix'],
  ],
  seed: [
    [["--seed", "0"], { seed: 0 }],
    [["--seed", "-1"], '--seed: expected an integer in [0, 4294967295], got "-1"'],
    [["--seed", "4294967296"], '--seed: expected an integer in [0, 4294967295], got "4294967296"'],
  ],
  seeds: [
    [["--seeds", "3"], { seeds: 3 }],
    [["--seeds", "0"], '--seeds: expected an integer in [1, 1000], got "0"'],
  ],
  epochs: [
    [["--epochs", "2"], { epochs: 2, maxSteps: null }],
    [["--epochs", "2.5"], '--epochs: expected an integer ≥ 1, got "2.5"'],
  ],
  "max-steps": [
    [["--max-steps", "9"], { epochs: null, maxSteps: 9 }],
    [["--max-steps", "0"], '--max-steps: expected an integer ≥ 1, got "0"'],
    [["--max-steps", "1"], "--max-steps: strategy ehft has two stages, so needs at least 2"],
  ],
  "stage1-ratio": [
    [["--stage1-ratio", "0.2"], { stage1Ratio: 0.2 }],
    [["--stage1-ratio", "0"], '--stage1-ratio: expected a number > 0 and < 1, got "0"'],
  ],
  lr: [
    [["--lr", "2e-5"], { lr: 2e-5 }],
    [["--lr", "1e-5x"], '--lr: expected a number > 0, got "1e-5x"'],
    [["--lr", "-1"], '--lr: expected a number > 0, got "-1"'],
    [["--lr", "Infinity"], '--lr: expected a number > 0, got "Infinity"'],
  ],
  "stage1-lr": [
    [["--stage1-lr", "1e-3"], { stage1Lr: 1e-3 }],
    [["--stage1-lr", "0"], '--stage1-lr: expected a number > 0, got "0"'],
  ],
  "batch-size": [
    [["--batch-size", "8"], { batchSize: 8 }],
    [["--batch-size", "65537"], '--batch-size: expected an integer ≤ 65536, got "65537"'],
    [["--batch-size", "0"], '--batch-size: expected an integer ≥ 1, got "0"'],
  ],
  "grad-accum": [
    [["--grad-accum", "4"], { gradAccum: 4, batchSize: 32 }],
    [["--grad-accum", "0"], '--grad-accum: expected an integer ≥ 1, got "0"'],
    [["--grad-accum", "2.5"], '--grad-accum: expected an integer ≥ 1, got "2.5"'],
    [
      ["--batch-size", "4", "--grad-accum", "5"],
      "--grad-accum 5 is more than --batch-size 4: a micro-batch holds at least one example",
    ],
    [
      ["--grad-accum", "2", "--analysis"],
      "--analysis with --grad-accum: it measures each step's logits and gradients of the whole " +
      "batch at once; leave out --grad-accum (or --analysis)",
    ],
  ],
  "max-length": [
    [["--max-length", "128"], { maxLength: 128 }],
    [["--max-length", "1"], '--max-length: expected an integer ≥ 2, got "1"'],
  ],
  dropout: [
    [["--dropout", "0"], { dropout: 0 }],
    [["--dropout", "1"], '--dropout: expected a number ≥ 0 and < 1, got "1"'],
  ],
  precision: [
    [["--precision", "f16"], { precision: "f16" }],
    [["--precision", "bf16"], '--precision: "bf16" is not one of f32, f16'],
  ],
  "f16-math": [
    [["--precision", "f16", "--f16-math"], { precision: "f16", f16Math: true }],
    [
      ["--f16-math"],
      "--f16-math needs --precision f16 (its f16 storage and loss scaling); got --precision f32",
    ],
    [["--f16-math=1"], '--f16-math takes no value (got "1"): give it alone'],
  ],
  "no-shuffle": [
    [["--no-shuffle"], { shuffle: false }],
    [["--no-shuffle=1"], '--no-shuffle takes no value (got "1"): give it alone'],
  ],
  schedule: [
    [["--schedule", "constant"], { schedule: "constant" }],
    [["--schedule", "cosine"], '--schedule: "cosine" is not one of linear, constant'],
  ],
  "warmup-ratio": [
    [["--warmup-ratio", "0"], { warmupRatio: 0 }],
    [["--warmup-ratio", "1"], '--warmup-ratio: expected a number ≥ 0 and < 1, got "1"'],
  ],
  "weight-decay": [
    [["--weight-decay", "0.01"], { weightDecay: 0.01 }],
    [["--weight-decay", "-0.1"], '--weight-decay: expected a number ≥ 0, got "-0.1"'],
  ],
  "max-grad-norm": [
    [["--max-grad-norm", "0"], { maxGradNorm: 0 }],
    [["--max-grad-norm", "x"], '--max-grad-norm: expected a number ≥ 0, got "x"'],
  ],
  "lora-r": [
    [["--peft", "lora", "--lora-r", "4"], { loraR: 4 }],
    [["--peft", "lora", "--lora-r", "0"], '--lora-r: expected an integer ≥ 1, got "0"'],
  ],
  "lora-alpha": [
    [["--peft", "lora", "--lora-alpha", "32"], { loraAlpha: 32 }],
    [["--peft", "lora", "--lora-alpha", "0"], '--lora-alpha: expected a number > 0, got "0"'],
  ],
  "prefix-length": [
    [["--peft", "prefix", "--prefix-length", "4"], { prefixLength: 4 }],
    [
      ["--peft", "prefix", "--prefix-length", "0"],
      '--prefix-length: expected an integer ≥ 1, got "0"',
    ],
  ],
  head: [
    [["--head", "h.safetensors"], { head: "h.safetensors" }],
    [["--head="], '--head: expected a value, got ""'],
  ],
  "eval-every": [
    [["--eval-every", "0"], { evalEvery: 0 }],
    [["--eval-every", "-1"], '--eval-every: expected an integer ≥ 0, got "-1"'],
  ],
  "checkpoint-every": [
    [["--checkpoint-every", "5"], { checkpointEvery: 5 }],
    [["--checkpoint-every", "x"], '--checkpoint-every: expected an integer ≥ 0, got "x"'],
  ],
  out: [
    [["--out", "o"], { out: "o" }],
    [["--out", " "], '--out: expected a value, got " "'],
  ],
  resume: [
    [["--resume"], { resume: true }],
    [["--resume=yes"], '--resume takes no value (got "yes"): give it alone'],
  ],
  overwrite: [
    [["--overwrite"], { overwrite: true }],
    [["--overwrite=no"], '--overwrite takes no value (got "no"): give it alone'],
  ],
  analysis: [
    [["--analysis"], { analysis: true }],
    [["--analysis=true"], '--analysis takes no value (got "true"): give it alone'],
  ],
  "predict-test": [
    [["--predict-test"], {}],
    [["--predict-test=1"], '--predict-test takes no value (got "1"): give it alone'],
  ],
  "dry-run": [
    [["--dry-run"], {}],
    [["--dry-run=1"], '--dry-run takes no value (got "1"): give it alone'],
  ],
  "no-autotune": [
    [["--no-autotune"], {}],
    [["--no-autotune=1"], '--no-autotune takes no value (got "1"): give it alone'],
  ],
  retune: [
    [["--retune"], {}],
    [["--retune", "--no-autotune"], "--retune and --no-autotune: choose one"],
  ],
  "tune-cache": [
    [["--tune-cache", "t.json"], {}],
    [["--tune-cache="], '--tune-cache: expected a value, got ""'],
  ],
};

Deno.test("flags audit: every train.ts flag is validated (type, range, allowed values)", () => {
  assertEquals(Object.keys(TRAIN_ROWS).sort(), Object.keys(TRAIN_FLAGS).sort());
  for (const [flag, rows] of Object.entries(TRAIN_ROWS)) {
    assert(rows.some(([, e]) => typeof e !== "string"), `--${flag}: no accepted row`);
    assert(rows.some(([, e]) => typeof e === "string"), `--${flag}: no refused row`);
    checkTrainRows(rows);
  }
});

Deno.test("flags audit: the parser's rules (unknown flags, values, dashes, positionals, twice)", () => {
  checkTrainRows([
    [["--stratgy", "ft"], "unknown flag --stratgy (did you mean --strategy?)"],
    [["--max_steps=3"], "unknown flag --max_steps (did you mean --max-steps?)"],
    [["--LR", "1e-5"], "unknown flag --LR (did you mean --lr?)"],
    [["--lrr=1e-5"], "unknown flag --lrr (did you mean --lr?)"],
    [["--shuffle"], "unknown flag --shuffle (did you mean --no-shuffle?)"],
    [["--no-resume"], "unknown flag --no-resume (--resume is off unless given)"],
    [["--frobnicate"], "unknown flag --frobnicate"],
    [["-lr", "1e-5"], "unknown flag -lr (flags take two dashes: --lr)"],
    [["-x"], "unknown flag -x (flags take two dashes, like --task)"],
    [["--=x"], "unknown flag --=: a flag needs a name"],
    [["rte"], 'unexpected argument "rte": every value follows its flag (--flag value)'],
    [["--", "x"], 'unexpected "--": this command takes only flags'],
    [["--lr"], "--lr: expected a value"],
    [
      ["--out", "--resume"],
      "--out: expected a value, got the flag --resume (write --out=VALUE for a value that " +
      "starts with --)",
    ],
    [["--out=--odd"], { out: "--odd" }],
    [["--debug=1"], '--debug takes no value (got "1")'],
    // A flag given twice: the last one wins (an override appended to a saved command line).
    [["--lr", "1e-5", "--lr", "2e-5"], { lr: 2e-5 }],
    [["--resume", "--resume"], { resume: true }],
    [["--strategy", "ft", "--strategy", "lp"], { strategy: "lp", lr: 5e-4 }],
  ]);
});

Deno.test("flags audit: contradictions the user typed are errors", () => {
  const noPeft = (name: string, s: string) =>
    `--peft ${name}: strategy ${s} uses no PEFT method (use --strategy peft, ehft or ehft-reserve)`;
  checkTrainRows([
    [["--peft", "lora", "--strategy", "ft"], noPeft("lora", "ft")],
    [["--strategy", "lp", "--peft", "bitfit"], noPeft("bitfit", "lp")],
    [["--strategy", "lpft", "--peft", "prefix"], noPeft("prefix", "lpft")],
    [
      ["--strategy", "ft", "--stage1-lr", "1e-3"],
      "--stage1-lr: strategy ft has one stage (use --lr for its learning rate)",
    ],
    [
      ["--strategy", "peft", "--stage1-ratio", "0.2"],
      "--stage1-ratio: strategy peft has one stage (it trains for the whole budget, --epochs or " +
      "--max-steps)",
    ],
    [
      ["--strategy", "lp", "--stage1-lr", "1e-3"],
      "--stage1-lr: strategy lp has one stage (use --lr for its learning rate)",
    ],
    [["--epochs", "3", "--max-steps", "9"], "--epochs and --max-steps: give one budget, not both"],
    [["--resume", "--overwrite"], "--resume and --overwrite: choose one"],
    [["--resume", "--analysis"], "--analysis with --resume: the pretrained features …"],
    [
      ["--lora-r", "4"],
      "--lora-r: a LoRA setting, but this run's PEFT method is bitfit (use --peft lora)",
    ],
    [
      ["--strategy", "ft", "--lora-alpha", "8"],
      "--lora-alpha: a LoRA setting, but strategy ft uses no PEFT method",
    ],
    [
      ["--peft", "lora", "--prefix-length", "8"],
      "--prefix-length: a prefix-tuning setting, but this run's PEFT method is lora (use " +
      "--peft prefix)",
    ],
    [
      ["--strategy", "lpft", "--prefix-length", "8"],
      "--prefix-length: a prefix-tuning setting, but strategy lpft uses no PEFT method",
    ],
    [["--no-autotune", "--retune"], "--retune and --no-autotune: choose one"],
  ]);
  // Not contradictions: a PEFT strategy with its method's settings; --tune-cache with
  // --no-autotune (a harmless leftover, accepted so a saved command line keeps working).
  checkTrainRows([
    [["--strategy", "peft", "--peft", "lora", "--lora-r", "4", "--lora-alpha", "8"], {
      loraR: 4,
      loraAlpha: 8,
    }],
    [["--strategy", "ehft-reserve", "--peft", "prefix", "--prefix-length", "4"], {
      prefixLength: 4,
    }],
    [["--no-autotune", "--tune-cache", "t.json"], {}],
  ]);
});

async function taskRecipes(): Promise<[string, string, Recipe][]> {
  const out: [string, string, Recipe][] = [];
  for (const name of Object.keys(TASKS)) {
    const module = await import(`../tasks/${name}.ts`);
    // The paper's recipe and the shipped mini model's (train/default_model.ts).
    for (const [key, label] of [["_RECIPE", name], ["_MINI_RECIPE", `${name} (mini)`]]) {
      const recipe = module[`${name.toUpperCase()}${key}`];
      assert(recipe !== undefined, `tasks/${name}.ts exports no ${name.toUpperCase()}${key}`);
      out.push([name, label, recipe as Recipe]);
    }
  }
  return out;
}

Deno.test("flags audit: a task script's own defaults never conflict with what is typed", async () => {
  const recipes = await taskRecipes();
  assertEquals(recipes.length, 18);
  for (const [task, name, recipe] of recipes) {
    const accepted = (args: string[]) => {
      const got = outcome(() =>
        parseTrainArgs(["--model", "m", "--data", "d", ...args], recipe).config
      );
      assert(typeof got !== "string", `deno task ${name} ${args.join(" ")}: ${got}`);
      return got;
    };
    for (const strategy of STRATEGY_NAMES) {
      const c = accepted(["--strategy", strategy]);
      assertEquals(c.strategy, strategy);
      if (!usesPeft(strategy)) assertEquals(c.peft, null, `${name} --strategy ${strategy}`);
      if (!usesPeft(strategy)) continue;
      for (const peft of PEFT_NAMES) {
        const extra = peft === "lora"
          ? ["--lora-r", "4"]
          : peft === "prefix"
          ? ["--prefix-length", "4"]
          : [];
        assertEquals(accepted(["--strategy", strategy, "--peft", peft, ...extra]).peft, peft);
      }
    }
    // The recipe's budget (epochs) yields to a typed --max-steps, and the reverse.
    assertEquals(accepted(["--max-steps", "10"]).maxSteps, 10);
    assertEquals(accepted(["--epochs", "2"]).epochs, 2);
    assertEquals(accepted(["--task", task]).task, task);
    // The example: `deno task rte --strategy ft` with a recipe that says --peft bitfit.
    const ft = accepted(["--strategy", "ft"]);
    assertEquals([ft.peft, ft.stage1Lr], [null, null]);
  }
});

Deno.test("flags audit: predict.ts's flags", async () => {
  const PBASE = ["--model", "m", "--task", "rte", "--out", "o"];
  const parse = (args: string[]) => asyncOutcome(() => parsePredictArgs([...PBASE, ...args]));
  const rows: [string[], string | ((p: PredictArgs) => unknown[]), unknown[]?][] = [
    [[], (p) => [p.out, p.options.split, p.options.batchSize, p.options.maxLength], [
      "o",
      "val",
      32,
      undefined,
    ]],
    [["--task", "cola"], (p) => [p.options.task.name, p.options.split], ["cola", "dev"]],
    [["--split", "test", "--data", "x"], (p) => [p.options.split, p.data], ["test", "x"]],
    [["--batch-size", "4", "--max-length", "64"], (p) => [
      p.options.batchSize,
      p.options.maxLength,
    ], [4, 64]],
    [["--revision", "v1.0"], (p) => [p.options.revision], ["v1.0"]],
    [
      ["--model", "tests", "--revision", "v1.0"],
      "--revision v1.0: --model tests is a local folder; a revision applies only to hub ids",
    ],
    [["--no-autotune"], (p) => [p.options.autotune?.enabled], [false]],
    [["--split", "val2"], '--split: "val2" is not one of train, val, test'],
    [["--split", "../../etc/passwd"], '--split: "../../etc/passwd" is not one of train, val, test'],
    [["--task", "cola", "--split", "val"], '--split: "val" is not one of train, dev, test'],
    [["--batch-size", "65537"], '--batch-size: expected an integer in [1, 65536], got "65537"'],
    [["--batch-size", "0"], '--batch-size: expected an integer in [1, 65536], got "0"'],
    [["--max-length", "1"], '--max-length: expected an integer ≥ 2, got "1"'],
    [
      ["--revision", "../x"],
      '--revision: invalid revision "../x": expected a branch, tag or ' +
      'commit hash made of letters, digits, ".", "_", "-" and "/" (no "..", no leading "/" or ".")',
    ],
    [["--retune", "--no-autotune"], "--retune and --no-autotune: choose one"],
    [["--no-autotune=1"], '--no-autotune takes no value (got "1"): give it alone'],
    [["--tune-cache="], '--tune-cache: expected a value, got ""'],
    [["--data="], '--data: expected a value, got ""'],
    [["--modle=x"], "unknown flag --modle (did you mean --model?)"],
    [["--spilt", "val"], "unknown flag --spilt (did you mean --split?)"],
    [["--epochs", "3"], "unknown flag --epochs"],
    [["extra"], 'unexpected argument "extra": every value follows its flag (--flag value)'],
    [
      ["--task", "nope"],
      '--task: unknown task "nope" (known: rte, boolq, copa, cb, wic, mrpc, ' +
      "qnli, cola, stsb)",
    ],
  ];
  for (const [args, expected, values] of rows) {
    const got = await parse(args);
    if (typeof expected === "string") {
      assertEquals(got, expected, args.join(" "));
    } else {
      assert(typeof got !== "string", `${args.join(" ")}: ${got}`);
      assertEquals(expected(got), values, args.join(" "));
    }
  }
  const required: [string[], string][] = [
    [["--task", "rte", "--out", "o"], "--model is required"],
    [["--model", "m", "--out", "o"], "--task is required"],
    [["--model", "m", "--task", "rte"], "--out is required"],
  ];
  for (const [args, message] of required) {
    assertEquals(await asyncOutcome(() => parsePredictArgs(args)), message);
  }
});

Deno.test("flags audit: report.ts's flags", () => {
  const rows: [string[], string | { paths: string[]; out: string | null }][] = [
    [["a", "b"], { paths: ["a", "b"], out: null }],
    [["a", "--out", "o", "b"], { paths: ["a", "b"], out: "o" }],
    [["a", "--out=o1", "--out", "o2"], { paths: ["a"], out: "o2" }],
    [["--", "--out", "-x"], { paths: ["--out", "-x"], out: null }],
    [[], "give one or more run folders (or folders holding runs)"],
    [["--out", "o"], "give one or more run folders (or folders holding runs)"],
    [["a", "--outt", "x"], "unknown flag --outt (did you mean --out?)"],
    [["a", "--outt=x"], "unknown flag --outt (did you mean --out?)"],
    [["a", "--out"], "--out: expected a value"],
    [["a", "--out="], '--out: expected a value, got ""'],
    [["a", "-o", "x"], "unknown flag -o (flags take two dashes, like --out)"],
    [["a", "--task", "rte"], "unknown flag --task"],
  ];
  for (const [args, expected] of rows) {
    assertEquals(outcome(() => parseReportArgs(args)), expected, args.join(" "));
  }
});

Deno.test("flags audit: errorLine folds whatever was thrown into one line", () => {
  const cases: [unknown, string][] = [
    [new Error("first\nsecond\r\n\n  third"), "first second third"],
    [new FlagError("--lr: bad"), "--lr: bad"],
    [new Error(""), "Error"],
    [new TypeError(""), "TypeError"],
    ["a plain string\nthrown", "a plain string thrown"],
    [{ message: "an object with a message" }, "an object with a message"],
    [{ code: 7 }, "{ code: 7 }"],
    [undefined, "undefined"],
    [null, "null"],
    [42, "42"],
    ["", "failed (an error without a message)"],
    ["tab\there\x1b[31m", "tab here [31m"],
  ];
  for (const [thrown, line] of cases) assertEquals(errorLine(thrown), line, String(thrown));
});

// ---------------------------------------------------------------------------------------------
// Subprocesses: the entry points as a user runs them.

const ROOT = new URL("../", import.meta.url).pathname;

interface Ran {
  code: number;
  stdout: string;
  lines: string[];
}

async function run(args: string[], cwd = ROOT): Promise<Ran> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd,
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", EHFT_OFFLINE: "1", HF_HUB_OFFLINE: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  const stderr = text(r.stderr);
  return { code: r.code, stdout: text(r.stdout), lines: stderr.split("\n").filter((l) => l) };
}

/** Runs `jobs` at most `width` at a time (the machine may have two cores). */
async function pool<T>(jobs: (() => Promise<T>)[], width = 4): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await jobs[i]();
      }
    }),
  );
  return out;
}

const subprocess = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

subprocess(
  "flags audit: every entry point: one line on stderr, exit 2 for a flag, --debug adds the stack",
  async () => {
    const scripts: [string, string][] = [
      ["train.ts", "train"],
      ["predict.ts", "predict"],
      ["report.ts", "report"],
      ...Object.keys(TASKS).map((t) => [`tasks/${t}.ts`, t] as [string, string]),
    ];
    const plain = scripts.map(([file]) => () => run([file, "x", "--bogus-flag=1"]));
    const debug = scripts.slice(0, 4).map(([file]) => () =>
      run([file, "x", "--bogus-flag=1", "--debug"])
    );
    const results = await pool([...plain, ...debug]);
    for (const [i, [file, name]] of scripts.entries()) {
      const r = results[i];
      assertEquals([r.code, r.lines.length], [2, 1], `${file}: ${r.lines.join(" | ")}`);
      // report.ts takes positionals; the others refuse the "x" first.
      const expected = name === "report"
        ? "report: unknown flag --bogus-flag"
        : `${name}: unexpected argument "x": every value follows its flag (--flag value)`;
      assertEquals(r.lines[0], expected, file);
      assertEquals(r.stdout, "", file);
    }
    for (const [i, [file]] of scripts.slice(0, 4).entries()) {
      const r = results[scripts.length + i];
      assertEquals(r.code, 2, file);
      assertEquals(r.lines[0], results[i].lines[0], `${file} --debug: the same first line`);
      assert(r.lines.length > 2, `${file} --debug: no stack: ${r.lines.join(" | ")}`);
      assert(r.lines.some((l) => /^\s+at /.test(l)), `${file} --debug: ${r.lines.join(" | ")}`);
    }
  },
);

subprocess(
  "flags audit: runMain: non-Error values, multi-line messages, async callbacks, FlagError's 2",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-runmain-" });
    try {
      const flags = new URL("../train/flags.ts", import.meta.url).href;
      const script = `${dir}/main.ts`;
      await Deno.writeTextFile(
        script,
        `import { FlagError, runMain } from ${JSON.stringify(flags)};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
await runMain("t", async (args) => {
  switch (args[0]) {
    case "ok": console.log("fine " + args.slice(1).join(",")); return;
    case "string": throw "a plain string";
    case "object": throw { code: 7 };
    case "undefined": throw undefined;
    case "flag": throw new FlagError("--lr: expected a number, got x");
    case "flag-timer":
      setTimeout(() => { throw new FlagError("--lr: in a timer"); }, 0);
      await sleep(5000);
      return;
    // Only the class says a flag: an Error that calls itself one is a failure.
    case "named": { const e = new Error("not a flag"); e.name = "FlagError"; throw e; }
    case "multiline": throw new Error("first line\\nsecond line\\n\\nthird");
    case "timer":
      setTimeout(() => { throw new Error("in a timer\\ncallback"); }, 0);
      await sleep(5000);
      return;
    case "rejection":
      Promise.reject(new RangeError("an unhandled\\nrejection"));
      await sleep(5000);
      return;
    case "late":
      // Fails after main has returned: still one line and exit 1.
      setTimeout(() => Promise.reject("late failure"), 10);
      return;
  }
});
`,
      );
      const cases: [string[], number, string[]][] = [
        [["ok", "--debug", "a"], 0, []],
        [["string"], 1, ["t: a plain string"]],
        [["object"], 1, ["t: { code: 7 }"]],
        [["undefined"], 1, ["t: undefined"]],
        [["flag"], 2, ["t: --lr: expected a number, got x"]],
        [["flag-timer"], 2, ["t: --lr: in a timer"]],
        [["named"], 1, ["t: not a flag"]],
        [["multiline"], 1, ["t: first line second line third"]],
        [["timer"], 1, ["t: in a timer callback"]],
        [["rejection"], 1, ["t: an unhandled rejection"]],
        [["late"], 1, ["t: late failure"]],
      ];
      const debugCases: string[] = ["multiline", "timer", "rejection", "string"];
      const results = await pool([
        ...cases.map(([args]) => () => run([script, ...args], dir)),
        ...debugCases.map((c) => () => run([script, "--debug", c], dir)),
      ]);
      for (const [i, [args, code, lines]] of cases.entries()) {
        const r = results[i];
        assertEquals([r.code, r.lines], [code, lines], args.join(" "));
      }
      assertEquals(results[0].stdout, "fine a\n", "--debug is taken out of the arguments");
      for (const [i, c] of debugCases.entries()) {
        const r = results[cases.length + i];
        assertEquals(r.code, 1, c);
        assertEquals(r.lines[0], cases.find(([a]) => a[0] === c)![2][0], `${c} --debug`);
        if (c === "string") {
          assertEquals(r.lines.slice(1), ['(thrown: "a plain string")'], c);
        } else {
          assert(r.lines.some((l) => /^\s+at /.test(l)), `${c} --debug: ${r.lines.join(" | ")}`);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

subprocess(
  "flags audit: --help into a stdout that cannot take it is one line, exit 1",
  async () => {
    // It was printed before runMain's error handling: an uncaught error and its stack.
    if (!(await Deno.stat("/dev/full").then(() => true, () => false))) return;
    const r = await new Deno.Command("bash", {
      args: ["-c", `"${Deno.execPath()}" run -A train.ts --help > /dev/full`],
      cwd: ROOT,
      env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", PATH: Deno.env.get("PATH") ?? "" },
      stderr: "piped",
    }).output();
    const lines = new TextDecoder().decode(r.stderr).split("\n").filter((l) => l);
    assertEquals([r.code, lines], [1, ["train: No space left on device (os error 28)"]]);
  },
);

Deno.test("flags audit: a run's seeds all fit the seed range (seed + seeds − 1 ≤ 2^32 − 1)", () => {
  // Past 2^32 − 1 the seeds would wrap: seed-4294967296 would train exactly as seed-0 did.
  checkTrainRows([
    [["--seed", "4294967295"], { seed: 4294967295, seeds: 1 }],
    [["--seed", "4294967293", "--seeds", "3"], { seed: 4294967293, seeds: 3 }],
    [
      ["--seed", "4294967295", "--seeds", "3"],
      "--seed 4294967295 with --seeds 3: the last seed, 4294967297, is past 4294967295 (the " +
      "largest --seed for 3 seeds is 4294967293)",
    ],
    [["--seed", "4294967000", "--seeds", "1000"], "--seed 4294967000 with --seeds 1000: …"],
  ]);
  // The recipe's seeds are checked as well.
  checkTrainRows([[[], "--seed 4294967295 with --seeds 2: …"]], { seed: 4294967295, seeds: 2 });
});

Deno.test("flags audit: number flags take plain decimal numbers only, as the data files do", () => {
  // What JavaScript's Number() reads but data files refuse (tasks/stsb.ts), and other slips.
  const refused = "0x1|0X1|0b1|0o1|1e|e5|.|1e+|Infinity|-Infinity|+-1|NaN|1_0|1,5|1e999|1.2.3"
    .concat("|0x1p3|1 000|١").split("|");
  for (const v of refused) {
    checkTrainRows([[["--weight-decay", v], `--weight-decay: expected a number ≥ 0, got "${v}"`]]);
  }
  checkTrainRows([
    [["--lr", "1e-5"], { lr: 1e-5 }],
    [["--lr", "5e-4"], { lr: 5e-4 }],
    [["--lr", "2E-5"], { lr: 2e-5 }],
    [["--lr", "0.0001"], { lr: 0.0001 }],
    [["--lr=+3e-3"], { lr: 3e-3 }],
    [["--warmup-ratio", ".5"], { warmupRatio: 0.5 }],
    [["--warmup-ratio", "0."], { warmupRatio: 0 }],
    [["--weight-decay", "1"], { weightDecay: 1 }],
    [["--weight-decay", "1e+2"], { weightDecay: 100 }],
    [["--max-grad-norm", " 1.5 "], { maxGradNorm: 1.5 }], // surrounding spaces, as intFlag
    [["--peft", "lora", "--lora-alpha", "16"], { loraAlpha: 16 }],
  ]);
  // Negative numbers where the range allows them.
  assertEquals(numberFlag("x", "-1", 0), -1);
  assertEquals(numberFlag("x", "-2.5e-3", 0), -2.5e-3);
  assertEquals(outcome(() => numberFlag("x", "-0x1", 0)), '--x: expected a number, got "-0x1"');
  // Integer flags: decimal digits only (hex, exponents and fractions refused); a sign as numbers.
  checkTrainRows([[["--epochs", "+2"], { epochs: 2 }], [["--epochs=+7"], { epochs: 7 }]]);
  checkTrainRows(
    ["0x10", "1e3", "2.0", "++2", "+-2", "Infinity", "0b1"].map((v) => [
      ["--epochs", v],
      `--epochs: expected an integer ≥ 1, got "${v}"`,
    ]),
  );
});

Deno.test("flags: --retune with EHFT_NO_AUTOTUNE set is refused, as with --no-autotune", () => {
  const before = Deno.env.get("EHFT_NO_AUTOTUNE");
  try {
    Deno.env.set("EHFT_NO_AUTOTUNE", "1");
    assertThrows(
      () => tuneFlags({ retune: true }),
      FlagError,
      "--retune with EHFT_NO_AUTOTUNE set, which turns the tune off: choose one",
    );
    assertEquals(tuneFlags({}).retune, false);
    Deno.env.set("EHFT_NO_AUTOTUNE", "0");
    assertEquals(tuneFlags({ retune: true }).retune, true);
  } finally {
    if (before === undefined) Deno.env.delete("EHFT_NO_AUTOTUNE");
    else Deno.env.set("EHFT_NO_AUTOTUNE", before);
  }
});
