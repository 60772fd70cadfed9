// Per-adapter choice of the GEMM variant: a short timing of candidate variants on one
// representative product per shape class, remembered per device (in memory) and per adapter
// description (in a JSON file), and installed into `matmul` through `setMatmulTuner`.
//
// `matmul` records synchronously and cannot time anything, so tuning is an explicit async step a
// program runs once after acquiring its device (`autotuneForProgram`); until then, and for every
// class the tune did not cover, `matmul` uses its built-in heuristic.
//
// Determinism. The project promises that the same seed on the same device gives the same result,
// and a timing is noise: two runs may time the candidates in a different order. Three guards keep
// results independent of the timing:
// - Each variant sums every output over k in increasing order with the same epilogue, and on the
//   adapters we test every variant's output is bitwise identical to every other's
//   (tests/matmul_variants_test.ts asserts it, so a variant that breaks it fails the suite). The
//   f16-arithmetic kernels sum otherwise, the same way among themselves
//   (tests/matmul_f16_math_test.ts): they are candidates only for their own classes ("h").
// - The tune does not rely on that alone: a candidate whose result on the tuning product is not
//   bitwise identical to the heuristic's (the variant `matmul` would run untuned) is never chosen
//   (`pickTunedVariant`). On an adapter whose compiler rounds some variants differently (fused
//   multiply-adds in one kernel, not in another) the tune can only pick among the ones that
//   round exactly as the untuned run does, so tuning never changes a result.
// - A class, once tuned, is written to the cache file and reused as is by every later run (no
//   re-timing, so no flip-flopping between near-equal variants); `--retune` times it again, and a
//   change of the kernel set (`MATMUL_KERNELS_VERSION`) invalidates it. A challenger must also
//   beat the heuristic's variant by `margin` (5%), so a near-tie keeps the built-in choice.

import { basename, dirname, isAbsolute, join } from "node:path";
import { removeStaleTemporaries, writeJsonAtomic } from "../model/atomic_write.ts";
import { isTrue, userCacheBase } from "../model/env.ts";
import type { Gpu } from "./device.ts";
import {
  F16_MATH_VARIANTS,
  isF16MathVariant,
  matmul,
  MATMUL_VARIANTS,
  type MatmulArgs,
  matmulKernelSources,
  matmulLauncherSources,
  type MatmulVariant,
  NN_COPY,
  NN_KERNELS,
  setMatmulTuner,
  untransposedKernel,
  variantFits,
} from "./matmul.ts";
import { gpuClockByDefault, Recorder } from "./recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "./tensor.ts";
import { transposeKernelSources } from "./transpose.ts";

/** A product C[m,n] = op(A)·op(B) with op(A) m×k and op(B) k×n. */
export interface TuneShape {
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
  /**
   * Products of this shape in one batched call (attention's per-head products); default 1. A
   * batched call is a class of its own (see `matmulShapeClass`).
   */
  count?: number;
  /**
   * The product multiplies in f16 (matmul's `f16Math`): a class of its own ("h" in front), timed
   * with f16 operands among `F16_MATH_VARIANTS`; tuned on GPUs only. Default false.
   */
  f16Math?: boolean;
}

export interface AutotuneOptions {
  /**
   * Products whose shape classes to tune (each class is timed once, on its representative
   * product, see `representativeShape`); default: the three products of a 512-row, 256→1024
   * linear layer.
   */
  shapes?: TuneShape[];
  /** Variants tried besides the heuristic's; default: `defaultCandidates`. */
  candidates?: MatmulVariant[];
  /** Time budget per candidate and class in milliseconds (at least one timed run); default 100. */
  budgetMs?: number;
  /** Timed runs per candidate at most (interleaved rounds; the fastest counts); default 2. */
  rounds?: number;
  /** A challenger must be this much faster than the heuristic's variant; default 0.05. */
  margin?: number;
  /** JSON cache file (keyed by adapter description); default: none (memory only). */
  cacheFile?: string;
  /** Tune the classes of batched products too (`count` > 1); default: on GPUs, not CPUs. */
  batched?: boolean;
  /**
   * Tune the classes of f16-arithmetic products too (`TuneShape.f16Math`); default: on GPUs, not
   * CPUs (which emulate f16 arithmetic).
   */
  f16Math?: boolean;
  /** Time the classes again even when memory or the cache file knows them. */
  retune?: boolean;
  /** One-line warnings (a corrupt or unwritable cache file); default: console.error. */
  warn?: (line: string) => void;
}

/** Choices by shape class, for one adapter. */
export type TuneTable = Record<string, MatmulVariant>;

/** What the tune of one class measured. */
export interface ClassTune {
  class: string;
  /** The product timed. */
  shape: Required<TuneShape>;
  /** The variant `matmul` runs for it untuned. */
  heuristic: MatmulVariant;
  chosen: MatmulVariant;
  /** Fastest timed run of each candidate that was timed, in milliseconds (submit included). */
  ms: Partial<Record<MatmulVariant, number>>;
  /** Candidates whose result differed from the heuristic's, bitwise: never chosen. */
  differs: MatmulVariant[];
}

export interface TuneResult {
  /** Every choice installed for the device (tuned now, or from memory or the cache file). */
  table: TuneTable;
  /** The classes timed by this call. */
  tuned: ClassTune[];
  /** Classes requested that came from the cache file / this process's memory. */
  fromFile: string[];
  fromMemory: string[];
  /** Wall time of the call, in seconds. */
  seconds: number;
  /** The cache file read and (when something was tuned) written, if any. */
  cacheFile?: string;
  /** Whether the cache file was written. */
  saved: boolean;
}

/**
 * The size each class is timed at (a typical member, a multiple of 4) and the timed k (the k
 * loop's length changes little between tiles; more only costs time). On a CPU adapter small:
 * every timed run costs real time there. On a GPU the large class is timed large enough to fill
 * the card (a 512×512 output is 16 workgroups of the 128×128 tiled kernel, 64 of vec4_8x8 (64×64
 * a workgroup): at that size the timing would favour the small tiles).
 */
const TUNE_SIZES = {
  cpu: { class: { t: 8, s: 32, m: 256, l: 512 }, k: 256 },
  gpu: { class: { t: 8, s: 32, m: 256, l: 2048 }, k: 1024 },
} as const;

/**
 * The same for a batched class (tuned on GPUs only unless asked, see `tuneClasses`): attention's
 * per-head products, RoBERTa-large's at 32 × 128 tokens being 512 products of 128 × 128 (or × 64)
 * over k = 64 or 128, timed on a GPU as 256 products over k = 64; on a CPU adapter (tests) small.
 */
const BATCHED_TUNE_SIZES = {
  cpu: { class: { t: 8, s: 32, m: 64, l: 512 }, k: 16, count: 4 },
  gpu: { class: { t: 8, s: 32, m: 128, l: 512 }, k: 64, count: 256 },
} as const;

/**
 * Version of the kernel set the choices were made for: a cache entry of another version is stale
 * and tuned again. It covers the variant list (a new variant invalidates old entries), the
 * launcher's source, every variant's WGSL, the timed sizes and this module's class scheme
 * (TUNE_FORMAT: bump it when the classes change).
 */
// 3: products timed on the GPU's clock where there is one (runProduct).
// 4: batched products are classes of their own ("b" before the transposes).
// 5: f16-arithmetic products are classes of their own ("h" in front).
const TUNE_FORMAT = "5";
export const MATMUL_KERNELS_VERSION: string = fnv1a(
  [
    TUNE_FORMAT,
    JSON.stringify(TUNE_SIZES),
    JSON.stringify(BATCHED_TUNE_SIZES),
    [...MATMUL_VARIANTS, ...F16_MATH_VARIANTS].join(","),
    matmulLauncherSources(),
    matmulKernelSources(),
    transposeKernelSources(),
  ].join("\n"),
);

function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

/** The key of the kernel-set version inside a cache entry (beside the class keys). */
const VERSION_KEY = "kernels";

/**
 * Size class of one output dimension: t < 16 ≤ s < 64 ≤ m < 512 ≤ l. The first two bounds are
 * where the heuristic changes tiles; m and l separate the modest from the large products.
 */
function sizeClass(x: number): "t" | "s" | "m" | "l" {
  return x < 16 ? "t" : x < 64 ? "s" : x < 512 ? "m" : "l";
}

/**
 * The shape class of a product: its transposes and the size classes of its output's rows and
 * columns (k does not enter: the tiles differ in how they cover the output), with a "b" in front
 * for a batched call of several products (`count` > 1): many small products fill a GPU as one
 * large one does not, so they may want other tiles; and an "h" before that for a product in f16
 * arithmetic (`f16Math`), whose kernels are others. The signature keeps `k` so that it matches
 * `MatmulTuner`.
 */
export function matmulShapeClass(
  m: number,
  n: number,
  _k: number,
  transA: boolean,
  transB: boolean,
  count = 1,
  f16Math = false,
): string {
  return `${f16Math ? "h" : ""}${count > 1 ? "b" : ""}${transA ? "T" : "N"}${transB ? "T" : "N"}:` +
    `${sizeClass(m)}${sizeClass(n)}`;
}

/**
 * The product a class is timed on: fixed per class and kind of adapter (CPU or GPU, see
 * TUNE_SIZES; not taken from the program that asked), so that a cached choice does not depend on
 * which program tuned first; all dimensions multiples of 4, so that the vec4 and tiled variants
 * really run (a misaligned product runs `direct4x4` for a vec4 choice, scalar staging for a tiled
 * one).
 */
export function representativeShape(s: TuneShape, onCpu = true): Required<TuneShape> {
  const kind = onCpu ? "cpu" : "gpu";
  const batched = (s.count ?? 1) > 1;
  const sizes = batched ? BATCHED_TUNE_SIZES[kind] : TUNE_SIZES[kind];
  return {
    m: sizes.class[sizeClass(s.m)],
    n: sizes.class[sizeClass(s.n)],
    k: sizes.k,
    transA: s.transA ?? false,
    transB: s.transB ?? false,
    count: batched ? BATCHED_TUNE_SIZES[kind].count : 1,
    f16Math: s.f16Math ?? false,
  };
}

/**
 * The classes of `shapes` to tune on this kind of adapter, each with the product it is timed on;
 * batched classes only with `batched`, f16-arithmetic ones only with `f16Math`. By default a CPU
 * adapter tunes neither: its candidates are the four vec4 kernels, which the heuristic already
 * chooses between by shape, and what tuning batched products is for is the tiled kernels (GPU-only
 * candidates) on attention's many small products, which the heuristic's barrier-free kernels read
 * uncoalesced on a GPU; a CPU emulates f16 arithmetic, so its kernels are not worth timing there.
 */
function tuneClasses(
  shapes: readonly TuneShape[],
  onCpu: boolean,
  batched = !onCpu,
  f16Math = !onCpu,
): Map<string, Required<TuneShape>> {
  const wanted = new Map<string, Required<TuneShape>>();
  for (const s of shapes) {
    if (s.m <= 0 || s.n <= 0 || (!batched && (s.count ?? 1) > 1)) continue;
    if (s.f16Math && !f16Math) continue;
    const cls = matmulShapeClass(
      s.m,
      s.n,
      s.k,
      s.transA ?? false,
      s.transB ?? false,
      s.count,
      s.f16Math,
    );
    if (!wanted.has(cls)) wanted.set(cls, representativeShape(s, onCpu));
  }
  return wanted;
}

const DEFAULT_SHAPES: TuneShape[] = [
  { m: 512, n: 1024, k: 256, transB: true }, // forward X·Wᵀ
  { m: 512, n: 256, k: 1024 }, // dX = dY·W
  { m: 1024, n: 256, k: 512, transA: true }, // dW = dYᵀ·X
];
/**
 * The variants timed besides the heuristic's. The shared-memory ones (tile16, tile64) are 4-20×
 * slower on lavapipe and would cost seconds to time there, and the heuristic never picks them;
 * the block-tiled ones (tiled_4x4 … tiled_4x8dk) are timed on GPUs only, where coalesced loads
 * matter (on lavapipe they run at 0.5-0.8× the vec4 kernels: bench notes in BENCHMARKS.md), and
 * so are the `nn_` ones (a transposed operand copied untransposed first; on lavapipe the
 * transposed products are not the slow ones). A product without transposes times no `nn_`
 * variant: it would run its kernel as is. The f16-arithmetic kernels (GPUs only) are timed for
 * the f16-arithmetic classes alone.
 */
export function defaultCandidates(onCpu: boolean): MatmulVariant[] {
  // The kernels an nn_ variant may run: the four vec4 ones and every tiled one.
  const kernels: MatmulVariant[] = [...NN_KERNELS];
  if (onCpu) return kernels.filter((v) => v.startsWith("vec4"));
  return [...kernels, ...kernels.map((v) => `nn_${v}` as MatmulVariant), ...F16_MATH_VARIANTS];
}

/**
 * The products of linear layers y = x·Wᵀ (+ b) with `rows` rows: the forward X·Wᵀ and, with
 * `backward`, dX = dY·W and dW = dYᵀ·X (in matmul's m, n, k terms); with `f16Math`, as products
 * in f16 arithmetic.
 */
export function linearTuneShapes(
  rows: number,
  layers: readonly (readonly [inF: number, outF: number])[],
  backward: boolean,
  f16Math = false,
): TuneShape[] {
  const out: TuneShape[] = [];
  const half = f16Math ? { f16Math } : {};
  for (const [inF, outF] of layers) {
    out.push({ m: rows, n: outF, k: inF, transB: true, ...half });
    if (backward) {
      out.push({ m: rows, n: inF, k: outF, ...half });
      out.push({ m: outF, n: inF, k: rows, transA: true, ...half });
    }
  }
  return out;
}

/**
 * Attention's per-head products (kernels/attention.ts, not flash attention) over `sequences`
 * sequences of `seq` tokens with `heads` heads of `headDim`: scores q·kᵀ and context P·v, and
 * with `backward` dV = Pᵀ·dC, dP = dC·vᵀ, dQ = dS·k, dK = dSᵀ·q; one product per sequence and
 * head, in one batched call each; with `f16Math`, as products in f16 arithmetic.
 */
export function attentionTuneShapes(
  sequences: number,
  seq: number,
  heads: number,
  headDim: number,
  backward: boolean,
  f16Math = false,
): TuneShape[] {
  const count = sequences * heads;
  const out: TuneShape[] = [
    { m: seq, n: seq, k: headDim, transB: true, count },
    { m: seq, n: headDim, k: seq, count },
  ];
  if (backward) {
    out.push({ m: seq, n: headDim, k: seq, transA: true, count });
    out.push({ m: seq, n: seq, k: headDim, transB: true, count });
    out.push({ m: seq, n: headDim, k: seq, count });
    out.push({ m: seq, n: headDim, k: seq, transA: true, count });
  }
  return f16Math ? out.map((s) => ({ ...s, f16Math })) : out;
}

/**
 * Whether a program's product is worth tuning: an output of at least 64×64 (smaller ones are over
 * before a submit's fixed cost is, so their timing could not tell the variants apart) whose
 * operands the vec4 variants can read (k and the stored rows multiples of 4; otherwise a vec4
 * choice runs `direct4x4`). A batched product (attention's, over a batch's longest row, which
 * need not be a multiple of 4) is worth it either way: its class is timed on an aligned product,
 * and a tiled choice stages misaligned operands with scalar loads.
 */
export function worthTuning(s: TuneShape): boolean {
  const rowA = s.transA ? s.m : s.k;
  const rowB = s.transB ? s.k : s.n;
  if (s.m < 64 || s.n < 64 || s.k < 4) return false;
  return (s.count ?? 1) > 1 || (s.k % 4 === 0 && rowA % 4 === 0 && rowB % 4 === 0);
}

/**
 * The choice among the measured candidates: the fastest whose result was bitwise identical to
 * the heuristic's, if it beats the heuristic's own variant by `margin`; else the heuristic's.
 * A candidate that differs bitwise is never chosen, however fast: the choice must not change
 * results.
 */
export function pickTunedVariant(
  heuristic: MatmulVariant,
  measured: readonly { variant: MatmulVariant; ms: number; sameBits: boolean }[],
  margin = 0.05,
): MatmulVariant {
  const own = measured.find((x) => x.variant === heuristic)?.ms ?? Infinity;
  let best: MatmulVariant = heuristic;
  let bestMs = own * (1 - margin);
  for (const x of measured) {
    if (x.variant === heuristic || !x.sameBits || !(x.ms < bestMs)) continue;
    [best, bestMs] = [x.variant, x.ms];
  }
  return best;
}

/** Records what `record` launches into a recorder that submits nothing; returns the pipelines. */
class ProbeRecorder extends Recorder {
  /** Each dispatch's label (the op) and its pipeline's. */
  readonly dispatches: { op: string; pipeline: string }[] = [];
  override dispatch(op: string, pipeline: GPUComputePipeline): void {
    this.dispatches.push({ op, pipeline: pipeline.label });
  }
}

/**
 * The matmul variants that `record` would launch on `gpu` now (with the installed tuner and the
 * alignment fallback), in order; nothing is submitted. Read off the pipelines' labels
 * (`matmul_<variant>[_<transposes>]`), so it names what really runs.
 */
export function matmulVariantsUsed(gpu: Gpu, record: (rec: Recorder) => void): MatmulVariant[] {
  const probe = new ProbeRecorder(gpu);
  record(probe);
  const found: MatmulVariant[] = [];
  // An nn_ variant's copies ("<op> nn_ copy of A") come just before its product's dispatches
  // ("<op>": one, or one per k-slice).
  let copiedFor: string | undefined;
  for (const { op, pipeline: label } of probe.dispatches) {
    const at = op.lastIndexOf(` ${NN_COPY} `);
    if (at >= 0) {
      copiedFor = op.slice(0, at);
      continue;
    }
    if (op !== copiedFor) copiedFor = undefined;
    // The longest variant name the label starts with, followed by its end or "_".
    let best: MatmulVariant | undefined;
    for (const v of [...MATMUL_VARIANTS, ...F16_MATH_VARIANTS]) {
      const head = `matmul_${v}`;
      const rest = label.slice(head.length);
      if (label.startsWith(head) && (rest === "" || rest.startsWith("_"))) {
        if (!best || v.length > best.length) best = v;
      }
    }
    if (best) found.push(copiedFor !== undefined ? `nn_${best}` as MatmulVariant : best);
  }
  return found;
}

/** Deterministic values in [-1, 1) with varied low bits, so that rounding differences show. */
function pseudoRandom(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = a / 2147483648 - 1;
  }
  return out;
}

/**
 * Milliseconds of one submit of `reps` copies of the product: on a GPU with timestamp queries,
 * not a CPU one (`gpuClockByDefault`), the GPU's span from the first dispatch's start to the
 * last's end; otherwise until the GPU finished on the host's clock, with the submit's fixed cost
 * in it (about 12 ms on lavapipe: a share that `reps` has to make small).
 */
async function runProduct(gpu: Gpu, args: MatmulArgs, reps = 1): Promise<number> {
  const rec = new Recorder(gpu);
  for (let i = 0; i < reps; i++) matmul(rec, args);
  if (gpuClockByDefault(gpu)) return (await rec.submitTimed()) / 1e6;
  const t0 = performance.now();
  await rec.submit();
  await gpu.device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

async function resultBits(gpu: Gpu, args: MatmulArgs): Promise<Uint32Array> {
  await runProduct(gpu, args);
  const values = await args.c.download();
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

function sameBits(x: Uint32Array, y: Uint32Array): boolean {
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** A timed submit should last about this long (milliseconds)... */
const SUBMIT_TARGET_MS = 20;
/** ...with at most this many products in it. */
const MAX_REPS = 64;
/** A candidate this much slower than the fastest after a round gets no further rounds. */
const DROP_RATIO = 1.3;

/** Times the candidates on one class's product. The tuner must be uninstalled meanwhile. */
async function tuneClass(
  gpu: Gpu,
  cls: string,
  shape: Required<TuneShape>,
  candidates: readonly MatmulVariant[],
  budgetMs: number,
  rounds: number,
  margin: number,
): Promise<ClassTune> {
  const { m, n, k, transA, transB, count, f16Math } = shape;
  const tensors: Tensor[] = [];
  const keep = <T extends Tensor>(t: T) => (tensors.push(t), t);
  try {
    // [rows, cols] as stored (turned round when transposed), behind the batch's count if any.
    const stored = (rows: number, cols: number, trans: boolean) => {
      const matrix = trans ? [cols, rows] : [rows, cols];
      return count > 1 ? [count, ...matrix] : matrix;
    };
    // An f16-arithmetic class is timed on f16 operands (the f16 weight copies and activations).
    const values = (size: number, seed: number) =>
      f16Math ? Float16Array.from(pseudoRandom(size, seed)) : pseudoRandom(size, seed);
    const a = keep(tensorFromArray(gpu, values(count * m * k, 1), stored(m, k, transA), "tuneA"));
    const b = keep(tensorFromArray(gpu, values(count * k * n, 2), stored(k, n, transB), "tuneB"));
    const bias = keep(tensorFromArray(gpu, pseudoRandom(n, 3), [n], "tuneBias"));
    const c = keep(createTensor(gpu, stored(m, n, false), "f32", "tuneC"));
    // Alpha and bias make the epilogue part of the comparison.
    const args: MatmulArgs = {
      op: "matmul autotune",
      a,
      b,
      c,
      bias,
      m,
      n,
      k,
      transA,
      transB,
      f16Math,
    };
    args.alpha = 0.75;
    if (count > 1) {
      args.batch0 = { count, strideA: m * k, strideB: k * n, strideC: m * n };
    }
    const [heuristic] = matmulVariantsUsed(gpu, (rec) => matmul(rec, args));
    if (!heuristic) throw new Error(`cannot tell which variant matmul runs for ${cls}`);
    // Representative products are vec4-aligned, so an f16-arithmetic one runs an f16 kernel; were
    // it not, its choice would be an f32-sum kernel that matmul never takes for such a product.
    if (f16Math && !isF16MathVariant(heuristic)) {
      throw new Error(`matmul autotune: ${cls} runs ${heuristic}, not an f16-arithmetic kernel`);
    }
    const reference = (await resultBits(gpu, args)).slice();
    const contenders = [
      heuristic,
      // An nn_ variant runs its kernel as it is without a transposed operand, and in a batch.
      // An f16-arithmetic class runs only its own kernels, and the others only theirs.
      ...candidates.filter((v) =>
        v !== heuristic && isF16MathVariant(v) === f16Math &&
        ((transA || transB) && count === 1 || untransposedKernel(v) === undefined)
      ),
    ];
    // The first run of each also compiles its pipeline and checks its bits.
    const differs: MatmulVariant[] = [];
    const live: MatmulVariant[] = [];
    for (const v of contenders) {
      if (v === heuristic) live.push(v); // the reference itself
      else if (sameBits(await resultBits(gpu, { ...args, variant: v }), reference)) live.push(v);
      else differs.push(v);
    }
    // Products per submit: a submit's fixed cost (about 12 ms on lavapipe, more than a small
    // product; on a GPU far more than any of these) must not drown the differences. On the
    // GPU's clock there is none, and the same target fills the clock's resolution many times.
    let reps = 1;
    for (let t = await runProduct(gpu, args); t < SUBMIT_TARGET_MS && reps < MAX_REPS;) {
      reps = Math.min(MAX_REPS, Math.max(reps + 1, Math.ceil((reps * SUBMIT_TARGET_MS) / t)));
      t = await runProduct(gpu, args, reps);
    }
    const best = new Map<MatmulVariant, number>();
    const start = performance.now();
    for (let round = 0; round < rounds; round++) {
      // Interleaved rounds, so that a burst of load elsewhere hits every candidate alike; the
      // fastest run of each counts (load only ever adds time).
      for (const v of live) {
        const ms = (await runProduct(gpu, { ...args, variant: v }, reps)) / reps;
        best.set(v, Math.min(best.get(v) ?? Infinity, ms));
      }
      if (performance.now() - start > budgetMs * live.length) break;
      // Far behind after a run: not a contender, not worth more runs.
      const fastest = Math.min(...best.values());
      for (let i = live.length - 1; i >= 0; i--) {
        if (live[i] !== heuristic && best.get(live[i])! > DROP_RATIO * fastest) live.splice(i, 1);
      }
    }
    const measured = [...best].map(([variant, ms]) => ({ variant, ms, sameBits: true }));
    return {
      class: cls,
      shape,
      heuristic,
      chosen: pickTunedVariant(heuristic, measured, margin),
      ms: Object.fromEntries(best),
      differs,
    };
  } finally {
    for (const t of tensors) t.destroy();
  }
}

type CacheEntries = Record<string, Record<string, string>>;

function message(e: unknown): string {
  return ((e as Error)?.message ?? String(e)).replace(/\s*\n\s*/g, " ");
}

/** What readCache found at the cache's path, besides its entries. */
type CacheState = "cache" | "none" | "not a cache" | "unreadable";

/**
 * The cache file's entries; a missing file is empty, an unreadable or corrupt one warns. With
 * `state`, what is there: a cache (or nothing), a file that is something else (not JSON, or JSON
 * of another shape), or something that cannot be read (a folder, a file without permission, a
 * failing disk).
 */
function readCache(
  file: string,
  warn: (line: string) => void,
  state?: (found: CacheState) => void,
): CacheEntries {
  state?.("cache");
  let text: string;
  try {
    text = Deno.readTextFileSync(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) state?.("none");
    else {
      warn(`matmul autotune: cannot read ${file} (${message(e)}); tuning again`);
      state?.("unreadable");
    }
    return {};
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    warn(`matmul autotune: ${file} is corrupt (${message(e)}); tuning again`);
    state?.("not a cache");
    return {};
  }
  const isObject = (x: unknown): x is Record<string, unknown> =>
    !!x && typeof x === "object" && !Array.isArray(x);
  // {adapter: {class: variant}}, every leaf a string: a run's run.json or metrics.json (JSON
  // objects of objects too) is not merged into, but moved aside.
  const isEntry = (x: unknown) =>
    isObject(x) && Object.values(x).every((v) => typeof v === "string");
  if (!isObject(parsed) || !Object.values(parsed).every(isEntry)) {
    warn(
      `matmul autotune: ${file} is not a tune cache (expected {adapter: {class: variant}}); ` +
        "tuning again",
    );
    state?.("not a cache");
    return {};
  }
  return parsed as CacheEntries;
}

/**
 * Moves the file at `file`, which is no tune cache, aside to the first free `<file>.not-a-cache`
 * (then `-2`, `-3`, ...) and says where: a --tune-cache naming one's notes (or a cache damaged by
 * hand) was replaced by the tune, and what it held was lost.
 */
async function moveAside(file: string, warn: (line: string) => void): Promise<void> {
  for (let n = 1;; n++) {
    const aside = `${file}.not-a-cache${n === 1 ? "" : `-${n}`}`;
    try {
      await Deno.lstat(aside);
      continue;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    await Deno.rename(file, aside);
    warn(`matmul autotune: ${file} moved to ${aside} (kept, not overwritten)`);
    return;
  }
}

/** The key of an adapter's entry for another kernel set than the latest written. */
function versionedKey(adapter: string, version: unknown): string {
  return `${adapter} [kernels ${JSON.stringify(version)}]`;
}

/** An adapter's entry for this kernel set: under its name, or under its version's key. */
function entryOf(all: CacheEntries, adapter: string): Record<string, string> | undefined {
  const entry = all[adapter] as Record<string, string> | undefined;
  if (entry?.[VERSION_KEY] === MATMUL_KERNELS_VERSION) return entry;
  return all[versionedKey(adapter, MATMUL_KERNELS_VERSION)] ?? entry;
}

/** The choices of a cache entry when it is valid for this kernel set, else undefined. */
function entryTable(
  entry: Record<string, unknown> | undefined,
  file: string,
  adapter: string,
  warn: (line: string) => void,
): TuneTable | undefined {
  if (!entry || entry[VERSION_KEY] !== MATMUL_KERNELS_VERSION) return undefined; // absent, stale
  const table: TuneTable = {};
  for (const [cls, v] of Object.entries(entry)) {
    if (cls === VERSION_KEY) continue;
    const half = isF16MathVariant(v as MatmulVariant);
    if (!MATMUL_VARIANTS.includes(v as MatmulVariant) && !half) {
      warn(
        `matmul autotune: ${file}: the entry of "${adapter}" names an unknown variant ` +
          `${JSON.stringify(v)} for ${cls}; tuning again`,
      );
      return undefined;
    }
    if (half !== cls.startsWith("h")) {
      warn(
        `matmul autotune: ${file}: the entry of "${adapter}" names ${v} for ${cls}, a class ` +
          `of the other arithmetic; tuning again`,
      );
      return undefined;
    }
    table[cls] = v as MatmulVariant;
  }
  return table;
}

function install(gpu: Gpu, table: TuneTable): void {
  if (Object.keys(table).length === 0) {
    setMatmulTuner(gpu, undefined);
    return;
  }
  setMatmulTuner(
    gpu,
    (m, n, k, transA, transB, count, f16Math) =>
      table[matmulShapeClass(m, n, k, transA, transB, count, f16Math)],
  );
}

/** Choices made on each device object in this process (tuned, or read from the file). */
const memory = new WeakMap<Gpu, TuneTable>();

/**
 * Tunes the GEMM for this device (or reuses what this process or the cache file already knows of
 * the same adapter and kernel set), installs the choices into `matmul` and reports what it did.
 * With a cache file, what it does not know yet is read, tuned and written under a lock on
 * `<file>.lock`: runs started together on an empty cache each tuned the same classes side by side
 * on one GPU (slower, each timing the others' work too); now the later ones wait and reuse the
 * first one's choices. A run that finds every class it needs in memory or in the file takes no
 * lock (it never waits on another's tune). Where the lock cannot be taken (a read-only cache) it
 * goes on unguarded.
 */
export async function tuneMatmul(gpu: Gpu, options: AutotuneOptions = {}): Promise<TuneResult> {
  const start = performance.now();
  const warn = options.warn ?? ((line: string) => console.error(line));
  // Where the file really is: two runs naming it by a symlink and by its target took two locks
  // (a lock file beside each name) and tuned at once, and a write through a link to a file not
  // made yet replaced the link.
  const file = options.cacheFile === undefined ? undefined : await realFile(options.cacheFile);
  const lock = file && hasClassesToTune(gpu, options, file)
    ? await lockTuneCache(file, warn)
    : null;
  try {
    return await tuneWithLockHeld(gpu, { ...options, cacheFile: file }, start);
  } finally {
    lock?.close();
  }
}

/** `path` with its symlinks (of the file, or of its folders) followed, whether it exists or not. */
async function realFile(path: string, links = 0): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch { /* not there (yet) */ }
  try {
    // A loop of links (40, as Linux's own limit) is left as named: its open fails and says so.
    if (links < 40 && (await Deno.lstat(path)).isSymlink) {
      const target = await Deno.readLink(path);
      // Relative to the link's folder as it really is (`..` out of a symlinked folder).
      const base = await Deno.realPath(dirname(path)).catch(() => dirname(path));
      return realFile(isAbsolute(target) ? target : join(base, target), links + 1);
    }
  } catch { /* no such entry */ }
  try {
    return join(await Deno.realPath(dirname(path)), basename(path));
  } catch {
    return path;
  }
}

/**
 * Whether `options` asks for a class neither this device's memory nor `file` knows (or to
 * retune). The file is read without the lock: its writes are atomic renames.
 */
function hasClassesToTune(gpu: Gpu, options: AutotuneOptions, file: string): boolean {
  if (options.retune) return true;
  const known = memory.get(gpu) ?? {};
  const onCpu = gpu.adapter.info.isFallbackAdapter;
  const classes = tuneClasses(
    options.shapes ?? DEFAULT_SHAPES,
    onCpu,
    options.batched,
    options.f16Math,
  );
  const unknown = [...classes.keys()].filter((cls) => !known[cls]);
  if (unknown.length === 0) return false;
  // Quietly: a damaged file is reported once, by the tune that reads it again under the lock.
  const adapter = gpu.description;
  const saved = entryTable(entryOf(readCache(file, () => {}), adapter), file, adapter, () => {}) ??
    {};
  return unknown.some((cls) => !saved[cls]);
}

/**
 * An exclusive lock on `<file>.lock` (made if missing), waited for when another process holds
 * it; null where it cannot be taken.
 */
async function lockTuneCache(
  file: string,
  warn: (line: string) => void,
): Promise<Deno.FsFile | null> {
  let lock: Deno.FsFile | null = null;
  try {
    const dir = file.replace(/[\\/][^\\/]*$/, "");
    if (dir && dir !== file) await Deno.mkdir(dir, { recursive: true });
    lock = await Deno.open(`${file}.lock`, { read: true, write: true, create: true });
    if (!(await lock.tryLock(true))) {
      warn(`matmul autotune: waiting for another tune into ${file} to end`);
      await lock.lock(true);
    }
    return lock;
  } catch {
    lock?.close();
    return null;
  }
}

/** tuneMatmul's work, its lock held. */
async function tuneWithLockHeld(
  gpu: Gpu,
  options: AutotuneOptions,
  start: number,
): Promise<TuneResult> {
  const warn = options.warn ?? ((line: string) => console.error(line));
  const adapter = gpu.description;
  const file = options.cacheFile;
  const shapes = options.shapes ?? DEFAULT_SHAPES;
  const onCpu = gpu.adapter.info.isFallbackAdapter;
  const wanted = tuneClasses(shapes, onCpu, options.batched, options.f16Math);

  // The installed table: what this process knows, then the file's entry for the classes missing.
  const previous = memory.get(gpu) ?? {};
  const table: TuneTable = { ...previous };
  const fromMemory = options.retune ? [] : [...wanted.keys()].filter((c) => table[c]);
  const fromFile: string[] = [];
  if (file && !options.retune && [...wanted.keys()].some((c) => !table[c])) {
    const known = entryTable(entryOf(readCache(file, warn), adapter), file, adapter, warn) ?? {};
    for (const [cls, v] of Object.entries(known)) {
      if (table[cls]) continue;
      table[cls] = v;
      if (wanted.has(cls)) fromFile.push(cls);
    }
  }

  const tuned: ClassTune[] = [];
  // Untuned while timing: the heuristic's variant and result are the reference.
  setMatmulTuner(gpu, undefined);
  let ok = false;
  try {
    for (const [cls, shape] of wanted) {
      if (table[cls] && !options.retune) continue;
      const t = await tuneClass(
        gpu,
        cls,
        shape,
        options.candidates ?? defaultCandidates(onCpu).filter((v) => variantFits(gpu, v)),
        options.budgetMs ?? 100,
        options.rounds ?? 2,
        options.margin ?? 0.05,
      );
      table[cls] = t.chosen;
      tuned.push(t);
    }
    ok = true;
  } finally {
    // A failed tune leaves the device as it was.
    install(gpu, ok ? table : previous);
  }
  memory.set(gpu, table);
  let saved = false;
  if (file && tuned.length > 0) {
    try {
      // A corrupt file was reported above; it is kept beside the new one. What cannot be read
      // is left as it is (a --tune-cache naming a folder, say ~/.cache/ehft, would have moved
      // the whole folder; a read that failed once, a valid cache), and the tune is not cached.
      let found = "cache" as CacheState;
      const all = readCache(file, () => {}, (state) => found = state);
      if (found === "unreadable") throw new Error("it cannot be read; left as it is");
      if (found === "not a cache") await moveAside(file, warn);
      const old = entryTable(entryOf(all, adapter), file, adapter, () => {}) ?? {};
      // Another kernel set's entry (another ehft beside this one, sharing the file) is kept
      // under its version's key: replacing it made each version tune again at every run.
      const other = all[adapter];
      if (other && other[VERSION_KEY] !== MATMUL_KERNELS_VERSION) {
        all[versionedKey(adapter, other[VERSION_KEY])] = other;
      }
      const entry = { [VERSION_KEY]: MATMUL_KERNELS_VERSION, ...old, ...table };
      all[adapter] = entry;
      // Shared so, ours goes under its version's key too: an ehft from before these keys writes
      // its entry under the name alone, replacing ours there.
      const mine = versionedKey(adapter, MATMUL_KERNELS_VERSION);
      const shared = Object.keys(all).some((k) =>
        k !== mine && k.startsWith(`${adapter} [kernels `)
      );
      if (shared) all[mine] = entry;
      else delete all[mine];
      const dir = file.replace(/[\\/][^\\/]*$/, "");
      if (dir && dir !== file) await Deno.mkdir(dir, { recursive: true });
      // What a write killed mid-way (kill -9) left beside the file: never needed, and no other
      // write of it is under way (the lock). Only this file's, in a folder others share.
      await removeStaleTemporaries(dir && dir !== file ? dir : ".", [
        basename(file),
      ]).catch(() => 0);
      await writeJsonAtomic(file, all);
      saved = true;
    } catch (e) {
      warn(`matmul autotune: cannot write ${file} (${message(e)}); the tune is not cached`);
    }
  }
  return {
    table,
    tuned,
    fromFile,
    fromMemory,
    seconds: (performance.now() - start) / 1000,
    cacheFile: file,
    saved,
  };
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: as if unset
  }
}

/**
 * The default cache file: `$XDG_CACHE_HOME/ehft/matmul-tune.json`, else
 * `~/.cache/ehft/matmul-tune.json` (`%LOCALAPPDATA%\ehft\...` on Windows); undefined when no
 * such directory is known (the tune then lives in memory only).
 */
export function defaultMatmulCacheFile(): string | undefined {
  // The same folder as the data and corpus caches (`~` expanded, trailing slashes trimmed).
  const get = (name: string) => env(name) || undefined;
  if (get("XDG_CACHE_HOME") || get("HOME")) {
    try {
      return `${userCacheBase(get, () => new Error("no home"))}/ehft/matmul-tune.json`;
    } catch {
      return undefined; // XDG_CACHE_HOME=~/… with no home to expand it to
    }
  }
  const local = get("LOCALAPPDATA");
  return local ? `${local}\\ehft\\matmul-tune.json` : undefined;
}

/** How a program should tune: from its flags and the environment (`tuneRequest`). */
export interface TuneRequest {
  /** Whether to tune at all (false: the built-in heuristic picks each variant). */
  enabled: boolean;
  /** Time again the shapes the cache already knows. */
  retune: boolean;
  /** The cache file, or undefined for memory only. */
  cacheFile?: string;
}

/** Whether an environment flag is on (model/env.ts's rule: 1, on, yes or true). */
function envFlag(name: string): boolean {
  return isTrue(env(name));
}

/** Whether EHFT_NO_AUTOTUNE=1 (or true, yes) turns the tune off, as `--no-autotune` does. */
export function autotuneOffInEnv(): boolean {
  return envFlag("EHFT_NO_AUTOTUNE");
}

/**
 * A program's tune settings: `--no-autotune` or EHFT_NO_AUTOTUNE=1 disable the tune (the built-in
 * heuristic runs); `--retune` times again what the cache knows; `--tune-cache FILE`, else
 * EHFT_TUNE_CACHE, else `defaultMatmulCacheFile()` is the cache file.
 */
export function tuneRequest(flags: {
  noAutotune?: boolean;
  retune?: boolean;
  tuneCache?: string;
} = {}): TuneRequest {
  return {
    enabled: !flags.noAutotune && !envFlag("EHFT_NO_AUTOTUNE"),
    retune: flags.retune ?? false,
    cacheFile: flags.tuneCache || env("EHFT_TUNE_CACHE") || defaultMatmulCacheFile(),
  };
}

/** The one-line summary of a tune, for a program's stderr. */
export function describeTune(gpu: Gpu, r: TuneResult): string {
  const classes = (n: number) => `${n} shape class${n === 1 ? "" : "es"}`;
  const where = r.tuned.length > 0
    ? `tuned ${classes(r.tuned.length)} in ${r.seconds.toFixed(1)} s` +
      (r.saved ? `, saved to ${r.cacheFile}` : r.cacheFile ? " (not saved)" : " (no cache file)")
    : r.fromFile.length > 0
    ? `${classes(r.fromFile.length)} from ${r.cacheFile}`
    : "as tuned earlier in this process";
  // This run's classes: the table also holds what earlier runs of other shapes installed.
  const own = new Set([...r.tuned.map((t) => t.class), ...r.fromFile, ...r.fromMemory]);
  const entries = Object.entries(r.table).sort();
  const choices = entries.filter(([c]) => own.has(c)).map(([c, v]) => `${c}=${v}`).join(" ");
  const others = entries.length - entries.filter(([c]) => own.has(c)).length;
  return `matmul autotune: ${gpu.description}: ${where}; choices ${choices}` +
    (others > 0 ? ` (and ${others} for other shapes)` : "");
}

/**
 * What programs call after acquiring the device: tunes the classes of `shapes` that are worth it
 * (`worthTuning`) as `request` says and logs one line. Throws only when the device was lost: any
 * other failed tune warns and leaves the heuristic in place. Returns null when disabled or when
 * nothing was worth tuning (then the cache file is not even read, so small runs, e.g. the tests'
 * tiny models, never touch it).
 */
export async function autotuneForProgram(
  gpu: Gpu,
  request: TuneRequest,
  shapes: readonly TuneShape[],
  log: { info?: (line: string) => void; warn?: (line: string) => void } = {},
): Promise<TuneResult | null> {
  if (!request.enabled) return null;
  const worth = shapes.filter(worthTuning);
  if (worth.length === 0) return null;
  const warn = log.warn ?? ((line: string) => console.error(line));
  try {
    const result = await tuneMatmul(gpu, {
      shapes: worth,
      cacheFile: request.cacheFile,
      retune: request.retune,
      warn,
    });
    // Said once per process: a later call (the next seed) that only found this process's
    // earlier tune stays quiet.
    if (result.tuned.length > 0 || result.fromFile.length > 0) {
      (log.info ?? ((line: string) => console.error(line)))(describeTune(gpu, result));
    }
    return result;
  } catch (e) {
    if (gpu.lost) throw e;
    warn(`matmul autotune: failed (${message(e)}); using the built-in choice`);
    setMatmulTuner(gpu, undefined);
    return null;
  }
}
