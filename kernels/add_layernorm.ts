// The tail of a post-LN residual block, fused: out = LayerNorm(dropout(dense) + residual), as in
// BERT's attention.output and output modules, forward and backward.
//
// Unfused, the forward is three launches (dropout, add, LayerNorm) and three round trips of the
// [rows, h] activations through memory; the backward four (LayerNorm dX and dGamma/dBeta,
// dropout, and adding the residual's gradient). Here the forward is one row kernel and the
// backward one row kernel plus the dGamma/dBeta column sums.
//
// The dropout mask is regenerated from (seed, stream, flat element index) with the Philox of
// kernels/dropout.ts, so it is the mask dropoutForward draws for the same tensor and settings,
// and the sum dropout(dense) + residual is the very float32 that dropoutForward and add
// produce. The statistics follow kernels/layernorm.ts exactly (same invocations per row, same
// corrected two-pass sums, same fixed reduction order): the output is bitwise the output of the
// three unfused launches.
//
// The forward saves x̂ = (x − mean)·rstd and rstd rather than x and the mean: the backward needs
// nothing else (dX = rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dOut·gamma; dGamma = Σ dOut·x̂), x̂
// is exactly the value the forward normalised with, and x itself never has to be stored. The
// forward keeps the row's sum in `out` between its passes (without dropout each invocation reads
// back only the elements it wrote; with it, the sum is written in quads, see elementPass, and read
// back after a storage barrier), so it needs no scratch of its own.

import { GpuError } from "./device.ts";
import { checkDropout, DROPOUT_WGSL, type DropoutConfig, dropoutScale } from "./dropout.ts";
import {
  layerNormParamGrads,
  quadPass,
  rowGrid,
  rowKernel,
  rowSumWgsl,
  rowThreads,
  stridedPass,
} from "./layernorm.ts";
import { cachedSource, getPipeline } from "./pipeline.ts";
import type { Recorder } from "./recorder.ts";
import { expectBindings, expectShape, type Tensor } from "./tensor.ts";

/** WGSL giving element `i` of dropout(`value`) (or `value` itself without dropout). */
function dropped(dropout: boolean, value: string, i: string): string {
  return dropout
    ? `select(0.0, ${value} * params.scale, ` +
      `dropout_keep_cached(&state, params.seed, params.stream, ${i}, params.p))`
    : value;
}

/**
 * A pass over the row's elements j, i = base + j (named j_0, i_0, … as in stridedPass, whose
 * `loads` come first), in which `body` may draw the dropout mask (`dropped`): with dropout, lane
 * l takes the quads 4l … 4l + 3, 4(l + t) …, so that it computes one Philox block
 * (kernels/dropout.ts) per four elements (two where h is not a multiple of 4) instead of one per
 * element (Philox's 32-bit multiplies, split into 16-bit halves, made the mask most of these
 * kernels' time on the H200, 2026-11-28); without, stridedPass. Only for passes whose elements
 * are computed each on its own: the row sums keep the strided order, so results are bitwise those
 * of one order throughout.
 */
function elementPass(
  t: number,
  dropout: boolean,
  loads: (k: number) => string,
  body: (k: number) => string,
): string {
  if (!dropout) return stridedPass(t, loads, body);
  return `{
    var state = dropout_block_none();
    ${quadPass(t, loads, body)}
  }`;
}

const forwardWgsl = (t: number, dropout: boolean, save: boolean) =>
  rowKernel(
    t,
    /* wgsl */ `
${dropout ? DROPOUT_WGSL : ""}
@group(0) @binding(0) var<storage, read> dense: array<f32>;
@group(0) @binding(1) var<storage, read> residual: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
${
      save
        ? `@group(0) @binding(5) var<storage, read_write> xhat: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;`
        : ""
    }
struct Params { rows: u32, h: u32, eps: f32, seed: u32, stream: u32, p: f32, scale: f32 }
@group(0) @binding(${save ? 7 : 5}) var<uniform> params: Params;
${rowSumWgsl("f32", t, 0)}
${rowSumWgsl("vec2f", t, 1)}`,
    /* wgsl */ `
  var s = 0.0;
  ${
      dropout
        ? `// The sum in quads (elementPass), then its row sums in the strided order: other lanes'.
  ${
          elementPass(
            t,
            true,
            (k) => `let d_${k} = dense[i_${k}]; let r_${k} = residual[i_${k}];`,
            (k) => `out[i_${k}] = ${dropped(true, `d_${k}`, `i_${k}`)} + r_${k};`,
          )
        }
  storageBarrier();
  ${stridedPass(t, (k) => `let o_${k} = out[i_${k}];`, (k) => `s += o_${k};`)}`
        : stridedPass(
          t,
          (k) => `let d_${k} = dense[i_${k}]; let r_${k} = residual[i_${k}];`,
          (k) =>
            `let x_${k} = d_${k} + r_${k};
      out[i_${k}] = x_${k};
      s += x_${k};`,
        )
    }
  let m1 = row_sum_0(lid, s) * inv_h;
  var q = vec2f(0.0);
  ${
      stridedPass(t, (k) => `let o_${k} = out[i_${k}];`, (k) =>
        `let d_${k} = o_${k} - m1;
      q += vec2f(d_${k}, d_${k} * d_${k});`)
    }
  let sums = row_sum_1(lid, q) * inv_h;
  let c = sums.x;
  let rstd = inverseSqrt(max(sums.y - c * c, 0.0) + params.eps);
  ${
      stridedPass(
        t,
        (k) => `let o_${k} = out[i_${k}]; let g_${k} = gamma[j_${k}]; let b_${k} = beta[j_${k}];`,
        (k) =>
          `let xh_${k} = ((o_${k} - m1) - c) * rstd;
      ${save ? `xhat[i_${k}] = xh_${k};` : ""}
      out[i_${k}] = xh_${k} * g_${k} + b_${k};`,
      )
    }
  ${save ? "if (valid && lane == 0u) { rstd_out[row] = rstd; }" : ""}`,
  );

// dSum = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dOut · gamma; the residual's gradient is
// dSum, the dense input's is dSum through the dropout mask.
const backwardWgsl = (t: number, dropout: boolean, withDense: boolean, withResidual: boolean) => {
  const outs = [
    ...(withDense ? ["dDense"] : []),
    ...(withResidual ? ["dResidual"] : []),
  ];
  const bindings = outs.map((name, k) =>
    `@group(0) @binding(${4 + k}) var<storage, read_write> ${name}: array<f32>;`
  ).join("\n");
  return rowKernel(
    t,
    /* wgsl */ `
${dropout && withDense ? DROPOUT_WGSL : ""}
@group(0) @binding(0) var<storage, read> xhat: array<f32>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> dOut: array<f32>;
${bindings}
struct Params {
  rows: u32, h: u32, accumulate: u32, seed: u32, stream: u32, p: f32, scale: f32,
}
@group(0) @binding(${4 + outs.length}) var<uniform> params: Params;
${rowSumWgsl("vec2f", t, 0)}`,
    /* wgsl */ `
  var rs = 0.0;
  if (valid) { rs = rstd[row]; }
  var s = vec2f(0.0);
  ${
      stridedPass(
        t,
        (k) =>
          `let do_${k} = dOut[i_${k}]; let ga_${k} = gamma[j_${k}]; let xh_${k} = xhat[i_${k}];`,
        (k) => `let g_${k} = do_${k} * ga_${k};
      s += vec2f(g_${k}, g_${k} * xh_${k});`,
      )
    }
  let sums = row_sum_0(lid, s) * inv_h;
  // One feature: dx exactly 0 (see layernorm.ts), not FMA contraction's rounding error × rstd.
  ${
      elementPass(
        t,
        dropout && withDense,
        (k) =>
          `let do_${k} = dOut[i_${k}]; let ga_${k} = gamma[j_${k}]; let xh_${k} = xhat[i_${k}];${
            withResidual
              ? `
      var old_${k} = 0.0;
      if (params.accumulate != 0u) { old_${k} = dResidual[i_${k}]; }`
              : ""
          }`,
        (k) =>
          `let dx_${k} = select(rs * (do_${k} * ga_${k} - sums.x - xh_${k} * sums.y), 0.0, params.h == 1u);
      ${
            withResidual
              ? `var r_${k} = dx_${k};
      if (params.accumulate != 0u) { r_${k} += old_${k}; }
      dResidual[i_${k}] = r_${k};`
              : ""
          }
      ${withDense ? `dDense[i_${k}] = ${dropped(dropout, `dx_${k}`, `i_${k}`)};` : ""}`,
      )
    }`,
  );
};

/** Checks x [..., h] f32 with h > 0; returns rows, h and x's leading dimensions. */
function rowShape(op: string, name: string, x: Tensor) {
  if (x.shape.length === 0) {
    throw new GpuError(`${op}: ${name} ("${x.label}") is a scalar; expected [..., hidden]`);
  }
  const h = x.shape[x.shape.length - 1];
  if (h === 0) throw new GpuError(`${op}: ${name} ("${x.label}") has an empty last dimension`);
  expectShape(op, name, x, x.shape, "f32");
  return { rows: x.numel / h, h, lead: x.shape.slice(0, -1) };
}

/** Checks a per-row statistic: [rows], or x's shape without its last dimension. */
function expectRowStat(op: string, name: string, t: Tensor, lead: number[], rows: number): void {
  const isLead = t.shape.length === lead.length && lead.every((d, i) => d === t.shape[i]);
  expectShape(op, name, t, isLead ? lead : [rows], "f32");
}

/** Dropout settings for the kernels' uniform; p = 0 (or none) runs the mask-free pipeline. */
function dropoutParams(op: string, d: DropoutConfig | undefined) {
  if (d) checkDropout(op, d);
  const on = d !== undefined && d.p > 0;
  return { on, seed: d?.seed ?? 0, stream: d?.stream ?? 0, p: on ? d.p : 0 };
}

const forwardSource = cachedSource(forwardWgsl);

/**
 * Records `out = LayerNorm(dropout(dense) + residual)` over the last dimension (gamma, beta,
 * biased variance, eps inside the square root, as torch.nn.LayerNorm), the dropout mask that
 * `dropoutForward` draws with the same settings. With `xhat` and `rstd` it saves what
 * `addLayerNormBackward` needs: the normalised sum (x − mean)·rstd and each row's rstd.
 */
export function addLayerNormForward(
  rec: Recorder,
  args: {
    /** [..., h]: the sublayer's output, before its dropout. */
    dense: Tensor;
    /** [..., h], the shape of dense: the block's input. */
    residual: Tensor;
    gamma: Tensor;
    beta: Tensor;
    /** [..., h], the shape of dense. */
    out: Tensor;
    /** For the backward: [..., h], the shape of dense; give both or neither. */
    xhat?: Tensor;
    /** For the backward: [rows], or dense's shape without its last dimension. */
    rstd?: Tensor;
    eps: number;
    /** Dropout on dense; none, or p = 0: no dropout. */
    dropout?: DropoutConfig;
  },
): void {
  const op = "addLayerNormForward";
  const { dense, residual, gamma, beta, out, xhat, rstd, eps } = args;
  const { rows, h, lead } = rowShape(op, "dense", dense);
  expectShape(op, "residual", residual, dense.shape, "f32");
  expectShape(op, "gamma", gamma, [h], "f32");
  expectShape(op, "beta", beta, [h], "f32");
  expectShape(op, "out", out, dense.shape, "f32");
  if (!xhat !== !rstd) {
    const [given, missing] = xhat ? ["xhat", "rstd"] : ["rstd", "xhat"];
    throw new GpuError(`${op}: ${given} is given without ${missing}; the backward needs both`);
  }
  if (xhat) expectShape(op, "xhat", xhat, dense.shape, "f32");
  if (rstd) expectRowStat(op, "rstd", rstd, lead, rows);
  if (!(eps >= 0)) throw new GpuError(`${op}: eps ${eps} is not a non-negative number`);
  const d = dropoutParams(op, args.dropout);
  expectBindings(op, { dense, residual, gamma, beta }, { out, xhat, rstd });

  const save = xhat !== undefined;
  const params = new Uint32Array([rows, h, 0, d.seed, d.stream, 0, 0, 0]);
  const f = new Float32Array(params.buffer);
  f[2] = eps;
  f[5] = d.p;
  f[6] = d.on ? dropoutScale(d.p) : 1;
  const t = rowThreads(h);
  const name = `${op}${d.on ? " dropout" : ""}${save ? " save" : ""}`;
  rec.dispatch(
    op,
    getPipeline(rec.gpu, name, forwardSource(t, d.on, save)),
    [dense, residual, gamma, beta, out, ...(save ? [xhat!, rstd!] : [])],
    rowGrid(rec, rows, h),
    params,
  );
}

const backwardSource = cachedSource(backwardWgsl);

/**
 * Records the gradients of `addLayerNormForward` from its saved x̂ and rstd, given dOut: the
 * residual's (`dResidual`, added into it when `accumulateResidual`), dense's (`dDense`: the
 * residual's through the forward's dropout mask, regenerated), and dGamma, dBeta (added into
 * them when `accumulate`). Each output is optional; what is not asked for is not computed.
 */
export function addLayerNormBackward(
  rec: Recorder,
  args: {
    xhat: Tensor;
    rstd: Tensor;
    gamma: Tensor;
    dOut: Tensor;
    dDense?: Tensor;
    dResidual?: Tensor;
    dGamma?: Tensor;
    dBeta?: Tensor;
    accumulate?: boolean;
    accumulateResidual?: boolean;
    /** The forward's dropout settings. */
    dropout?: DropoutConfig;
  },
): void {
  const op = "addLayerNormBackward";
  const { xhat, rstd, gamma, dOut, dDense, dResidual, dGamma, dBeta } = args;
  const { rows, h, lead } = rowShape(op, "xhat", xhat);
  expectRowStat(op, "rstd", rstd, lead, rows);
  expectShape(op, "gamma", gamma, [h], "f32");
  expectShape(op, "dOut", dOut, xhat.shape, "f32");
  if (dDense) expectShape(op, "dDense", dDense, xhat.shape, "f32");
  if (dResidual) expectShape(op, "dResidual", dResidual, xhat.shape, "f32");
  if (dGamma) expectShape(op, "dGamma", dGamma, [h], "f32");
  if (dBeta) expectShape(op, "dBeta", dBeta, [h], "f32");
  const d = dropoutParams(op, args.dropout);
  expectBindings(op, { xhat, rstd, gamma, dOut }, { dDense, dResidual, dGamma, dBeta });

  if (dDense || dResidual) {
    const accumulate = args.accumulateResidual ? 1 : 0;
    const params = new Uint32Array([rows, h, accumulate, d.seed, d.stream, 0, 0, 0]);
    const f = new Float32Array(params.buffer);
    f[5] = d.p;
    f[6] = d.on ? dropoutScale(d.p) : 1;
    const dropout = d.on && dDense !== undefined;
    const name = `${op}${dropout ? " dropout" : ""}${dDense ? " dDense" : ""}` +
      `${dResidual ? " dResidual" : ""}`;
    rec.dispatch(
      `${op} dX`,
      getPipeline(rec.gpu, name, backwardSource(rowThreads(h), dropout, !!dDense, !!dResidual)),
      [xhat, rstd, gamma, dOut, ...(dDense ? [dDense] : []), ...(dResidual ? [dResidual] : [])],
      rowGrid(rec, rows, h),
      params,
    );
  }
  layerNormParamGrads(rec, op, {
    source: { xhat },
    dOut,
    dGamma,
    dBeta,
    rows,
    h,
    accumulate: args.accumulate ?? false,
  });
}
