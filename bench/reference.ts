// The CPU references measured in the same run (bench/openblas_gemm.py: numpy's float32 GEMM
// through OpenBLAS; bench/torch_cpu_step.py: PyTorch's CPU training step), run as subprocesses of
// Debian's /usr/bin/python3, and the ratios (ours / reference) they give the bench rows.
//
// A missing python, numpy or torch, or a failing script, is a note on stderr and no reference;
// never a failed bench. The scripts' stdout is JSON lines; their stderr goes to ours.

import type { TrainStepShape } from "./train_step.ts";
import type { BenchRow } from "./timing.ts";

export const PYTHON = "/usr/bin/python3";

/** One JSON row a reference script printed. */
export type ReferenceRow = Record<string, string | number | unknown>;

/** Runs `script` (relative to the repository root, where `deno task` runs) with `args`. */
async function runScript(script: string, args: string[]): Promise<ReferenceRow[] | null> {
  try {
    await Deno.stat(PYTHON);
  } catch {
    console.error(`bench: no ${PYTHON}: ${script} skipped (no reference, no ratios)`);
    return null;
  }
  // OpenBLAS reads these when it loads; the machine notes say they may be set here and select a
  // slow kernel, so the reference runs without them (the scripts drop them as well).
  const env = Deno.env.toObject();
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const start = performance.now();
  console.error(`bench: reference ${script} ${args.join(" ")}...`);
  try {
    const out = await new Deno.Command(PYTHON, {
      args: [script, ...args],
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!out.success) {
      console.error(`bench: ${script} failed (exit ${out.code}): no reference from it`);
      return null;
    }
    const rows = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.trim())
      .map((l) => JSON.parse(l) as ReferenceRow);
    const seconds = ((performance.now() - start) / 1000).toFixed(1);
    console.error(`bench: reference ${script}: ${rows.length} rows in ${seconds} s`);
    return rows;
  } catch (e) {
    console.error(`bench: ${script}: ${(e as Error).message}: no reference from it`);
    return null;
  }
}

/** numpy/OpenBLAS GEMM rows at the linear-layer shapes [rows, in, out]. */
export function referenceGemm(
  shapes: readonly [number, number, number][],
  reps: number,
): Promise<ReferenceRow[] | null> {
  const spec = shapes.map((s) => s.join("x")).join(",");
  return runScript("bench/openblas_gemm.py", ["--shapes", spec, "--reps", String(reps)]);
}

/** PyTorch's CPU full fine-tuning step at `shape` (one row). */
export function referenceTrainStep(
  shape: TrainStepShape,
  reps: number,
): Promise<ReferenceRow[] | null> {
  const args = [
    ["--layers", shape.layers],
    ["--hidden", shape.hidden],
    ["--heads", shape.heads],
    ["--intermediate", shape.intermediate],
    ["--vocab", shape.vocab],
    ["--max-positions", shape.maxPositions],
    ["--batch", shape.batch],
    ["--seq", shape.seq],
    ["--reps", reps],
  ].flatMap(([k, v]) => [String(k), String(v)]);
  return runScript("bench/torch_cpu_step.py", args);
}

/**
 * Adds `reference_gflops`, `ratio` and `reference_blas` (the library numpy loaded: OpenBLAS, or the
 * reference BLAS, about 12× slower, where OpenBLAS is not installed) to GEMM rows, matched on m,
 * n, k and product.
 */
export function addGemmRatios(rows: BenchRow[], refs: ReferenceRow[] | null): void {
  if (!refs) return;
  for (const row of rows) {
    if (row.kernel !== "gemm" || row.gflops === undefined) continue;
    const ref = refs.find((r) =>
      r.m === row.m && r.n === row.n && r.k === row.k && r.product === row.product
    );
    if (!ref || typeof ref.gflops !== "number") continue;
    row.reference_gflops = ref.gflops;
    row.ratio = row.gflops / ref.gflops;
    if (typeof ref.blas === "string") row.reference_blas = ref.blas;
  }
}

/**
 * Adds `reference_samples_per_s`, `reference_ms` and `ratio` (samples per second, ours / torch)
 * to the `ft` train_step row of the same shape.
 */
export function addTrainStepRatios(rows: BenchRow[], refs: ReferenceRow[] | null): void {
  if (!refs) return;
  for (const row of rows) {
    if (row.kernel !== "train_step" || row.mode !== "ft") continue;
    const ref = refs.find((r) =>
      ["layers", "hidden", "heads", "intermediate", "vocab", "batch", "seq"].every((k) =>
        r[k] === row[k]
      )
    );
    if (!ref || typeof ref.samples_per_s !== "number") continue;
    row.reference_samples_per_s = ref.samples_per_s;
    row.reference_ms = ref.ms as number;
    row.ratio = (row.samples_per_s as number) / ref.samples_per_s;
  }
}
