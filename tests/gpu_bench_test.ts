// bench/gpu.ts's report: ratios ours / PyTorch and the goals, from rows of both sides, and the
// test summary and GEMM-variant rows it reads. No GPU needed: the functions are pure (but the
// GEMM-variant test, which runs bench/matmul_variants.ts at a tiny product on whatever adapter
// there is, and the timing one). And the command lines of `deno task bench` and `bench:gpu`:
// --help / -h print the usage and exit 0 running nothing, an unknown flag is one line with it.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import {
  finishedTests,
  HELP as GPU_HELP,
  profileNotes,
  stepTimeNote,
  testCounts,
  USAGE as GPU_USAGE,
  variantNotes,
} from "../bench/gpu.ts";
import {
  f16Check,
  gemmTable,
  goalLines,
  reportMarkdown,
  type Row,
  stepTable,
} from "../bench/gpu_table.ts";
import { addGemmRatios } from "../bench/reference.ts";
import { type BenchRow, measure, timeOp } from "../bench/timing.ts";
import { fill } from "../kernels/fill.ts";
import { profileDispatches, Recorder, TIMED_DISPATCHES } from "../kernels/recorder.ts";
import { createTensor } from "../kernels/tensor.ts";
import { gpuTest } from "./gpu_fixture.ts";

const gemm = (precision: string, product: string, gflops: number): Row => ({
  kernel: "gemm",
  m: 4096,
  n: 1024,
  k: 4096,
  product,
  precision,
  model: "roberta-large",
  gflops,
});
const ref = (dtype: string, product: string, gflops: number): Row => ({
  kernel: "gemm_reference",
  m: 4096,
  n: 1024,
  k: 4096,
  product,
  dtype,
  gflops,
});
const step = (mode: string, precision: string, samples: number, gradNorm = 1.5): Row => ({
  kernel: "train_step",
  mode,
  precision,
  samples_per_s: samples,
  first_loss: 0.6931,
  first_grad_norm: gradNorm,
});
const torchStep = (mode: string, amp: string, samples: number): Row => ({
  kernel: "train_step_reference",
  mode,
  amp,
  samples_per_s: samples,
});

const ours = [
  gemm("f32", "forward", 30000),
  gemm("f32", "dW", 20000),
  gemm("f16", "forward", 60000),
  gemm("f16math", "forward", 50000),
  step("ft", "f32", 40),
  step("ft", "f16", 70),
  step("ft", "f16math", 80),
  step("bitfit", "f32", 100),
];
const torch = [
  ref("fp32", "forward", 40000),
  ref("fp32", "dW", 40000),
  ref("fp16", "forward", 400000),
  ref("bf16", "forward", 420000),
  torchStep("ft", "fp32", 50),
  torchStep("ft", "bf16", 200),
  torchStep("bitfit", "fp32", 120),
];

Deno.test("gpu report: GEMM ratios against cuBLAS fp32 with the 0.6 goal", () => {
  const lines = gemmTable(ours, torch);
  const forward = lines.find((l) => l.includes("| forward |"))!;
  assert(forward.includes("| 0.75 ✓ |"), forward); // 30000 / 40000
  assert(forward.includes("| 0.15 |"), forward); // f16 60000 / fp16 400000
  assert(forward.includes("| 50000 | 1.25 |"), forward); // f16 math 50000 / fp32 40000
  const dW = lines.find((l) => l.includes("| dW |"))!;
  assert(dW.includes("| 0.50 ✗ |"), dW);
  assert(dW.includes("| – |"), "no f16 row: a dash, not a number");
});

Deno.test("gpu report: training-step ratios and the goal lines", () => {
  const lines = stepTable(ours, torch);
  const ft = lines.find((l) => l.startsWith("| ft |"))!;
  assert(ft.includes("| 0.80 ✓ |"), ft); // 40 / 50
  assert(ft.includes("| 1.40 ✓ |"), ft); // 70 / 50
  assert(ft.includes("| 0.35 |"), ft); // 70 / 200
  assert(ft.includes("| 1.60 ✓ |"), ft); // f16 math 80 / 50
  assert(ft.includes("| 0.40 |"), ft); // f16 math 80 / 200
  const bitfit = lines.find((l) => l.startsWith("| bitfit |"))!;
  assert(bitfit.includes("| 0.83 ✓ |"), bitfit);
  assert(!lines.some((l) => l.startsWith("| lora |")), "no lora rows on either side: no line");
  assertEquals(goalLines(ours, torch), [
    "f32 GEMM ≥ 0.6 × cuBLAS fp32: NOT met (1 of 2 products; lowest ratio 0.50)",
    "f32 training step (ft) ≥ 0.7 × PyTorch fp32: met (0.80)",
    "f16 training step (ft) ≥ 1 × PyTorch fp32: met (1.40)",
    "f16 math training step (ft) ≥ 1 × PyTorch fp32: met (1.60)",
    "f16 training step (ft) against PyTorch bf16 autocast: 0.35 (no goal)",
    "f16 math training step (ft) against PyTorch bf16 autocast: 0.40 (no goal)",
  ]);
});

Deno.test("gpu report: f16 against f32 by the first step's gradient norm", () => {
  const [agrees] = f16Check([step("ft", "f32", 1, 2.0), step("ft", "f16", 1, 2.01)]);
  assert(agrees.includes("agrees"), agrees);
  const [differs] = f16Check([step("ft", "f32", 1, 2.0), step("ft", "f16", 1, 2.5)]);
  assert(differs.includes("DIFFERS"), differs);
  const skipped = { ...step("ft", "f16", 1), first_grad_norm: null };
  const [note] = f16Check([step("ft", "f32", 1), skipped]);
  assert(note.includes("skipped"), note);
  const [math] = f16Check([step("ft", "f32", 1, 2.0), step("ft", "f16math", 1, 2.01)]);
  assert(math.startsWith("ft: f16 math against f32") && math.includes("agrees"), math);
});

Deno.test("gpu report: nothing measured still gives a readable report", () => {
  const text = reportMarkdown({
    adapter: "none",
    driver: "no nvidia-smi",
    features: [],
    date: "2026-11-27 00:00 UTC",
    commit: "abc1234",
    reference: "no python with torch: no reference, no ratios",
    tests: [{ name: "tests-f32", passed: 0, failed: 0, problem: "timed out after 90 s" }],
    f16: { on: false, why: "the adapter has no shader-f16" },
    shape: "--layers 24",
    ours: [],
    torch: [],
    notes: ["whole run: 5 s"],
  });
  assert(text.includes("No GEMM rows were measured."));
  assert(text.includes("No training-step rows were measured."));
  assert(text.includes("- tests-f32: timed out after 90 s"));
  assert(text.includes("- f16: off (the adapter has no shader-f16)"));
});

Deno.test("gpu bench: deno test's summary line", () => {
  assertEquals(testCounts("ok | 25 passed | 0 failed (12s)"), { passed: 25, failed: 0 });
  assertEquals(testCounts("FAILED | 11 passed (3 steps) | 1 failed (2s)"), {
    passed: 11,
    failed: 1,
  });
  assertEquals(testCounts("error: Module not found"), null);
});

Deno.test("gpu bench: the tests a run cut off at its time limit had finished", () => {
  const text = [
    "running 3 tests from ./tests/a_test.ts",
    "\x1b[0ma: one ... \x1b[32mok\x1b[0m (3ms)",
    "a: two ... \x1b[31mFAILED\x1b[0m (1s)",
    "running 2 tests from ./tests/b_test.ts",
    "b: one ... ok (12ms)",
    "  a step of b: two ... ok (1ms)",
    "a: three ...",
  ].join("\n");
  assertEquals(finishedTests(text), { passed: 2, failed: 1, failedNames: ["a: two"] });
  assertEquals(finishedTests(""), { passed: 0, failed: 0, failedNames: [] });
});

Deno.test("gpu bench: GEMM-variant notes, one per product, from bench/matmul_variants.ts --json", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../bench/matmul_variants.ts", import.meta.url).pathname,
      "--linear",
      "36x20x12",
      "--variants",
      "vec4_4x4,tiled_4x4",
      "--reps",
      "1",
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  const rows: Row[] = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  assertEquals(rows.map((r) => `${r.product} ${r.variant}`), [
    "NT vec4_4x4",
    "NT tiled_4x4",
    "NN vec4_4x4",
    "NN tiled_4x4",
    "TN vec4_4x4",
    "TN tiled_4x4",
  ]);
  // A linear layer of 36 rows, 20 inputs and 12 outputs: each product the GEMM rows time for it.
  const sizes = { NT: [36, 12, 20], NN: [36, 20, 12], TN: [12, 20, 36] };
  for (const r of rows) {
    assertEquals([r.m, r.n, r.k, r.kernel], [...sizes[r.product as "NT"], "matmul_variant"]);
    assert(typeof r.gflops === "number" && r.gflops > 0 && typeof r.ms === "number");
  }
  const notes = variantNotes(rows);
  assertEquals(notes.length, 3);
  assert(notes[0].startsWith("every GEMM variant, NT 36 × 12 × 20, GFLOP/s: vec4_4x4 "), notes[0]);
  assert(notes[2].startsWith("every GEMM variant, TN 12 × 20 × 36, GFLOP/s: "), notes[2]);
  assert(notes.every((n) => !n.includes("(ran")), notes.join("\n"));
  // A misaligned product runs direct4x4 whatever was asked: the note says so.
  const misaligned = { ...rows[1], n: 22, ran: "direct4x4", gflops: 0.01234 };
  assertEquals(variantNotes([misaligned]), [
    "every GEMM variant, NT 36 × 22 × 20, GFLOP/s: tiled_4x4 0.0123 (ran direct4x4)",
  ]);
});

Deno.test("gpu bench: the profile's largest ops and the autotune's choices as notes", () => {
  const stderr = [
    "matmul autotune: NVIDIA H100: tuned 3 shape classes in 1.2 s; choices NT:ll=nn_tiled_8x8",
    "bench: train_step ft f32 profile: 801.0 ms of GPU time in 970 dispatches",
    "     369.00 ms  46.1%   96×    3.844 ms  linearForward",
    "     176.00 ms  22.0%   96×    1.833 ms  linearBackward (dWeight)",
    "bench: train_step ft f32: 10.7 s",
  ].join("\n");
  assertEquals(profileNotes(stderr), [
    "matmul autotune: NVIDIA H100: tuned 3 shape classes in 1.2 s; choices NT:ll=nn_tiled_8x8",
    "train_step ft f32 profile: 801.0 ms of GPU time in 970 dispatches",
    "  369.00 ms 46.1% 96× 3.844 ms linearForward",
    "  176.00 ms 22.0% 96× 1.833 ms linearBackward (dWeight)",
  ]);
  assertEquals(profileNotes("bench: done"), []);
});

gpuTest("bench timing: timeOp on the GPU's clock times the submits' GPU spans", async (gpu) => {
  const t = createTensor(gpu, [100_003], "f32", "timed");
  // A profile attached meanwhile (bench/train_step.ts --profile) is not filled by it.
  const attached = profileDispatches(gpu)!;
  try {
    const timing = await timeOp(gpu, (rec) => fill(rec, t, 1.5), 3, {
      gpuClock: true,
      warmupS: 0, // not the first op's 3 s (the test below)
      submitTargetS: 0.005,
      budgetS: 0.05,
      minTimedS: 0.05,
    });
    assertEquals(attached.spans.length, 0);
    profileDispatches(gpu, false);
    assertEquals(timing.clock, "gpu");
    assert(Number.isFinite(timing.ms) && timing.ms > 0, `ms ${timing.ms}`);
    const wall = await timeOp(gpu, (rec) => fill(rec, t, 2), 1, {
      gpuClock: false,
      budgetS: 0.05,
      minTimedS: 0.05,
    });
    assertEquals(wall.clock, "wall");
    assertEquals((await t.download())[100_002], 2);
  } finally {
    profileDispatches(gpu, false);
    t.destroy();
  }
});

Deno.test("bench timing: warmupS keeps warming up, after R is chosen, for that long", async () => {
  let calls = 0;
  // Each submit "takes" 10 ms of host time and reports 1 ms per op.
  const batch = async (r: number) => {
    calls++;
    await new Promise((done) => setTimeout(done, 10));
    return 0.001 * r;
  };
  const plain = await measure(batch, 1, { submitTargetS: 0.001, budgetS: 0.001, minTimedS: 0 });
  const plainCalls = calls;
  calls = 0;
  const started = performance.now();
  const warm = await measure(batch, 1, {
    submitTargetS: 0.001,
    budgetS: 0.001,
    minTimedS: 0,
    warmupS: 0.2,
  });
  assert(performance.now() - started >= 200, "the warm-up lasted its 0.2 s");
  assert(warm.warmups >= plain.warmups + 5, `warm-ups ${warm.warmups} against ${plain.warmups}`);
  assertEquals(calls - warm.warmups, plainCalls - plain.warmups); // the same timed submits
});

Deno.test("bench timing: a first submit slowed by a pipeline's compile is not taken as heavy", async () => {
  // The first submit "compiles" for 0.2 s (heavy past heavyS 0.1); then 1 ms a submit + 1 ms an op.
  const calls: number[] = [];
  const batch = (r: number) => {
    calls.push(r);
    return (calls.length === 1 ? 0.2 : 0.001) + 0.001 * r;
  };
  const light = await measure(batch, 5, { heavyS: 0.1, submitTargetS: 0.05, budgetS: 0.5 });
  assert(light.perSubmit > 10, `R ${light.perSubmit}`);
  assert(Math.abs(light.ms - 1) < 0.1, `${light.ms} ms an op`);
  // An op heavy at its second submit too stays at R 1, and one heavy past doubt (ten times
  // heavyS) gets no second warm-up.
  const heavy = await measure(() => 0.3, 5, { heavyS: 0.1, minTimedS: 0.5, budgetS: 0.5 });
  assertEquals([heavy.perSubmit, heavy.warmups], [1, 2]);
  const huge = await measure(() => 2, 5, { heavyS: 0.1, minTimedS: 0.5, budgetS: 0.5 });
  assertEquals([huge.perSubmit, huge.warmups], [1, 1]);
});

Deno.test("gpu bench: a step's host share and its back-to-back time as a note", () => {
  const row: Row = {
    kernel: "train_step",
    batch: 32,
    ms: 600,
    host_ms: 150.04,
    pipelined_ms: 457.1,
  };
  assertEquals(
    stepTimeNote(row, "ft", "f32"),
    "train_step ft f32: the host records, encodes and submits a step in 150.0 ms of its " +
      "600.0 ms (the GPU starts on its first layers once they are recorded, while the host " +
      "records the rest); " +
      "back to back, as the training loop runs them, 457.1 ms a step (70.0 samples/s)",
  );
  const { pipelined_ms: _, ...older } = row;
  assert(!stepTimeNote(older, "lora", "f16").includes("back to back"));
});

gpuTest("bench timing: no submit times more dispatches than a query set holds", async (gpu) => {
  const t = createTensor(gpu, [64], "f32", "tiny");
  try {
    // 700 launches an op: at most 2 ops a timed submit (1,400 dispatches).
    const many = (rec: Recorder) => {
      for (let i = 0; i < 700; i++) fill(rec, t, i);
    };
    const timing = await timeOp(gpu, many, 2, {
      gpuClock: true,
      warmupS: 0,
      submitTargetS: 10,
      budgetS: 0.05,
      minTimedS: 0.05,
    });
    assertEquals(timing.clock, "gpu");
    assert(timing.perSubmit <= Math.floor(TIMED_DISPATCHES / 700), `R ${timing.perSubmit}`);
    const rec = new Recorder(gpu);
    for (let i = 0; i <= TIMED_DISPATCHES; i++) fill(rec, t, i);
    const message = await rec.submitTimed().then(() => "no error", (e) => String(e));
    assert(message.includes(`${TIMED_DISPATCHES + 1} dispatches, more than`), message);
    assertEquals(rec.length, 0);
  } finally {
    t.destroy();
  }
});

/** Runs a bench script (`bench/<name>.ts`) with `args`; its exit code and output. */
async function benchCli(
  script: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../bench/${script}`, import.meta.url).pathname, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("bench CLIs: --help and -h print the usage and exit 0; a bad flag is one line with it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-bench-cli-" });
  try {
    const out = `${dir}/out`;
    // bench:gpu: its help exactly, wherever the flag is, and nothing made (not even --out).
    for (const args of [["--help"], ["-h"], ["--small", "--out", out, "--help"]]) {
      const r = await benchCli("gpu.ts", args);
      assertEquals([r.code, r.stdout, r.stderr], [0, GPU_HELP + "\n", ""], args.join(" "));
    }
    await assertRejects(() => Deno.stat(out), Deno.errors.NotFound);
    for (const flag of ["out", "small", "budget", "python", "no-tests", "print-files"]) {
      assert(GPU_HELP.includes(`\n  --${flag} `), `bench:gpu --help: --${flag} is not listed`);
    }
    const bad = await benchCli("gpu.ts", ["--small", "--bogus"]);
    assertEquals(
      [bad.code, bad.stdout, bad.stderr],
      [2, "", `bench:gpu: Unknown option '--bogus' (${GPU_USAGE})\n`],
    );
    // An --out holding anything (an earlier report, one's own logs/) is left as it was: the run
    // would rewrite the report, and pack and remove a logs/ folder that is not its own.
    await Deno.mkdir(`${out}/logs`, { recursive: true });
    await Deno.writeTextFile(`${out}/logs/mine.txt`, "mine");
    const taken = await benchCli("gpu.ts", ["--small", "--no-tests", "--out", out]);
    assertEquals(
      [taken.code, taken.stderr],
      [
        2,
        `bench:gpu: --out ${out} holds logs already (an earlier report?): name an empty or ` +
        "new folder, or move that one away\n",
      ],
    );
    assertEquals(await Deno.readTextFile(`${out}/logs/mine.txt`), "mine");
    assertEquals([...Deno.readDirSync(out)].map((e) => e.name), ["logs"]);
    // bench: the usage and every flag (its module is not imported here: it would run).
    for (const args of [["--help"], ["-h"], ["--reps", "1", "--only", "fill", "--help"]]) {
      const r = await benchCli("kernels.ts", args);
      assertEquals([r.code, r.stderr], [0, ""], args.join(" "));
      assert(r.stdout.startsWith("usage: deno task bench [--json] "), r.stdout);
      for (
        const flag of [
          "json",
          "reps",
          "no-reference",
          "only",
          "layers",
          "modes",
          "precision",
          "gemm-shapes",
          "profile",
          "no-autotune",
          "retune",
          "tune-cache",
          "help",
        ]
      ) {
        assert(new RegExp(`\\n  (-h, )?--${flag} `).test(r.stdout), `bench --help: --${flag}`);
      }
    }
    // A bad value too, as train.ts's: exit 2, before anything runs.
    const value = await benchCli("gpu.ts", ["--budget", "soon"]);
    assertEquals([value.code, value.stdout], [2, ""]);
    assert(value.stderr.startsWith('bench:gpu: --budget: expected whole seconds, got "soon"'));
    const reps = await benchCli("kernels.ts", ["--reps", "0"]);
    assertEquals([reps.code, reps.stdout], [2, ""]);
    const wrong = await benchCli("kernels.ts", ["--bogus"]);
    assertEquals([wrong.code, wrong.stdout], [2, ""]);
    const lines = wrong.stderr.trimEnd().split("\n");
    assertEquals(lines.length, 1, wrong.stderr);
    assert(
      lines[0].startsWith("bench: Unknown option '--bogus' (usage: deno task bench [--json] "),
      lines[0],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: a module that fails prints the rows measured before it; prefix's --seq is checked first", async () => {
  const failed = await benchCli("kernels.ts", [
    ...["--only", "fill,matmul", "--gemm-shapes", "8x8x8,40000x1024x8"],
    ...["--precision", "f32", "--no-reference", "--reps", "1", "--no-autotune"],
  ]);
  assertEquals(failed.code, 1, failed.stderr);
  assert(/\nfill +elements=/.test(failed.stdout), failed.stdout);
  const lines = failed.stderr.trim().split("\n");
  assert(/^bench: matmul failed; the \d+ rows measured before it are above$/.test(lines.at(-2)!));
  assert(lines.at(-1)!.includes("exceeds this adapter's storage binding limit"), lines.at(-1));
  // Only where the steps are timed: a --seq for other modules is theirs.
  const other = await benchCli("kernels.ts", [
    ...["--only", "fill", "--seq", "16", "--reps", "1", "--no-reference", "--json"],
  ]);
  assertEquals(other.code, 0, other.stderr);
  // Refused as typed, before the minutes of the modes ahead of prefix.
  const short = await benchCli("kernels.ts", ["--only", "train_step", "--seq", "16"]);
  assertEquals(
    [short.code, short.stdout, short.stderr],
    [
      2,
      "",
      "bench: --seq 16: mode prefix takes 16 of the positions, which leaves no tokens " +
      "(a longer --seq, or --modes without prefix)\n",
    ],
  );
});

Deno.test("bench:gpu: SIGTERM ends the running phase's process too, and the report says it is partial", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-bench-term-" });
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", new URL("../bench/gpu.ts", import.meta.url).pathname, "--small"],
        ...["--no-tests", "--python", `${dir}/no-python`, "--out", `${dir}/out`],
      ],
      env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    let said = "";
    const decoder = new TextDecoder();
    const reader = child.stderr.getReader();
    while (!said.includes("bench:gpu: ours-gemm: ")) {
      const { value, done } = await reader.read();
      if (done) break;
      said += decoder.decode(value, { stream: true });
    }
    child.kill("SIGTERM");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      said += decoder.decode(value, { stream: true });
    }
    assertEquals((await child.status).code, 143, said);
    assert(said.includes(`bench:gpu: stopped by SIGTERM; the partial report is in ${dir}/out`));
    const report = await Deno.readTextFile(`${dir}/out/gpu-bench.md`);
    assert(
      report.includes(
        "stopped by SIGTERM during the ours-gemm phase: this report is partial (the phases " +
          "after it did not run)",
      ),
      report,
    );
    // Its logs packed, as a finished run's are (the notes point into logs.tgz).
    assertEquals(
      [...Deno.readDirSync(`${dir}/out`)].map((e) => e.name).sort(),
      ["gpu-bench.md", "logs.tgz", "rows.jsonl"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bench: a GEMM row's ratio names the BLAS it was measured against", () => {
  const row: BenchRow = {
    kernel: "gemm",
    shape: "",
    product: "forward",
    m: 8,
    n: 4,
    k: 2,
    ms: 1,
    gflops: 2,
    per_submit: 1,
    timed_submits: 1,
    warmup_submits: 1,
  };
  const refs = [{ kernel: "gemm_reference", product: "forward", m: 8, n: 4, k: 2, gflops: 8 }];
  const plain = { ...row };
  addGemmRatios([plain], refs);
  assertEquals([plain.reference_gflops, plain.ratio, plain.reference_blas], [8, 0.25, undefined]);
  const named = { ...row };
  addGemmRatios([named], [{ ...refs[0], blas: "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3" }]);
  assertEquals(named.reference_blas, "/usr/lib/x86_64-linux-gnu/blas/libblas.so.3");
});
