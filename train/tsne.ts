// t-SNE to 2-D, for the head-feature plots (the head's 2048-d hidden layer on the training and dev
// sets, coloured by label). Exact t-SNE (van der Maaten & Hinton 2008) with the schedule
// scikit-learn ≥ 1.2 uses by default:
//
// 1. Checks: `points` holds n·dim finite values; the perplexity is clamped to (n − 1) / 3 (the
//    rule scikit-learn and openTSNE enforce: with fewer than 3·perplexity neighbours a point
//    cannot reach the target entropy). Below n = 4 that bound is under 1, so t-SNE is not run:
//    the points are laid out on a line, in input order, and `note` says so.
// 2. Preprocessing: the points are centred and, when dim > pcaDims (50), projected onto their top
//    pcaDims principal components, as scikit-learn's documentation and openTSNE's examples
//    recommend for dense high-dimensional inputs: it removes noise directions and makes the
//    O(n² · dim) distances cheap. The PCA is randomized (Halko, Martinsson & Tropp 2011, as
//    scikit-learn's PCA picks for such shapes): a seeded Gaussian test matrix, 10 extra columns,
//    4 power iterations; the products with the data run on the GPU (kernels/matmul.ts, f32),
//    the orthonormalisation and the small eigenproblem on the host in float64. The features are NOT standardised per coordinate: the
//    hidden units of one layer share a scale, and z-scoring would inflate nearly constant
//    (dead) units into noise directions as heavy as the informative ones; a global scale does
//    not matter (each point's bandwidth is fitted to the perplexity).
// 3. Input affinities, host float64: for each point a Gaussian bandwidth found by a safeguarded
//    Newton search on its precision β (|H − log perplexity| ≤ 1e-5) over all other points, then
//    P = (P_{j|i} + P_{i|j}) / 2n, floored at 2.2e-16 off the diagonal (as scikit-learn).
// 4. Initialisation: the first two principal components, scaled so the first has standard
//    deviation 1e-4 (scikit-learn's init="pca"; deterministic and better at global structure than
//    a random start).
// 5. Optimisation on the GPU (kernels/tsne.ts), float32: `iterations` steps (default 1000) of
//    gradient descent with momentum and delta-bar-delta gains (+0.2 / ×0.8, at least 0.01);
//    the first min(250, ⌊iterations / 4⌋) with early exaggeration 12 and momentum 0.5, the rest
//    with exaggeration 1 and momentum 0.8; learning rate max(n / 48, 50) (scikit-learn's "auto").
//    No early stopping: a fixed number of steps keeps runs comparable and reproducible.
// 6. The final KL(P ‖ Q) is computed on the host in float64 (`kl`).
//
// Why our own GPU kernels and not an npm package: measured on this repository's development
// machine (2-core Xeon, lavapipe), 50-d points (10 Gaussian clusters), perplexity 30, 1000
// iterations, wall time of the whole call; the second figures with another session's training
// job on the same 2 cores (druidjs runs on one core, lavapipe on both, so contention narrows
// the gap):
//
//                                   n = 1000                 n = 3000
//   kernels/tsne.ts on lavapipe     5.6 s (6.2, 7.2 loaded)  34.8 s (42.4 loaded)
//   @saehrimnir/druidjs 0.9.0       14.9 s (11.6, 17.2)      181 s
//   @keckelt/tsne 1.0.2             35.1 s                   not run (~9× n = 1000)
//
// KL(P ‖ Q) against this file's P: ours 0.789 (n = 1000) and 1.639 (n = 3000), druidjs 0.797
// and 1.685, @keckelt/tsne 0.798; every layout had 10-NN label purity 1.0. The packages ran
// with their own schedules (learning rate 10, exaggeration 4 for 100 iterations, random start).
// druidjs is the only maintained candidate and is seeded; tsne-js 1.0.3, tsne 1.0.1 and
// @keckelt/tsne (karpathy's tsnejs and forks) start from an unseeded Math.random. A real GPU
// only widens the gap: an iteration is ≈ 20 n² flops (180 MFLOP at n = 3000), microseconds there.
// Keeping druidjs as an alternative would add an LGPL dependency for a 2-5× slower path, so
// there is none.
//
// Limits: exact t-SNE is O(n²) in time and memory. The host holds up to three n × n float64
// arrays (distances, conditional and joint affinities: 3 × 61 MB at n = 2767), the GPU P as one
// f32 storage binding: n ≤ 5792 under lavapipe's 128 MiB (beyond it `tsne` refuses at once,
// naming the limit). A synthetic stand-in for the RTE plot (2490 + 277 points of 2048 dims) took
// 48 s on lavapipe with another job running (PCA 4.2 s, affinities 1.9 s, optimisation 41 s).
//
// Determinism: the seed drives the randomized PCA only (hence the init); every GPU sum has a
// fixed order, so one seed gives bitwise the same embedding on one adapter.

import { getGpu, type Gpu } from "../kernels/device.ts";
import { matmul } from "../kernels/matmul.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import {
  TSNE_FORCE_STRIDE,
  tsneForces,
  tsnePaddedColumns,
  tsneSplits,
  tsneStep,
} from "../kernels/tsne.ts";
import { uniformGenerator } from "./batches.ts";

export interface TsneOptions {
  /** Target perplexity, clamped to (n − 1) / 3 (default 30). */
  perplexity?: number;
  /** Optimisation steps, early exaggeration included (default 1000). */
  iterations?: number;
  /** Seeds the randomized PCA and so the initial layout (default 0). */
  seed?: number;
  /** Principal components kept when dim exceeds it (default 50). */
  pcaDims?: number;
  /** The device (default: the process-wide one). */
  gpu?: Gpu;
}

export interface TsneResult {
  /** [n, 2], row-major. */
  embedding: Float64Array;
  /** The perplexity used, after clamping. */
  perplexity: number;
  /** Wall time of the whole call. */
  ms: number;
  /** Wall time per phase: PCA, input affinities, optimisation (with its uploads and download). */
  phases: { pcaMs: number; affinitiesMs: number; optimiseMs: number };
  /** KL(P ‖ Q) of the final embedding (float64); NaN when t-SNE was not run. */
  kl: number;
  /** Set when the result is not a t-SNE layout (n < 4) or the perplexity was clamped. */
  note?: string;
}

const DEFAULT_PERPLEXITY = 30;
const DEFAULT_ITERATIONS = 1000;
const DEFAULT_PCA_DIMS = 50;
const EXAGGERATION = 12;
const EXAGGERATION_ITERATIONS = 250;
const MIN_GAIN = 0.01;
const P_FLOOR = 2.220446049250313e-16;
/** Iterations recorded per submit (two launches each). */
const ITERATIONS_PER_SUBMIT = 50;

function fail(message: string): never {
  throw new RangeError(`tsne: ${message}`);
}

function checkInteger(name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) fail(`${name} must be an integer ≥ ${min} (got ${v})`);
}

/**
 * Embeds `n` points of `dim` coordinates (`points`, row-major [n, dim]) in 2-D with t-SNE; see the
 * file comment for every step. Throws a RangeError naming the argument for a bad shape, a
 * non-finite value or a bad option.
 */
export async function tsne(
  points: Float32Array | Float64Array,
  n: number,
  dim: number,
  options: TsneOptions = {},
): Promise<TsneResult> {
  const start = performance.now();
  checkInteger("n", n, 0);
  checkInteger("dim", dim, 1);
  if (!(points instanceof Float32Array || points instanceof Float64Array)) {
    fail("points must be a Float32Array or Float64Array");
  }
  if (points.length !== n * dim) {
    fail(`points has ${points.length} values, expected n·dim = ${n}·${dim} = ${n * dim}`);
  }
  for (let k = 0; k < points.length; k++) {
    if (!Number.isFinite(points[k])) {
      fail(`points[${k}] (row ${Math.floor(k / dim)}, column ${k % dim}) is ${points[k]}`);
    }
  }
  const requested = options.perplexity ?? DEFAULT_PERPLEXITY;
  if (!Number.isFinite(requested) || requested <= 0) {
    fail(`options.perplexity must be a finite number > 0 (got ${requested})`);
  }
  const iterations = options.iterations ?? DEFAULT_ITERATIONS;
  checkInteger("options.iterations", iterations, 0);
  const pcaDims = options.pcaDims ?? DEFAULT_PCA_DIMS;
  checkInteger("options.pcaDims", pcaDims, 2);
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) fail(`options.seed must be an integer (got ${seed})`);

  const perplexity = Math.min(requested, Math.max(0, (n - 1) / 3));
  const phases = { pcaMs: 0, affinitiesMs: 0, optimiseMs: 0 };
  if (n < 4) {
    const embedding = new Float64Array(2 * n);
    for (let i = 0; i < n; i++) embedding[2 * i] = i - (n - 1) / 2;
    return {
      embedding,
      perplexity,
      ms: performance.now() - start,
      phases,
      kl: NaN,
      note: `t-SNE needs n ≥ 4 (perplexity ≤ (n − 1) / 3 < 1 for n = ${n}): ` +
        `the points are laid out on a line in input order`,
    };
  }
  const note = perplexity < requested
    ? `perplexity ${requested} clamped to (n − 1) / 3 = ${perplexity} for n = ${n}`
    : undefined;

  // 2. Centre, and reduce to pcaDims principal components (or keep all coordinates).
  let t = performance.now();
  const gpu = options.gpu ?? await getGpu();
  const pBytes = n * tsnePaddedColumns(n) * 4;
  if (pBytes > gpu.limits.maxStorageBufferBindingSize) {
    fail(
      `n = ${n} needs a ${pBytes}-byte P, more than this adapter's storage binding ` +
        `(${gpu.limits.maxStorageBufferBindingSize} bytes); exact t-SNE is O(n²)`,
    );
  }
  const x = Float64Array.from(points);
  centreColumns(x, n, dim);
  let features: Float64Array = x;
  let fdim = dim;
  if (dim > pcaDims) {
    features = await pcaScores(x, n, dim, pcaDims, seed, gpu);
    fdim = pcaDims;
  }
  // 4. The initial layout: the first two principal components (those of `features` when the PCA
  // ran: its columns are the components in order).
  const init = dim > pcaDims
    ? takeColumns(features, n, fdim, 2)
    : await pcaScores(x, n, dim, 2, seed);
  scaleInit(init, n, seed);
  phases.pcaMs = performance.now() - t;

  // 3. Input affinities.
  t = performance.now();
  const p = jointProbabilities(squaredDistances(features, n, fdim), n, perplexity);
  phases.affinitiesMs = performance.now() - t;

  // 5. Optimise.
  t = performance.now();
  const embedding = await optimise(gpu, p, init, n, iterations);
  phases.optimiseMs = performance.now() - t;

  const kl = klDivergence(p, embedding, n);
  return { embedding, perplexity, ms: performance.now() - start, phases, kl, note };
}

async function optimise(
  gpu: Gpu,
  p: Float64Array,
  init: Float64Array,
  n: number,
  iterations: number,
): Promise<Float64Array> {
  const tensors: Tensor[] = [];
  const keep = (t: Tensor) => (tensors.push(t), t);
  try {
    const cols = tsnePaddedColumns(n);
    const padded = new Float32Array(n * cols);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) padded[i * cols + j] = p[i * n + j];
    }
    const pt = keep(tensorFromArray(gpu, padded, [n, cols], "tsne P"));
    const y = keep(tensorFromArray(gpu, Float32Array.from(init), [n, 2], "tsne y"));
    const update = keep(createTensor(gpu, [n, 2], "f32", "tsne update"));
    const gains = keep(tensorFromArray(gpu, new Float32Array(2 * n).fill(1), [n, 2], "tsne gains"));
    const grad = keep(createTensor(gpu, [n, 2], "f32", "tsne grad"));
    const splits = tsneSplits(n);
    const forces = keep(createTensor(gpu, [splits, n, TSNE_FORCE_STRIDE], "f32", "tsne forces"));
    const learningRate = Math.max(n / EXAGGERATION / 4, 50);
    const exaggerated = Math.min(EXAGGERATION_ITERATIONS, Math.floor(iterations / 4));
    const rec = new Recorder(gpu);
    for (let it = 0; it < iterations; it++) {
      const early = it < exaggerated;
      tsneForces(rec, { p: pt, y, forces });
      tsneStep(rec, {
        forces,
        y,
        update,
        gains,
        grad,
        params: {
          exaggeration: early ? EXAGGERATION : 1,
          momentum: early ? 0.5 : 0.8,
          learningRate,
          minGain: MIN_GAIN,
        },
      });
      if ((it + 1) % ITERATIONS_PER_SUBMIT === 0 || it + 1 === iterations) {
        await rec.submit();
        // Keeps the host at most one submit ahead of the device.
        await gpu.device.queue.onSubmittedWorkDone();
      }
    }
    return Float64Array.from(await y.download());
  } finally {
    for (const t of tensors) t.destroy();
  }
}

/** Subtracts each column's mean (float64, rows summed in order). */
function centreColumns(x: Float64Array, n: number, dim: number): void {
  const mean = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < dim; d++) mean[d] += x[i * dim + d];
  }
  for (let d = 0; d < dim; d++) mean[d] /= n;
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < dim; d++) x[i * dim + d] -= mean[d];
  }
}

function takeColumns(x: Float64Array, n: number, dim: number, k: number): Float64Array {
  const out = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < Math.min(k, dim); c++) out[i * k + c] = x[i * dim + c];
  }
  return out;
}

/**
 * Scales the [n, 2] start so its first column has standard deviation 1e-4 (scikit-learn). A
 * column with no spread (dim = 1, or all points equal) gets seeded Gaussian values of that
 * deviation instead, so the layout is never stuck on a line or a point.
 */
function scaleInit(y: Float64Array, n: number, seed: number): void {
  const rms = (c: number) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += y[2 * i + c] * y[2 * i + c];
    return Math.sqrt(s / n);
  };
  const s0 = rms(0);
  const next = uniformGenerator(mixSeed(seed, 2));
  for (let c = 0; c < 2; c++) {
    if (s0 > 0 && rms(c) > 1e-12 * s0) {
      for (let i = 0; i < n; i++) y[2 * i + c] *= 1e-4 / s0;
    } else {
      for (let i = 0; i < n; i++) y[2 * i + c] = 1e-4 * gaussian(next);
    }
  }
}

function mixSeed(seed: number, stream: number): number {
  return (Math.imul((seed | 0) ^ 0x9e3779b9, 0x85ebca6b) + Math.imul(stream, 0xc2b2ae35)) >>> 0;
}

/** A standard normal value (Box–Muller; 1 − u is in (0, 1], so the log is finite). */
function gaussian(next: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

/** X·M and Xᵀ·M for one data matrix X [n, dim] (M with l columns), as float64 results. */
interface Products {
  /** X [n, dim] · M [dim, l] → [n, l]. */
  xm(m: Float64Array, l: number): Promise<Float64Array>;
  /** Xᵀ [dim, n] · M [n, l] → [dim, l]. */
  xtm(m: Float64Array, l: number): Promise<Float64Array>;
  release(): void;
}

/** The products in float64 on the host. */
function hostProducts(x: Float64Array, n: number, dim: number): Products {
  return {
    xm: (m, l) => {
      const out = new Float64Array(n * l);
      for (let i = 0; i < n; i++) {
        const o = i * l;
        for (let d = 0; d < dim; d++) {
          const v = x[i * dim + d];
          if (v === 0) continue;
          for (let c = 0, r = d * l; c < l; c++) out[o + c] += v * m[r + c];
        }
      }
      return Promise.resolve(out);
    },
    xtm: (m, l) => {
      const out = new Float64Array(dim * l);
      for (let i = 0; i < n; i++) {
        for (let d = 0; d < dim; d++) {
          const v = x[i * dim + d];
          if (v === 0) continue;
          for (let c = 0, r = i * l, o = d * l; c < l; c++) out[o + c] += v * m[r + c];
        }
      }
      return Promise.resolve(out);
    },
    release: () => {},
  };
}

/**
 * The products on the GPU with the project's GEMM (f32 operands and sums; the basis is
 * re-orthonormalised in float64 on the host after each one). X gets zero rows up to a multiple
 * of 4 points, so that Xᵀ·M (k = the point count) runs the vec4 kernels (1.7× faster on lavapipe
 * at 2767 points). The PCA of 2767 × 2048 points to 50 took 2.5 s this way on the 2-core lavapipe
 * machine, 6.2 s with the host's float64 loops; the scores differ by ~3e-6 relative.
 */
function gpuProducts(gpu: Gpu, x: Float64Array, n: number, dim: number, l: number): Products {
  const rows = Math.ceil(n / 4) * 4;
  const padded = new Float32Array(rows * dim);
  padded.set(x);
  const xt = tensorFromArray(gpu, padded, [rows, dim], "tsne PCA X");
  const tensors = [
    xt,
    createTensor(gpu, [dim, l], "f32", "tsne PCA [dim, l] operand"),
    createTensor(gpu, [rows, l], "f32", "tsne PCA [n, l] result"),
    createTensor(gpu, [rows, l], "f32", "tsne PCA [n, l] operand"),
    createTensor(gpu, [dim, l], "f32", "tsne PCA [dim, l] result"),
  ];
  const [, mDim, outN, mN, outDim] = tensors;
  const run = async (m: Float64Array, transA: boolean) => {
    const rec = new Recorder(gpu);
    if (transA) {
      const operand = new Float32Array(rows * l);
      operand.set(m);
      mN.upload(operand);
      matmul(rec, { op: "tsne PCA", a: xt, b: mN, c: outDim, m: dim, n: l, k: rows, transA });
    } else {
      mDim.upload(Float32Array.from(m));
      matmul(rec, { op: "tsne PCA", a: xt, b: mDim, c: outN, m: rows, n: l, k: dim });
    }
    await rec.submit();
    const out = await (transA ? outDim : outN).download();
    return Float64Array.from(out.subarray(0, (transA ? dim : n) * l));
  };
  return {
    xm: (m) => run(m, false),
    xtm: (m) => run(m, true),
    release: () => tensors.forEach((t) => t.destroy()),
  };
}

/**
 * Scores [n, k] of the centred `x` [n, dim] on its top k principal components, by randomized
 * SVD: Q spans X Ω after 4 power iterations (Ω [dim, k + 10] seeded Gaussian, re-orthonormalised
 * after every product), then the eigenvectors U of B Bᵀ with B = Qᵀ X give the scores Q U Σ,
 * each column's sign fixed so that its largest-magnitude entry is positive. Exact when k + 10 ≥
 * min(n, dim); columns past the data's rank are 0. With `gpu` (and X within one storage binding)
 * the products with X run there in f32, otherwise on the host in float64.
 */
export async function pcaScores(
  x: Float64Array,
  n: number,
  dim: number,
  k: number,
  seed: number,
  gpu?: Gpu,
): Promise<Float64Array> {
  const l = Math.min(k + 10, n, dim);
  const onGpu = gpu !== undefined && n * dim * 4 <= gpu.limits.maxStorageBufferBindingSize;
  const products = onGpu ? gpuProducts(gpu, x, n, dim, l) : hostProducts(x, n, dim);
  try {
    const next = uniformGenerator(mixSeed(seed, 1));
    const omega = new Float64Array(dim * l);
    for (let e = 0; e < omega.length; e++) omega[e] = gaussian(next);
    let q = orthonormalColumns(await products.xm(omega, l), n, l);
    for (let it = 0; it < 4; it++) {
      const z = orthonormalColumns(await products.xtm(q, l), dim, l);
      q = orthonormalColumns(await products.xm(z, l), n, l);
    }
    const b = await products.xtm(q, l); // Bᵀ = Xᵀ Q, [dim, l]
    return scoresFromBasis(q, b, n, dim, k, l);
  } finally {
    products.release();
  }
}

/** The scores Q U Σ from Q [n, l] and Bᵀ = Xᵀ Q [dim, l] (see pcaScores). */
function scoresFromBasis(
  q: Float64Array,
  b: Float64Array,
  n: number,
  dim: number,
  k: number,
  l: number,
): Float64Array {
  const bbt = new Float64Array(l * l); // B Bᵀ
  for (let d = 0; d < dim; d++) {
    for (let a = 0; a < l; a++) {
      const v = b[d * l + a];
      if (v === 0) continue;
      for (let c = 0; c < l; c++) bbt[a * l + c] += v * b[d * l + c];
    }
  }
  const { values, vectors } = symmetricEigen(bbt, l);
  const order = Array.from(values.keys()).sort((a, b) => values[b] - values[a] || a - b);
  const out = new Float64Array(n * k);
  const score = new Float64Array(n);
  for (let c = 0; c < Math.min(k, l); c++) {
    const col = order[c];
    const sigma = Math.sqrt(Math.max(values[col], 0));
    let big = 0;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let a = 0; a < l; a++) s += q[i * l + a] * vectors[a * l + col];
      score[i] = s;
      if (Math.abs(s) > Math.abs(big)) big = s;
    }
    const scale = big < 0 ? -sigma : sigma;
    for (let i = 0; i < n; i++) out[i * k + c] = score[i] * scale;
  }
  return out;
}

/**
 * Orthonormalises the columns of m [rows, l] in place (modified Gram–Schmidt, each column
 * projected twice for stability, on a column-major copy so that every loop is contiguous); a
 * column that vanishes (rank below l) becomes zero.
 */
function orthonormalColumns(m: Float64Array, rows: number, l: number): Float64Array {
  const cols = new Float64Array(rows * l);
  let scale = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < l; c++) {
      const v = m[r * l + c];
      cols[c * rows + r] = v;
      scale = Math.max(scale, Math.abs(v));
    }
  }
  for (let c = 0; c < l; c++) {
    const v = cols.subarray(c * rows, (c + 1) * rows);
    for (let pass = 0; pass < 2; pass++) {
      for (let a = 0; a < c; a++) {
        const u = cols.subarray(a * rows, (a + 1) * rows);
        let dot = 0;
        for (let r = 0; r < rows; r++) dot += u[r] * v[r];
        for (let r = 0; r < rows; r++) v[r] -= dot * u[r];
      }
    }
    let norm = 0;
    for (let r = 0; r < rows; r++) norm += v[r] * v[r];
    norm = Math.sqrt(norm);
    const inv = norm > 1e-10 * scale ? 1 / norm : 0;
    for (let r = 0; r < rows; r++) v[r] *= inv;
  }
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < l; c++) m[r * l + c] = cols[c * rows + r];
  }
  return m;
}

/** Eigenvalues and eigenvectors (columns of `vectors`) of a symmetric [l, l] matrix (Jacobi). */
function symmetricEigen(
  s: Float64Array,
  l: number,
): { values: Float64Array; vectors: Float64Array } {
  const a = Float64Array.from(s);
  const v = new Float64Array(l * l);
  for (let i = 0; i < l; i++) v[i * l + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    let total = 0;
    for (let e = 0; e < l * l; e++) {
      total += a[e] * a[e];
      if (Math.floor(e / l) !== e % l) off += a[e] * a[e];
    }
    if (off <= 1e-30 * total) break;
    for (let p = 0; p < l - 1; p++) {
      for (let q = p + 1; q < l; q++) {
        const apq = a[p * l + q];
        if (apq === 0) continue;
        const theta = (a[q * l + q] - a[p * l + p]) / (2 * apq);
        const t = (theta < 0 ? -1 : 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const sn = t * c;
        for (let k = 0; k < l; k++) {
          const akp = a[k * l + p];
          const akq = a[k * l + q];
          a[k * l + p] = c * akp - sn * akq;
          a[k * l + q] = sn * akp + c * akq;
        }
        for (let k = 0; k < l; k++) {
          const apk = a[p * l + k];
          const aqk = a[q * l + k];
          a[p * l + k] = c * apk - sn * aqk;
          a[q * l + k] = sn * apk + c * aqk;
        }
        for (let k = 0; k < l; k++) {
          const vkp = v[k * l + p];
          const vkq = v[k * l + q];
          v[k * l + p] = c * vkp - sn * vkq;
          v[k * l + q] = sn * vkp + c * vkq;
        }
      }
    }
  }
  return { values: Float64Array.from({ length: l }, (_, i) => a[i * l + i]), vectors: v };
}

/** Squared Euclidean distances [n, n] (float64, symmetric, zero diagonal). */
export function squaredDistances(x: Float64Array, n: number, dim: number): Float64Array {
  const d2 = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      let s = 0;
      for (let c = 0; c < dim; c++) {
        const t = x[i * dim + c] - x[j * dim + c];
        s += t * t;
      }
      d2[i * n + j] = s;
      d2[j * n + i] = s;
    }
  }
  return d2;
}

/**
 * The conditional affinities [n, n] (row i: P_{j|i}, zero diagonal) from squared distances:
 * P_{j|i} ∝ exp(−β_i (d_ij − min_j d_ij)) with β_i searched until the row's entropy (nats) is
 * within 1e-5 of log(perplexity), as scikit-learn's binary search, in at most 100 steps:
 * safeguarded Newton steps (bisection whenever one would leave the bracket), about 3× fewer
 * evaluations than pure bisection (≈ 1 s saved per 1000 points at n = 3000). Subtracting the
 * row's smallest distance changes nothing after normalisation and keeps the nearest neighbour's
 * weight at 1, so no row underflows to zero.
 */
export function conditionalProbabilities(
  d2: Float64Array,
  n: number,
  perplexity: number,
): Float64Array {
  const target = Math.log(perplexity);
  const cond = new Float64Array(n * n);
  const row = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let dmin = Infinity;
    for (let j = 0; j < n; j++) if (j !== i) dmin = Math.min(dmin, d2[i * n + j]);
    let mean = 0;
    for (let j = 0; j < n; j++) {
      row[j] = j === i ? 0 : d2[i * n + j] - dmin;
      mean += row[j];
    }
    mean /= n - 1;
    // A start at the scale of the row's distances saves most of the search's steps.
    let beta = mean > 0 ? 1 / mean : 1;
    let lo = 0;
    let hi = Infinity;
    let sum = 0;
    for (let step = 0; step < 100; step++) {
      sum = 0;
      let m1 = 0;
      let m2 = 0;
      for (let j = 0; j < n; j++) {
        if (j === i) continue;
        const d = row[j];
        const w = Math.exp(-beta * d);
        cond[i * n + j] = w;
        sum += w;
        m1 += w * d;
        m2 += w * d * d;
      }
      m1 /= sum;
      const diff = Math.log(sum) + beta * m1 - target;
      if (Math.abs(diff) <= 1e-5) break;
      if (diff > 0) lo = beta;
      else hi = beta;
      // Newton on H(β), whose slope is −β·Var(d); bisection when the step leaves the bracket.
      const newton = beta + diff / (beta * (m2 / sum - m1 * m1));
      if (newton > lo && newton < hi) beta = newton;
      else beta = hi === Infinity ? beta * 2 : (lo + hi) / 2;
    }
    for (let j = 0; j < n; j++) cond[i * n + j] /= sum;
  }
  return cond;
}

/**
 * The joint input affinities [n, n]: (P_{j|i} + P_{i|j}) / 2n from `conditionalProbabilities`,
 * floored at 2.2e-16 off the diagonal (as scikit-learn); the diagonal is 0.
 */
export function jointProbabilities(d2: Float64Array, n: number, perplexity: number): Float64Array {
  const cond = conditionalProbabilities(d2, n, perplexity);
  const p = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = Math.max((cond[i * n + j] + cond[j * n + i]) / (2 * n), P_FLOOR);
      p[i * n + j] = v;
      p[j * n + i] = v;
    }
  }
  return p;
}

/** KL(P ‖ Q) in nats for the joint P [n, n] and an embedding [n, 2] (float64). */
export function klDivergence(p: Float64Array, y: ArrayLike<number>, n: number): number {
  let z = 0;
  let cross = 0; // Σ p_ij log(p_ij / q̃_ij)
  let mass = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (j === i) continue;
      const dx = y[2 * i] - y[2 * j];
      const dy = y[2 * i + 1] - y[2 * j + 1];
      const q = 1 / (1 + dx * dx + dy * dy);
      z += q;
      const pij = p[i * n + j];
      if (pij > 0) cross += pij * Math.log(pij / q);
      mass += pij;
    }
  }
  return cross + mass * Math.log(z);
}
