import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { beyondOneBinding } from "./binding_slices.ts";
import { gpuTest, withLimits } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { GpuError } from "../kernels/device.ts";
import { adamwStep, adamwStepGroup } from "../kernels/adamw.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor, tensorFromArray } from "../kernels/tensor.ts";

// Error bounds. p, m and v after each of three steps are compared at the brief's 1e-5 (assertClose:
// |a − e| ≤ tol·(|e| + mean|e|)): each step adds a few f32 roundings (≈ 6e-8 each) to every
// value, far below it. Because the update lr·m/denom is small next to p, the displacement p − p₀
// is also checked on its own, so that an error in the update (not just in p) must stay below
// 1e-5 relative to the displacement's own scale: the GPU's p rounds to f32 each step (≈ 6e-8
// · |p|, i.e. ≈ 1e-6 of a displacement of ≈ 0.05), which leaves room.
const TOL = 1e-5;

interface Hyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

/** torch.optim.AdamW's single-tensor step in float64, in torch's order. */
function adamwReference(
  p: Float64Array,
  g: ArrayLike<number>,
  m: Float64Array,
  v: Float64Array,
  h: Hyper,
  scale = 1,
): void {
  const bc1 = 1 - h.beta1 ** h.step;
  const bc2 = 1 - h.beta2 ** h.step;
  const stepSize = h.lr / bc1;
  const bc2Sqrt = Math.sqrt(bc2);
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * scale;
    p[i] *= 1 - h.lr * h.weightDecay;
    m[i] = h.beta1 * m[i] + (1 - h.beta1) * gi;
    v[i] = h.beta2 * v[i] + (1 - h.beta2) * gi * gi;
    const denom = Math.sqrt(v[i]) / bc2Sqrt + h.eps;
    p[i] -= stepSize * m[i] / denom;
  }
}

const SHAPES = [[1], [7], [33], [13, 10], [17, 61]]; // 1, 7, 33, 130, 1037 elements
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Gradients of step `t`: random, with every 5th element (shifting with t) exactly 0. */
function gradients(n: number, seed: number, t: number): Float32Array {
  const g = Float32Array.from(randomValues(n, seed * 31 + t));
  for (let i = t % 5; i < n; i += 5) g[i] = 0;
  return g;
}

class State {
  p: Tensor;
  m: Tensor;
  v: Tensor;
  g: Tensor;
  p0: Float32Array;
  ref: { p: Float64Array; m: Float64Array; v: Float64Array };
  constructor(gpu: Gpu, shape: number[], seed: number, midTraining: boolean) {
    const n = numel(shape);
    this.p0 = Float32Array.from(randomValues(n, seed));
    const m0 = midTraining
      ? Float32Array.from(randomValues(n, seed + 1), (x) => 0.1 * x)
      : new Float32Array(n);
    const v0 = midTraining
      ? Float32Array.from(randomValues(n, seed + 2), (x) => 0.01 * x * x)
      : new Float32Array(n);
    this.p = tensorFromArray(gpu, this.p0, shape, `p${shape}`);
    this.m = tensorFromArray(gpu, m0, shape, `m${shape}`);
    this.v = tensorFromArray(gpu, v0, shape, `v${shape}`);
    this.g = createTensor(gpu, shape, "f32", `g${shape}`);
    this.ref = {
      p: Float64Array.from(this.p0),
      m: Float64Array.from(m0),
      v: Float64Array.from(v0),
    };
  }
  async check(what: string): Promise<void> {
    const p = await this.p.download();
    assertClose(`${what}: p`, p, this.ref.p, TOL);
    assertClose(`${what}: m`, await this.m.download(), this.ref.m, TOL);
    assertClose(`${what}: v`, await this.v.download(), this.ref.v, TOL);
    assertClose(
      `${what}: p − p0`,
      Float64Array.from(p, (x, i) => x - this.p0[i]),
      Float64Array.from(this.ref.p, (x, i) => x - this.p0[i]),
      TOL,
    );
  }
  destroy(): void {
    for (const t of [this.p, this.m, this.v, this.g]) t.destroy();
  }
}

const BASE = { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8 };

/**
 * Launches for a range of `n` elements starting at element `offset` of every role: the vec4
 * kernel takes the body when the start is 16-byte aligned, the scalar one the last n mod 4
 * elements (or the whole range when misaligned).
 */
function launches(n: number, offset = 0): number {
  return offset % 4 !== 0 || n < 4 || n % 4 === 0 ? 1 : 2;
}

gpuTest(
  "adamw: three fresh steps match torch's formulas in float64, decay and no decay",
  async (gpu) => {
    const rec = new Recorder(gpu);
    for (const [s, shape] of SHAPES.entries()) {
      for (const weightDecay of [0.1, 0]) {
        const st = new State(gpu, shape, 10 + s, false);
        for (let step = 1; step <= 3; step++) {
          const g = gradients(st.p0.length, s, step);
          st.g.upload(g);
          const h = { ...BASE, weightDecay, step };
          adamwStep(rec, { param: st.p, grad: st.g, m: st.m, v: st.v, ...h });
          assertEquals(rec.length, launches(st.p0.length));
          await rec.submit();
          adamwReference(st.ref.p, g, st.ref.m, st.ref.v, h);
          await st.check(`[${shape}] wd ${weightDecay} step ${step}`);
        }
        st.destroy();
      }
    }
  },
);

gpuTest("adamw: zero gradients still decay and move by their momentum", async (gpu) => {
  const rec = new Recorder(gpu);
  const st = new State(gpu, [33], 5, true);
  st.g.upload(new Float32Array(33));
  const h = { ...BASE, weightDecay: 0.1, step: 7 };
  adamwStep(rec, { param: st.p, grad: st.g, m: st.m, v: st.v, ...h });
  await rec.submit();
  adamwReference(st.ref.p, new Float32Array(33), st.ref.m, st.ref.v, h);
  await st.check("all-zero gradient");
  const p = await st.p.download();
  assert(p.every((x, i) => x !== st.p0[i]), "every element moved");
  st.destroy();
});

gpuTest(
  "adamw: a 2-D grid (past maxComputeWorkgroupsPerDimension) updates every element",
  async (gpu) => {
    const small = withLimits(gpu, { maxComputeWorkgroupsPerDimension: 2 });
    // 3072 elements are 768 vec4 invocations: 3 workgroups of 256, a 2 × 2 grid.
    const st = new State(small, [3072], 60, true);
    const g = gradients(3072, 6, 1);
    st.g.upload(g);
    const h = { ...BASE, weightDecay: 0.1, step: 4 };
    const rec = new Recorder(small);
    adamwStep(rec, { param: st.p, grad: st.g, m: st.m, v: st.v, ...h });
    await rec.submit();
    adamwReference(st.ref.p, g, st.ref.m, st.ref.v, h);
    await st.check("2-D grid");
    st.destroy();
  },
);

gpuTest("adamw: a gradient scale read from the GPU, at index 0 or 1", async (gpu) => {
  const rec = new Recorder(gpu);
  const single = tensorFromArray(gpu, new Float32Array([0.37]), [1], "scale");
  const pair = tensorFromArray(gpu, new Float32Array([12.5, 0.0625]), [2], "normAndCoef");
  for (const [s, shape] of SHAPES.entries()) {
    for (
      const [scale, gradScale, gradScaleIndex] of [[0.37, single, 0], [0.0625, pair, 1]] as const
    ) {
      const st = new State(gpu, shape, 40 + s, true);
      for (let step = 101; step <= 103; step++) {
        const g = gradients(st.p0.length, 40 + s, step);
        st.g.upload(g);
        const h = { ...BASE, weightDecay: 0.01, step };
        adamwStep(rec, {
          param: st.p,
          grad: st.g,
          m: st.m,
          v: st.v,
          ...h,
          gradScale,
          gradScaleIndex,
        });
        await rec.submit();
        adamwReference(st.ref.p, g, st.ref.m, st.ref.v, h, Math.fround(scale));
        await st.check(`[${shape}] scale ${scale} step ${step}`);
      }
      st.destroy();
    }
  }
  single.destroy();
  pair.destroy();
});

/** Arenas for p, g, m, v: `sizes` back to back after `lead` guard elements, then 5 more. */
function arenas(gpu: Gpu, sizes: number[], lead: number, seed: number) {
  const total = lead + sizes.reduce((a, b) => a + b, 0) + 5;
  const init = [0, 1, 2, 3].map((k) => {
    const x = Float32Array.from(randomValues(total, seed + k));
    return k === 3 ? x.map((y) => 0.01 * y * y) : x;
  });
  const bufs = init.map((x, k) => tensorFromArray(gpu, x, [total], `arena${k}`));
  const views = bufs.map((b) => {
    let at = lead;
    return sizes.map((n, i) => {
      const v = b.view(at * 4, [n], `${b.label}[${i}]`);
      at += n;
      return v;
    });
  });
  return { init, bufs, views, total };
}

gpuTest(
  "adamw: a group of back-to-back views takes one launch per weight decay run",
  async (gpu) => {
    const rec = new Recorder(gpu);
    const sizes = SHAPES.map(numel);
    const wds = [0.1, 0.1, 0, 0, 0.1];
    const { init, bufs, views } = arenas(gpu, sizes, 3, 60); // 3: views start off 256-byte bounds
    const h = { ...BASE, step: 4 };
    adamwStepGroup(rec, {
      params: views[0],
      grads: views[1],
      ms: views[2],
      vs: views[3],
      ...h,
      weightDecay: wds,
    });
    assertEquals(rec.length, 3, "runs {0,1} {2,3} {4}");
    await rec.submit();
    const [p, m, v] = [
      await bufs[0].download(),
      await bufs[2].download(),
      await bufs[3].download(),
    ];
    // Reference over the arenas: guard elements must be untouched.
    const ref = [0, 2, 3].map((k) => Float64Array.from(init[k]));
    let at = 3;
    sizes.forEach((n, i) => {
      const sl = (x: Float64Array) => x.subarray(at, at + n);
      adamwReference(sl(ref[0]), init[1].subarray(at, at + n), sl(ref[1]), sl(ref[2]), {
        ...h,
        weightDecay: wds[i],
      });
      at += n;
    });
    assertClose("group p", p, ref[0], TOL);
    assertClose("group m", m, ref[1], TOL);
    assertClose("group v", v, ref[2], TOL);
    for (const [name, out, k] of [["p", p, 0], ["m", m, 2], ["v", v, 3]] as const) {
      for (const i of [0, 1, 2, at, at + 1, at + 4]) {
        assertEquals(out[i], init[k][i], `guard element ${i} of ${name}`);
      }
    }

    // Same step, one adamwStep per tensor on fresh arenas: bitwise the same results.
    const again = arenas(gpu, sizes, 3, 60);
    sizes.forEach((_, i) =>
      adamwStep(rec, {
        param: again.views[0][i],
        grad: again.views[1][i],
        m: again.views[2][i],
        v: again.views[3][i],
        ...h,
        weightDecay: wds[i],
      })
    );
    let offset = 3;
    const expected = sizes.reduce((sum, n) => {
      const k = launches(n, offset);
      offset += n;
      return sum + k;
    }, 0);
    assertEquals(rec.length, expected);
    await rec.submit();
    assertEquals(await again.bufs[0].download(), p);
    assertEquals(await again.bufs[2].download(), m);
    assertEquals(await again.bufs[3].download(), v);

    const sep = SHAPES.map((shape, s) => new State(gpu, shape, 70 + s, true));
    adamwStepGroup(rec, {
      params: sep.map((st) => st.p),
      grads: sep.map((st) => st.g),
      ms: sep.map((st) => st.m),
      vs: sep.map((st) => st.v),
      ...h,
      weightDecay: 0.1,
    });
    // Separate tensors (each at offset 0) are one range each.
    assertEquals(rec.length, SHAPES.map(numel).reduce((sum, n) => sum + launches(n), 0));
    await rec.submit();
    for (const st of sep) {
      adamwReference(st.ref.p, new Float32Array(st.p0.length), st.ref.m, st.ref.v, {
        ...h,
        weightDecay: 0.1,
      });
      await st.check(`separate ${st.p.label}`);
      st.destroy();
    }
    for (const b of [...bufs, ...again.bufs]) b.destroy();
  },
);

gpuTest("adamw: two runs are bitwise identical", async (gpu) => {
  const rec = new Recorder(gpu);
  const results = [];
  for (let run = 0; run < 2; run++) {
    const st = new State(gpu, [17, 61], 80, true);
    st.g.upload(gradients(1037, 80, 1));
    adamwStep(rec, {
      param: st.p,
      grad: st.g,
      m: st.m,
      v: st.v,
      ...BASE,
      weightDecay: 0.1,
      step: 2,
    });
    await rec.submit();
    results.push([await st.p.download(), await st.m.download(), await st.v.download()]);
    st.destroy();
  }
  assertEquals(results[0], results[1]);
});

gpuTest("adamw: wrong shapes and hyper-parameters name the op and the tensor", (gpu) => {
  const rec = new Recorder(gpu);
  const p = createTensor(gpu, [7, 3], "f32", "weight");
  const g = createTensor(gpu, [21], "f32", "weight.grad");
  const ok = createTensor(gpu, [7, 3], "f32", "state");
  const i32 = createTensor(gpu, [7, 3], "i32", "ints");
  const [m, v, m2, v2] = ["m", "v", "m2", "v2"].map((l) => createTensor(gpu, [7, 3], "f32", l));
  const h = { ...BASE, weightDecay: 0.1, step: 1 };
  assertThrows(
    () => adamwStep(rec, { param: p, grad: g, m, v, ...h }),
    GpuError,
    'adamwStep: grad ("weight.grad") has shape [21], expected [7, 3]',
  );
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m: i32, v: ok, ...h }),
    GpuError,
    'adamwStep: m ("ints") is i32',
  );
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m, v, ...h, beta2: 1 }),
    GpuError,
    "adamwStep: beta2",
  );
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m, v, ...h, step: 0 }),
    GpuError,
    "adamwStep: step",
  );
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m, v, ...h, gradScale: ok }),
    GpuError,
    'adamwStep: gradScale ("state")',
  );
  const one = createTensor(gpu, [1], "f32", "scale");
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m, v, ...h, gradScale: one, gradScaleIndex: 1 }),
    GpuError,
    "gradScaleIndex",
  );
  assertThrows(
    () => adamwStepGroup(rec, { params: [p, ok], grads: [ok, g], ms: [m, m2], vs: [v, v2], ...h }),
    GpuError,
    'adamwStepGroup: grads[1] ("weight.grad")',
  );
  assertThrows(
    () => adamwStepGroup(rec, { params: [p], grads: [ok], ms: [m], vs: [], ...h }),
    GpuError,
    "adamwStepGroup: vs has 0 entries",
  );
  assertThrows(
    () =>
      adamwStepGroup(rec, {
        params: [p],
        grads: [ok],
        ms: [m],
        vs: [v],
        ...h,
        weightDecay: [1, 2],
      }),
    GpuError,
    "adamwStepGroup: weightDecay has 2 entries",
  );
  // One tensor for two of the state the step writes: accepted by WebGPU, and wrong.
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m, v: m, ...h }),
    GpuError,
    'adamwStep: m ("m") shares GPU memory with v ("m"): each output needs memory of its own',
  );
  assertThrows(
    () => adamwStep(rec, { param: p, grad: ok, m: p, v, ...h }),
    GpuError,
    'adamwStep: param ("weight") shares GPU memory with m ("weight")',
  );
  assertThrows(
    () => adamwStepGroup(rec, { params: [p], grads: [ok], ms: [v2], vs: [v2], ...h }),
    GpuError,
    'adamwStepGroup: ms[0] ("v2") shares GPU memory with vs[0] ("v2")',
  );
  // Across the group's entries: a tied weight given twice (updated twice), views of one arena
  // that overlap, a gradient in another parameter's bytes (read after a launch wrote them).
  const [g1, g2] = ["g1", "g2"].map((l) => createTensor(gpu, [7, 3], "f32", l));
  const two = { grads: [g1, g2], ms: [m, m2], vs: [v, v2], ...h };
  assertThrows(
    () => adamwStepGroup(rec, { params: [p, p], ...two }),
    GpuError,
    'adamwStepGroup: params[0] ("weight") shares GPU memory with params[1] ("weight")',
  );
  const arena = createTensor(gpu, [42], "f32", "arena");
  const a0 = arena.view(0, [7, 3], "a0"), a1 = arena.view(16 * 4, [7, 3], "a1");
  assertThrows(
    () => adamwStepGroup(rec, { ...two, params: [p, ok], ms: [a0, a1] }),
    GpuError,
    'adamwStepGroup: ms[0] ("a0") shares GPU memory with ms[1] ("a1")',
  );
  assertThrows(
    () => adamwStepGroup(rec, { ...two, params: [a1, p], grads: [g1, a0] }),
    GpuError,
    'adamwStepGroup: params[0] ("a1") shares GPU memory with grads[1] ("a0")',
  );
  // Back-to-back views of one arena (the trainer's layout) share nothing.
  const accepted = new Recorder(gpu);
  adamwStepGroup(accepted, { ...two, params: [a0, arena.view(21 * 4, [7, 3], "b1")] });
  assert(accepted.length > 0);
  // The gradient read where the parameter is written: refused by the launch, not the submit.
  assertThrows(
    () => adamwStep(rec, { param: p, grad: p, m, v, ...h }),
    GpuError,
    'tensor "weight" is given twice, and the kernel writes it',
  );
  assertEquals(rec.length, 0);
  for (const t of [p, g, ok, i32, one, m, v, m2, v2, g1, g2, arena]) t.destroy();
});

gpuTest("adamw: a tensor larger than one storage binding is updated in slices", async (gpu) => {
  const n = beyondOneBinding(gpu);
  if (n === null) return;
  // Cheap distinct values per element and role (a hash, not an RNG: 33M elements).
  const value = (i: number, k: number) =>
    (((Math.imul(i + 1, 2654435761) ^ Math.imul(k + 7, 40503)) >>> 0) / 2 ** 32) - 0.5;
  const host = new Float32Array(n);
  const make = (k: number, label: string, f: (x: number) => number) => {
    for (let i = 0; i < n; i++) host[i] = f(value(i, k));
    return tensorFromArray(gpu, host, [n], label);
  };
  const id = (x: number) => x;
  const p = make(0, "big p", id);
  const g = make(1, "big g", id);
  const m = make(2, "big m", (x) => 0.1 * x);
  const v = make(3, "big v", (x) => 0.01 * x * x);
  const h = { ...BASE, weightDecay: 0.1, step: 5 };
  const rec = new Recorder(gpu);
  adamwStep(rec, { param: p, grad: g, m, v, ...h });
  // Two binding-sized slices; the second ends in n mod 4 elements for the scalar kernel.
  assertEquals(rec.length, 2 + (n % 4 === 0 ? 0 : 1), "two binding-sized slices");
  await rec.submit();
  const pOut = await p.download();
  const vOut = await v.download();
  // Every element against float64 (a sample array would miss a mis-offset slice's tail).
  const bc1 = 1 - h.beta1 ** h.step;
  const bc2 = Math.sqrt(1 - h.beta2 ** h.step);
  let bad = -1;
  for (let i = 0; i < n; i++) {
    const gi = Math.fround(value(i, 1));
    const mi = h.beta1 * Math.fround(0.1 * value(i, 2)) + (1 - h.beta1) * gi;
    const vi = h.beta2 * Math.fround(0.01 * value(i, 3) ** 2) + (1 - h.beta2) * gi * gi;
    const pi = Math.fround(value(i, 0)) * (1 - h.lr * h.weightDecay) -
      (h.lr / bc1) * mi / (Math.sqrt(vi) / bc2 + h.eps);
    // p is O(0.5): |a − e| ≤ 1e-5 · (|e| + 0.25) is assertClose's bound with mean|p| ≈ 0.25.
    const ratio = Math.max(
      Math.abs(pOut[i] - pi) / (TOL * (Math.abs(pi) + 0.25)),
      Math.abs(vOut[i] - vi) / (TOL * (Math.abs(vi) + 1e-3)),
    );
    if (!(ratio <= 1) && bad < 0) bad = i;
  }
  assert(bad < 0, `element ${bad} of ${n}: p ${pOut[bad]}, v ${vOut[bad]}: beyond the bound`);
  for (const t of [p, g, m, v]) t.destroy();
});

gpuTest("adamw: the vec4 and scalar kernels give bitwise the same update", async (gpu) => {
  // One tensor of 1037 elements updated at an aligned offset (vec4 body + scalar tail of 1) and
  // at offset 1 (scalar only), from the same values: the results must not depend on the layout.
  const n = 1037;
  const values = (k: number) => Float32Array.from(randomValues(n, 90 + k));
  const run = async (offset: number) => {
    const rec = new Recorder(gpu);
    const roles = [0, 1, 2, 3].map((k) => {
      const t = createTensor(gpu, [n + 4], "f32", `role ${k}`);
      const view = t.view(offset * 4, [n], `role ${k} view`);
      const v = values(k);
      view.upload(k === 3 ? v.map((x) => x * x) : v);
      return view;
    });
    adamwStep(rec, {
      param: roles[0],
      grad: roles[1],
      m: roles[2],
      v: roles[3],
      ...BASE,
      weightDecay: 0.1,
      step: 3,
    });
    const count = rec.length;
    await rec.submit();
    return { count, p: await roles[0].download(), m: await roles[2].download() };
  };
  const aligned = await run(0);
  const shifted = await run(1);
  assertEquals([aligned.count, shifted.count], [2, 1]);
  assertEquals(aligned.p, shifted.p);
  assertEquals(aligned.m, shifted.m);
});
