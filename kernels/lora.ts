// LoRA's low-rank path beside a frozen linear layer: out += scale · (X·Aᵀ)·Bᵀ, with A: [r, in] and
// B: [out, r] (the layout of Hugging Face PEFT's lora_A / lora_B weights). `matmul` calls: its
// alpha carries the scale and its accumulate adds onto the frozen path's output. The r-wide
// products over the layer's width (X·Aᵀ and dY·B) are `thinMatmul`'s (kernels/thin_matmul.ts)
// up to r = 16. The gradients of A and B are sums over every token row of a small (r-wide)
// matrix, and are split over row blocks (`rowSum`).

import { GpuError } from "./device.ts";
import { columnSum } from "./linear.ts";
import { matmul } from "./matmul.ts";
import { THIN_MAX_N, thinMatmul, type ThinMatmulArgs } from "./thin_matmul.ts";
import { THIN_TN_MAX, thinTnBlocks } from "./thin_tn.ts";
import { Workspace } from "./workspace.ts";
import type { Recorder } from "./recorder.ts";
import {
  expectBindable,
  expectDisjoint,
  expectShape,
  FLOAT_DTYPES,
  type Tensor,
} from "./tensor.ts";

/** Arguments of `loraForward`: A, B and `hidden` are f32; x and out f32 or f16. */
export interface LoraForwardArgs {
  /** The layer input, [..., in]; leading dimensions are flattened to rows. */
  x: Tensor;
  /** lora_A, [r, in] */
  a: Tensor;
  /** lora_B, [out, r] */
  b: Tensor;
  /** PEFT's lora_alpha / r. */
  scale: number;
  /** Receives X·Aᵀ, [rows, r] (or [..., r]); kept for the backward pass. */
  hidden: Tensor;
  /** [..., out]; the frozen layer's output, which the low-rank path is added into. */
  out: Tensor;
}

/** Arguments of `loraBackward`: A, B, `hidden` and their gradients are f32. */
export interface LoraBackwardArgs {
  /** The forward input, [..., in]. */
  x: Tensor;
  /** lora_A, [r, in] */
  a: Tensor;
  /** lora_B, [out, r] */
  b: Tensor;
  /** The forward pass's scale (lora_alpha / r). */
  scale: number;
  /** The forward pass's X·Aᵀ. */
  hidden: Tensor;
  /** Gradient of the loss with respect to the layer output, [..., out]. */
  dOut: Tensor;
  /** [..., in]; the low-rank path's input gradient is ADDED into it (the frozen path writes it first). */
  dX?: Tensor;
  /** [r, in] */
  dA?: Tensor;
  /** [out, r] */
  dB?: Tensor;
  /** Add dA and dB into the existing gradients instead of overwriting them. */
  accumulate?: boolean;
  /**
   * Workspace for scale·dY·B, [rows, r] (or [..., r]), needed when dA or dX is asked for. It may
   * be `hidden` itself, which is then overwritten after its last read. If omitted, a workspace
   * kept per device by this module is used.
   */
  dHidden?: Tensor;
}

/** Checks x, a, b, hidden and the [..., out] tensor; returns the sizes. */
function loraShapes(
  op: string,
  args: { x: Tensor; a: Tensor; b: Tensor; scale: number; hidden: Tensor },
  outName: string,
  outT: Tensor,
) {
  const { x, a, b, hidden, scale } = args;
  expectShape(op, "a", a, [-1, -1], "f32");
  const [r, inF] = a.shape;
  expectShape(op, "b", b, [-1, r], "f32");
  const outF = b.shape[0];
  if (x.shape.length < 1) {
    throw new GpuError(`${op}: x ("${x.label}") is a scalar, expected [..., ${inF}]`);
  }
  const lead = x.shape.slice(0, -1);
  expectShape(op, "x", x, [...lead, inF], FLOAT_DTYPES);
  const rows = lead.reduce((p, q) => p * q, 1);
  expectRowsByR(op, "hidden", hidden, lead, rows, r);
  expectShape(op, outName, outT, [...lead, outF], FLOAT_DTYPES);
  if (!Number.isFinite(scale)) throw new GpuError(`${op}: scale must be finite, got ${scale}`);
  return { r, inF, outF, rows, lead };
}

/** Accepts [rows, r] or [...lead, r]. */
function expectRowsByR(
  op: string,
  name: string,
  t: Tensor,
  lead: readonly number[],
  rows: number,
  r: number,
): void {
  const flat = t.shape.length === 2 && t.shape[0] === rows;
  expectShape(op, name, t, flat ? [rows, r] : [...lead, r], "f32");
}

function bindable(op: string, tensors: Record<string, Tensor | undefined>): void {
  for (const [name, t] of Object.entries(tensors)) if (t) expectBindable(op, name, t);
}

/** Records hidden = x·aᵀ and out += scale · hidden·bᵀ. */
export function loraForward(rec: Recorder, args: LoraForwardArgs): void {
  const op = "loraForward";
  const { x, a, b, hidden, out, scale } = args;
  const { r, inF, outF, rows } = loraShapes(op, args, "out", out);
  bindable(op, { x, a, b, hidden, out });
  narrow(rec, { op: `${op} (hidden)`, x, w: a, c: hidden, m: rows, n: r, k: inF, transW: true });
  matmul(rec, {
    op: `${op} (out)`,
    a: hidden,
    b,
    c: out,
    m: rows,
    n: outF,
    k: r,
    transB: true,
    alpha: scale,
    accumulate: true,
  });
}

/** c = alpha · x·op(w), r = n columns wide: `thinMatmul` up to its width, else `matmul`. */
function narrow(rec: Recorder, o: ThinMatmulArgs): void {
  if (o.n <= THIN_MAX_N) {
    thinMatmul(rec, o);
    return;
  }
  const { op, x, w, c, m, n, k, transW, alpha } = o;
  matmul(rec, { op, a: x, b: w, c, m, n, k, transB: transW, alpha });
}

/** Token rows per partial product of `rowSum`. */
export const LORA_SPLIT_ROWS = 256;

/** rowSum's partial products, [blocks, m·n]. */
const partials = new Workspace("lora row-block partials", 1, true);

/**
 * c (+)= alpha · aᵀ·b for a: [rows, m], b: [rows, n] with a small m·n and many rows (dA and dB:
 * one side is r = 8 wide, k is every token). One product gives each of its few workgroups the
 * whole k loop: 19 ms per call at RoBERTa-large's 4096 rows on an H100, 37% of a LoRA step. So
 * from 2·LORA_SPLIT_ROWS rows on, one product per block of rows into a workspace, then a
 * fixed-order column sum over the blocks (deterministic, no atomics). The block products are
 * kernels/thin_tn.ts's when a side is at most THIN_TN_MAX wide (batched `matmul` ones ran at 49
 * GFLOP/s on the H200), else a batched `matmul`.
 */
function rowSum(
  rec: Recorder,
  op: string,
  o: { a: Tensor; b: Tensor; c: Tensor; m: number; n: number; rows: number; alpha?: number },
  accumulate: boolean,
): void {
  const { a, b, c, m, n, rows } = o;
  const alpha = o.alpha ?? 1;
  if (rows < 2 * LORA_SPLIT_ROWS) {
    matmul(rec, { op, a, b, c, m, n, k: rows, transA: true, alpha, accumulate });
    return;
  }
  const full = Math.floor(rows / LORA_SPLIT_ROWS);
  const rest = rows - full * LORA_SPLIT_ROWS;
  const blocks = full + (rest > 0 ? 1 : 0);
  const p = partials.view(rec.gpu, [blocks, m * n]);
  if (Math.min(m, n) <= THIN_TN_MAX) {
    // Every block, the last short one too, in one launch of the kernel for a narrow side.
    thinTnBlocks(rec, {
      op: `${op} blocks`,
      a,
      b,
      partial: p,
      m,
      n,
      rows,
      rowsPerBlock: LORA_SPLIT_ROWS,
      alpha,
    });
    columnSum(rec, `${op} sum`, p, c, blocks, m * n, accumulate);
    return;
  }
  matmul(rec, {
    op: `${op} blocks`,
    a,
    b,
    c: p,
    m,
    n,
    k: LORA_SPLIT_ROWS,
    transA: true,
    alpha,
    batch0: {
      count: full,
      strideA: LORA_SPLIT_ROWS * m,
      strideB: LORA_SPLIT_ROWS * n,
      strideC: m * n,
    },
  });
  if (rest > 0) {
    matmul(rec, {
      op: `${op} last block`,
      a,
      b,
      c: p,
      m,
      n,
      k: rest,
      transA: true,
      alpha,
      offsetA: full * LORA_SPLIT_ROWS * m,
      offsetB: full * LORA_SPLIT_ROWS * n,
      offsetC: full * m * n,
    });
  }
  columnSum(rec, `${op} sum`, p, c, blocks, m * n, accumulate);
}

/** scale · dY · B when the caller gives no dHidden; doubling, as its need grows with the rows. */
const workspace = new Workspace("lora workspace", 1, true);

/**
 * Records the LoRA gradients: dB = scale · dYᵀ·hidden, dA = (scale · dY·B)ᵀ·X and
 * dX += (scale · dY·B)·A. The frozen weight gets none.
 */
export function loraBackward(rec: Recorder, args: LoraBackwardArgs): void {
  const op = "loraBackward";
  const { x, a, b, hidden, dOut, dX, dA, dB, scale } = args;
  const { r, inF, outF, rows, lead } = loraShapes(op, args, "dOut", dOut);
  if (dX) expectShape(op, "dX", dX, [...lead, inF], FLOAT_DTYPES);
  if (dA) expectShape(op, "dA", dA, [r, inF], "f32");
  if (dB) expectShape(op, "dB", dB, [outF, r], "f32");
  if (args.dHidden) expectRowsByR(op, "dHidden", args.dHidden, lead, rows, r);
  bindable(op, { x, a, b, hidden, dOut, dX, dA, dB, dHidden: args.dHidden });
  // dHidden may be hidden itself (read first, then overwritten: see below).
  expectDisjoint(op, { dX, dA, dB, dHidden: args.dHidden }, { x, a, b, dOut });
  const accumulate = args.accumulate ?? false;

  // dB first: it is hidden's last reader, so dHidden may overwrite hidden afterwards.
  if (dB) {
    rowSum(
      rec,
      `${op} (dB)`,
      { a: dOut, b: hidden, c: dB, m: outF, n: r, rows, alpha: scale },
      accumulate,
    );
  }
  if (!dA && !dX) return;
  const dHidden = args.dHidden ?? workspace.view(rec.gpu, [rows, r]);
  narrow(rec, {
    op: `${op} (dHidden)`,
    x: dOut,
    w: b,
    c: dHidden,
    m: rows,
    n: r,
    k: outF,
    transW: false,
    alpha: scale,
  });
  if (dA) rowSum(rec, `${op} (dA)`, { a: dHidden, b: x, c: dA, m: r, n: inF, rows }, accumulate);
  if (dX) {
    matmul(rec, {
      op: `${op} (dX)`,
      a: dHidden,
      b: a,
      c: dX,
      m: rows,
      n: inF,
      k: r,
      accumulate: true,
    });
  }
}
