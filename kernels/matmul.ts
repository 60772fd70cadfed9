// General strided, batched matrix product: C = f(alpha · op(A) · op(B) (+ bias) (+ C)), f an
// optional elementwise epilogue (GELU, or GELU's derivative for the backward).
//
// The encoder's linear layers and per-head attention products (where flash attention is not used)
// are calls of this op with the right strides; LoRA's thin products have their own kernels
// (thin_matmul.ts, thin_tn.ts), and the nn_* variants copy a transposed operand first
// (transpose.ts). Operands are addressed by
// element offset + row stride ("leading dimension") + two batch levels, all read from a uniform,
// so one compiled pipeline per kernel variant serves every shape and transpose.
//
// Determinism: each output element is one invocation's sum over k in increasing order, so a
// given call gives bitwise-identical results on every run. (A weight gradient over many tokens
// is the exception: it is cut into a fixed number of k-slices, chosen from its shape alone,
// summed in order afterwards: kernels/matmul_split.ts.)
//
// Long sums (large k: weight gradients sum over every row of the batch, k = batch · seq) are cut
// into consecutive k-slices, one launch each (`kSlices`): lavapipe stops an invocation after
// 65,535 loop iterations in all and silently keeps its partial results, and the k loop is one
// iteration per k (per 4 k in the vec4 variants, per 16 k in the shared ones, whose staging adds
// more). Each slice resumes the previous slice's f32 accumulators (kept in a workspace) and goes
// on adding in increasing k, so a sliced product is bitwise the same as one unsliced sum.

import { type Gpu, GpuError } from "./device.ts";
import { enableF16, expectF16, loadAs, storeAs, TO_F16_WGSL, TO_F16X4_WGSL } from "./f16.ts";
import { GELU_WGSL } from "./gelu.ts";
import { range } from "./grid.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { SPLIT_K_MAX, splitKCount, splitKSum, splitKSumWgsl } from "./matmul_split.ts";
import { transpose, TRANSPOSE_TILE } from "./transpose.ts";
import { Workspace } from "./workspace.ts";
import {
  type DType,
  DTYPE_BYTES,
  expectBindable,
  expectShape,
  FLOAT_DTYPES,
  type Tensor,
} from "./tensor.ts";

/** One batch level: `count` products, operand `X` of product `i` starting `i · strideX` later. */
export interface MatmulBatch {
  /** Products at this level (1: no batching). */
  count: number;
  /** Element strides between consecutive products; 0 reuses the same operand (broadcast). */
  strideA: number;
  /** As `strideA`, for B. */
  strideB: number;
  /** As `strideA`, for C; must not be 0 when `count` > 1. */
  strideC: number;
}

/**
 * The operands and layout of one `matmul` call. A, B and C are f32 or f16 (summed in f32); the
 * bias is f32. C must not share a GPU buffer with A, B or the bias.
 */
export interface MatmulArgs {
  /** Used in error messages and as the dispatch label; defaults to "matmul". */
  op?: string;
  /** op(A) is m×k: A stored [m, k] row-major, or [k, m] when `transA`. */
  a: Tensor;
  /** op(B) is k×n: B stored [k, n] row-major, or [n, k] when `transB`. */
  b: Tensor;
  /** C is m×n, row-major with row stride `ldc`. */
  c: Tensor;
  /** Rows of op(A) and of C. */
  m: number;
  /** Columns of op(B) and of C. */
  n: number;
  /** Columns of op(A) and rows of op(B): the length of each sum. */
  k: number;
  /** A is stored transposed ([k, m]); default false. */
  transA?: boolean;
  /** B is stored transposed ([n, k]); default false. */
  transB?: boolean;
  /** Row strides of the stored matrices, in elements; default: packed (the stored row length). */
  lda?: number;
  /** As `lda`, for B. */
  ldb?: number;
  /** As `lda`, for C (default n). */
  ldc?: number;
  /** Element offsets of the first product's operands inside each tensor; default 0. */
  offsetA?: number;
  /** As `offsetA`, for B. */
  offsetB?: number;
  /** As `offsetA`, for C (and the epilogue's preActivation). */
  offsetC?: number;
  /** Outer batch level (e.g. the sequence in a [B, S, H·D] layout). */
  batch0?: MatmulBatch;
  /** Inner batch level (e.g. the head: offset h·D). Product (i0, i1) adds both levels' strides. */
  batch1?: MatmulBatch;
  /** Scales the product (not the bias, not the existing C); default 1. */
  alpha?: number;
  /** Optional [n] vector added to every row of every product. */
  bias?: Tensor;
  /** Add into C instead of overwriting it; default false. */
  accumulate?: boolean;
  /** Applied to each output after alpha, bias and accumulate; default none. */
  epilogue?: MatmulEpilogue;
  /** Forces a kernel variant (tests cover each); default: chosen from the shape. */
  variant?: MatmulVariant;
  /**
   * Multiply and sum in f16 (needs shader-f16): f32 operands are rounded to f16 as they are read
   * (beyond f16's range to ±∞), each output's products summed in f16 in runs of 16 consecutive k,
   * the runs' totals added in f32 in increasing k (`F16_MATH_VARIANTS`; a forced `variant` must
   * be one of them). Some 2^-9 relative error where f32 sums give 2^-20; for GPUs whose f16
   * arithmetic is twice as fast as their f32. Operands that vec4 loads cannot read are staged
   * with scalar loads (any shape). Default false.
   */
  f16Math?: boolean;
}

/**
 * An elementwise function applied to each output v = alpha·(op(A)·op(B))[i, j] (+ bias[j])
 * (+ C[i, j]) as it is stored, so that an activation or its derivative needs no launch and no
 * pass over C of its own. Every variant applies it (all store through one WGSL function).
 * - `gelu`: C = gelu(v), the exact erf form of kernels/gelu.ts (the same WGSL); `preActivation`,
 *   when given, receives v, which GELU's backward needs.
 * - `geluGrad`: C = v · gelu'(preActivation): when the product is the gradient of a GELU's
 *   output, C becomes the gradient of its input.
 * `preActivation` is laid out exactly as C: same offset, row stride and batch strides.
 */
export type MatmulEpilogue =
  | { kind: "gelu"; preActivation?: Tensor }
  | { kind: "geluGrad"; preActivation: Tensor };

/** The epilogue as the WGSL generators see it: which line stores, and whether `pre` is bound. */
type EpilogueKind = "none" | "gelu" | "gelu_save" | "gelu_grad";

function epilogueKind(e: MatmulEpilogue | undefined): EpilogueKind {
  if (!e) return "none";
  if (e.kind === "geluGrad") return "gelu_grad";
  return e.preActivation ? "gelu_save" : "gelu";
}

/**
 * The storage types of A, B, C and the epilogue's `pre`, each f32 or f16 (only f32 for bias).
 * Whatever they are, products are summed in f32: an f16 operand is widened exactly when loaded,
 * an f16 output rounded once when stored.
 */
interface Dtypes {
  a: DType;
  b: DType;
  c: DType;
  pre: DType;
}

const ALL_F32: Dtypes = { a: "f32", b: "f32", c: "f32", pre: "f32" };

/** The WGSL header: `enable f16;` and `to_f16` when any operand is f16. */
function headerWgsl(t: Dtypes): string {
  const all = [t.a, t.b, t.c, t.pre];
  return all.includes("f16") ? `${enableF16(all)}${TO_F16_WGSL}\n` : "";
}

/** Pipeline name suffix telling the dtypes apart ("" when all f32, so f32 names are unchanged). */
function dtypesSuffix(t: Dtypes): string {
  const all = [t.a, t.b, t.c, t.pre];
  return all.includes("f16") ? `_${all.map((d) => (d === "f16" ? "h" : "s")).join("")}` : "";
}

/**
 * A kernel variant. Variants differ in speed only; each sums every output over k in increasing
 * order, one product at a time, so every variant gives bitwise the same output on a given
 * adapter (tests/matmul_variants_test.ts checks it on every adapter the suite runs on; the
 * autotune relies on it).
 * - `tile16` / `tile64`: a 16×16 workgroup stages k-slices of A and B in workgroup memory; each
 *   invocation computes 1×1 or 4×4 outputs.
 * - `direct4x4`: no workgroup memory, no barriers: each invocation reads its 4 rows of op(A)
 *   and 4 columns of op(B) straight from the storage buffers (on a CPU adapter the caches do
 *   what the shared tile would, without the barriers) and keeps a 4×4 tile in registers.
 * - `vec4_4x4` / `vec4_8x4` / `vec4_4x4_wg256`: like `direct4x4`, with the operands bound as
 *   `array<vec4<f32>>` and read four k (or four rows/columns) per load; an invocation owns 4 or 8
 *   consecutive rows × 4 consecutive columns; workgroups of 8×8 (16×16 for `_wg256`). Needs 16-byte aligned operands, k a multiple of 4 and the stored
 *   rows a multiple of 4 long; otherwise the launcher runs `direct4x4` instead.
 * - `vec4_4x8` / `vec4_8x8` / `vec4_8x16` / `vec4_16x8`: the same with an rm×rn register tile
 *   (rows × columns per invocation), 8×8 workgroups, same alignment needs.
 * - `tiled_4x4` / `tiled_8x8`: for GPUs, where the barrier-free kernels' loads are not coalesced
 *   (neighbouring invocations read different rows): a 16×16 workgroup stages a bk-deep slice of
 *   a 64×64 / 128×128 block of op(A) and op(B) in workgroup memory with vec4 loads along each
 *   operand's contiguous axis, and each invocation keeps a 4×4 / 8×8 tile in registers.
 *   Operands the vec4 loads cannot read (see the vec4 kernels) are staged with four scalar loads
 *   instead (a pipeline of its own, "_u"): the same values staged, the same sums, bitwise the
 *   same results. `tiled_8x4` / `tiled_4x8`:
 *   128×64 / 64×128 blocks, between the two (on the H200, timed on its clock, 2026-11-28, the
 *   8×8 family won every form: BENCHMARKS.md). `tiled_<rm>x<rn>w`: the same kernels with the
 *   invocations of a 32-wide subgroup (NVIDIA's warp) placed 8 × 4 over the block instead of
 *   16 × 2, so that a warp's reads of workgroup memory touch 8 column and 4 row vec4s a step
 *   (128 + 64 bytes) instead of 16 and 2 (256 + 32): fewer shared-memory wavefronts for the same
 *   multiply-adds (within 1-3% of the 16 × 2 forms on the H200). Same sums, same bits.
 *   `tiled_4x4d` / `tiled_8x8d` / `tiled_4x4wd` / `tiled_8x8wd`: those kernels with two
 *   workgroup arrays per operand that slices alternate between (one barrier a slice, not two),
 *   each an array of k rows, so that a read's index into it is the invocation's place alone:
 *   wgpu clamps every workgroup-array index it cannot prove in range, and a clamp of place + k
 *   is one more integer instruction per read that the old form cannot hoist out of the loop.
 *   `tiled_8x8dk` / `tiled_8x4dk` / `tiled_4x8dk`: the double-buffered kernels with A, when not
 *   transposed, staged as it is stored (rows of k, one vec4 load and store per unit, where the
 *   others load a 4 × 4 block per invocation and turn it round in registers), read four k at a
 *   time per row. Same sums, same bits. `tiled_8x8dk16`: `tiled_8x8dk` staging 16 k a slice (half
 *   the barriers and loop steps per multiply-add), its workgroup rows unpadded to fit 32 KiB.
 * - `nn_<kernel>`: for GPUs, where every barrier-free kernel reads a transposed operand
 *   uncoalesced: a transposed operand is first copied untransposed into a workspace
 *   (kernels/transpose.ts, exact), then `<kernel>` multiplies without transposes. Only for an
 *   unbatched product with a transposed operand whose copy fits a binding and whose untransposed
 *   product `<kernel>` can read as vec4s; otherwise `<kernel>` runs on the operands as they are.
 */
export type MatmulVariant = KernelVariant | `nn_${typeof NN_KERNELS[number]}`;

type VariantSpec =
  | { kind: "shared"; rm: number; rn: number }
  | { kind: "direct"; rm: number; rn: number; wx: number; wy: number }
  | { kind: "vec4"; rm: number; rn: number; ku: number; wx: number; wy: number }
  | TiledSpec;

type TiledSpec = {
  kind: "tiled";
  rm: number;
  rn: number;
  bk: number;
  warp?: boolean;
  double?: boolean;
  /** (double only) A, when not transposed, kept in workgroup memory as it is stored: rows of k. */
  kmajor?: boolean;
  /**
   * No padding vec4 at the end of each k row in workgroup memory. The padding keeps the turned
   * round stores of a transposed B (and of a not-transposed A, unless `kmajor`) off each other's
   * banks; without it a 16-deep slice of the 8 × 8 kernel fits 32 KiB (lavapipe's limit).
   */
  tight?: boolean;
  /**
   * f16 arithmetic (`F16_MATH_VARIANTS`): operands staged (f32 ones rounded) and multiplied in
   * f16, each run of 16 products summed in f16, the runs' totals added in f32. Needs bk a multiple
   * of 16 and `double`.
   */
  half?: boolean;
};

/** A variant with a kernel of its own (`MatmulVariant` less the `nn_` ones). */
export type KernelVariant =
  | "tile16"
  | "tile64"
  | "direct4x4"
  | "vec4_4x4"
  | "vec4_8x4"
  | "vec4_4x4_wg256"
  | "vec4_4x8"
  | "vec4_8x8"
  | "vec4_8x16"
  | "vec4_16x8"
  | "tiled_4x4"
  | "tiled_8x4"
  | "tiled_4x8"
  | "tiled_8x8"
  | "tiled_4x4w"
  | "tiled_8x4w"
  | "tiled_4x8w"
  | "tiled_8x8w"
  | "tiled_4x4d"
  | "tiled_8x8d"
  | "tiled_4x4wd"
  | "tiled_8x8wd"
  | "tiled_8x8dk"
  | "tiled_8x4dk"
  | "tiled_4x8dk"
  | "tiled_8x8dk16"
  | F16MathVariant;

/**
 * The f16-arithmetic variants (`MatmulArgs.f16Math`), apart from the others: they sum otherwise
 * (products and runs of 16 sums in f16, the runs' totals in f32), so their bits are their own.
 * Each is the `dk` kernel of its tile with f16 workgroup memory and registers: `tiled_8x8dk16h`
 * (128 × 128 blocks, 16 k a slice), `tiled_8x8dk32h` (32 k a slice, two runs: half the barriers
 * per multiply-add; its rows unpadded to fit 32 KiB), `tiled_4x4dk16h` (64 × 64, for smaller
 * outputs). Same runs, same sums: the three give bitwise the same results.
 */
export const F16_MATH_VARIANTS = ["tiled_8x8dk16h", "tiled_8x8dk32h", "tiled_4x4dk16h"] as const;

/**
 * The f16-arithmetic kernels sum runs of this many consecutive k in f16, from each launch's first
 * k (a product split along k restarts them at each slice: the split depends on the shape alone).
 */
const HALF_RUN = 16;
/** One of the f16-arithmetic variants (`F16_MATH_VARIANTS`). */
export type F16MathVariant = typeof F16_MATH_VARIANTS[number];

/** Whether a variant multiplies in f16 (one of `F16_MATH_VARIANTS`). */
export function isF16MathVariant(v: MatmulVariant): v is F16MathVariant {
  return (F16_MATH_VARIANTS as readonly string[]).includes(v);
}

const HALF_SPECS: Record<F16MathVariant, TiledSpec> = {
  tiled_8x8dk16h: {
    kind: "tiled",
    rm: 8,
    rn: 8,
    bk: 16,
    double: true,
    kmajor: true,
    half: true,
  },
  tiled_8x8dk32h: {
    kind: "tiled",
    rm: 8,
    rn: 8,
    bk: 32,
    double: true,
    kmajor: true,
    tight: true,
    half: true,
  },
  tiled_4x4dk16h: {
    kind: "tiled",
    rm: 4,
    rn: 4,
    bk: 16,
    double: true,
    kmajor: true,
    half: true,
  },
};

/** The variants with a kernel of their own, in the order benches and tests list them. */
const SPECS = {
  tile16: { kind: "shared", rm: 1, rn: 1 },
  tile64: { kind: "shared", rm: 4, rn: 4 },
  direct4x4: { kind: "direct", rm: 4, rn: 4, wx: 8, wy: 8 },
  vec4_4x4: { kind: "vec4", rm: 4, rn: 4, ku: 4, wx: 8, wy: 8 },
  vec4_8x4: { kind: "vec4", rm: 8, rn: 4, ku: 4, wx: 8, wy: 8 },
  vec4_4x4_wg256: { kind: "vec4", rm: 4, rn: 4, ku: 4, wx: 16, wy: 16 },
  vec4_4x8: { kind: "vec4", rm: 4, rn: 8, ku: 4, wx: 8, wy: 8 },
  vec4_8x8: { kind: "vec4", rm: 8, rn: 8, ku: 4, wx: 8, wy: 8 },
  vec4_8x16: { kind: "vec4", rm: 8, rn: 16, ku: 4, wx: 8, wy: 8 },
  vec4_16x8: { kind: "vec4", rm: 16, rn: 8, ku: 4, wx: 8, wy: 8 },
  tiled_4x4: { kind: "tiled", rm: 4, rn: 4, bk: 16 },
  tiled_8x4: { kind: "tiled", rm: 8, rn: 4, bk: 16 },
  tiled_4x8: { kind: "tiled", rm: 4, rn: 8, bk: 16 },
  tiled_8x8: { kind: "tiled", rm: 8, rn: 8, bk: 8 },
  tiled_4x4w: { kind: "tiled", rm: 4, rn: 4, bk: 16, warp: true },
  tiled_8x4w: { kind: "tiled", rm: 8, rn: 4, bk: 16, warp: true },
  tiled_4x8w: { kind: "tiled", rm: 4, rn: 8, bk: 16, warp: true },
  tiled_8x8w: { kind: "tiled", rm: 8, rn: 8, bk: 8, warp: true },
  tiled_4x4d: { kind: "tiled", rm: 4, rn: 4, bk: 16, double: true },
  tiled_8x8d: { kind: "tiled", rm: 8, rn: 8, bk: 8, double: true },
  tiled_4x4wd: { kind: "tiled", rm: 4, rn: 4, bk: 16, warp: true, double: true },
  tiled_8x8wd: { kind: "tiled", rm: 8, rn: 8, bk: 8, warp: true, double: true },
  tiled_8x8dk: { kind: "tiled", rm: 8, rn: 8, bk: 8, double: true, kmajor: true },
  tiled_8x4dk: { kind: "tiled", rm: 8, rn: 4, bk: 16, double: true, kmajor: true },
  tiled_4x8dk: { kind: "tiled", rm: 4, rn: 8, bk: 16, double: true, kmajor: true },
  tiled_8x8dk16: { kind: "tiled", rm: 8, rn: 8, bk: 16, double: true, kmajor: true, tight: true },
} satisfies Record<Exclude<KernelVariant, F16MathVariant>, VariantSpec>;

const VARIANTS: Record<KernelVariant, VariantSpec> = { ...SPECS, ...HALF_SPECS };

/** The variants that sum in f32 (all but `F16_MATH_VARIANTS`): bitwise the same results. */
const KERNEL_VARIANTS = Object.keys(SPECS) as KernelVariant[];

/** The kernels an `nn_` variant may run after untransposing (the vec4-reading ones). */
export const NN_KERNELS = [
  "vec4_4x4",
  "vec4_8x8",
  "vec4_8x16",
  "vec4_16x8",
  "tiled_4x4",
  "tiled_8x4",
  "tiled_4x8",
  "tiled_8x8",
  "tiled_4x4w",
  "tiled_8x4w",
  "tiled_4x8w",
  "tiled_8x8w",
  "tiled_4x4d",
  "tiled_8x8d",
  "tiled_4x4wd",
  "tiled_8x8wd",
  "tiled_8x8dk",
  "tiled_8x4dk",
  "tiled_4x8dk",
  "tiled_8x8dk16",
] as const satisfies readonly KernelVariant[];

/** The kernel an `nn_` variant runs after its copies, or undefined for a kernel variant. */
export function untransposedKernel(v: MatmulVariant): KernelVariant | undefined {
  return v.startsWith("nn_") ? v.slice(3) as KernelVariant : undefined;
}

/** Every variant (kernels/matmul_autotune.ts times a subset of them). */
export const MATMUL_VARIANTS: readonly MatmulVariant[] = [
  ...KERNEL_VARIANTS,
  ...NN_KERNELS.map((v) => `nn_${v}` as const),
];

/**
 * Picks the variant when neither the caller nor the autotune did. On lavapipe the big
 * straight-line tiles win by 1.5-3× at the BERT-mini linear shapes and 1024³ (16×8 for the
 * transposed-A weight gradient, 8×16 otherwise); small outputs keep the small tiles.
 */
function chooseVariant(m: number, n: number, transA: boolean): KernelVariant {
  if (m >= 64 && n >= 64) return transA ? "vec4_16x8" : "vec4_8x16";
  return m >= 16 && n >= 16 ? "vec4_4x4" : "direct4x4";
}

/**
 * The f16-arithmetic variant when neither the caller nor the autotune chose: 128 × 128 blocks for
 * outputs large enough to fill a GPU with them, else 64 × 64.
 */
function chooseF16MathVariant(gpu: Gpu, m: number, n: number): F16MathVariant {
  // The 64 × 64 kernel fits WebGPU's least workgroup memory (16 KiB); the 128 × 128 one does not.
  const large = m >= 512 && n >= 512 && variantFits(gpu, "tiled_8x8dk16h");
  return large ? "tiled_8x8dk16h" : "tiled_4x4dk16h";
}

const PARAMS_WGSL = /* wgsl */ `
struct Params {
  m: u32, n: u32, k: u32, count1: u32,
  offA: u32, rsA: u32, csA: u32, offB: u32,
  rsB: u32, csB: u32, offC: u32, ldc: u32,
  sA0: u32, sA1: u32, sB0: u32, sB1: u32,
  sC0: u32, sC1: u32, alpha: f32, flags: u32,
  zBase: u32, kBegin: u32, pad1: u32, pad2: u32,
}`;

/**
 * Longest k-slice per launch, by kernel kind, so that an invocation stays well inside lavapipe's
 * budget of 65,535 loop iterations (measured unsliced limits: `direct4x4` k < 65,536, `tile16`
 * k ≈ 43,000, `tile64` k ≈ 20,000; the vec4 kernels step k by 4, the tiled ones by their bk).
 * Multiples of 16, so that every slice but the last is whole k-steps of every kernel (the shared
 * and tiled kernels stage up to 16 k at a time) and the resumed sum is term for term the unsliced one.
 */
const K_SLICE: Record<VariantSpec["kind"], number> = {
  shared: 8192,
  direct: 32768,
  vec4: 131072,
  tiled: 131072,
};

/** The consecutive [kBegin, kEnd) slices of 0..k, each at most `max` long (one when k <= max). */
function kSlices(k: number, max: number): [number, number][] {
  const slices: [number, number][] = [];
  for (let k0 = 0; k0 < k; k0 += max) slices.push([k0, Math.min(k, k0 + max)]);
  return slices.length > 0 ? slices : [[0, k]];
}

/** Params.flags bits of a sliced launch (bits 0 and 1 are accumulate and bias). */
const FLAG_RESUME = 4; // the accumulators start from `partial` (every slice but the first)
const FLAG_KEEP = 8; // the accumulators go to `partial`, not through `store` (all but the last)

/**
 * How a kernel's code differs when it runs one k-slice (`sliced`): where its k loop starts,
 * what its accumulators start from and how it stores them. Unsliced kernels are unchanged.
 * `partial` holds the raw f32 accumulator of output (gi, gj) of the dispatch's product wid.z at
 * (wid.z · m + gi) · n + gj.
 */
interface SliceCode {
  /** Declarations after the bindings: `partial` and the functions below. */
  wgsl: string;
  /** WGSL: the first k of this launch. */
  kBegin: string;
  /** WGSL: the starting value of the accumulator of output (gi, gj). */
  init: (gi: string, gj: string) => string;
  /**
   * WGSL statement: stores output (gi, gj) from its accumulator `v`, or keeps `v` for the next
   * slice.
   */
  put: (gi: string, gj: string, v: string) => string;
}

function sliceCode(sliced: boolean, partialBinding: number): SliceCode {
  if (!sliced) {
    return {
      wgsl: "",
      kBegin: "0u",
      init: () => "0.0",
      put: (gi, gj, v) => `store(baseC, ${gi}, ${gj}, ${v});`,
    };
  }
  return {
    wgsl: /* wgsl */ `
@group(0) @binding(${partialBinding}) var<storage, read_write> partial: array<f32>;
fn resume(zl: u32, gi: u32, gj: u32) -> f32 {
  if ((p.flags & ${FLAG_RESUME}u) == 0u || gi >= p.m || gj >= p.n) { return 0.0; }
  return partial[(zl * p.m + gi) * p.n + gj];
}
fn finish(zl: u32, baseC: u32, gi: u32, gj: u32, v: f32) {
  if ((p.flags & ${FLAG_KEEP}u) == 0u) {
    store(baseC, gi, gj, v);
  } else if (gi < p.m && gj < p.n) {
    partial[(zl * p.m + gi) * p.n + gj] = v;
  }
}`,
    kBegin: "p.kBegin",
    init: (gi, gj) => `resume(wid.z, ${gi}, ${gj})`,
    put: (gi, gj, v) => `finish(wid.z, baseC, ${gi}, ${gj}, ${v});`,
  };
}

const WG = 16; // shared variants: workgroup is WG×WG invocations
const BK = 16; // shared variants: k-slice staged in workgroup memory per step
/**
 * WGSL staging operand X's block for one k-slice in workgroup memory, zero past the edges:
 * `Xs[kk * size + i]` = the element of op(X) at block index i (`origin + i`, below `limit`) and
 * k0 + kk, stored at `baseX + index · indexStride + k · kStride`. For A the index is the row of
 * C, for B its column. Neighbouring invocations load neighbouring addresses whichever way X is
 * stored (transposed or not).
 */
function stageSlice(
  x: string,
  size: string,
  origin: string,
  limit: string,
  indexStride: string,
  kStride: string,
  dtype: DType,
): string {
  const load = loadAs(dtype, `${x}[base${x} + gi * ${indexStride} + gk * ${kStride}]`);
  return /* wgsl */ `
    for (var e = li; e < ${size} * BK; e += THREADS) {
      var i: u32; var kk: u32;
      if (${kStride} == 1u) { kk = e % BK; i = e / BK; } else { i = e % ${size}; kk = e / ${size}; }
      let gi = ${origin} + i;
      let gk = k0 + kk;
      var v = 0.0;
      if (gi < ${limit} && gk < p.k) { v = ${load}; }
      ${x}s[kk * ${size} + i] = v;
    }`;
}

function matmulWgsl(
  rm: number,
  rn: number,
  epilogue: EpilogueKind,
  t = ALL_F32,
  sliced = false,
): string {
  const bm = WG * rm;
  const bn = WG * rn;
  const sc = sliceCode(sliced, partialBinding(epilogue));
  const rowOf = (r: string) => `row0 + lid.y + ${r} * ${WG}u`;
  const colOf = (c: string) => `col0 + lid.x + ${c} * ${WG}u`;
  const init = sliced
    ? `for (var r = 0u; r < RM; r++) {
    for (var c = 0u; c < RN; c++) { acc[r * RN + c] = ${sc.init(rowOf("r"), colOf("c"))}; }
  }`
    : "for (var t = 0u; t < RM * RN; t++) { acc[t] = 0.0; }";
  return /* wgsl */ `${headerWgsl(t)}${PARAMS_WGSL}
${bindingsWgsl(t, false, epilogue, sliced)}

const BM = ${bm}u;
const BN = ${bn}u;
const BK = ${BK}u;
const RM = ${rm}u;
const RN = ${rn}u;
const THREADS = ${WG * WG}u;

${storeWgsl(epilogue, t)}
${sc.wgsl}

// As[kk * BM + i] = op(A)[row0 + i, k0 + kk]; Bs[kk * BN + j] = op(B)[k0 + kk, col0 + j].
var<workgroup> As: array<f32, ${bm * BK}>;
var<workgroup> Bs: array<f32, ${bn * BK}>;

@compute @workgroup_size(${WG}, ${WG})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(local_invocation_index) li: u32) {
  let z = wid.z + p.zBase;
  let b0 = z / p.count1;
  let b1 = z % p.count1;
  let baseA = p.offA + b0 * p.sA0 + b1 * p.sA1;
  let baseB = p.offB + b0 * p.sB0 + b1 * p.sB1;
  let baseC = p.offC + b0 * p.sC0 + b1 * p.sC1;
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;

  var acc: array<f32, ${rm * rn}>;
  ${init}

  for (var k0 = ${sc.kBegin}; k0 < p.k; k0 += BK) {
    ${stageSlice("A", "BM", "row0", "p.m", "p.rsA", "p.csA", t.a)}
    ${stageSlice("B", "BN", "col0", "p.n", "p.csB", "p.rsB", t.b)}
    workgroupBarrier();
    // Zero padding past k adds exact zeros, so the sum's order and value are those of 0..k-1.
    for (var kk = 0u; kk < BK; kk++) {
      var a: array<f32, ${rm}>;
      var b: array<f32, ${rn}>;
      for (var r = 0u; r < RM; r++) { a[r] = As[kk * BM + lid.y + r * ${WG}u]; }
      for (var c = 0u; c < RN; c++) { b[c] = Bs[kk * BN + lid.x + c * ${WG}u]; }
      for (var r = 0u; r < RM; r++) {
        for (var c = 0u; c < RN; c++) { acc[r * RN + c] += a[r] * b[c]; }
      }
    }
    workgroupBarrier();
  }

  for (var r = 0u; r < RM; r++) {
    for (var c = 0u; c < RN; c++) {
      ${sc.put(rowOf("r"), colOf("c"), "acc[r * RN + c]")}
    }
  }
}
`;
}

/** The binding of a sliced kernel's `partial`: after C and `pre`, before the uniform. */
function partialBinding(epilogue: EpilogueKind): number {
  return epilogue === "gelu_save" || epilogue === "gelu_grad" ? 5 : 4;
}

/**
 * WGSL binding the operands: A and B as arrays of their element type (or of vec4s of it, named
 * A4 and B4), bias, C, the epilogue's `pre` (laid out as C) when it has one, then the uniform.
 */
function bindingsWgsl(t: Dtypes, vec4: boolean, epilogue: EpilogueKind, sliced = false): string {
  const pre = epilogue === "gelu_save"
    ? "read_write"
    : epilogue === "gelu_grad"
    ? "read"
    : undefined;
  const suffix = vec4 ? "4" : "";
  const operand = (d: DType) => (vec4 ? `vec4<${d}>` : d);
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> A${suffix}: array<${operand(t.a)}>;
@group(0) @binding(1) var<storage, read> B${suffix}: array<${operand(t.b)}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<${t.c}>;
${pre ? `@group(0) @binding(4) var<storage, ${pre}> pre: array<${t.pre}>;` : ""}
@group(0) @binding(${(pre ? 5 : 4) + (sliced ? 1 : 0)}) var<uniform> p: Params;`;
}

/**
 * WGSL storing `v` (the product, before alpha) at C[gi, gj] with alpha, bias, accumulate and the
 * epilogue. Every variant stores through it.
 */
function storeWgsl(epilogue: EpilogueKind, t: Dtypes): string {
  const c = (v: string) => `C[idx] = ${storeAs(t.c, v)};`;
  const write = {
    none: c("o"),
    gelu: c("gelu(o)"),
    gelu_save: `pre[idx] = ${storeAs(t.pre, "o")};\n  ${c("gelu(o)")}`,
    gelu_grad: c(`o * gelu_grad(${loadAs(t.pre, "pre[idx]")})`),
  }[epilogue];
  // store4: the old C values (accumulate) and the pre-activations (GELU') of the four are all
  // loaded before any of them is stored. Loads of C cannot move past a store into C, so one
  // store() after another waits a memory round trip per element (64 in a row for an 8 × 8
  // tile); four at a time wait one per four. The same arithmetic in the same order as store().
  const four = [0, 1, 2, 3];
  const write4 = {
    none: (j: number) => c4(j, `o${j}`),
    gelu: (j: number) => c4(j, `gelu(o${j})`),
    gelu_save: (j: number) =>
      `pre[idx + ${j}u] = ${storeAs(t.pre, `o${j}`)}; ${c4(j, `gelu(o${j})`)}`,
    gelu_grad: (j: number) => c4(j, `o${j} * gelu_grad(g${j})`),
  }[epilogue];
  function c4(j: number, v: string): string {
    return `C[idx + ${j}u] = ${storeAs(t.c, v)};`;
  }
  return /* wgsl */ `${epilogue === "none" ? "" : GELU_WGSL}
fn store(baseC: u32, gi: u32, gj: u32, v: f32) {
  if (gi >= p.m || gj >= p.n) { return; }
  let idx = baseC + gi * p.ldc + gj;
  var o = p.alpha * v;
  if ((p.flags & 2u) != 0u) { o += bias[gj]; }
  if ((p.flags & 1u) != 0u) { o += ${loadAs(t.c, "C[idx]")}; }
  ${write}
}

fn store4(baseC: u32, gi: u32, gj: u32, v: vec4<f32>) {
  if (gi >= p.m || gj >= p.n) { return; }
  let idx = baseC + gi * p.ldc + gj;
  let live = vec4<bool>(true, gj + 1u < p.n, gj + 2u < p.n, gj + 3u < p.n);
  var old = vec4<f32>(0.0);
  if ((p.flags & 1u) != 0u) {
    ${
    four.map((j) => `if (live[${j}]) { old[${j}] = ${loadAs(t.c, `C[idx + ${j}u]`)}; }`).join(
      "\n    ",
    )
  }
  }${
    epilogue === "gelu_grad"
      ? `
  var g = vec4<f32>(0.0);
  ${
        four.map((j) => `if (live[${j}]) { g[${j}] = ${loadAs(t.pre, `pre[idx + ${j}u]`)}; }`).join(
          "\n  ",
        )
      }
  ${four.map((j) => `let g${j} = g[${j}];`).join(" ")}`
      : ""
  }
  ${
    four.map((j) =>
      `var o${j} = p.alpha * v[${j}];
  if ((p.flags & 2u) != 0u && live[${j}]) { o${j} += bias[gj + ${j}u]; }
  if ((p.flags & 1u) != 0u) { o${j} += old[${j}]; }`
    ).join("\n  ")
  }
  ${four.map((j) => `if (live[${j}]) { ${write4(j)} }`).join("\n  ")}
}`;
}

/** WGSL computing the batch bases from the workgroup's z (shared by the barrier-free kernels). */
const BASES_WGSL = /* wgsl */ `
  let z = wid.z + p.zBase;
  let b0 = z / p.count1;
  let b1 = z % p.count1;
  let baseA = p.offA + b0 * p.sA0 + b1 * p.sA1;
  let baseB = p.offB + b0 * p.sB0 + b1 * p.sB1;
  let baseC = p.offC + b0 * p.sC0 + b1 * p.sC1;`;

/**
 * Barrier-free scalar kernel for any strides: invocation (x, y) of a wx×wy workgroup owns rows
 * `rowBase + y + r·wy` and columns `colBase + x + c·wx`, so neighbouring invocations read
 * neighbouring addresses. Rows/columns past the edge load a clamped (valid) element and are
 * never stored, so no branch sits in the k loop.
 */
function directWgsl(
  rm: number,
  rn: number,
  wx: number,
  wy: number,
  epilogue: EpilogueKind,
  t = ALL_F32,
  sliced = false,
): string {
  const sc = sliceCode(sliced, partialBinding(epilogue));
  const rowOf = (r: string) => `row0 + ${r} * ${wy}u`;
  const colOf = (c: string) => `col0 + ${c} * ${wx}u`;
  const init = sliced
    ? `for (var r = 0u; r < ${rm}u; r++) {
    for (var c = 0u; c < ${rn}u; c++) { acc[r * ${rn}u + c] = ${sc.init(rowOf("r"), colOf("c"))}; }
  }`
    : `for (var t = 0u; t < ${rm * rn}u; t++) { acc[t] = 0.0; }`;
  return /* wgsl */ `${headerWgsl(t)}${PARAMS_WGSL}
${bindingsWgsl(t, false, epilogue, sliced)}
${storeWgsl(epilogue, t)}
${sc.wgsl}

@compute @workgroup_size(${wx}, ${wy})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  ${BASES_WGSL}
  let row0 = wid.y * ${wy * rm}u + lid.y;
  let col0 = wid.x * ${wx * rn}u + lid.x;
  var ia: array<u32, ${rm}>;
  var ib: array<u32, ${rn}>;
  for (var r = 0u; r < ${rm}u; r++) { ia[r] = baseA + min(row0 + r * ${wy}u, p.m - 1u) * p.rsA; }
  for (var c = 0u; c < ${rn}u; c++) { ib[c] = baseB + min(col0 + c * ${wx}u, p.n - 1u) * p.csB; }
  var acc: array<f32, ${rm * rn}>;
  ${init}
  for (var kk = ${sc.kBegin}; kk < p.k; kk++) {
    var a: array<f32, ${rm}>;
    var b: array<f32, ${rn}>;
    for (var r = 0u; r < ${rm}u; r++) { a[r] = ${loadAs(t.a, "A[ia[r] + kk * p.csA]")}; }
    for (var c = 0u; c < ${rn}u; c++) { b[c] = ${loadAs(t.b, "B[ib[c] + kk * p.rsB]")}; }
    for (var r = 0u; r < ${rm}u; r++) {
      for (var c = 0u; c < ${rn}u; c++) { acc[r * ${rn}u + c] += a[r] * b[c]; }
    }
  }
  for (var r = 0u; r < ${rm}u; r++) {
    for (var c = 0u; c < ${rn}u; c++) {
      ${sc.put(rowOf("r"), colOf("c"), `acc[r * ${rn}u + c]`)}
    }
  }
}
`;
}

/**
 * Barrier-free vec4 kernel: invocation (x, y) owns rows `row0 .. row0+rm-1` and columns
 * `col0 .. col0+rn-1` (rn a multiple of 4: rn/4 vec4 accumulators per row), steps k by `ku` (a
 * multiple of 4; a tail of 4 when k is not a multiple of ku) and reads each operand along its
 * contiguous axis, four floats a load (A: along k, or along m when transposed; B: along n, or
 * along k when transposed). A 4×4 block read along the "wrong" axis is turned round with
 * `transpose`, in registers. Each output still adds its products in increasing k, one at a time.
 */
function vec4Wgsl(
  rm: number,
  rn: number,
  ku: number,
  wx: number,
  wy: number,
  transA: boolean,
  transB: boolean,
  epilogue: EpilogueKind,
  t = ALL_F32,
  sliced = false,
): string {
  const sc = sliceCode(sliced, partialBinding(epilogue));
  const wideA = (e: string) => (t.a === "f16" ? `vec4<f32>(${e})` : e);
  const wideB = (e: string) => (t.b === "f16" ? `vec4<f32>(${e})` : e);
  // Straight-line WGSL: lavapipe spills arrays indexed in loops it does not unroll to memory and
  // addresses them lane by lane, so every tile element is its own named variable here.
  const groups = range(rm / 4);
  const cgs = range(rn / 4);
  const q4 = range(4);
  // One 4-k block at k + dk, each output adding its four products in increasing k.
  const block = (dk: number) => {
    const lines: string[] = [];
    for (const g of groups) {
      for (const q of q4) {
        lines.push(
          `let a${g}_${q} = ` + wideA(
            transA
              ? `A4[(baseA + (k + ${dk + q}u) * p.csA + ra${g}) >> 2u]`
              : `A4[(ia${g}_${q} + k + ${dk}u) >> 2u]`,
          ) + ";",
        );
      }
    }
    for (const h of cgs) {
      for (const q of q4) {
        lines.push(
          `let b${h}_${q} = ` + wideB(
            transB
              ? `B4[(ib${h}_${q} + k + ${dk}u) >> 2u]`
              : `B4[(baseB + (k + ${dk + q}u) * p.rsB + cb${h}) >> 2u]`,
          ) + ";",
        );
      }
    }
    for (const kk of q4) {
      for (const h of cgs) {
        // Row kk of op(B)'s block: four columns at k + dk + kk.
        const bv = transB
          ? `vec4<f32>(b${h}_0[${kk}], b${h}_1[${kk}], b${h}_2[${kk}], b${h}_3[${kk}])`
          : `b${h}_${kk}`;
        lines.push(`let bb${h}_${kk} = ${bv};`);
      }
      for (const g of groups) {
        for (const i of q4) {
          // op(A)[row 4g+i, k + dk + kk].
          const av = transA ? `a${g}_${kk}[${i}]` : `a${g}_${i}[${kk}]`;
          for (const h of cgs) lines.push(`acc${4 * g + i}_${h} += ${av} * bb${h}_${kk};`);
        }
      }
    }
    return `{\n      ${lines.join("\n      ")}\n    }`;
  };
  const body = range(ku / 4).map((q) => block(4 * q)).join("\n    ");
  const tail = ku > 4 ? `for (; k < p.k; k += 4u) ${block(0)}` : "";
  const setup: string[] = [];
  for (const g of groups) {
    setup.push(`let ra${g} = min(row0 + ${4 * g}u, p.m - min(p.m, 4u));`);
    for (const i of q4) {
      setup.push(`let ia${g}_${i} = baseA + min(row0 + ${4 * g + i}u, p.m - 1u) * p.rsA;`);
    }
  }
  for (const h of cgs) {
    setup.push(`let cb${h} = min(col0 + ${4 * h}u, p.n - min(p.n, 4u));`);
    for (const j of q4) {
      setup.push(`let ib${h}_${j} = baseB + min(col0 + ${4 * h + j}u, p.n - 1u) * p.csB;`);
    }
  }
  for (const r of range(rm)) {
    for (const h of cgs) {
      const start = sliced
        ? `vec4<f32>(${q4.map((j) => sc.init(`row0 + ${r}u`, `col0 + ${4 * h + j}u`)).join(", ")})`
        : "vec4<f32>(0.0)";
      setup.push(`var acc${r}_${h} = ${start};`);
    }
  }
  const stores: string[] = [];
  for (const r of range(rm)) {
    for (const c of range(rn)) {
      stores.push(sc.put(`row0 + ${r}u`, `col0 + ${c}u`, `acc${r}_${c >> 2}[${c & 3}]`));
    }
  }
  return /* wgsl */ `${headerWgsl(t)}${PARAMS_WGSL}
${bindingsWgsl(t, true, epilogue, sliced)}
${storeWgsl(epilogue, t)}
${sc.wgsl}

@compute @workgroup_size(${wx}, ${wy})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  ${BASES_WGSL}
  let row0 = (wid.y * ${wy}u + lid.y) * ${rm}u;
  let col0 = (wid.x * ${wx}u + lid.x) * ${rn}u;
  // Clamped starts of the loads (the launcher guarantees m, n multiples of 4 where read along).
  ${setup.join("\n  ")}
  var k = ${sc.kBegin};
  for (; k + ${ku}u <= p.k; k += ${ku}u) {
    ${body}
  }
  ${tail}
  ${stores.join("\n  ")}
}
`;
}

/** Whether a tiled kernel stages A as it is stored, rows of k (`kmajor`, A not transposed). */
function stagesRowsOfA(spec: TiledSpec, transA: boolean): boolean {
  return (spec.kmajor ?? false) && (spec.double ?? false) && !transA;
}

/** Bytes of workgroup memory a tiled kernel declares (the arrays of `tiledWgsl`). */
function tiledWorkgroupBytes(spec: TiledSpec, transA: boolean): number {
  const { rm, rn, bk, double = false, tight = false, half = false } = spec;
  const vec4s = (size: number, rows: boolean) =>
    rows ? size * (bk / 4) : (size / 4 + (tight ? 0 : 1)) * bk;
  const perBuffer = vec4s(16 * rm, stagesRowsOfA(spec, transA)) + vec4s(16 * rn, false);
  return (half ? 8 : 16) * perBuffer * (double ? 2 : 1);
}

/**
 * The variants a device can run whatever the transposes: those whose workgroup memory fits its
 * limit (the autotune's candidates are filtered by it).
 */
export function variantFits(gpu: Gpu, v: MatmulVariant): boolean {
  return workgroupBytes(v) <= gpu.limits.maxComputeWorkgroupStorageSize;
}

/** The most workgroup memory a tiled variant's kernel declares, either transpose (else 0). */
function workgroupBytes(v: MatmulVariant): number {
  const spec = VARIANTS[untransposedKernel(v) ?? (v as KernelVariant)];
  if (spec.kind !== "tiled") return 0;
  return Math.max(tiledWorkgroupBytes(spec, false), tiledWorkgroupBytes(spec, true));
}

/**
 * Block-tiled kernel for GPUs: a 16×16 workgroup computes a (16·rm)×(16·rn) block of C. Each
 * step stages a bk-deep slice of op(A)'s rows and op(B)'s columns of the block in workgroup
 * memory (`As`, `Bs`: one row of vec4s along i or j per k, padded by one vec4 against bank
 * conflicts), every global load a vec4 along the operand's contiguous axis, so that neighbouring
 * invocations read neighbouring addresses whether or not it is transposed; the next slice's
 * loads are issued into registers before the current slice is multiplied. Invocation (x, y)
 * owns rows 4·(y + 16g) + i and columns 4·(x + 16h) + j (g < rm/4, h < rn/4, i, j < 4): its
 * workgroup-memory reads are one vec4 per group, consecutive across a row of invocations. Each
 * output adds its products in increasing k, one at a time, as in every other variant; rows and
 * columns past the edge are loaded clamped and never stored, k past the end is zero.
 */
function tiledWgsl(
  spec: TiledSpec,
  transA: boolean,
  transB: boolean,
  epilogue: EpilogueKind,
  t = ALL_F32,
  sliced = false,
  aligned = true,
): string {
  const { rm, rn, bk, warp = false, double = false, kmajor = false, tight = false } = spec;
  const half = spec.half ?? false;
  if (half && (bk % HALF_RUN !== 0 || !double)) {
    throw new Error(`tiledWgsl: f16 arithmetic needs bk a multiple of ${HALF_RUN}, double buffers`);
  }
  // Element type of the staged slices and their registers: f16 in the f16-arithmetic kernels.
  const ve = half ? "f16" : "f32";
  const W = 16;
  const threads = W * W;
  // The invocation's place in the block: its local id, or (warp) 8 × 4 per 32 invocations.
  const [tx, ty] = warp ? ["tx", "ty"] : ["lid.x", "lid.y"];
  const bm = W * rm, bn = W * rn;
  const sc = sliceCode(sliced, partialBinding(epilogue));
  // A loaded vec4 as staged: widened to f32, or (half) an f32 one rounded to f16.
  const wide = (d: DType, e: string) =>
    half ? (d === "f16" ? e : `to_f16x4(${e})`) : d === "f16" ? `vec4<f32>(${e})` : e;
  // One operand's slice. `alongK`: its stored rows run along k (A not transposed, B transposed):
  // an invocation loads a 4×4 block (four block rows, one k quad: four vec4s) and turns it round
  // in registers, so that workgroup memory is only ever written whole vec4s (a write to one
  // component of a vec4 may, by WGSL's rules, touch the others: four invocations writing the
  // four components would race). Otherwise a vec4 holds four consecutive block rows/columns at
  // one k and is stored as it is. Unit u of invocation li's slot s is number li + s·threads.
  // `rows`: the operand runs along k and is staged as it is stored, a row of bk/4 vec4s per block
  // row (neighbouring invocations load and store neighbouring vec4s; no turning round).
  const operand = (x: "A" | "B", size: number, alongK: boolean, rows = false) => {
    const pitch = size / 4 + (tight ? 0 : 1);
    const count = rows ? size * (bk / 4) : alongK ? (size / 4) * (bk / 4) : (size * bk) / 4;
    const regs = alongK && !rows ? 4 : 1;
    const slots = Math.ceil(count / threads);
    const [origin, limit, index, kStride] = x === "A"
      ? ["row0", "p.m", alongK ? "p.rsA" : "", alongK ? "" : "p.csA"]
      : ["col0", "p.n", alongK ? "p.csB" : "", alongK ? "" : "p.rsB"];
    const dtype = x === "A" ? t.a : t.b;
    const slot = (s: number) => `(li + ${s * threads}u)`;
    const guard = (s: number) => (count % threads === 0 ? "true" : `${slot(s)} < ${count}u`);
    const reg = (s: number, r: number) => `r${x}${s}_${r}`;
    // Unaligned: four scalar loads (each k past the end zero, or each row / column clamped inside
    // the matrix), where the aligned kernel loads one vec4; the same values staged either way.
    const scalar = (e: string) => {
      const one = `${x}[${e}]`;
      return half ? (dtype === "f16" ? one : `to_f16(${one})`) : loadAs(dtype, one);
    };
    const quad = (parts: string[]) => `vec4<${ve}>(${parts.join(", ")})`;
    const fetch = (s: number, r: number, gk: string, addr: string) =>
      `${reg(s, r)} = vec4<${ve}>(0.0);\n    ` +
      `if (${guard(s)} && ${gk} < p.k) { ${reg(s, r)} = ${
        aligned ? wide(dtype, `${x}4[(${addr}) >> 2u]`) : quad(
          range(4).map((j) =>
            `select(${ve}(0.0), ${scalar(`${addr} + ${j}u`)}, ${gk} + ${j}u < p.k)`
          ),
        )
      }; }`;
    // Four consecutive rows / columns at one k, each clamped inside the matrix (unaligned).
    const fetchAcross = (s: number, gk: string, at: (j: number) => string) =>
      `${reg(s, 0)} = vec4<${ve}>(0.0);\n    ` +
      `if (${guard(s)} && ${gk} < p.k) { ${reg(s, 0)} = ${
        quad(range(4).map((j) => scalar(at(j))))
      }; }`;
    // The slice's first k is named by the caller: this slice's or the next one's.
    const load = (k0: string) =>
      range(slots).flatMap((s) => {
        const e = slot(s);
        if (rows) {
          // Block row e / (bk/4), k quad e % (bk/4).
          const gk = `${k0} + (${e} % ${bk / 4}u) * 4u`;
          const row = `min(${origin} + ${e} / ${bk / 4}u, ${limit} - 1u)`;
          return [fetch(s, 0, gk, `base${x} + ${row} * ${index} + ${gk}`)];
        }
        if (alongK) {
          // Block quad e / (bk/4), k quad e % (bk/4): neighbouring invocations read the
          // neighbouring k quads of the same rows.
          const gk = `${k0} + (${e} % ${bk / 4}u) * 4u`;
          return range(4).map((r) => {
            const row = `min(${origin} + (${e} / ${bk / 4}u) * 4u + ${r}u, ${limit} - 1u)`;
            return fetch(s, r, gk, `base${x} + ${row} * ${index} + ${gk}`);
          });
        }
        // k row e / (size/4), block quad e % (size/4), its start clamped inside the matrix.
        const gk = `${k0} + ${e} / ${size / 4}u`;
        if (!aligned) {
          const at = (j: number) =>
            `base${x} + (${gk}) * ${kStride} + ` +
            `min(${origin} + (${e} % ${size / 4}u) * 4u + ${j}u, ${limit} - 1u)`;
          return [fetchAcross(s, gk, at)];
        }
        const start = `min(${origin} + (${e} % ${size / 4}u) * 4u, ${limit} - 4u)`;
        return [fetch(s, 0, gk, `base${x} + (${gk}) * ${kStride} + ${start}`)];
      }).join("\n    ");
    // Workgroup memory `buf` at k row `kr`, place `at`: one array, or (double) one of two
    // arrays of k rows, so that a read's k, known when the kernel is compiled, is no part of
    // the index that wgpu clamps against the array's length.
    const cell = (buf: string, kr: string, at: string) =>
      double ? `${x}s${buf}[${kr}][${at}]` : `${x}s[(${kr}) * ${pitch}u + ${at}]`;
    const store = (buf = "") =>
      range(slots).flatMap((s) => {
        const e = slot(s);
        if (rows) {
          const at = `${x}s${buf}[${e} / ${bk / 4}u][${e} % ${bk / 4}u]`;
          return [`if (${guard(s)}) { ${at} = ${reg(s, 0)}; }`];
        }
        if (!alongK) {
          const at = cell(buf, `${e} / ${size / 4}u`, `${e} % ${size / 4}u`);
          return [`if (${guard(s)}) { ${at} = ${reg(s, 0)}; }`];
        }
        return range(4).map((q) => {
          const at = cell(buf, `(${e} % ${bk / 4}u) * 4u + ${q}u`, `${e} / ${bk / 4}u`);
          const v = `vec4<${ve}>(${range(4).map((r) => `${reg(s, r)}[${q}]`).join(", ")})`;
          return `if (${guard(s)}) { ${at} = ${v}; }`;
        });
      }).join("\n    ");
    const decl = range(slots).flatMap((s) =>
      range(regs).map((r) => `var ${reg(s, r)}: vec4<${ve}>;`)
    );
    const arrays = (double ? ["0", "1"] : [""]).map((buf) =>
      `var<workgroup> ${x}s${buf}: ${
        rows
          ? `array<array<vec4<${ve}>, ${bk / 4}>, ${size}>`
          : double
          ? `array<array<vec4<${ve}>, ${pitch}>, ${bk}>`
          : `array<vec4<${ve}>, ${bk * pitch}>`
      };`
    ).join("\n");
    return { pitch, decl: decl.join("\n  "), load, store, arrays };
  };
  const aRows = stagesRowsOfA(spec, transA);
  const opA = operand("A", bm, !transA, aRows);
  const opB = operand("B", bn, transB);
  const groups = range(rm / 4), cgs = range(rn / 4);
  const rowOf = (g: number, i: number) => `row0 + ${4 * g}u * ${W}u + ${ty} * 4u + ${i}u`;
  const colOf = (h: number, j: number) => `col0 + ${4 * h}u * ${W}u + ${tx} * 4u + ${j}u`;
  // The bk steps of a slice unrolled (wgpu gives every WGSL loop a counter of its own, which can
  // keep a GPU compiler from unrolling it; lavapipe compiles this about 20% slower).
  // A staged as rows of k: each k quad reads the invocation's rm rows once, four k at a time, and
  // multiplies them k by k (each output still adds its products in increasing k, one at a time).
  // The f16-arithmetic kernels add each run of 16 products into f16 accumulators `hacc`, whose
  // totals go into the f32 ones after the run (`halfRun`).
  const acc = half ? "hacc" : "acc";
  // Steps k0 + from … k0 + to - 1 of a slice (the f16-arithmetic kernels sum each run of 16 apart).
  const computeRows = (buf: string, from: number, to: number) =>
    range(to / 4).slice(from / 4).map((kq) => {
      const lines: string[] = [];
      for (const g of groups) {
        for (const i of range(4)) {
          lines.push(`let ar${g}_${i} = As${buf}[${ty} * 4u + ${4 * W * g + i}u][${kq}];`);
        }
      }
      for (const q of range(4)) {
        for (const h of cgs) {
          lines.push(`let bv${q}_${h} = Bs${buf}[${4 * kq + q}][${tx} + ${W * h}u];`);
        }
        for (const g of groups) {
          for (const i of range(4)) {
            for (const h of cgs) {
              lines.push(`${acc}${4 * g + i}_${h} += ar${g}_${i}[${q}] * bv${q}_${h};`);
            }
          }
        }
      }
      return `{\n      ${lines.join("\n      ")}\n    }`;
    }).join("\n    ");
  const compute = (buf: string, from = 0, to = bk) =>
    aRows ? computeRows(buf, from, to) : range(to).slice(from).map((kk) => {
      const lines: string[] = [];
      const at = (x: "A" | "B", pitch: number, i: string) =>
        double ? `${x}s${buf}[${kk}][${i}]` : `${x}s[${kk * pitch}u + ${i}]`;
      for (const g of groups) {
        lines.push(`let av${g} = ${at("A", opA.pitch, `${ty} + ${W * g}u`)};`);
      }
      for (const h of cgs) lines.push(`let bv${h} = ${at("B", opB.pitch, `${tx} + ${W * h}u`)};`);
      for (const g of groups) {
        for (const i of range(4)) {
          for (const h of cgs) lines.push(`${acc}${4 * g + i}_${h} += av${g}[${i}] * bv${h};`);
        }
      }
      return `{\n      ${lines.join("\n      ")}\n    }`;
    }).join("\n    ");
  const outputs: string[] = [];
  for (const g of groups) {
    for (const i of range(4)) for (const h of cgs) outputs.push(`${4 * g + i}_${h}`);
  }
  const halfRun = (code: string) =>
    `{
    ${outputs.map((o) => `var hacc${o} = vec4<f16>(0.0);`).join("\n    ")}
    ${code}
    ${outputs.map((o) => `acc${o} += vec4<f32>(hacc${o});`).join("\n    ")}
    }`;
  // A slice's multiply-adds: (half) one run of 16 k after another, each summed in f16 apart.
  const multiply = (buf: string) =>
    half
      ? range(bk / HALF_RUN).map((r) => halfRun(compute(buf, r * HALF_RUN, (r + 1) * HALF_RUN)))
        .join("\n    ")
      : compute(buf);
  // One slice: staged from the registers, the next one's loads issued, then multiplied.
  const step = (buf = "") =>
    `${opA.store(buf)}
    ${opB.store(buf)}
    workgroupBarrier();
    {
      let kn = k0 + ${bk}u;
      ${opA.load("kn")}
      ${opB.load("kn")}
    }
    ${multiply(buf)}`;
  // Single: a barrier before staging, so that no invocation overwrites what another still reads.
  const singleLoop = `for (; k0 < p.k; k0 += ${bk}u) {
    workgroupBarrier();
    ${step()}
  }`;
  // Double: slices alternate between two arrays, so one barrier a slice suffices: an invocation
  // staging slice t + 2 has passed slice t + 1's barrier, which every invocation reaches only
  // after it has multiplied slice t.
  const doubleLoop = `loop {
    if (k0 >= p.k) { break; }
    ${step("0")}
    k0 += ${bk}u;
    if (k0 >= p.k) { break; }
    ${step("1")}
    k0 += ${bk}u;
  }`;
  const accs: string[] = [];
  for (const g of groups) {
    for (const i of range(4)) {
      for (const h of cgs) {
        const start = sliced
          ? `vec4<f32>(${range(4).map((j) => sc.init(rowOf(g, i), colOf(h, j))).join(", ")})`
          : "vec4<f32>(0.0)";
        accs.push(`var acc${4 * g + i}_${h} = ${start};`);
      }
    }
  }
  const stores: string[] = [];
  for (const g of groups) {
    for (const i of range(4)) {
      for (const h of cgs) {
        if (!sliced) {
          // Four neighbouring columns a call (storeWgsl: their loads wait together).
          stores.push(`store4(baseC, ${rowOf(g, i)}, ${colOf(h, 0)}, acc${4 * g + i}_${h});`);
          continue;
        }
        for (const j of range(4)) {
          stores.push(sc.put(rowOf(g, i), colOf(h, j), `acc${4 * g + i}_${h}[${j}]`));
        }
      }
    }
  }
  const header = half ? `enable f16;\n${TO_F16_WGSL}\n${TO_F16X4_WGSL}\n` : headerWgsl(t);
  return /* wgsl */ `${header}${PARAMS_WGSL}
${bindingsWgsl(t, aligned, epilogue, sliced)}
${storeWgsl(epilogue, t)}
${sc.wgsl}

${opA.arrays}
${opB.arrays}
${
    // Named, so that a `dk` kernel with A transposed (staged as by its `d` kernel) is a pipeline
    // of its own, under its own name, in profiles and matmulVariantsUsed.
    kmajor ? "// A not transposed is staged as rows of k\n" : ""}
@compute @workgroup_size(${W}, ${W})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_id) lid: vec3u,
        @builtin(local_invocation_index) li: u32) {
  ${BASES_WGSL}
  let row0 = wid.y * ${bm}u;
  let col0 = wid.x * ${bn}u;${
    warp
      ? `
  let tx = (li / 32u) % 2u * 8u + li % 8u;
  let ty = li / 64u * 4u + li % 32u / 8u;`
      : ""
  }
  ${accs.join("\n  ")}
  ${opA.decl}
  ${opB.decl}
  var k0 = ${sc.kBegin};
  {
    ${opA.load("k0")}
    ${opB.load("k0")}
  }
  ${double ? doubleLoop : singleLoop}
  ${stores.join("\n  ")}
}
`;
}

/**
 * Whether an operand can be read as vec4s: binding and size aligned to a vec4 of its element type
 * (16 bytes for f32, 8 for f16), and every vector
 * load (4 consecutive elements along the stored row, starting at a multiple of 4) stays inside
 * the stored row: offset, row stride and batch strides multiples of 4, row length too.
 */
function vec4Aligned(
  t: Tensor,
  offset: number,
  ld: number,
  batches: { count: number; stride: number }[],
  rowLength: number,
): boolean {
  const vecBytes = 4 * DTYPE_BYTES[t.dtype];
  return t.offset % vecBytes === 0 && t.bindingSize % vecBytes === 0 && offset % 4 === 0 &&
    ld % 4 === 0 &&
    rowLength % 4 === 0 && batches.every((b) => b.count <= 1 || b.stride % 4 === 0);
}

/**
 * The WGSL of every variant, transpose pair, epilogue and k-slicing, concatenated: what the
 * autotune's cache version hashes, so that any change to a kernel's code invalidates cached
 * choices.
 */
export function matmulKernelSources(): string {
  const epilogues: EpilogueKind[] = ["none", "gelu", "gelu_save", "gelu_grad"];
  const parts: string[] = [];
  for (const variant of KERNEL_VARIANTS) {
    const spec = VARIANTS[variant];
    for (const epilogue of epilogues) {
      for (const sliced of [false, true]) {
        if (spec.kind === "shared") {
          parts.push(matmulWgsl(spec.rm, spec.rn, epilogue, ALL_F32, sliced));
        } else if (spec.kind === "direct") {
          parts.push(directWgsl(spec.rm, spec.rn, spec.wx, spec.wy, epilogue, ALL_F32, sliced));
        } else if (spec.kind === "tiled") {
          for (
            const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]]
          ) {
            parts.push(tiledWgsl(spec, transA, transB, epilogue, ALL_F32, sliced));
          }
        } else {
          for (
            const [transA, transB] of [[false, false], [false, true], [true, false], [true, true]]
          ) {
            parts.push(
              vec4Wgsl(
                spec.rm,
                spec.rn,
                spec.ku,
                spec.wx,
                spec.wy,
                transA,
                transB,
                epilogue,
                ALL_F32,
                sliced,
              ),
            );
          }
        }
      }
    }
  }
  const halves: Dtypes[] = [
    { a: "f16", b: "f16", c: "f32", pre: "f32" },
    { a: "f16", b: "f16", c: "f16", pre: "f16" },
  ];
  for (const variant of F16_MATH_VARIANTS) {
    for (const t of halves) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          parts.push(tiledWgsl(HALF_SPECS[variant], transA, transB, "none", t));
        }
      }
    }
  }
  for (let s = 1; s <= SPLIT_K_MAX; s++) {
    for (const flags of [0, 1, 2, 3]) parts.push(splitKSumWgsl(s, (flags & 1) !== 0, flags > 1));
  }
  return parts.join("\n");
}

/** Autotuned choices by device, filled by `matmul_autotune.ts`; none: use the heuristic. */
export type MatmulTuner = (
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  /** Products in the call (both batch levels together). */
  count: number,
  /** The product multiplies in f16 (`MatmulArgs.f16Math`): the choice must be such a variant. */
  f16Math: boolean,
) => MatmulVariant | undefined;
const tuners = new WeakMap<Gpu, MatmulTuner>();

/** Installs the autotune's choice function for a device (see `matmul_autotune.ts`). */
export function setMatmulTuner(gpu: Gpu, tuner: MatmulTuner | undefined): void {
  if (tuner) tuners.set(gpu, tuner);
  else tuners.delete(gpu);
}

function tunedVariant(
  gpu: Gpu,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  count: number,
  f16Math: boolean,
): MatmulVariant | undefined {
  return tuners.get(gpu)?.(m, n, k, transA, transB, count, f16Math);
}

function fail(op: string, message: string): never {
  throw new GpuError(`${op}: ${message}`);
}

function checkCount(op: string, name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) {
    fail(op, `${name} must be a non-negative integer, got ${v}`);
  }
}

/**
 * Throws unless every element the arguments make the kernel touch in `t` lies inside it:
 * `offset + (rows-1)·rowStride + (cols-1)·colStride + Σ (count-1)·stride < numel`.
 */
function checkExtent(
  op: string,
  name: string,
  t: Tensor,
  offset: number,
  rows: number,
  cols: number,
  ld: number,
  batches: { count: number; stride: number }[],
): void {
  expectShape(op, name, t, t.shape, FLOAT_DTYPES);
  expectBindable(op, name, t);
  checkCount(op, `offset of ${name}`, offset);
  checkCount(op, `leading dimension of ${name}`, ld);
  if (ld < cols) {
    fail(op, `${name} ("${t.label}"): leading dimension ${ld} is less than its row length ${cols}`);
  }
  for (const b of batches) checkCount(op, `batch stride of ${name}`, b.stride);
  if (rows === 0 || cols === 0 || batches.some((b) => b.count === 0)) return;
  const last = offset + (rows - 1) * ld + (cols - 1) +
    batches.reduce((s, b) => s + (b.count - 1) * b.stride, 0);
  if (last >= t.numel) {
    fail(
      op,
      `${name} ("${t.label}") has ${t.numel} elements [${t.shape.join(", ")}], but the ` +
        `product reads element ${last} (offset ${offset}, ${rows}×${cols} with row stride ${ld}` +
        `${batches.length ? `, batch strides ${batches.map((b) => b.stride).join("/")}` : ""})`,
    );
  }
}

const matmulSource = cachedSource(matmulWgsl);

const directSource = cachedSource(directWgsl);

const tiledSource = cachedSource(tiledWgsl);

const vec4Source = cachedSource(vec4Wgsl);

/**
 * Records C = alpha · op(A) · op(B) (+ bias) (+ C) for every product of the batch, through the
 * epilogue when one is given.
 */
export function matmul(rec: Recorder, args: MatmulArgs): void {
  const op = args.op ?? "matmul";
  const { a, b, c, m, n, k } = args;
  const transA = args.transA ?? false;
  const transB = args.transB ?? false;
  checkCount(op, "m", m);
  checkCount(op, "n", n);
  checkCount(op, "k", k);
  const noBatch = { count: 1, strideA: 0, strideB: 0, strideC: 0 };
  const batch0 = args.batch0 ?? noBatch;
  const batch1 = args.batch1 ?? noBatch;
  checkCount(op, "batch0.count", batch0.count);
  checkCount(op, "batch1.count", batch1.count);
  const batches = [batch0, batch1];

  // Stored shapes: A is aRows×aCols with row stride lda, and so on.
  const [aRows, aCols] = transA ? [k, m] : [m, k];
  const [bRows, bCols] = transB ? [n, k] : [k, n];
  const lda = args.lda ?? aCols;
  const ldb = args.ldb ?? bCols;
  const ldc = args.ldc ?? n;
  const offA = args.offsetA ?? 0;
  const offB = args.offsetB ?? 0;
  const offC = args.offsetC ?? 0;
  const alpha = args.alpha ?? 1;
  if (!Number.isFinite(alpha)) fail(op, `alpha must be finite, got ${alpha}`);

  // A and B are not read when k = 0 (C becomes bias or is left as is), or when C is empty.
  const readsAB = k > 0 && m > 0 && n > 0;
  const strides = (key: "strideA" | "strideB" | "strideC") =>
    batches.map((x) => ({ count: x.count, stride: x[key] }));
  checkExtent(op, "A", a, offA, readsAB ? aRows : 0, aCols, lda, strides("strideA"));
  checkExtent(op, "B", b, offB, readsAB ? bRows : 0, bCols, ldb, strides("strideB"));
  checkExtent(op, "C", c, offC, m, n, ldc, strides("strideC"));
  for (const [level, x] of batches.entries()) {
    if (x.count > 1 && x.strideC === 0 && m > 0 && n > 0) {
      fail(op, `batch${level}.strideC is 0: ${x.count} products would write the same C`);
    }
  }
  if (args.bias) {
    const bias = args.bias;
    if (bias.dtype !== "f32") fail(op, `bias ("${bias.label}") is ${bias.dtype}, expected f32`);
    if (bias.shape.length !== 1 || bias.shape[0] !== n) {
      fail(op, `bias ("${bias.label}") has shape [${bias.shape.join(", ")}], expected [${n}]`);
    }
    expectBindable(op, "bias", bias);
  }
  const epilogue = epilogueKind(args.epilogue);
  const pre = args.epilogue?.preActivation;
  if (args.epilogue && !["gelu", "geluGrad"].includes(args.epilogue.kind)) {
    fail(op, `unknown epilogue "${args.epilogue.kind}"`);
  }
  if (args.epilogue?.kind === "geluGrad" && !pre) {
    fail(op, "the geluGrad epilogue needs preActivation");
  }
  if (pre) checkExtent(op, "preActivation", pre, offC, m, n, ldc, strides("strideC"));
  // WebGPU forbids binding one buffer both writable and read-only in the same dispatch.
  for (const [name, t] of [["A", a], ["B", b], ["bias", args.bias]] as const) {
    if (t && t.buffer === c.buffer) {
      fail(op, `C ("${c.label}") shares a GPU buffer with ${name} ("${t.label}")`);
    }
    if (t && pre && epilogue === "gelu_save" && t.buffer === pre.buffer) {
      fail(op, `preActivation ("${pre.label}") shares a GPU buffer with ${name} ("${t.label}")`);
    }
  }
  if (pre && pre.buffer === c.buffer) {
    fail(op, `C ("${c.label}") shares a GPU buffer with preActivation ("${pre.label}")`);
  }

  const dtypes: Dtypes = { a: a.dtype, b: b.dtype, c: c.dtype, pre: pre?.dtype ?? "f32" };
  if (Object.values(dtypes).includes("f16")) expectF16(rec.gpu, op);

  const count = batch0.count * batch1.count;
  if (m === 0 || n === 0 || count === 0) return;

  const f16Math = args.f16Math ?? false;
  if (f16Math) expectF16(rec.gpu, `${op} (f16Math)`);
  if (args.variant && isF16MathVariant(args.variant) !== f16Math) {
    fail(
      op,
      f16Math
        ? `variant ${args.variant} sums in f32; with f16Math use one of ${
          F16_MATH_VARIANTS.join(", ")
        }`
        : `variant ${args.variant} multiplies in f16: it needs f16Math`,
    );
  }
  // A tuner's choice of the other kind (f16 arithmetic or not) is not taken: results must not
  // depend on what a tune chose.
  const tuned = tunedVariant(rec.gpu, m, n, k, transA, transB, count, f16Math);
  const asked = args.variant ??
    (tuned && isF16MathVariant(tuned) === f16Math ? tuned : undefined) ??
    (f16Math ? chooseF16MathVariant(rec.gpu, m, n) : chooseVariant(m, n, transA));
  // An nn_ variant's kernel is checked before its copies are recorded (the kernel's own check
  // below comes after them), so that a refusal leaves the Recorder as it was.
  if (untransposedKernel(asked) && !variantFits(rec.gpu, asked)) {
    fail(
      op,
      `variant ${asked} needs up to ${workgroupBytes(asked)} bytes of workgroup memory, more ` +
        `than this device's ${rec.gpu.limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  // A weight gradient over many tokens: its k-slices in one batched launch, then their sum in
  // order (kernels/matmul_split.ts).
  const split = args.epilogue || c.dtype !== "f32"
    ? 1
    : splitKCount(m, n, k, transA, transB, count);
  if (split > 1) {
    const kc = k / split;
    // An nn_ choice untransposes the whole of A first (the batched slices could not: an nn_
    // variant of a batch runs the heuristic's kernel), then the slices run its kernel on the copy.
    const kernel = untransposedKernel(asked);
    const copied = kernel
      ? untransposeOperands(rec, op, { ...args, transA, transB, lda, ldb })
      : null;
    const o = copied
      ? {
        a: copied.a,
        b: copied.b,
        transA: false,
        transB: false,
        lda: copied.lda ?? k,
        ldb: copied.ldb ?? n,
        offA: copied.offsetA ?? 0,
        offB: copied.offsetB ?? 0,
      }
      : { a, b, transA, transB, lda, ldb, offA, offB };
    const partial = splitWorkspace.view(rec.gpu, [split * m * n]);
    matmul(rec, {
      op,
      a: o.a,
      b: o.b,
      c: partial,
      m,
      n,
      k: kc,
      transA: o.transA,
      transB: o.transB,
      lda: o.lda,
      ldb: o.ldb,
      offsetA: o.offA,
      offsetB: o.offB,
      batch1: {
        count: split,
        strideA: kc * (o.transA ? o.lda : 1),
        strideB: kc * (o.transB ? 1 : o.ldb),
        strideC: m * n,
      },
      variant: kernel ?? asked,
      f16Math,
    });
    splitKSum(rec, op, {
      partial,
      c,
      bias: args.bias,
      m,
      n,
      slices: split,
      offC,
      ldc,
      alpha,
      accumulate: args.accumulate ?? false,
    });
    return;
  }

  const [rsA, csA] = transA ? [1, lda] : [lda, 1];
  const [rsB, csB] = transB ? [1, ldb] : [ldb, 1];
  let variant = untransposedKernel(asked) ?? asked as KernelVariant;
  if (variant !== asked && (transA || transB)) {
    if (count === 1) {
      const untransposed = untransposeOperands(rec, op, { ...args, transA, transB, lda, ldb });
      if (untransposed) return matmul(rec, { ...untransposed, variant });
    } else {
      // A batched member of a class tuned to copy (attention's per-head products): its kernel on
      // the transposed operands was never timed; the built-in choice was, as the tune's reference.
      variant = chooseVariant(m, n, transA);
    }
  }
  // Operands the vec4 loads cannot read: the vec4 kernels give way to direct4x4; the tiled ones
  // stage them with scalar loads instead (the same values staged, the same sums).
  let aligned = true;
  if (VARIANTS[variant].kind === "vec4" || VARIANTS[variant].kind === "tiled") {
    aligned = vec4Aligned(a, offA, lda, strides("strideA"), transA ? m : k) &&
      vec4Aligned(b, offB, ldb, strides("strideB"), transB ? k : n) && k % 4 === 0;
    if (!aligned && VARIANTS[variant].kind === "vec4") variant = "direct4x4";
  }
  const spec = VARIANTS[variant];
  const gpu = rec.gpu;
  const maxDim = gpu.limits.maxComputeWorkgroupsPerDimension;
  const slices = kSlices(k, K_SLICE[spec.kind]);
  const sliced = slices.length > 1;
  let gx: number, gy: number, pipeline: GPUComputePipeline;
  const name = `matmul_${variant}${epilogue === "none" ? "" : `_${epilogue}`}${
    dtypesSuffix(dtypes)
  }${sliced ? "_ksliced" : ""}`;
  if (spec.kind === "shared") {
    gx = Math.ceil(n / (WG * spec.rn));
    gy = Math.ceil(m / (WG * spec.rm));
    pipeline = getPipeline(gpu, name, matmulSource(spec.rm, spec.rn, epilogue, dtypes, sliced));
  } else if (spec.kind === "direct") {
    gx = Math.ceil(n / (spec.wx * spec.rn));
    gy = Math.ceil(m / (spec.wy * spec.rm));
    const code = directSource(spec.rm, spec.rn, spec.wx, spec.wy, epilogue, dtypes, sliced);
    pipeline = getPipeline(gpu, name, code);
  } else if (spec.kind === "tiled") {
    gx = Math.ceil(n / (16 * spec.rn));
    gy = Math.ceil(m / (16 * spec.rm));
    // Some variants need more than WebGPU's guaranteed 16 KiB (the device asks for the adapter's
    // most), and wgpu passes an oversized kernel to the driver unchecked.
    const bytes = tiledWorkgroupBytes(spec, transA);
    if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) {
      fail(
        op,
        `variant ${variant} needs ${bytes} bytes of workgroup memory, more than this device's ` +
          `${gpu.limits.maxComputeWorkgroupStorageSize}`,
      );
    }
    const code = tiledSource(spec, transA, transB, epilogue, dtypes, sliced, aligned);
    pipeline = getPipeline(gpu, `${name}${aligned ? "" : "_u"}_${+transA}${+transB}`, code);
  } else {
    gx = Math.ceil(n / (spec.wx * spec.rn));
    gy = Math.ceil(m / (spec.wy * spec.rm));
    const code = vec4Source(
      spec.rm,
      spec.rn,
      spec.ku,
      spec.wx,
      spec.wy,
      transA,
      transB,
      epilogue,
      dtypes,
      sliced,
    );
    pipeline = getPipeline(gpu, `${name}_${+transA}${+transB}`, code);
  }
  if (gx > maxDim || gy > maxDim) {
    fail(op, `${m}×${n} output needs ${gy}×${gx} workgroups, more than ${maxDim} per dimension`);
  }

  const flags = (args.accumulate ? 1 : 0) | (args.bias ? 2 : 0);
  const bindings = [a, b, args.bias ?? a, c, ...(pre ? [pre] : [])];
  // Batches beyond one dispatch's z limit go in further dispatches, each from its own zBase.
  let zStep = maxDim;
  if (sliced) {
    // The slices' accumulators: m·n per product of a dispatch, as many products as fit a binding.
    const perProduct = m * n;
    zStep = Math.min(zStep, Math.floor(gpu.limits.maxStorageBufferBindingSize / 4 / perProduct));
    if (zStep < 1) {
      fail(op, `k = ${k} is cut into slices, whose ${m}×${n} f32 accumulators exceed a binding`);
    }
    bindings.push(partialWorkspace.view(gpu, [Math.min(zStep, count) * perProduct]));
  }
  for (let zBase = 0; zBase < count; zBase += zStep) {
    // Every slice of these products in turn (one launch when k is not sliced), the last one
    // storing through alpha, bias, accumulate and the epilogue.
    slices.forEach(([kBegin, kEnd], s) => {
      const sliceFlags = (s > 0 ? FLAG_RESUME : 0) | (s < slices.length - 1 ? FLAG_KEEP : 0);
      // Mirrors the WGSL Params struct, four words a row.
      // deno-fmt-ignore
      const words = new Uint32Array([
        m, n, kEnd, batch1.count,
        offA, rsA, csA, offB,
        rsB, csB, offC, ldc,
        batch0.strideA, batch1.strideA, batch0.strideB, batch1.strideB,
        batch0.strideC, batch1.strideC, 0 /* alpha */, flags | sliceFlags,
        zBase, kBegin, 0, 0,
      ]);
      new Float32Array(words.buffer)[18] = alpha;
      rec.dispatch(op, pipeline, bindings, [gx, gy, Math.min(zStep, count - zBase)], words);
    });
  }
}

/**
 * An `nn_` variant's copies: each transposed operand of an unbatched product copied untransposed
 * (packed) into its workspace, and the arguments of the same product on the copies; or null
 * (nothing recorded) when the copies would not fit a binding or the untransposed product could
 * not be read as vec4s (it would run `direct4x4`: the copies would buy nothing).
 */
function untransposeOperands(
  rec: Recorder,
  op: string,
  args: MatmulArgs & { transA: boolean; transB: boolean; lda: number; ldb: number },
): MatmulArgs | null {
  const { a, b, m, n, k, transA, transB } = args;
  const gpu = rec.gpu;
  const maxGroups = gpu.limits.maxComputeWorkgroupsPerDimension * TRANSPOSE_TILE;
  const fits = (t: Tensor, rows: number, cols: number) =>
    rows * cols * DTYPE_BYTES[t.dtype] <= gpu.limits.maxStorageBufferBindingSize &&
    rows <= maxGroups && cols <= maxGroups;
  if ((transA && !fits(a, k, m)) || (transB && !fits(b, n, k))) return null;
  // Packed copies start a buffer: aligned whenever their rows are (k for A, n for B).
  const offA = args.offsetA ?? 0;
  const offB = args.offsetB ?? 0;
  const aReadable = transA ? k % 4 === 0 : vec4Aligned(a, offA, args.lda, [], k);
  const bReadable = transB ? n % 4 === 0 : vec4Aligned(b, offB, args.ldb, [], n);
  if (!aReadable || !bReadable || k % 4 !== 0) return null;
  // `src` stored rows × cols from `offset`, row stride `ld`: its packed transpose, in `into`.
  const copy = (
    name: "A" | "B",
    into: Workspace,
    src: Tensor,
    rows: number,
    cols: number,
    offset: number,
    ld: number,
  ) => {
    const dst = into.view(gpu, [rows * cols], src.dtype);
    transpose(rec, { op: `${op} ${NN_COPY} ${name}`, src, dst, rows, cols, offset, ld });
    return dst;
  };
  const out: MatmulArgs = { ...args, transA: false, transB: false };
  // A stored [k, m] becomes op(A), [m, k]; B stored [n, k] becomes op(B), [k, n].
  if (transA) {
    Object.assign(out, {
      a: copy("A", untransposedA, a, k, m, offA, args.lda),
      offsetA: 0,
      lda: k,
    });
  }
  if (transB) {
    Object.assign(out, {
      b: copy("B", untransposedB, b, n, k, offB, args.ldb),
      offsetB: 0,
      ldb: n,
    });
  }
  return out;
}

/**
 * Ends the label of an `nn_` variant's copy dispatches (`<op> nn_ copy of A`), before the product's
 * own dispatches (`<op>`): what `matmulVariantsUsed` tells the variants apart by.
 */
export const NN_COPY = "nn_ copy of";

/** The launcher's logic beside the kernels' WGSL: what the autotune's version hash covers. */
export function matmulLauncherSources(): string {
  return [matmul, untransposeOperands, splitKCount, splitKSum].map(String).join("\n");
}

/** The `nn_` variants' untransposed copies (written and read within one matmul call). */
const untransposedA = new Workspace("matmul untransposed A");
const untransposedB = new Workspace("matmul untransposed B");

/**
 * The accumulators a k-sliced product carries from one slice's launch to the next: written and
 * read only between the dispatches of one call (kernels/workspace.ts: why sharing it is safe).
 */
const partialWorkspace = new Workspace("matmul k-slice accumulators");

/** A split product's partial sums, one m×n block per slice (written and read within one call). */
const splitWorkspace = new Workspace("matmul split-k partial sums");
