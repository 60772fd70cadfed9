// The GPU comparison, start to finish in one call of under 8 minutes on a lent H100:
//
//   bash bench/gpu_prepare.sh                          (here: packs Deno and the deps into .gpu/)
//   device run, carry [".gpu"]:  EHFT_COMMIT=<sha> bash .gpu/on-device.sh deno run -A bench/gpu.ts
//     (not `deno task bench:gpu` there: deno task first installs every npm package of deno.lock)
//   deno task bench:gpu --small                       (a rehearsal on any adapter: tiny shapes)
//
// Phases, each a subprocess with its own time limit, so that a hang or crash costs that phase
// and not the run; the report is rewritten after every phase, so a run cut short still leaves
// what it measured:
// 1. the adapter Deno sees: name, driver (nvidia-smi), features (shader-f16, subgroups,
//    timestamp-query), limits.
// 2. correctness there first: the kernel and model tests (float64 CPU references, the PyTorch
//    fixtures), then the f16 tests. If those fail, no f16 row is timed and the report says f16
//    must stay off on this adapter.
// 3. PyTorch on the same GPU (bench/torch_step.py): torch.matmul at the GEMM shapes (fp32 with
//    TF32 off, fp16, bf16) and the training step of the same model shape (RobertaForSequence-
//    Classification with the EH-FT head; ft, BitFit, LoRA; fp32 and bf16 autocast).
// 4. ours (bench/kernels.ts --json): the GEMMs at RoBERTa-large's linear layers (32 × 128 tokens)
//    in f32 and f16; every GEMM variant at the first layer's products (bench/matmul_variants.ts
//    --linear: what the autotune chose among, in the report's notes); then the training step of
//    RoBERTa-large's shape (24 layers, hidden 1024, random weights, batch 32 × 128) for ft and
//    Stage 1 with BitFit and LoRA, f32 and f16 (ft and LoRA in f32 with one more step profiled per
//    kernel: the largest ops and the autotune's choices in the notes).
// 5. the report: $OUT/gpu-bench.md (ratios ours / PyTorch against the goals), $OUT/rows.jsonl,
//    the phases' logs ($OUT/logs.tgz), and the report again as the last lines of stdout.
//
// Flags: --out DIR (default $OUT, else runs/gpu-bench), --small, --budget S (default 420: the
// phases' limits are shares of it, each at least 20 s, the f32 tests' 150 s, the f16 tests' 90 s,
// the variants' 60 s), --python CMD (default: python3, python or /usr/bin/python3, the
// first that imports torch), --no-tests, --print-files (the modules the run loads, one per line:
// what bench/gpu_prepare.sh caches for the offline machine); --help / -h prints HELP and exits 0,
// an unknown flag or a bad value is one line with USAGE, exit 2 (as train.ts; 1 for a run that fails).

import { parseArgs } from "node:util";
import { FlagError } from "../train/flags.ts";
import { join } from "node:path";
import { F16_MATH_VARIANTS, MATMUL_VARIANTS } from "../kernels/matmul.ts";
import { removePendingTemporaries, writeFileAtomic } from "../model/atomic_write.ts";
import { type GpuReport, reportMarkdown, type Row, type TestRun } from "./gpu_table.ts";

const ROOT = join(import.meta.dirname!, "..");

/** The model and GEMM shapes: RoBERTa-large at 32 × 128 tokens, or tiny ones (--small). */
const FULL = {
  step: {
    layers: 24,
    hidden: 1024,
    heads: 16,
    intermediate: 4096,
    vocab: 50265,
    batch: 32,
    seq: 128,
  },
  gemms: "4096x1024x1024,4096x1024x4096,4096x4096x1024",
};
const SMALL = {
  step: { layers: 2, hidden: 64, heads: 2, intermediate: 160, vocab: 1000, batch: 4, seq: 24 },
  gemms: "96x80x112,200x64x48",
};

/** Kernel and model tests with float64 or PyTorch references, and the f16 ones. */
const F32_TESTS = [
  "matmul_test",
  "matmul_variants_test",
  "thin_matmul_test",
  "matmul_split_test",
  "thin_tn_test",
  "recorder_cache_test",
  "transpose_test",
  "matmul_nn_step_test",
  "linear_test",
  "attention_test",
  "flash_attention_test",
  "layernorm_test",
  "add_layernorm_test",
  "add_test",
  "gelu_test",
  "relu_test",
  "dropout_test",
  "embedding_test",
  "pooling_test",
  "loss_test",
  "vocab_cross_entropy_test",
  "reductions_test",
  "grad_norm_test",
  "adamw_test",
  "optimizer_arena_test",
  "lora_test",
  "peft_test",
  "encoder_test",
  "encoder_flash_test",
  "encoder_fusion_test",
];
const F16_TESTS = [
  "matmul_f16_math_test",
  "cast_test",
  "matmul_f16_test",
  "loss_scale_test",
  "encoder_f16_test",
];

/** Shares of --budget per phase (they sum to under 1; the rest is start-up and the report). */
const SHARE = { tests: 0.2, f16Tests: 0.08, torch: 0.2, gemm: 0.13, variants: 0.02, steps: 0.35 };

/** The flags, for the usage line of a bad one. */
export const USAGE = "usage: deno task bench:gpu [--out DIR] [--small] [--budget S] " +
  "[--python CMD] [--no-tests] [--print-files]";

/** `deno task bench:gpu --help`. */
export const HELP = `${USAGE}

The GPU comparison: the adapter, the kernel and model tests there, PyTorch on the same GPU
(bench/torch_step.py), then ours (bench/kernels.ts), each phase a subprocess with its own time
limit; the report (gpu-bench.md, rows.jsonl, logs.tgz) is rewritten in --out after every phase.
On the lent GPU machine run it through bench/gpu_prepare.sh's .gpu/on-device.sh (see the top of
bench/gpu.ts).

  --out DIR               the report's folder, new or empty (default $OUT, else runs/gpu-bench)
  --small                 a rehearsal on any adapter: tiny shapes
  --budget S              whole seconds for the run (default 420): the phases' limits are shares
                          of it, each at least 20 s (the f32 tests 150 s, the f16 tests 90 s, the
                          GEMM variants 60 s)
  --python CMD            the Python with torch (default the first of python3, python and
                          /usr/bin/python3 that imports torch)
  --no-tests              skip the kernel and model tests (phase 2)
  --print-files           print the modules the run loads, one per line, and exit (what
                          bench/gpu_prepare.sh caches for the offline machine)
  -h, --help              this text`;

interface Options {
  out: string;
  small: boolean;
  budgetS: number;
  python?: string;
  tests: boolean;
}

/** Whether `args` ask for the help (before any `--`). */
export function wantsHelp(args: readonly string[]): boolean {
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).some((a) => a === "--help" || a === "-h");
}

function parseOptions(args: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        out: { type: "string" },
        small: { type: "boolean", default: false },
        budget: { type: "string", default: "420" },
        python: { type: "string" },
        "no-tests": { type: "boolean", default: false },
        "print-files": { type: "boolean", default: false },
      },
    }));
  } catch (e) {
    throw new FlagError(`${(e as Error).message} (${USAGE})`);
  }
  if (values["print-files"]) {
    // What the run loads besides this file, for bench/gpu_prepare.sh to cache.
    console.log([
      "bench/kernels.ts",
      "bench/matmul_variants.ts",
      ...[...F32_TESTS, ...F16_TESTS].map((t) => `tests/${t}.ts`),
    ]
      .join("\n"));
    Deno.exit(0);
  }
  const budget = values.budget as string;
  if (!/^[1-9][0-9]*$/.test(budget)) {
    throw new FlagError(`--budget: expected whole seconds, got "${budget}"`);
  }
  return {
    out: (values.out as string | undefined) || Deno.env.get("OUT") || "runs/gpu-bench",
    small: values.small as boolean,
    budgetS: Number(budget),
    python: values.python as string | undefined,
    tests: !values["no-tests"],
  };
}

interface PhaseResult {
  code: number | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  seconds: number;
}

/**
 * The phase running now: its process, which a SIGTERM or Ctrl-C ends too, its name, and when its
 * log is written (what the stop waits for before it packs the logs: tar fails on a file written
 * while it reads, and then left logs/ unpacked).
 */
let running: { child: Deno.ChildProcess; log: string; logged: Promise<void> } | null = null;

/** Set by a SIGTERM or Ctrl-C: no phase starts, and only the stop writes the report. */
let stopping = false;

/**
 * Runs one phase with a time limit, its stderr shown live and both streams kept in
 * `$OUT/<log>.log`. A process still running at the limit is killed (code null, timedOut).
 */
async function phase(
  out: string,
  log: string,
  cmd: string,
  args: string[],
  limitS: number,
): Promise<PhaseResult> {
  // The stop exits once it has written the report: a phase started now would be left running.
  if (stopping) return await new Promise<never>(() => {});
  const start = performance.now();
  console.error(`bench:gpu: ${log}: ${cmd} ${args.join(" ")} (limit ${Math.round(limitS)} s)`);
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: ROOT,
      env: { NO_COLOR: "1" }, // plain logs, and deno test's summary line unbroken
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    const message = `could not start ${cmd}: ${(e as Error).message}`;
    await Deno.writeTextFile(join(out, "logs", `${log}.log`), message + "\n");
    return { code: -1, timedOut: false, stdout: "", stderr: message, seconds: 0 };
  }
  const decoder = new TextDecoder();
  let stdout = "";
  let stderr = "";
  const readOut = (async () => {
    for await (const chunk of child.stdout) stdout += decoder.decode(chunk, { stream: true });
  })();
  const readErr = (async () => {
    for await (const chunk of child.stderr) {
      const text = decoder.decode(chunk, { stream: true });
      stderr += text;
      Deno.stderr.writeSync(chunk);
    }
  })();
  let logged = () => {};
  running = { child, log, logged: new Promise<void>((resolve) => logged = resolve) };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* it exited meanwhile */ }
  }, limitS * 1000);
  const status = await child.status;
  clearTimeout(timer);
  await Promise.all([readOut, readErr]);
  const seconds = (performance.now() - start) / 1000;
  try {
    await Deno.writeTextFile(
      join(out, "logs", `${log}.log`),
      `$ ${cmd} ${args.join(" ")}\n# exit ${status.code}${
        timedOut ? ` (killed at the ${Math.round(limitS)} s limit)` : ""
      }, ${seconds.toFixed(1)} s\n# stdout\n${stdout}\n# stderr\n${stderr}`,
    );
  } finally {
    running = null;
    logged();
  }
  console.error(
    `bench:gpu: ${log}: ${timedOut ? "TIMED OUT" : `exit ${status.code}`} in ${
      seconds.toFixed(1)
    } s`,
  );
  return { code: timedOut ? null : status.code, timedOut, stdout, stderr, seconds };
}

function jsonRows(text: string): Row[] {
  const rows: Row[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      rows.push(JSON.parse(line));
    } catch { /* a line cut by a kill */ }
  }
  return rows;
}

/** One report note per product from bench/matmul_variants.ts's JSON rows: each variant's GFLOP/s. */
export function variantNotes(rows: Row[]): string[] {
  const rates = new Map<string, string[]>();
  for (const { product, variant, ran, gflops, m, n, k } of rows) {
    if (typeof product !== "string" || typeof gflops !== "number") continue;
    const note = ran === undefined || ran === variant ? "" : ` (ran ${ran})`;
    const rate = `${variant} ${gflops.toPrecision(3)}${note}`;
    const key = `${product} ${m} × ${n} × ${k}`;
    rates.set(key, [...(rates.get(key) ?? []), rate]);
  }
  return [...rates].map(([product, list]) =>
    `every GEMM variant, ${product}, GFLOP/s: ${list.join(", ")}`
  );
}

/** "ok | 12 passed | 0 failed (3s)" or "FAILED | 11 passed | 1 failed" from deno test. */
export function testCounts(text: string): { passed: number; failed: number } | null {
  const m = /\| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/.exec(text);
  return m ? { passed: Number(m[1]), failed: Number(m[2]) } : null;
}

/**
 * From bench/kernels.ts --profile's stderr: the profile's head line and its largest `top` ops, one
 * note each (the whole table stays in the phase's log), after the autotune's choices line.
 */
export function profileNotes(stderr: string, top = 8): string[] {
  const lines = stderr.split("\n");
  const at = lines.findIndex((l) => /^bench: train_step .* profile: /.test(l));
  if (at < 0) return [];
  const notes: string[] = [];
  const tune = lines.find((l) => l.startsWith("matmul autotune:"));
  if (tune) notes.push(tune.trim());
  notes.push(lines[at].replace(/^bench: /, ""));
  for (const line of lines.slice(at + 1, at + 1 + top)) {
    if (!/^\s+[0-9.]+ ms /.test(line)) break;
    notes.push(`  ${line.trim().replace(/\s+/g, " ")}`);
  }
  return notes;
}

/** The tests a cut-off `deno test` run finished: "name ... ok (3ms)" / "name ... FAILED (3ms)". */
export function finishedTests(
  text: string,
): { passed: number; failed: number; failedNames: string[] } {
  // deno-lint-ignore no-control-regex
  const plain = text.replace(/\x1b\[[0-9;]*m/g, "");
  let passed = 0;
  const failedNames: string[] = [];
  for (const line of plain.split("\n")) {
    // Not indented: a test, not one of its steps.
    const m = /^(\S.*) \.\.\. (ok|FAILED)\b/.exec(line);
    if (!m) continue;
    if (m[2] === "ok") passed++;
    else failedNames.push(m[1].trim());
  }
  return { passed, failed: failedNames.length, failedNames };
}

async function commandText(cmd: string, args: string[]): Promise<string | null> {
  try {
    const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return o.success ? new TextDecoder().decode(o.stdout).trim() : null;
  } catch {
    return null;
  }
}

async function findPython(given?: string): Promise<string | null> {
  for (const cmd of given ? [given] : ["python3", "python", "/usr/bin/python3"]) {
    if (await commandText(cmd, ["-c", "import torch"]) !== null) return cmd;
  }
  return null;
}

async function adapterFacts(): Promise<Pick<GpuReport, "adapter" | "features"> & { text: string }> {
  const adapter = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return { adapter: "none", features: [], text: "no WebGPU adapter" };
  const info = adapter.info;
  const name = `${info.description || info.device || "unnamed"} (vendor ${
    info.vendor || "?"
  }, architecture ${info.architecture || "?"})`;
  const features = [...adapter.features].sort();
  const limits = adapter.limits as unknown as Record<string, number>;
  const keys = [
    "maxBufferSize",
    "maxStorageBufferBindingSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupsPerDimension",
    "maxStorageBuffersPerShaderStage",
    "minStorageBufferOffsetAlignment",
  ];
  const text = [
    `adapter: ${name}`,
    `features: ${features.join(", ")}`,
    ...keys.map((k) => `  ${k}: ${limits[k]}`),
  ].join("\n");
  return { adapter: name, features, text };
}

function shapeFlags(step: Record<string, number>): string[] {
  return Object.entries(step).flatMap(([k, v]) => [`--${k}`, String(v)]);
}

async function main(): Promise<void> {
  if (wantsHelp(Deno.args)) {
    console.log(HELP);
    return;
  }
  const o = parseOptions(Deno.args);
  const started = performance.now();
  const shapes = o.small ? SMALL : FULL;
  await expectEmptyOut(o.out);
  await Deno.mkdir(join(o.out, "logs"), { recursive: true });
  const limit = (share: number, floor = 20) => Math.max(floor, share * o.budgetS);

  // 1. The adapter.
  const facts = await adapterFacts();
  console.log(facts.text);
  const driver = await commandText("nvidia-smi", [
    "--query-gpu=name,driver_version,memory.total",
    "--format=csv,noheader",
  ]) ?? "no nvidia-smi";
  console.log(`driver: ${driver}`);
  const commit = Deno.env.get("EHFT_COMMIT") ??
    await commandText("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"]) ?? "unknown";
  const report: GpuReport = {
    adapter: facts.adapter,
    driver,
    features: facts.features,
    date: new Date().toISOString().slice(0, 16).replace("T", " ") + " UTC",
    commit,
    reference: "not measured",
    tests: [],
    f16: { on: facts.features.includes("shader-f16"), why: "the adapter has shader-f16" },
    shape: `${shapeFlags(shapes.step).join(" ")} (our rows: BERT-style config of that shape)`,
    ours: [],
    torch: [],
    notes: [],
  };
  if (!report.f16.on) report.f16.why = "the adapter has no shader-f16";
  // The stop's own write is the last: the run's, racing it, would put back a report without the
  // stop's note.
  const write = async (stop = false) => {
    if (stopping && !stop) return;
    await writeFileAtomic(join(o.out, "gpu-bench.md"), reportMarkdown(report));
    await writeFileAtomic(
      join(o.out, "rows.jsonl"),
      [...report.torch, ...report.ours].map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
  };
  await write();
  // A scheduler's SIGTERM or a Ctrl-C: the running phase's process ended too (it ran on,
  // orphaned, until its own limit), and the report says it is partial, whose phases after it did
  // not run.
  for (const [signal, status] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    Deno.addSignalListener(signal, async () => {
      stopping = true;
      const phaseNow = running;
      const during = phaseNow?.log;
      try {
        phaseNow?.child.kill("SIGKILL");
      } catch { /* it exited meanwhile */ }
      // Its log written (a few seconds at most), so that the logs are packed whole.
      if (phaseNow) {
        await Promise.race([phaseNow.logged, new Promise((r) => setTimeout(r, 5000))]);
      }
      removePendingTemporaries();
      report.notes.push(
        `stopped by ${signal}${during ? ` during the ${during} phase` : ""}: this report is ` +
          "partial (the phases after it did not run)",
      );
      await write(true).catch(() => {});
      await packLogs(o.out);
      console.error(`bench:gpu: stopped by ${signal}; the partial report is in ${o.out}`);
      Deno.exit(status);
    });
  }

  // 2. Correctness on this adapter.
  const testRun = async (name: string, files: string[], limitS: number): Promise<TestRun> => {
    const r = await phase(o.out, name, Deno.execPath(), [
      "test",
      "--allow-all",
      "--no-check",
      // With the lock file, deno test installs every npm package it lists, the drawing
      // libraries too, which the offline machine lacks (the 2026-11-28 H200 run's tests failed so).
      "--no-lock",
      "--parallel", // on the H100, 52 s for all of them instead of over 126 s one file at a time
      ...files.map((f) => `tests/${f}.ts`),
    ], limitS);
    const counts = testCounts(r.stdout + r.stderr);
    if (r.timedOut) {
      // What finished before the limit still says something (a failure most of all).
      const so = finishedTests(r.stdout + r.stderr);
      const failedNames = so.failedNames.length ? `: ${so.failedNames.join("; ")}` : "";
      return {
        name,
        passed: so.passed,
        failed: so.failed,
        problem: `timed out after ${Math.round(limitS)} s, ${so.passed} passed and ${so.failed} ` +
          `failed before then${failedNames}`,
      };
    }
    if (!counts) return { name, passed: 0, failed: 0, problem: `exit ${r.code}, no summary` };
    return { name, ...counts };
  };
  if (o.tests) {
    // At least 150 s: on the H100 they took 52-63 s (first run), more with every new test and
    // GEMM variant; on the H200 (d5e6419) 90 s ended them after 215 passed, and these files
    // with the f16 ones took 171 s there (2026-11-28, c78fb6e); 180 s ended them (8c39abb) with
    // every file complete but matmul_test.ts's every-variant epilogue test, which takes the tiled
    // kernels by representatives since. 150 s leaves the f16 tests more (below) in one call.
    report.tests.push(await testRun("tests-f32", F32_TESTS, limit(SHARE.tests, 150)));
    await write();
    if (report.f16.on) {
      // At least 90 s: 23 s ended them after 19 passed on the H200, 40 s after 23 (their
      // every-variant test unfinished), before the f16-arithmetic kernels and their tests
      // (matmul_f16_math_test, and f16Math steps in loss_scale and encoder_f16) joined them.
      const f16 = await testRun("tests-f16", F16_TESTS, limit(SHARE.f16Tests, 90));
      report.tests.push(f16);
      // A failure is evidence against f16 here; a timeout is none either way, and the f16
      // rows' first-step check against f32 (in the report) still says whether it computes right.
      if (f16.failed > 0) {
        report.f16 = {
          on: false,
          why: `${f16.failed} f16 tests failed here: f16 must stay off on this adapter; ` +
            "no f16 row timed",
        };
      } else if (f16.problem) {
        report.f16.why = `shader-f16, but the f16 tests gave no verdict (${f16.problem})`;
      } else report.f16.why = "shader-f16, and the f16 tests pass here";
    }
    await write();
  } else report.notes.push("--no-tests: correctness not checked in this run");

  // 3. PyTorch on the same GPU.
  const python = await findPython(o.python);
  if (!python) {
    report.reference = "no python with torch: no reference, no ratios";
  } else {
    const r = await phase(o.out, "torch", python, [
      "bench/torch_step.py",
      "--shapes",
      shapes.gemms,
      ...shapeFlags(shapes.step),
      ...(o.small ? ["--budget", "1"] : []),
    ], limit(SHARE.torch));
    report.torch = jsonRows(r.stdout);
    const step = report.torch.find((row) => row.kernel === "train_step_reference");
    const any = report.torch[0];
    report.reference = any
      ? `torch ${any.torch} on ${any.device}` +
        (step
          ? `; model: ${step.impl} ${step.transformers}, attention ${step.attention}`
          : "; no training-step row")
      : "no rows";
    if (r.code !== 0) {
      report.notes.push(
        `PyTorch phase ${r.timedOut ? "timed out" : `failed (exit ${r.code})`}: see ${
          logIn("torch")
        }`,
      );
    }
  }
  await write();

  // 4. Ours.
  // "f16math": f16 storage, the encoder's products multiplied and summed in f16
  // (bench/precision.ts).
  const precisions = report.f16.on ? ["f32", "f16", "f16math"] : ["f32"];
  const bench = (log: string, args: string[], limitS: number) =>
    phase(o.out, log, Deno.execPath(), [
      "run",
      "--allow-all",
      "bench/kernels.ts",
      "--json",
      "--no-reference",
      ...args,
    ], limitS);
  {
    const r = await bench("ours-gemm", [
      "--only",
      "matmul",
      "--gemm-shapes",
      shapes.gemms,
      "--precision",
      precisions.join(","),
      "--reps",
      "5",
    ], limit(SHARE.gemm));
    const rows = jsonRows(r.stdout);
    report.ours.push(...rows);
    const clocks = [...new Set(rows.map((row) => row.clock))];
    report.notes.push(
      `our GEMM rows timed on ${
        clocks.map((c) =>
          c === "gpu"
            ? "the GPU's clock (timestamp queries: each submit's span, first dispatch to last)"
            : `the host's clock (${c ?? "unknown"}: submits until the GPU finished)`
        ).join(" and ")
      }`,
    );
    if (r.code !== 0) report.notes.push(`our GEMM phase ${r.timedOut ? "timed out" : "failed"}`);
    await write();
  }
  {
    // Every variant at the first linear layer's products (the GEMM rows' first three), whatever
    // the autotune chose, one line per product.
    const shape = shapes.gemms.split(",")[0];
    const r = await phase(o.out, "ours-variants", Deno.execPath(), [
      "run",
      "--allow-all",
      "bench/matmul_variants.ts",
      "--linear",
      shape,
      "--variants",
      // Not the shared-memory pair and direct4x4: neither heuristic nor autotune picks them. The
      // f16-arithmetic ones on f16 operands, where the f16 rows are timed.
      [
        ...MATMUL_VARIANTS.filter((v) => !["tile16", "tile64", "direct4x4"].includes(v)),
        ...(report.f16.on ? F16_MATH_VARIANTS : []),
      ].join(","),
      "--reps",
      "5",
      "--json",
    ], limit(SHARE.variants, 60)); // every variant's timings and compiles (39 took 10-18 s on an H100)
    report.notes.push(...variantNotes(jsonRows(r.stdout)));
    if (r.code !== 0) {
      report.notes.push(
        `GEMM variants phase ${r.timedOut ? "timed out" : "failed"}: see ${logIn("ours-variants")}`,
      );
    }
    await write();
  }
  // The most telling rows first: each (mode, precision) is its own process, so that a slow one
  // costs only itself; they share what is left of the steps' share.
  const runs = [
    ["ft", "f32"],
    ["ft", "f16"],
    ["ft", "f16math"],
    ["bitfit", "f32"],
    ["lora", "f32"],
    ["bitfit", "f16"],
    ["lora", "f16"],
    ["bitfit", "f16math"],
    ["lora", "f16math"],
  ].filter(([, p]) => precisions.includes(p));
  const stepsEnd = performance.now() + limit(SHARE.steps) * 1000;
  for (const [i, [mode, precision]] of runs.entries()) {
    const left = (stepsEnd - performance.now()) / 1000;
    if (left < 10) {
      report.notes.push(`no time left for train_step ${mode} ${precision}`);
      continue;
    }
    // Later runs keep a fair share of the time for those after them.
    const share = Math.max(left / (runs.length - i), Math.min(left, 60));
    const r = await bench(`ours-step-${mode}-${precision}`, [
      "--only",
      "train_step",
      ...shapeFlags(shapes.step),
      "--modes",
      mode,
      "--precision",
      precision,
      "--reps",
      "5",
      // One more step timed per kernel (timestamp queries): where the time goes.
      ...((precision === "f32" && mode !== "bitfit") || (precision === "f16math" && mode === "ft")
        ? ["--profile"]
        : []),
    ], share);
    const rows = jsonRows(r.stdout);
    report.ours.push(...rows);
    for (const row of rows) {
      if (typeof row.host_ms === "number") report.notes.push(stepTimeNote(row, mode, precision));
    }
    report.notes.push(...profileNotes(r.stderr));
    if (r.code !== 0) {
      report.notes.push(
        `train_step ${mode} ${precision} ${
          r.timedOut ? `timed out after ${Math.round(share)} s` : `failed (exit ${r.code})`
        }: see ${logIn(`ours-step-${mode}-${precision}`)}`,
      );
    }
    await write();
  }

  // 5. The report. The device tool brings back only a few files: the logs travel as one archive.
  report.notes.push(`whole run: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  await write();
  await packLogs(o.out);
  console.log("\n" + reportMarkdown(report));
}

/**
 * Refuses an --out that holds anything: a report there would be rewritten, and the logs/ folder
 * it packs into logs.tgz, then removes, would take files that are not this run's.
 */
async function expectEmptyOut(out: string): Promise<void> {
  try {
    for await (const entry of Deno.readDir(out)) {
      throw new FlagError(
        `--out ${out} holds ${entry.name} already (an earlier report?): name an empty or new ` +
          "folder, or move that one away",
      );
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    if (e instanceof Deno.errors.NotADirectory) {
      throw new FlagError(`--out ${out} is a file, not a folder`);
    }
    throw e;
  }
}

/** The phases' logs into `out`/logs.tgz, the folder removed once packed. */
async function packLogs(out: string): Promise<void> {
  if (await commandText("tar", ["-czf", join(out, "logs.tgz"), "-C", out, "logs"]) !== null) {
    await Deno.remove(join(out, "logs"), { recursive: true });
  }
}

/** Where a phase's log is once the run ends: in logs.tgz (the device tool brings back a few files). */
function logIn(name: string): string {
  return `logs/${name}.log in logs.tgz`;
}

/** How a training-step row's time divides (bench/train_step.ts's host_ms and pipelined_ms). */
export function stepTimeNote(row: Row, mode: string, precision: string): string {
  const ms = Number(row.ms);
  const host = Number(row.host_ms);
  const piped = Number(row.pipelined_ms);
  const back = Number.isFinite(piped)
    ? `; back to back, as the training loop runs them, ${piped.toFixed(1)} ms a step ` +
      `(${(Number(row.batch) / (piped / 1000)).toFixed(1)} samples/s)`
    : "";
  return `train_step ${mode} ${precision}: the host records, encodes and submits a step in ` +
    `${host.toFixed(1)} ms of its ${ms.toFixed(1)} ms (the GPU starts on its first layers once ` +
    `they are recorded, while the host records the rest)${back}`;
}

if (import.meta.main) {
  try {
    await main();
  } catch (e) {
    console.error(`bench:gpu: ${(e as Error).message}`);
    Deno.exit(e instanceof FlagError ? 2 : 1);
  }
}
