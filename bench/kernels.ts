// Kernel throughput: `deno task bench` prints the adapter and one table of every kernel's
// milliseconds per op and GFLOP/s (compute-bound) or GB/s (memory-bound). `--json` prints one JSON
// object per row on stdout and nothing else (progress goes to stderr). How ops are timed:
// bench/timing.ts; what the numbers mean: BENCHMARKS.md.
//
//   deno task bench [--json] [--reps N] [--no-reference]
//                   [--only fill,matmul,layernorm,attention,flash_attention,embedding,adamw,
//                          train_step]
//                   [--layers 4 --hidden 256 --heads 4 --intermediate 1024 --vocab 30522
//                    --batch 32 --seq 128 --modes ft,bitfit,lora,prefix]   (train_step's model:
//                    BERT-mini at the 32 × 128 by default; --batch 8 --seq 32 is quicker)
//                   [--precision f32,f16,f16math]   (GEMM and train_step rows in these
//                                  precisions; default f32,f16 where the adapter has shader-f16)
//                   [--gemm-shapes 4096x1024x4096,...]   (the matmul module's linear layers,
//                                  rows x in x out; default bench/matmul.ts's GEMM_SHAPES)
//                   [--profile]   (after each train_step mode, one extra step timed per kernel
//                                  with timestamp queries: GPU time by op label, on stderr)
//                   [--no-autotune | --retune] [--tune-cache FILE]
//   deno task bench --help   (or -h: HELP, exit 0; an unknown flag is one line with USAGE, exit 2)
//
// Before timing, the GEMM variants are tuned for this adapter at the shape classes the selected
// modules run (matmul, train_step), or the cached choice is reused (kernels/matmul_autotune.ts;
// --no-autotune or EHFT_NO_AUTOTUNE=1: the built-in choice); the gemm rows then time the variant
// `matmul` picks by itself, the one the training step runs, and name it (`variant`).
//
// References (unless --no-reference): numpy's float32 GEMM through OpenBLAS at the matmul shapes
// and PyTorch's CPU training step at the train_step shape, measured in the same run by
// /usr/bin/python3 (bench/reference.ts), before our own modules so that nothing else competes
// for the CPU; rows then carry `reference_gflops` / `reference_samples_per_s` and `ratio`.

import { parseArgs } from "node:util";
import { FlagError } from "../train/flags.ts";
import { getGpu, type Gpu, oneLine } from "../kernels/device.ts";
import {
  autotuneForProgram,
  autotuneOffInEnv,
  tuneRequest,
  type TuneShape,
} from "../kernels/matmul_autotune.ts";
import { HEAD_WIDTH } from "../model/head.ts";
import { PEFT_DEFAULTS } from "../peft/method.ts";
import { modelTuneShapes } from "../train/tune_shapes.ts";
import { benchAdamw } from "./adamw.ts";
import { benchAttention } from "./attention.ts";
import { benchFlashAttention } from "./flash_attention.ts";
import { benchEmbedding } from "./embedding.ts";
import { benchFill } from "./fill.ts";
import { benchLayerNorm } from "./layernorm.ts";
import { benchMatmul, GEMM_SHAPES, gemmTuneShapes } from "./matmul.ts";
import {
  addGemmRatios,
  addTrainStepRatios,
  referenceGemm,
  referenceTrainStep,
} from "./reference.ts";
import type { BenchRow } from "./timing.ts";
import { BENCH_PRECISIONS, type BenchPrecision } from "./precision.ts";
import {
  BENCH_DEFAULT_STEP,
  benchTrainStep,
  stepConfig,
  TRAIN_STEP_MODES,
  type TrainStepMode,
  type TrainStepShape,
} from "./train_step.ts";

type Module = (gpu: Gpu, reps: number, options: Options) => Promise<BenchRow[]>;

const MODULES: Record<string, Module> = {
  fill: benchFill,
  matmul: (gpu, reps, o) => benchMatmul(gpu, reps, o.precisions, o.gemmShapes),
  layernorm: benchLayerNorm,
  attention: benchAttention,
  flash_attention: benchFlashAttention,
  embedding: benchEmbedding,
  adamw: benchAdamw,
  train_step: (gpu, reps, o) =>
    benchTrainStep(gpu, reps, {
      shape: o.shape,
      modes: o.modes,
      profile: o.profile,
      precisions: o.precisions,
    }),
};

const SHAPE_FLAGS = {
  layers: "layers",
  hidden: "hidden",
  heads: "heads",
  intermediate: "intermediate",
  vocab: "vocab",
  batch: "batch",
  seq: "seq",
} as const satisfies Record<string, keyof TrainStepShape>;

const USAGE = `usage: deno task bench [--json] [--reps N] [--no-reference] [--only ${
  Object.keys(MODULES).join(",")
}] [--layers N --hidden N --heads N --intermediate N --vocab N --batch N --seq N] [--modes ${
  TRAIN_STEP_MODES.join(",")
}] [--precision f32,f16,f16math] [--gemm-shapes ROWSxINxOUT,...] [--profile] [--no-autotune | --retune] [--tune-cache FILE]`;

/** `items` joined by `sep` in lines of at most `width` characters, later lines indented. */
function wrapped(items: readonly string[], sep: string, indent: number, width = 99): string {
  const lines = [""];
  for (const [i, item] of items.entries()) {
    const piece = item + (i < items.length - 1 ? sep : "");
    const line = lines.length - 1;
    if (lines[line] && indent + (lines[line] + piece).trimEnd().length > width) lines.push("");
    lines[lines.length - 1] += piece;
  }
  return lines.map((l) => l.trimEnd()).join("\n" + " ".repeat(indent));
}

const SHAPE_DEFAULTS = Object.entries(SHAPE_FLAGS).map(([flag, key]) =>
  `--${flag} ${BENCH_DEFAULT_STEP[key]}`
);

/** `deno task bench --help`: the usage and what each flag does, its default with it. */
export const HELP = `usage: deno task bench ${
  wrapped(
    [
      "[--json]",
      "[--reps N]",
      "[--no-reference]",
      "[--only LIST]",
      "[--layers N --hidden N --heads N --intermediate N --vocab N --batch N --seq N]",
      "[--modes LIST]",
      "[--precision f32,f16,f16math]",
      "[--gemm-shapes ROWSxINxOUT,...]",
      "[--profile]",
      "[--no-autotune | --retune]",
      "[--tune-cache FILE]",
    ],
    " ",
    23,
  )
}

Kernel throughput on this adapter: one table of every kernel's milliseconds per op and GFLOP/s
or GB/s (what the numbers mean: BENCHMARKS.md). Flags:

  --json                  one JSON object per row on stdout and nothing else (progress on stderr)
  --reps N                timed repetitions per op (default 10)
  --no-reference          skip numpy's GEMM and PyTorch's training step, measured first by
                          /usr/bin/python3 (bench/reference.ts) for the ratio columns
  --only LIST             these modules, comma-separated (default all of them:
                          ${wrapped(Object.keys(MODULES), ",", 26)})
  --layers N --hidden N --heads N --intermediate N --vocab N --batch N --seq N
                          train_step's model (default
                          ${wrapped(SHAPE_DEFAULTS, " ", 26, 98)})
  --modes LIST            train_step's modes (default ${TRAIN_STEP_MODES.join(",")})
  --precision LIST        GEMM and train_step rows in some of f32, f16 and f16math (f16 storage,
                          products multiplied and summed in f16); default f32,f16 where the
                          adapter has shader-f16, else f32
  --gemm-shapes LIST      the matmul module's linear layers, ROWSxINxOUT,... (default
                          ${wrapped(GEMM_SHAPES.map((d) => d.join("x")), ",", 26, 98)})
  --profile               after each train_step mode, one extra step timed per kernel (stderr)
  --no-autotune           the built-in GEMM variants, not tuned for this adapter (as
                          EHFT_NO_AUTOTUNE=1)
  --retune                tune the GEMM variants again, ignoring the cached choice
  --tune-cache FILE       the autotune's cache file (kernels/matmul_autotune.ts)
  -h, --help              this text`;

/** Whether `args` ask for the help (before any `--`). */
function wantsHelp(args: readonly string[]): boolean {
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

interface Options {
  json: boolean;
  reps: number;
  only: string[];
  reference: boolean;
  shape: TrainStepShape;
  modes: TrainStepMode[];
  /** GEMM and training-step rows in these precisions (default f32, and f16 where supported). */
  precisions: BenchPrecision[];
  /** The linear layers [rows, in, out] of the matmul module (default GEMM_SHAPES). */
  gemmShapes: [number, number, number][];
  profile: boolean;
  tune: { noAutotune: boolean; retune: boolean; tuneCache?: string };
}

function positiveInt(flag: string, value: string): number {
  if (!/^[1-9][0-9]*$/.test(value)) {
    throw new FlagError(`--${flag}: expected a positive integer, got "${value}"`);
  }
  return Number(value);
}

function parseOptions(args: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        json: { type: "boolean", default: false },
        reps: { type: "string", default: "10" },
        only: { type: "string" },
        "no-reference": { type: "boolean", default: false },
        modes: { type: "string" },
        precision: { type: "string" },
        "gemm-shapes": { type: "string" },
        profile: { type: "boolean", default: false },
        "no-autotune": { type: "boolean", default: false },
        retune: { type: "boolean", default: false },
        "tune-cache": { type: "string" },
        ...Object.fromEntries(
          Object.keys(SHAPE_FLAGS).map((k) => [k, { type: "string" as const }]),
        ),
      },
    }));
  } catch (e) {
    throw new FlagError(`${(e as Error).message} (${USAGE})`);
  }
  const reps = positiveInt("reps", values.reps as string);
  const shape = { ...BENCH_DEFAULT_STEP };
  for (const [flag, key] of Object.entries(SHAPE_FLAGS)) {
    const v = (values as Record<string, unknown>)[flag];
    if (typeof v === "string") shape[key] = positiveInt(flag, v);
  }
  if (shape.hidden % shape.heads !== 0) {
    throw new FlagError(`--hidden ${shape.hidden} is not a multiple of --heads ${shape.heads}`);
  }
  if (shape.seq > shape.maxPositions) {
    throw new FlagError(`--seq ${shape.seq} exceeds the ${shape.maxPositions} positions`);
  }
  const modes = values.modes === undefined
    ? [...TRAIN_STEP_MODES]
    : (values.modes as string).split(",").map((s) => s.trim());
  for (const m of modes) {
    if (!(TRAIN_STEP_MODES as readonly string[]).includes(m)) {
      throw new FlagError(`--modes: unknown mode "${m}" (expected some of ${TRAIN_STEP_MODES})`);
    }
  }
  const only = values.only === undefined
    ? Object.keys(MODULES)
    : (values.only as string).split(",").map((s) => s.trim());
  for (const name of only) {
    if (!Object.hasOwn(MODULES, name)) {
      throw new FlagError(
        `--only: unknown module "${name}" (expected some of ${Object.keys(MODULES).join(",")})`,
      );
    }
  }
  // Found before the minutes of the modes ahead of it, not when prefix's turn comes.
  if (
    only.includes("train_step") && modes.includes("prefix") &&
    shape.seq <= PEFT_DEFAULTS.prefixLength
  ) {
    throw new FlagError(
      `--seq ${shape.seq}: mode prefix takes ${PEFT_DEFAULTS.prefixLength} of the positions, ` +
        "which leaves no tokens (a longer --seq, or --modes without prefix)",
    );
  }
  const precisions = values.precision === undefined
    ? undefined
    : [...new Set((values.precision as string).split(",").map((s) => s.trim()))];
  for (const p of precisions ?? []) {
    if (!(BENCH_PRECISIONS as readonly string[]).includes(p)) {
      throw new FlagError(
        `--precision: unknown precision "${p}" (expected some of ${BENCH_PRECISIONS.join(",")})`,
      );
    }
  }
  const gemmShapes = values["gemm-shapes"] === undefined
    ? GEMM_SHAPES
    : (values["gemm-shapes"] as string).split(",").map((spec) => {
      const dims = spec.trim().toLowerCase().split("x");
      if (dims.length !== 3 || !dims.every((d) => /^[1-9][0-9]*$/.test(d))) {
        throw new FlagError(`--gemm-shapes: "${spec}" is not ROWSxINxOUT (e.g. 4096x1024x4096)`);
      }
      return dims.map(Number) as [number, number, number];
    });
  if (values["no-autotune"] && values.retune) {
    throw new FlagError("--retune and --no-autotune: choose one");
  }
  if (values.retune && autotuneOffInEnv()) {
    throw new FlagError("--retune with EHFT_NO_AUTOTUNE set, which turns the tune off: choose one");
  }
  return {
    json: values.json as boolean,
    reps,
    only: [...new Set(only)],
    reference: !values["no-reference"],
    shape,
    modes: [...new Set(modes)] as TrainStepMode[],
    precisions: (precisions ?? []) as BenchPrecision[],
    gemmShapes,
    profile: values.profile as boolean,
    tune: {
      noAutotune: values["no-autotune"] as boolean,
      retune: values.retune as boolean,
      tuneCache: values["tune-cache"] as string | undefined,
    },
  };
}

/** The GEMM products the selected modules run: what the autotune should time. */
function tuneShapes(options: Options): TuneShape[] {
  const shapes: TuneShape[] = [];
  // The products in f32 sums, and in f16 arithmetic too when those rows are asked for.
  const maths = options.precisions.includes("f16math") ? [false, true] : [false];
  for (const f16Math of maths) {
    if (options.only.includes("matmul")) {
      shapes.push(...gemmTuneShapes(options.gemmShapes, f16Math));
    }
    if (options.only.includes("train_step")) {
      const s = options.shape;
      shapes.push(...modelTuneShapes(stepConfig(s), {
        rows: s.batch * s.seq,
        headRows: s.batch,
        headFeatures: s.hidden,
        headWidth: HEAD_WIDTH,
        headClasses: 1,
        backward: true,
        attention: { sequences: s.batch, seq: s.seq },
        f16Math,
      }));
    }
  }
  return shapes;
}

/** Rounds to 5 significant digits: the timings are not more precise than that. */
function round(x: number): number {
  return Number(x.toPrecision(5));
}

/** Measured (not counted) fields, rounded in JSON. */
const ROUNDED = new Set([
  "ms",
  "gflops",
  "gbps",
  "samples_per_s",
  "warmup_ms",
  "reference_gflops",
  "reference_samples_per_s",
  "reference_ms",
  "ratio",
]);

/** The row as JSON: numeric shape fields instead of the table's shape string, plus the adapter. */
function jsonLine(row: BenchRow, adapter: string): string {
  const { shape: _shape, ...fields } = row;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    out[key] = typeof value === "number" && ROUNDED.has(key) ? round(value) : value;
  }
  out.adapter = adapter;
  return JSON.stringify(out);
}

function fmt(x: number | undefined): string {
  if (x === undefined) return "";
  if (x >= 100) return x.toFixed(1);
  if (x >= 1) return x.toFixed(3);
  return x.toPrecision(3);
}

function table(rows: BenchRow[]): string {
  // The GEMM variant that ran (gemm rows), in its own column.
  const header = [
    "kernel",
    "shape",
    "variant",
    "ms",
    "GFLOP/s",
    "GB/s",
    "ref",
    "ratio",
    "R",
    "timed",
  ];
  const cells = rows.map((r) => [
    r.kernel,
    r.shape,
    typeof r.variant === "string" ? r.variant : "",
    fmt(r.ms),
    fmt(r.gflops),
    fmt(r.gbps),
    // The reference's rate in the row's own unit: GFLOP/s (GEMM), samples/s (train_step).
    r.kernel === "train_step"
      ? (r.reference_samples_per_s === undefined
        ? ""
        : `${fmt(r.reference_samples_per_s as number)} samples/s`)
      : fmt(r.reference_gflops as number | undefined),
    fmt(r.ratio as number | undefined),
    String(r.per_submit),
    String(r.timed_submits),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  // Text columns left-aligned, numbers right-aligned.
  const line = (c: string[]) =>
    c.map((s, i) => (i < 3 ? s.padEnd(widths[i]) : s.padStart(widths[i]))).join("  ").trimEnd();
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

const encoder = new TextEncoder();

/** Writes to stdout; a reader that went away (`| head`) ends the bench quietly. */
function write(text: string): void {
  try {
    const bytes = encoder.encode(text + "\n");
    let done = 0;
    while (done < bytes.length) done += Deno.stdout.writeSync(bytes.subarray(done));
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(0);
    throw e;
  }
}

async function main(): Promise<void> {
  if (wantsHelp(Deno.args)) {
    console.log(HELP);
    return;
  }
  const options = parseOptions(Deno.args);
  const gpu = await getGpu();
  if (options.precisions.length === 0) {
    options.precisions = gpu.hasF16 ? ["f32", "f16"] : ["f32"];
  } else if (options.precisions.some((p) => p !== "f32") && !gpu.hasF16) {
    throw new Error(
      `--precision ${options.precisions.join(",")}: this adapter (${gpu.description}) has no ` +
        "shader-f16",
    );
  }
  try {
    if (!options.json) write(`adapter: ${gpu.description}\n`);
    const rows: BenchRow[] = [];
    const start = performance.now();
    const wants = (m: string) => options.reference && options.only.includes(m);
    const gemmRefs = wants("matmul") ? await referenceGemm(options.gemmShapes, 5) : null;
    // PyTorch's step is full fine-tuning's, the ft row's ratio alone.
    const stepRefs = wants("train_step") && options.modes.includes("ft")
      ? await referenceTrainStep(options.shape, Math.min(options.reps, 3))
      : null;
    // After the references (nothing else competes for the CPU then), before any timing.
    await autotuneForProgram(gpu, tuneRequest(options.tune), tuneShapes(options));
    // The rows measured so far are printed when a module fails or Ctrl-C stops the bench (the
    // table came only at the end: minutes of rows were lost with it).
    const soFar = (why: string) => {
      if (options.json || rows.length === 0) return;
      write(table(rows));
      console.error(`bench: ${why}; the ${rows.length} rows measured before it are above`);
    };
    const interrupted = () => {
      soFar("interrupted");
      Deno.exit(130);
    };
    Deno.addSignalListener("SIGINT", interrupted);
    try {
      for (const name of options.only) {
        const moduleStart = performance.now();
        console.error(`bench: ${name}...`);
        const moduleRows = await MODULES[name](gpu, options.reps, options).catch((e) => {
          soFar(`${name} failed`);
          throw e;
        });
        addGemmRatios(moduleRows, gemmRefs);
        addTrainStepRatios(moduleRows, stepRefs);
        const seconds = (performance.now() - moduleStart) / 1000;
        console.error(`bench: ${name}: ${moduleRows.length} rows in ${seconds.toFixed(1)} s`);
        if (options.json) { for (const row of moduleRows) write(jsonLine(row, gpu.description)); }
        rows.push(...moduleRows);
      }
    } finally {
      Deno.removeSignalListener("SIGINT", interrupted);
    }
    if (!options.json) write(table(rows));
    console.error(`bench: done in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  } finally {
    gpu.destroy();
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    const message = oneLine((e as Error)?.message ?? String(e));
    console.error(`bench: ${message}`);
    Deno.exit(e instanceof FlagError ? 2 : 1);
  }
}
