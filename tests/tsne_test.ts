import { assert, assertEquals, assertRejects } from "./assert.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { rng } from "./random.ts";
import {
  conditionalProbabilities,
  jointProbabilities,
  klDivergence,
  pcaScores,
  squaredDistances,
  tsne,
} from "../train/tsne.ts";

// The t-SNE driver (train/tsne.ts); its GPU kernels are checked against float64 references in
// tests/tsne_kernel_test.ts.

function gaussian(next: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
}

/**
 * Two Gaussian clusters of `per` points in `dim` dimensions, unit noise per coordinate, centres
 * `separation` apart along a random direction; points alternate between the clusters.
 */
function twoClusters(per: number, dim: number, separation: number, seed: number) {
  const next = rng(seed);
  const dir = Float64Array.from({ length: dim }, () => gaussian(next));
  const norm = Math.hypot(...dir);
  const n = 2 * per;
  const x = new Float32Array(n * dim);
  const label = Int32Array.from({ length: n }, (_, i) => i % 2);
  for (let i = 0; i < n; i++) {
    const side = label[i] === 0 ? -0.5 : 0.5;
    for (let d = 0; d < dim; d++) {
      x[i * dim + d] = side * separation * dir[d] / norm + gaussian(next);
    }
  }
  return { x, n, label };
}

function allFinite(a: ArrayLike<number>): boolean {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
  return true;
}

// In 2048 dimensions, centres 10σ apart are not separable by neighbourhoods: for a fixed point
// the squared distance to the others fluctuates by ≈ 115σ² (the noise of 2048 coordinates)
// against 100σ² of separation, and a third of the 10 nearest neighbours come from the other
// cluster (measured). At 40σ (1600σ² ≈ 10 standard deviations) every neighbourhood is pure.
gpuTest("tsne separates two well-separated Gaussian clusters in 2048 dimensions", async () => {
  const { x, n, label } = twoClusters(60, 2048, 40, 11);
  const r = await tsne(x, n, 2048, { seed: 3, iterations: 500 });
  const y = r.embedding;
  assertEquals(y.length, 2 * n);
  assert(allFinite(y), "embedding is finite");
  assertEquals(r.perplexity, 30);
  assertEquals(r.note, undefined);
  assert(Number.isFinite(r.kl) && r.kl > 0, `kl ${r.kl}`);
  // Every point's 10 nearest neighbours in the embedding are of its own cluster.
  const k = 10;
  for (let i = 0; i < n; i++) {
    const order = Array.from({ length: n }, (_, j) => j)
      .filter((j) => j !== i)
      .sort((a, b) =>
        Math.hypot(y[2 * i] - y[2 * a], y[2 * i + 1] - y[2 * a + 1]) -
        Math.hypot(y[2 * i] - y[2 * b], y[2 * i + 1] - y[2 * b + 1])
      );
    for (const j of order.slice(0, k)) {
      assertEquals(label[j], label[i], `neighbour ${j} of point ${i}`);
    }
  }
  // The centroids are far apart relative to each cluster's spread.
  const centroid = [0, 1].map((c) => {
    const m = [0, 0];
    for (let i = 0; i < n; i++) {
      if (label[i] === c) (m[0] += y[2 * i] / (n / 2), m[1] += y[2 * i + 1] / (n / 2));
    }
    return m;
  });
  const spread = [0, 1].map((c) => {
    let s = 0;
    for (let i = 0; i < n; i++) {
      if (label[i] === c) {
        s += (y[2 * i] - centroid[c][0]) ** 2 + (y[2 * i + 1] - centroid[c][1]) ** 2;
      }
    }
    return Math.sqrt(s / (n / 2));
  });
  const gap = Math.hypot(centroid[0][0] - centroid[1][0], centroid[0][1] - centroid[1][1]);
  assert(gap > 3 * Math.max(...spread), `centroids ${gap} apart, spreads ${spread}`);
});

gpuTest("tsne: the same seed gives bitwise the same embedding", async () => {
  const { x, n } = twoClusters(25, 64, 20, 5);
  const a = await tsne(x, n, 64, { seed: 7, iterations: 120, pcaDims: 10 });
  const b = await tsne(x, n, 64, { seed: 7, iterations: 120, pcaDims: 10 });
  assertEquals(a.embedding, b.embedding);
  assertEquals(a.kl, b.kl);
});

gpuTest("tsne clamps the perplexity to (n − 1) / 3 for small n", async () => {
  const { x, n } = twoClusters(5, 7, 10, 2); // n = 10
  const r = await tsne(x, n, 7, { iterations: 100 });
  assertEquals(r.perplexity, 3);
  assert(r.note?.includes("clamped to (n − 1) / 3 = 3"), `note: ${r.note}`);
  assert(allFinite(r.embedding) && Number.isFinite(r.kl), "finite");
  const low = await tsne(x, n, 7, { iterations: 100, perplexity: 2 });
  assertEquals(low.perplexity, 2);
  assertEquals(low.note, undefined);
});

gpuTest("tsne: n = 0 to 5 give finite layouts, n < 4 a line with a note", async () => {
  for (let n = 0; n <= 5; n++) {
    const x = Float64Array.from({ length: 3 * n }, (_, i) => Math.sin(i + 1));
    const r = await tsne(x, n, 3, { iterations: 50 });
    assertEquals(r.embedding.length, 2 * n);
    assert(allFinite(r.embedding), `n = ${n}: finite`);
    if (n < 4) {
      assert(r.note?.includes("t-SNE needs n ≥ 4"), `n = ${n}: note ${r.note}`);
      assertEquals(
        Array.from(r.embedding),
        Array.from({ length: 2 * n }, (_, e) => e % 2 === 0 ? e / 2 - (n - 1) / 2 : 0),
      );
    } else {
      assert(Number.isFinite(r.kl), `n = ${n}: kl ${r.kl}`);
    }
  }
  // Identical points and a single coordinate do not leave the layout stuck or NaN.
  const same = await tsne(new Float32Array(12).fill(2), 6, 2, { iterations: 50 });
  assert(allFinite(same.embedding), "identical points: finite");
  const line = await tsne(Float32Array.from([1, 2, 3, 4, 5, 6, 7]), 7, 1, { iterations: 50 });
  assert(allFinite(line.embedding), "dim = 1: finite");
});

gpuTest("tsne: bad input is refused in one line naming the argument", async (gpu) => {
  const x = new Float32Array(12);
  const cases: [() => Promise<unknown>, string][] = [
    [() => tsne(x, 5, 3), "points has 12 values, expected n·dim = 5·3 = 15"],
    [() => tsne(Float32Array.from([0, 1, NaN, 3]), 2, 2), "points[2] (row 1, column 0) is NaN"],
    [() => tsne(Float64Array.from([0, Infinity]), 2, 1), "points[1] (row 1, column 0)"],
    [() => tsne(x, 2.5, 3), "n must be an integer"],
    [() => tsne(x, 12, 0), "dim must be an integer ≥ 1"],
    [() => tsne(x, 4, 3, { perplexity: 0 }), "options.perplexity"],
    [() => tsne(x, 4, 3, { iterations: -1 }), "options.iterations"],
    [() => tsne(x, 4, 3, { pcaDims: 1 }), "options.pcaDims"],
    [() => tsne(x, 4, 3, { seed: 0.5 }), "options.seed"],
    [() => tsne([1, 2] as unknown as Float32Array, 1, 2), "points must be"],
    [
      // 20 points need a 20 × 20 f32 P: 1600 bytes.
      () =>
        tsne(new Float32Array(40), 20, 2, {
          gpu: withLimits(gpu, { maxStorageBufferBindingSize: 1000 }),
        }),
      "n = 20 needs a 1600-byte P",
    ],
  ];
  for (const [run, includes] of cases) {
    const e = await assertRejects(run, RangeError, includes);
    assert(e.message.startsWith("tsne: ") && !e.message.includes("\n"), e.message);
  }
});

Deno.test("conditionalProbabilities reach the perplexity in every row", () => {
  const next = rng(9);
  const n = 41;
  const dim = 5;
  const x = Float64Array.from({ length: n * dim }, () => 4 * gaussian(next));
  for (const perplexity of [1.5, 5, 13]) {
    const cond = conditionalProbabilities(squaredDistances(x, n, dim), n, perplexity);
    for (let i = 0; i < n; i++) {
      let sum = 0;
      let entropy = 0;
      for (let j = 0; j < n; j++) {
        const v = cond[i * n + j];
        sum += v;
        if (v > 0) entropy -= v * Math.log(v);
      }
      assertEquals(cond[i * n + i], 0);
      assert(Math.abs(sum - 1) < 1e-12, `row ${i} sums to ${sum}`);
      assert(
        Math.abs(Math.exp(entropy) - perplexity) < 1e-4 * perplexity,
        `row ${i}: perplexity ${Math.exp(entropy)}, wanted ${perplexity}`,
      );
    }
    const p = jointProbabilities(squaredDistances(x, n, dim), n, perplexity);
    let total = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        total += p[i * n + j];
        assertEquals(p[i * n + j], p[j * n + i]);
      }
    }
    assert(Math.abs(total - 1) < 1e-9, `joint sums to ${total}`);
  }
});

Deno.test("klDivergence is 0 when Q equals P and positive otherwise", () => {
  // Four points on a square: P := Q of that layout, so KL(P ‖ Q) = 0 there.
  const y = [0, 0, 1, 0, 0, 1, 1, 1];
  const n = 4;
  const p = new Float64Array(n * n);
  let z = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (i === j) continue;
      p[i * n + j] = 1 / (1 + (y[2 * i] - y[2 * j]) ** 2 + (y[2 * i + 1] - y[2 * j + 1]) ** 2);
      z += p[i * n + j];
    }
  }
  for (let e = 0; e < p.length; e++) p[e] /= z;
  assert(Math.abs(klDivergence(p, y, n)) < 1e-15, "KL at Q = P");
  const onALine = [0, 0, 1, 0, 2, 0, 3, 0];
  assert(klDivergence(p, onALine, n) > 0.01, `KL elsewhere: ${klDivergence(p, onALine, n)}`);
});

/** The top k eigenvectors of XᵀX for x [n, dim] (power iteration with deflation, float64). */
function topEigenvectors(x: Float64Array, n: number, dim: number, k: number): Float64Array[] {
  const c = new Float64Array(dim * dim);
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < dim; a++) {
      for (let b = 0; b < dim; b++) c[a * dim + b] += x[i * dim + a] * x[i * dim + b];
    }
  }
  const out: Float64Array[] = [];
  for (let e = 0; e < k; e++) {
    let v = Float64Array.from({ length: dim }, (_, d) => 1 + d);
    for (let it = 0; it < 2000; it++) {
      const w = new Float64Array(dim);
      for (let a = 0; a < dim; a++) {
        for (let b = 0; b < dim; b++) w[a] += c[a * dim + b] * v[b];
      }
      for (const u of out) {
        const dot = u.reduce((s, ud, d) => s + ud * w[d], 0);
        for (let d = 0; d < dim; d++) w[d] -= dot * u[d];
      }
      const norm = Math.hypot(...w);
      v = w.map((wd) => wd / norm);
    }
    out.push(v);
  }
  return out;
}

gpuTest("pcaScores match exact PCA scores (GPU and host products)", async (gpu) => {
  // 83 points in 29 dimensions with a decaying spectrum; k = 3 uses l = 13 < 29 columns, so the
  // randomized path (not an exact full basis) runs. Its error after 4 power iterations is about
  // (σ₁₄ / σ₃)⁹ ≈ 1e-6 of the scores here (measured 1e-8 on the host); f32 products add ~1e-6.
  const next = rng(4);
  const n = 83;
  const dim = 29;
  const x = new Float64Array(n * dim);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < dim; d++) x[i * dim + d] = gaussian(next) * 12 / (1 + d);
  }
  const mean = new Float64Array(dim);
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) mean[d] += x[i * dim + d] / n;
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) x[i * dim + d] -= mean[d];
  const vectors = topEigenvectors(x, n, dim, 3);
  for (const device of [gpu, undefined]) {
    const s = await pcaScores(x, n, dim, 3, 1, device);
    for (let a = 0; a < 3; a++) {
      // The exact score column X v_a, up to sign (pcaScores fixes its own).
      const exact = Array.from(
        { length: n },
        (_, i) => vectors[a].reduce((acc, vd, d) => acc + vd * x[i * dim + d], 0),
      );
      const got = Array.from({ length: n }, (_, i) => s[i * 3 + a]);
      const sign = Math.sign(got.reduce((acc, g, i) => acc + g * exact[i], 0));
      const scale = Math.max(...exact.map(Math.abs));
      const worst = Math.max(...got.map((g, i) => Math.abs(sign * g - exact[i])));
      const where = device ? "GPU" : "host";
      assert(worst < (device ? 1e-4 : 1e-5) * scale, `${where} component ${a}: error ${worst}`);
    }
  }
});
