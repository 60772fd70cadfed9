import { assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest, outputTensor, withLimits } from "./gpu_fixture.ts";
import { finiteDifferences, randomValues, rng } from "./random.ts";
import { type Gpu, GpuError } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import {
  TSNE_FORCE_STRIDE,
  tsneForces,
  tsnePaddedColumns,
  tsneSplits,
  tsneStep,
  type TsneStepParams,
} from "../kernels/tsne.ts";

// float64 references for kernels/tsne.ts: the per-point sums, the KL gradient (itself checked
// against finite differences of KL(αP ‖ Q)) and one optimiser step.

/** A random symmetric joint P [n, n]: zero diagonal, summing to 1. */
function randomJoint(n: number, seed: number): Float64Array {
  const next = rng(seed);
  const p = new Float64Array(n * n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const v = next() ** 3; // skewed, as real affinities are
      p[i * n + j] = p[j * n + i] = v;
      sum += 2 * v;
    }
  }
  return p.map((v) => v / sum);
}

/** f32-exact copies of x, as float64 (so the references see exactly what the GPU sees). */
const f32 = (x: ArrayLike<number>) => Float64Array.from(Float32Array.from(x));

/** The per-point sums over j in [j0, j1) (all j by default), [n, 5]. */
function refForces(p: Float64Array, y: Float64Array, n: number, j0 = 0, j1 = n): Float64Array {
  const out = new Float64Array(n * TSNE_FORCE_STRIDE);
  for (let i = 0; i < n; i++) {
    for (let j = j0; j < j1; j++) {
      if (j === i) continue;
      const dx = y[2 * i] - y[2 * j];
      const dy = y[2 * i + 1] - y[2 * j + 1];
      const q = 1 / (1 + dx * dx + dy * dy);
      const o = TSNE_FORCE_STRIDE * i;
      out[o] += p[i * n + j] * q * dx;
      out[o + 1] += p[i * n + j] * q * dy;
      out[o + 2] += q * q * dx;
      out[o + 3] += q * q * dy;
      out[o + 4] += q;
    }
  }
  return out;
}

/** The kernel's split s of `splits`: whole tiles of 64 points j, ⌈tiles / splits⌉ per split. */
function splitRange(n: number, splits: number, s: number): [number, number] {
  const per = Math.ceil(Math.ceil(n / 64) / splits) * 64;
  return [Math.min(n, s * per), Math.min(n, (s + 1) * per)];
}

/** P [n, n] as the kernel reads it: [n, tsnePaddedColumns(n)], the padding NaN. */
function padP(p: Float64Array, n: number): Float32Array {
  const cols = tsnePaddedColumns(n);
  const out = new Float32Array(n * cols).fill(NaN);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) out[i * cols + j] = p[i * n + j];
  }
  return out;
}

/** The gradient of `objective`: 4 Σ_j (α p_ij − q_ij) q̃_ij (y_i − y_j). */
function refGradient(p: Float64Array, y: Float64Array, n: number, alpha: number): Float64Array {
  const f = refForces(p, y, n);
  let z = 0;
  for (let i = 0; i < n; i++) z += f[TSNE_FORCE_STRIDE * i + 4];
  const g = new Float64Array(2 * n);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 2; c++) {
      const o = TSNE_FORCE_STRIDE * i + c;
      g[2 * i + c] = 4 * (alpha * f[o] - f[o + 2] / z);
    }
  }
  return g;
}

/**
 * α Σ p_ij log(1 + ‖y_i − y_j‖²) + log Z: KL(P ‖ Q) up to a constant in y when α = 1, and the
 * function whose gradient early exaggeration follows otherwise.
 */
function objective(p: Float64Array, y: Float64Array, n: number, alpha: number): number {
  let z = 0;
  let s = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (j === i) continue;
      const d = (y[2 * i] - y[2 * j]) ** 2 + (y[2 * i + 1] - y[2 * j + 1]) ** 2;
      z += 1 / (1 + d);
      s += alpha * p[i * n + j] * Math.log(1 + d);
    }
  }
  return s + Math.log(z);
}

function refStep(
  grad: Float64Array,
  y: Float64Array,
  update: Float64Array,
  gains: Float64Array,
  h: TsneStepParams,
) {
  const n = y.length / 2;
  const yn = new Float64Array(y.length);
  const un = new Float64Array(y.length);
  const gn = new Float64Array(y.length);
  for (let e = 0; e < y.length; e++) {
    const g = grad[e];
    gn[e] = Math.max(update[e] * g < 0 ? gains[e] + 0.2 : gains[e] * 0.8, h.minGain);
    un[e] = h.momentum * update[e] - h.learningRate * gn[e] * g;
    yn[e] = y[e] + un[e];
  }
  for (let c = 0; c < 2; c++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += yn[2 * i + c];
    mean /= n;
    for (let i = 0; i < n; i++) yn[2 * i + c] -= mean;
  }
  return { y: yn, update: un, gains: gn };
}

Deno.test("the reference KL gradient matches finite differences (n = 9)", () => {
  const n = 9;
  const p = randomJoint(n, 3);
  const y = Float64Array.from(randomValues(2 * n, 4), (v) => 2 * v);
  for (const alpha of [1, 12]) {
    const fd = finiteDifferences((yy) => objective(p, yy, n, alpha), y, 1e-6);
    assertClose(`gradient α = ${alpha}`, refGradient(p, y, n, alpha), fd, 1e-6);
  }
});

async function runKernels(
  gpu: Gpu,
  n: number,
  seed: number,
  h: TsneStepParams,
  splits = tsneSplits(n),
) {
  const p = f32(randomJoint(n, seed));
  const y = f32(Float64Array.from(randomValues(2 * n, seed + 1), (v) => 3 * v));
  const update = f32(randomValues(2 * n, seed + 2));
  const gains = f32(Float64Array.from(randomValues(2 * n, seed + 3), (v) => 1 + 0.5 * v));
  const pt = tensorFromArray(gpu, padP(p, n), [n, tsnePaddedColumns(n)], "P");
  const yt = tensorFromArray(gpu, Float32Array.from(y), [n, 2], "y");
  const ut = tensorFromArray(gpu, Float32Array.from(update), [n, 2], "update");
  const gt = tensorFromArray(gpu, Float32Array.from(gains), [n, 2], "gains");
  const rec = new Recorder(gpu);
  const forces = outputTensor(rec, [splits, n, TSNE_FORCE_STRIDE], "forces");
  const grad = outputTensor(rec, [n, 2], "grad");
  tsneForces(rec, { p: pt, y: yt, forces });
  await rec.submit();
  const gotForces = await forces.download();
  tsneStep(rec, { forces, y: yt, update: ut, gains: gt, grad, params: h });
  await rec.submit();
  const got = {
    forces: gotForces,
    grad: await grad.download(),
    y: await yt.download(),
    update: await ut.download(),
    gains: await gt.download(),
  };
  for (const t of [pt, yt, ut, gt, forces, grad]) t.destroy();
  return { p, y, update, gains, got };
}

/** Checks each split of the GPU's forces against the reference over its range of j. */
function checkForces(got: ArrayLike<number>, p: Float64Array, y: Float64Array, splits: number) {
  const n = y.length / 2;
  const size = n * TSNE_FORCE_STRIDE;
  for (let s = 0; s < splits; s++) {
    const part = Array.from(got).slice(s * size, (s + 1) * size);
    assertClose(
      `forces split ${s} of ${splits}`,
      part,
      refForces(p, y, n, ...splitRange(n, splits, s)),
      1e-5,
    );
  }
}

// n = 37: one workgroup, a partial tile, a partial last group of four points. n = 131: three
// tiles of j, split 1, 2 (two tiles and one), 3 and 5 ways (two splits empty: zeros). n = 389:
// past one workgroup of points: the forces kernel's workgroups take 64 invocations × 4 points =
// 256 points i, so two, the second of 133 (its last quad holds one point); tsneStep's one
// workgroup of 256 lanes gives lanes 0–132 a second point (in Z, the gradient, the update and
// both re-centring loops); split 7 ways (one tile of 64 points j each, the last of 5) and 1 way.
const CASES = [[37, [1, tsneSplits(37)]], [131, [1, 2, 3, 5]], [389, [
  1,
  tsneSplits(389),
]]] as const;

Deno.test("tsneSplits: 389 points are 7 tiles of 64 points j, one per split", () => {
  assertEquals(tsneSplits(389), 7);
});
for (const [n, splitCounts] of CASES) {
  gpuTest(`tsneForces and tsneStep match the float64 reference (n = ${n})`, async (gpu) => {
    for (const splits of splitCounts) {
      for (
        const h of [
          { exaggeration: 12, momentum: 0.5, learningRate: 50, minGain: 0.01 },
          { exaggeration: 1, momentum: 0.8, learningRate: 200, minGain: 0.01 },
        ]
      ) {
        const { p, y, update, gains, got } = await runKernels(gpu, n, n, h, splits);
        checkForces(got.forces, p, y, splits);
        assertClose(
          `grad (${splits} splits)`,
          got.grad,
          refGradient(p, y, n, h.exaggeration),
          1e-5,
        );
        // The step from the GPU's own gradient, so that a sign flip of a near-zero gradient
        // component between f32 and f64 cannot send a gain down the other branch.
        const want = refStep(f32(got.grad), y, update, gains, h);
        assertClose("gains", got.gains, want.gains, 1e-6);
        assertClose("update", got.update, want.update, 1e-5);
        assertClose("y", got.y, want.y, 1e-5);
      }
    }
  });
}

gpuTest("tsneForces: more workgroups than one dimension allows is refused", (gpu) => {
  // n = 300 needs 2 workgroups of 256 points.
  const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 1 });
  const n = 300;
  const rec = new Recorder(small);
  const p = createTensor(small, [n, tsnePaddedColumns(n)], "f32", "P");
  const y = createTensor(small, [n, 2], "f32", "y");
  const forces = createTensor(small, [1, n, TSNE_FORCE_STRIDE], "f32", "forces");
  assertThrows(() => tsneForces(rec, { p, y, forces }), GpuError, "exceeds 1 workgroups");
  for (const t of [p, y, forces]) t.destroy();
});

gpuTest("tsneForces and tsneStep: two runs give bitwise-identical results", async (gpu) => {
  const h = { exaggeration: 12, momentum: 0.5, learningRate: 50, minGain: 0.01 };
  const a = await runKernels(gpu, 97, 7, h);
  const b = await runKernels(gpu, 97, 7, h);
  assertEquals(a.got, b.got);
});

gpuTest("tsne kernels: bad shapes and shared buffers are refused, naming the argument", (gpu) => {
  const rec = new Recorder(gpu);
  const p = createTensor(gpu, [5, 8], "f32", "P");
  const y = createTensor(gpu, [5, 2], "f32", "y");
  const forces = createTensor(gpu, [1, 5, TSNE_FORCE_STRIDE], "f32", "forces");
  const h = { exaggeration: 1, momentum: 0.8, learningRate: 100, minGain: 0.01 };
  assertThrows(
    () => tsneForces(rec, { p: createTensor(gpu, [5, 5], "f32", "P unpadded"), y, forces }),
    GpuError,
    "tsneForces: p",
  );
  assertThrows(
    () => tsneForces(rec, { p, y: createTensor(gpu, [5, 3], "f32", "y bad"), forces }),
    GpuError,
    "tsneForces: y",
  );
  const two = () => createTensor(gpu, [5, 2], "f32", "t");
  assertThrows(
    () => tsneStep(rec, { forces, y, update: y, gains: two(), grad: two(), params: h }),
    GpuError,
    "distinct buffers",
  );
  assertThrows(
    () =>
      tsneStep(rec, {
        forces,
        y,
        update: two(),
        gains: two(),
        grad: two(),
        params: { ...h, learningRate: NaN },
      }),
    GpuError,
    "params.learningRate",
  );
  assertThrows(
    () => {
      const big = createTensor(gpu, [41], "f32", "P storage");
      tsneForces(rec, { p: big.view(4, [5, 8], "P at byte 4"), y, forces });
    },
    GpuError,
    "multiple of 16",
  );
  assertEquals(rec.length, 0);
});
