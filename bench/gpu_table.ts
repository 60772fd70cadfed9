// The report of bench/gpu.ts: our rows (bench/kernels.ts --json) against PyTorch's on the same
// GPU (bench/torch_step.py), as ratios ours / PyTorch, with the goals of the GPU comparison:
// f32 GEMM ≥ 0.6 × cuBLAS fp32 (TF32 off); f32 training step ≥ 0.7 × PyTorch fp32; f16 training
// step ≥ 1.0 × PyTorch fp32; and, reported without a goal, f16 against bf16 autocast. "f16 math"
// rows (bench/precision.ts: f16 storage, products multiplied and summed in f16) beside the f16
// ones.
// Pure functions of the rows, so that tests can check them without a GPU.

/** One JSON row of either side. */
export type Row = Record<string, unknown>;

export const GOALS = { gemmF32: 0.6, stepF32: 0.7, stepF16: 1.0 } as const;

/** A test run of the correctness phase. */
export interface TestRun {
  name: string;
  passed: number;
  failed: number;
  /** Why the run gave no verdict (timed out, crashed), if it did not. */
  problem?: string;
}

export interface GpuReport {
  adapter: string;
  driver: string;
  features: string[];
  date: string;
  commit: string;
  /** "transformers 4.x, torch 2.x, attention sdpa" or why there is no reference. */
  reference: string;
  tests: TestRun[];
  /** Whether the f16 rows were measured, and why not. */
  f16: { on: boolean; why: string };
  shape: string;
  ours: Row[];
  torch: Row[];
  /** Phases that timed out or failed, and other facts the reader needs. */
  notes: string[];
}

const num = (x: unknown): number | undefined => (typeof x === "number" ? x : undefined);

function fmt(x: number | undefined, digits = 0): string {
  if (x === undefined || !Number.isFinite(x)) return "–";
  return x >= 100 ? x.toFixed(digits) : x.toPrecision(3);
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : a / b;
}

function fmtRatio(r: number | undefined, goal?: number): string {
  if (r === undefined) return "–";
  const text = r.toFixed(2);
  return goal === undefined ? text : `${text} ${r >= goal ? "✓" : "✗"}`;
}

function sameGemm(a: Row, b: Row): boolean {
  return a.m === b.m && a.n === b.n && a.k === b.k && a.product === b.product;
}

/** Our GEMM rate in `precision` and the reference's in `dtype` for each shape and product. */
function gemmPairs(ours: Row[], torch: Row[]) {
  const shapes = ours.filter((r) => r.kernel === "gemm" && r.precision === "f32");
  const extra = ours.filter((r) =>
    r.kernel === "gemm" && r.precision !== "f32" && !shapes.some((s) => sameGemm(s, r))
  );
  const rows = [...shapes];
  for (const r of extra) if (!rows.some((s) => sameGemm(s, r))) rows.push(r);
  return rows.map((row) => {
    const ourRate = (precision: string) =>
      num(
        ours.find((r) => r.kernel === "gemm" && r.precision === precision && sameGemm(r, row))
          ?.gflops,
      );
    const ref = (dtype: string) =>
      num(
        torch.find((r) => r.kernel === "gemm_reference" && r.dtype === dtype && sameGemm(r, row))
          ?.gflops,
      );
    return {
      row,
      f32: ourRate("f32"),
      f16: ourRate("f16"),
      f16math: ourRate("f16math"),
      fp32: ref("fp32"),
      fp16: ref("fp16"),
      bf16: ref("bf16"),
    };
  });
}

export function gemmTable(ours: Row[], torch: Row[]): string[] {
  const pairs = gemmPairs(ours, torch);
  if (pairs.length === 0) return ["No GEMM rows were measured."];
  const lines = [
    "| model | product | m × n × k | ours f32 | torch fp32 | f32 ratio (goal ≥ 0.6) | ours f16 | torch fp16 | f16 / fp16 | ours f16 math | f16 math / fp32 | torch bf16 |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const p of pairs) {
    const r = p.row;
    lines.push(
      `| ${r.model ?? ""} | ${r.product} | ${r.m} × ${r.n} × ${r.k} | ${fmt(p.f32)} | ${
        fmt(p.fp32)
      } | ${fmtRatio(ratio(p.f32, p.fp32), GOALS.gemmF32)} | ${fmt(p.f16)} | ${fmt(p.fp16)} | ${
        fmtRatio(ratio(p.f16, p.fp16))
      } | ${fmt(p.f16math)} | ${fmtRatio(ratio(p.f16math, p.fp32))} | ${fmt(p.bf16)} |`,
    );
  }
  return lines;
}

const STEP_MODES = ["ft", "bitfit", "lora"] as const;

function stepOf(rows: Row[], kernel: string, mode: string, key: string, value: string) {
  return rows.find((r) => r.kernel === kernel && r.mode === mode && r[key] === value);
}

export function stepTable(ours: Row[], torch: Row[]): string[] {
  const lines = [
    "| mode | ours f32 | ours f16 | ours f16 math | torch fp32 | torch bf16 autocast | f32 / fp32 (goal ≥ 0.7) | f16 / fp32 (goal ≥ 1.0) | f16 math / fp32 (goal ≥ 1.0) | f16 / bf16 | f16 math / bf16 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const mode of STEP_MODES) {
    const o32 = stepOf(ours, "train_step", mode, "precision", "f32");
    const o16 = stepOf(ours, "train_step", mode, "precision", "f16");
    const oh = stepOf(ours, "train_step", mode, "precision", "f16math");
    const t32 = stepOf(torch, "train_step_reference", mode, "amp", "fp32");
    const tbf = stepOf(torch, "train_step_reference", mode, "amp", "bf16");
    if (!o32 && !o16 && !oh && !t32 && !tbf) continue;
    const rate = (r: Row | undefined) => num(r?.samples_per_s);
    lines.push(
      `| ${mode} | ${fmt(rate(o32))} | ${fmt(rate(o16))} | ${fmt(rate(oh))} | ${fmt(rate(t32))} | ${
        fmt(rate(tbf))
      } | ${fmtRatio(ratio(rate(o32), rate(t32)), GOALS.stepF32)} | ${
        fmtRatio(ratio(rate(o16), rate(t32)), GOALS.stepF16)
      } | ${fmtRatio(ratio(rate(oh), rate(t32)), GOALS.stepF16)} | ${
        fmtRatio(ratio(rate(o16), rate(tbf)))
      } | ${fmtRatio(ratio(rate(oh), rate(tbf)))} |`,
    );
  }
  return lines.length > 2 ? lines : ["No training-step rows were measured."];
}

/**
 * Our f16 against our f32 on the same weights, batch and dropout masks: the warm-up step's loss
 * and gradient norm. With random weights the logits are near 0 and the loss near ln 2 whatever
 * the precision, so the gradient norm is the telling number: a relative gap over `tolerance`
 * means the f16 path computes something else on this adapter.
 */
export function f16Check(ours: Row[], tolerance = 0.01): string[] {
  const out: string[] = [];
  for (
    const [precision, mode] of ["f16", "f16math"].flatMap((p) => STEP_MODES.map((m) => [p, m]))
  ) {
    const a = stepOf(ours, "train_step", mode, "precision", "f32");
    const b = stepOf(ours, "train_step", mode, "precision", precision);
    if (!a || !b) continue;
    const f16 = precision === "f16" ? "f16" : "f16 math";
    const [la, lb] = [num(a.first_loss), num(b.first_loss)];
    const [ga, gb] = [num(a.first_grad_norm), num(b.first_grad_norm)];
    if (la === undefined || lb === undefined) continue;
    const loss = `loss ${lb.toFixed(5)} vs ${la.toFixed(5)}`;
    if (ga === undefined || gb === undefined) {
      out.push(
        `${mode}: ${f16} ${loss}; gradient norm not finite in ${f16} (the step was skipped)`,
      );
      continue;
    }
    const gap = Math.abs(gb - ga) / Math.max(Math.abs(ga), 1e-30);
    out.push(
      `${mode}: ${f16} against f32 at the first step: ${loss}, gradient norm ${
        gb.toPrecision(5)
      } vs ${ga.toPrecision(5)} (relative gap ${gap.toPrecision(2)}: ${
        gap <= tolerance ? "agrees" : `DIFFERS by more than ${tolerance}`
      })`,
    );
  }
  return out;
}

/** One line per goal: met or not, with the worst ratio. */
export function goalLines(ours: Row[], torch: Row[]): string[] {
  const lines: string[] = [];
  const gemm = gemmPairs(ours, torch).map((p) => ratio(p.f32, p.fp32)).filter((r) =>
    r !== undefined
  ) as number[];
  if (gemm.length > 0) {
    const worst = Math.min(...gemm);
    const met = gemm.filter((r) => r >= GOALS.gemmF32).length;
    lines.push(
      `f32 GEMM ≥ ${GOALS.gemmF32} × cuBLAS fp32: ${
        met === gemm.length ? "met" : "NOT met"
      } (${met} of ${gemm.length} products; lowest ratio ${worst.toFixed(2)})`,
    );
  }
  const step = (precision: string, amp: string) => {
    const o = num(stepOf(ours, "train_step", "ft", "precision", precision)?.samples_per_s);
    const t = num(stepOf(torch, "train_step_reference", "ft", "amp", amp)?.samples_per_s);
    return ratio(o, t);
  };
  const steps = [["f32", GOALS.stepF32], ["f16", GOALS.stepF16], [
    "f16math",
    GOALS.stepF16,
  ]] as const;
  for (const [precision, goal] of steps) {
    const r = step(precision, "fp32");
    if (r === undefined) continue;
    lines.push(
      `${
        precision === "f16math" ? "f16 math" : precision
      } training step (ft) ≥ ${goal} × PyTorch fp32: ${r >= goal ? "met" : "NOT met"} (${
        r.toFixed(2)
      })`,
    );
  }
  for (const precision of ["f16", "f16math"]) {
    const rbf = step(precision, "bf16");
    if (rbf === undefined) continue;
    lines.push(
      `${precision === "f16math" ? "f16 math" : precision} training step (ft) against PyTorch ` +
        `bf16 autocast: ${rbf.toFixed(2)} (no goal)`,
    );
  }
  return lines;
}

export function reportMarkdown(r: GpuReport): string {
  const tests = r.tests.map((t) =>
    `- ${t.name}: ${t.problem ?? `${t.passed} passed, ${t.failed} failed`}`
  );
  return [
    "# GPU comparison: ours (Deno WebGPU) / PyTorch, same GPU, same call",
    "",
    `- adapter: ${r.adapter}`,
    `- driver: ${r.driver}`,
    `- features: ${r.features.join(", ") || "none"}`,
    `- date: ${r.date}; commit: ${r.commit}`,
    `- PyTorch: ${r.reference}`,
    `- model shape of the training steps: ${r.shape}`,
    "",
    "## Correctness on this adapter",
    ...tests,
    `- f16: ${r.f16.on ? "on" : "off"} (${r.f16.why})`,
    ...f16Check(r.ours).map((l) => `- ${l}`),
    "",
    "## Goals",
    ...goalLines(r.ours, r.torch).map((l) => `- ${l}`),
    "",
    "## GEMM, GFLOP/s (C[m,n] = A[m,k]·B[k,n], 2·m·n·k flops; torch.matmul: cuBLAS on a GPU, TF32 off for fp32)",
    ...gemmTable(r.ours, r.torch),
    "",
    "## Training step, samples/s",
    ...stepTable(r.ours, r.torch),
    ...(r.notes.length ? ["", "## Notes", ...r.notes.map((n) => `- ${n}`)] : []),
    "",
  ].join("\n");
}
