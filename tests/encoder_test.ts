// The encoder and the EH-FT head against PyTorch's float64 results (tests/fixtures, written by
// tools/make_fixtures.py), and the encoder's own contracts: trainable predicate, PEFT hooks,
// determinism with dropout, batches smaller than the arena.
//
// Bounds: hidden states, head inputs and logits within 1e-4 relative (assertClose); the loss
// within 1e-4 relative; every parameter gradient within 1e-3 of that tensor's largest reference
// magnitude. Float32 forward and backward through two layers land around 1e-6 .. 1e-5 of the
// float64 results; the bounds leave room for other GPUs' summation orders.

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { finiteDifference, randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { bceWithLogitsBackward, bceWithLogitsForward } from "../kernels/bce_with_logits.ts";
import { loraBackward, loraForward } from "../kernels/lora.ts";
import { Recorder } from "../kernels/recorder.ts";
import {
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from "../kernels/softmax_cross_entropy.ts";
import { createTensor, tensorFromArray } from "../kernels/tensor.ts";
import { loadBackbone, loadHead } from "../model/checkpoint.ts";
import { type ModelConfig, parseConfig, readConfig } from "../model/config.ts";
import {
  createEncoder,
  type Encoder,
  type EncoderHooks,
  encoderParameters,
  encoderParameterShapes,
  type LinearHook,
} from "../model/encoder.ts";
import {
  createHead,
  type Head,
  HEAD_INIT_STD,
  headGradients,
  headParameters,
  initialHeadValues,
} from "../model/head.ts";
import { openSafetensors, type SafetensorsReader } from "../model/safetensors.ts";
import { readReference } from "./train_fixture.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);

interface Fixture {
  name: string;
  config: ModelConfig;
  model: SafetensorsReader;
  /** Every tensor of reference.safetensors as float64. */
  ref: Map<string, Float64Array>;
  B: number;
  S: number;
  classes: number;
  wic: boolean;
}

const fixtures = new Map<string, Promise<Fixture>>();

function fixture(name: string): Promise<Fixture> {
  let f = fixtures.get(name);
  if (!f) {
    f = (async () => {
      const dir = new URL(`${name}/`, FIXTURES).pathname;
      const config = await readConfig(`${dir}config.json`);
      const model = await openSafetensors(`${dir}model.safetensors`);
      const { ref, shapes } = await readReference(`${dir}reference.safetensors`);
      const [B, S] = shapes.get("input_ids")!;
      const classes = shapes.get("logits")![1];
      return { name, config, model, ref, B, S, classes, wic: ref.has("span1") };
    })();
    fixtures.set(name, f);
  }
  return f;
}

/** Rows [0, B) and tokens [0, S) of a [fullB, fullS] input. */
function crop(a: Float64Array, fullS: number, B: number, S: number): number[] {
  const out: number[] = [];
  for (let b = 0; b < B; b++) for (let s = 0; s < S; s++) out.push(a[b * fullS + s]);
  return out;
}

interface RunOptions {
  /** Overrides both dropout probabilities (default 0). */
  dropout?: number;
  training?: boolean;
  seed?: number;
  trainable?: (name: string) => boolean;
  hooks?: EncoderHooks;
  /** Use the first `batch` rows and `seq` tokens (default: all). */
  batch?: number;
  seq?: number;
  maxBatch?: number;
  maxSeq?: number;
  /** Record the encoder backward a second time with accumulate. */
  accumulateTwice?: boolean;
  /** Called after loading the weights (to modify them). */
  prepare?: (enc: Encoder, head: Head) => Promise<void> | void;
  /** Reuse an encoder and head (the arena keeps whatever earlier batches left). */
  reuse?: { enc: Encoder; head: Head };
}

interface RunResult {
  enc: Encoder;
  head: Head;
  hidden: Float32Array;
  headInput: Float32Array;
  logits: Float32Array;
  loss: number;
  /** Gradients by full checkpoint name (prefix included for the backbone). */
  grads: Map<string, Float32Array>;
}

async function createModel(
  gpu: Gpu,
  f: Fixture,
  o: RunOptions,
): Promise<{ enc: Encoder; head: Head }> {
  const maxBatch = o.maxBatch ?? f.B, maxSeq = o.maxSeq ?? f.S;
  const enc = createEncoder(gpu, f.config, {
    maxBatch,
    maxSeq,
    maxPrefix: 4,
    dropout: o.dropout ?? 0,
    trainable: o.trainable,
    hooks: o.hooks,
  });
  const head = createHead(gpu, {
    hiddenSize: f.config.hiddenSize,
    numClasses: f.classes,
    wic: f.wic,
    maxBatch,
    maxSeq,
    init: false,
  });
  await loadBackbone(f.model, f.config, encoderParameters(enc.params));
  await loadHead(f.model, headParameters(head));
  await o.prepare?.(enc, head);
  return { enc, head };
}

/** Forward, head, loss, backward of the fixture batch; downloads everything. */
async function run(gpu: Gpu, f: Fixture, o: RunOptions = {}): Promise<RunResult> {
  const { enc, head } = o.reuse ?? await createModel(gpu, f, o);
  const B = o.batch ?? f.B, S = o.seq ?? f.S;
  const input = (n: string) => crop(f.ref.get(n)!, f.S, B, S);
  enc.setBatch({
    inputIds: input("input_ids"),
    typeIds: input("token_type_ids"),
    positionIds: input("position_ids"),
    attentionMask: input("attention_mask"),
    batch: B,
    seqLen: S,
  });
  if (f.wic) {
    const s1 = f.ref.get("span1")!, s2 = f.ref.get("span2")!;
    const spans: number[] = [];
    for (let b = 0; b < B; b++) spans.push(s1[2 * b], s1[2 * b + 1], s2[2 * b], s2[2 * b + 1]);
    head.setSpans(spans, B, S);
  }
  const labels = f.ref.get("labels")!.slice(0, B);
  const targets = f.classes === 1
    ? tensorFromArray(gpu, Float32Array.from(labels), [B], "targets")
    : tensorFromArray(gpu, Uint32Array.from(labels), [B], "targets");
  const loss = createTensor(gpu, [1], "f32", "loss");
  const dLogits = createTensor(gpu, [B, f.classes], "f32", "dLogits");

  const rec = new Recorder(gpu);
  const hidden = enc.forward(rec, { training: o.training ?? false, seed: o.seed ?? 0, step: 0 });
  const logits = head.forward(rec, hidden);
  if (f.classes === 1) {
    bceWithLogitsForward(rec, { logits, targets, loss });
    bceWithLogitsBackward(rec, { logits, targets, dLogits });
  } else {
    softmaxCrossEntropyForward(rec, { logits, targets, loss });
    softmaxCrossEntropyBackward(rec, { logits, targets, dLogits });
  }
  const dHidden = head.backward(rec, dLogits);
  enc.backward(rec, dHidden);
  if (o.accumulateTwice) enc.backward(rec, dHidden, { accumulate: true });
  await rec.submit();

  const grads = new Map<string, Float32Array>();
  for (const [n, t] of enc.gradients()) {
    grads.set(`${f.config.prefix}.${n}`, await t.download() as Float32Array);
  }
  for (const [n, t] of headGradients(head)) grads.set(n, await t.download() as Float32Array);
  const result = {
    enc,
    head,
    hidden: await hidden.download() as Float32Array,
    headInput: await head.headInput(B).download() as Float32Array,
    logits: await logits.download() as Float32Array,
    loss: (await loss.download())[0],
    grads,
  };
  for (const t of [targets, loss, dLogits]) t.destroy();
  return result;
}

/** max |a − e| / scale, scale defaulting to max |e| (0 when both are 0). */
function gradError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  scale?: number,
): number {
  let err = 0, max = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    max = Math.max(max, Math.abs(expected[i]));
  }
  const s = scale ?? max;
  return s === 0 ? (err === 0 ? 0 : Infinity) : err / s;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * The magnitude a gradient's error is measured against: its largest reference element, except
 * for the attention key bias, whose gradient is exactly zero (adding q·b_k to every score of a
 * softmax row changes nothing; the float64 reference holds ~1e-17 of rounding): that one is
 * measured against its layer's key weight gradient.
 */
function gradScale(f: Fixture, name: string): number {
  if (/attention\.self\.key\.bias$/.test(name)) {
    const weight = maxAbs(f.ref.get(`grad.${name.replace(/bias$/, "weight")}`)!);
    assert(maxAbs(f.ref.get(`grad.${name}`)!) <= 1e-12 * weight, `${name}: reference not ~0`);
    return weight;
  }
  return maxAbs(f.ref.get(`grad.${name}`)!);
}

function maxRelative(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let mean = 0;
  for (let i = 0; i < expected.length; i++) mean += Math.abs(expected[i]);
  mean /= expected.length;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (Math.abs(expected[i]) + mean));
  }
  return worst;
}

/** Checks every gradient of `r` named in `names` against the fixture; returns the worst ratio. */
function checkGrads(f: Fixture, r: RunResult, names: Iterable<string>, factor = 1): number {
  let worst = 0;
  for (const n of names) {
    const ours = r.grads.get(n);
    assert(ours !== undefined, `${f.name}: no gradient for ${n}`);
    const ref = f.ref.get(`grad.${n}`)!.map((v) => v * factor);
    const e = gradError(ours, ref, factor * gradScale(f, n));
    assert(e <= 1e-3, `${f.name}: gradient of ${n} is off by ${e.toExponential(2)} of its max`);
    worst = Math.max(worst, e);
  }
  return worst;
}

function checkForward(f: Fixture, r: RunResult): void {
  assertClose(`${f.name} last_hidden_state`, r.hidden, f.ref.get("last_hidden_state")!, 1e-4);
  assertClose(`${f.name} head_input`, r.headInput, f.ref.get("head_input")!, 1e-4);
  assertClose(`${f.name} logits`, r.logits, f.ref.get("logits")!, 1e-4);
  const loss = f.ref.get("loss")![0];
  assert(
    Math.abs(r.loss - loss) <= 1e-4 * Math.abs(loss),
    `${f.name}: loss ${r.loss}, expected ${loss}`,
  );
}

function destroy(r: { enc: Encoder; head: Head }): void {
  r.enc.destroy();
  r.head.destroy();
}

for (const name of ["tiny-bert", "tiny-roberta", "tiny-bert-wic"]) {
  gpuTest(`${name}: forward, head, loss and every gradient match PyTorch`, async (gpu) => {
    const f = await fixture(name);
    const r = await run(gpu, f);
    checkForward(f, r);
    const all = [...f.model.tensors.keys()];
    assertEquals(new Set(r.grads.keys()), new Set(all), "a gradient for every tensor");
    const worstGrad = checkGrads(f, r, all);
    console.log(
      `${name}: max rel. error hidden ${
        maxRelative(r.hidden, f.ref.get("last_hidden_state")!).toExponential(2)
      }, logits ${maxRelative(r.logits, f.ref.get("logits")!).toExponential(2)}, loss ${
        (Math.abs(r.loss - f.ref.get("loss")![0]) / f.ref.get("loss")![0]).toExponential(2)
      }, worst gradient ${worstGrad.toExponential(2)} of its max`,
    );
    destroy(r);
  });
}

gpuTest("BitFit-like predicate: only biases get gradients; accumulate adds", async (gpu) => {
  const f = await fixture("tiny-bert");
  const r = await run(gpu, f, {
    trainable: (n) => n.endsWith(".bias"),
    accumulateTwice: true,
  });
  const p = r.enc.grads;
  assertEquals(p.embeddings.word, undefined);
  assertEquals(p.embeddings.norm.weight, undefined);
  for (const layer of p.layers) {
    for (const wb of Object.values(layer)) {
      assertEquals(wb.weight, undefined);
      assert(wb.bias !== undefined);
    }
  }
  const biases = [...f.model.tensors.keys()].filter((n) =>
    n.endsWith(".bias") && !n.startsWith("head.")
  );
  assertEquals(
    new Set([...r.enc.gradients().keys()].map((n) => `bert.${n}`)),
    new Set(biases),
  );
  // The encoder's backward ran twice, the second time adding: its gradients are doubled.
  checkGrads(f, r, biases, 2);
  checkGrads(f, r, ["head.dense.weight", "head.out_proj.bias"]);
  destroy(r);
});

// ---- a float64 CPU encoder (for hooks' predictions) ----

function erf(x: number): number {
  const a = Math.abs(x);
  let r: number;
  if (a < 3) {
    // Maclaurin series; at |x| < 3 its terms stay small enough for float64.
    let term = a, sum = a;
    for (let n = 1; n < 80; n++) {
      term *= -a * a / n;
      sum += term / (2 * n + 1);
    }
    r = 2 / Math.sqrt(Math.PI) * sum;
  } else {
    const x2 = a * a;
    const series = 1 - 1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 * x2 * x2);
    r = 1 - Math.exp(-x2) / (a * Math.sqrt(Math.PI)) * series;
  }
  return x < 0 ? -r : r;
}

type Weights = Map<string, Float64Array>;

async function readWeights(f: Fixture): Promise<Weights> {
  const w = new Map<string, Float64Array>();
  for (const n of f.model.tensors.keys()) w.set(n, Float64Array.from(await f.model.readF32(n)));
  return w;
}

function linear(x: Float64Array, w: Float64Array, b: Float64Array, rows: number, inF: number) {
  const outF = b.length;
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = b[o];
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w[o * inF + i];
      y[r * outF + o] = s;
    }
  }
  return y;
}

function layerNorm(x: Float64Array, g: Float64Array, b: Float64Array, eps: number) {
  const h = g.length;
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / h; r++) {
    let mean = 0, v = 0;
    for (let c = 0; c < h; c++) mean += x[r * h + c] / h;
    for (let c = 0; c < h; c++) v += (x[r * h + c] - mean) ** 2 / h;
    const rstd = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < h; c++) y[r * h + c] = (x[r * h + c] - mean) * rstd * g[c] + b[c];
  }
  return y;
}

interface Prefix64 {
  layer: number;
  P: number;
  key: Float64Array;
  value: Float64Array;
}

/** The float64 encoder forward (dropout 0) of a batch given as the fixtures give it. */
function cpuEncoder(
  f: Pick<Fixture, "config" | "B" | "S" | "ref">,
  w: Weights,
  prefix?: Prefix64,
): Float64Array {
  const c = f.config;
  const { B, S } = f;
  const H = c.hiddenSize, I = c.intermediateSize, NH = c.numHeads, D = c.headDim;
  const E = c.embeddingSize;
  const N = B * S;
  const pre = `${c.prefix}.`;
  const get = (n: string) => w.get(pre + n)!;
  const ids = f.ref.get("input_ids")!, types = f.ref.get("token_type_ids")!;
  const pos = f.ref.get("position_ids")!, mask = f.ref.get("attention_mask")!;
  let x = new Float64Array(N * E);
  const word = get("embeddings.word_embeddings.weight");
  const position = get("embeddings.position_embeddings.weight");
  const type = get("embeddings.token_type_embeddings.weight");
  for (let t = 0; t < N; t++) {
    for (let ch = 0; ch < E; ch++) {
      x[t * E + ch] = word[ids[t] * E + ch] + type[types[t] * E + ch] + position[pos[t] * E + ch];
    }
  }
  x = layerNorm(
    x,
    get("embeddings.LayerNorm.weight"),
    get("embeddings.LayerNorm.bias"),
    c.layerNormEps,
  );
  if (E !== H) {
    x = linear(x, get("embeddings_project.weight"), get("embeddings_project.bias"), N, E);
  }
  for (let l = 0; l < c.numLayers; l++) {
    const lp = (n: string) => get(`encoder.layer.${l}.${n}`);
    const lin = (input: Float64Array, n: string, inF: number) =>
      linear(input, lp(`${n}.weight`), lp(`${n}.bias`), N, inF);
    const q = lin(x, "attention.self.query", H);
    const k = lin(x, "attention.self.key", H);
    const v = lin(x, "attention.self.value", H);
    const P = prefix?.layer === l ? prefix.P : 0;
    const ctx = new Float64Array(N * H);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < NH; h++) {
        for (let i = 0; i < S; i++) {
          const qb = (b * S + i) * H + h * D;
          const scores: number[] = [];
          const values: number[][] = [];
          for (let j = 0; j < P + S; j++) {
            if (j >= P && mask[b * S + j - P] === 0) continue;
            let dot = 0;
            const row: number[] = [];
            for (let d = 0; d < D; d++) {
              const kv = j < P
                ? prefix!.key[(h * P + j) * D + d]
                : k[(b * S + j - P) * H + h * D + d];
              dot += q[qb + d] * kv;
              row.push(
                j < P ? prefix!.value[(h * P + j) * D + d] : v[(b * S + j - P) * H + h * D + d],
              );
            }
            scores.push(dot / Math.sqrt(D));
            values.push(row);
          }
          const m = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b2) => a + b2, 0);
          for (let d = 0; d < D; d++) {
            let s = 0;
            for (let j = 0; j < e.length; j++) s += e[j] / z * values[j][d];
            ctx[qb + d] = s;
          }
        }
      }
    }
    const a = lin(ctx, "attention.output.dense", H);
    for (let i = 0; i < a.length; i++) a[i] += x[i];
    const n1 = layerNorm(
      a,
      lp("attention.output.LayerNorm.weight"),
      lp("attention.output.LayerNorm.bias"),
      c.layerNormEps,
    );
    const inter = lin(n1, "intermediate.dense", H).map((u) => 0.5 * u * (1 + erf(u / Math.SQRT2)));
    const o = lin(inter, "output.dense", I);
    for (let i = 0; i < o.length; i++) o[i] += n1[i];
    x = layerNorm(o, lp("output.LayerNorm.weight"), lp("output.LayerNorm.bias"), c.layerNormEps);
  }
  return x;
}

gpuTest("the float64 CPU encoder of these tests reproduces the fixture", async () => {
  const f = await fixture("tiny-roberta");
  const ours = cpuEncoder(f, await readWeights(f));
  assertClose("cpu encoder", ours, f.ref.get("last_hidden_state")!, 1e-9);
});

gpuTest("hooks: a LoRA term on one linear equals merging it into the weight", async (gpu) => {
  const f = await fixture("tiny-bert");
  const H = f.config.hiddenSize, r = 2, scale = 0.5;
  const layer = 0, module = "value" as const;
  const name = `encoder.layer.${layer}.attention.self.value.weight`;
  const aData = Float32Array.from(randomValues(r * H, 5), (v) => 0.3 * v);
  const bData = Float32Array.from(randomValues(H * r, 6), (v) => 0.3 * v);
  const w = await readWeights(f);
  const merged = Float64Array.from(w.get(`bert.${name}`)!);
  for (let o = 0; o < H; o++) {
    for (let i = 0; i < H; i++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += bData[o * r + k] * aData[k * H + i];
      merged[o * H + i] += scale * s;
    }
  }

  // Merged weights: a plain run; its output is also predicted by the float64 CPU encoder.
  const plain = await run(gpu, f, {
    prepare: (enc) => encoderParameters(enc.params).get(name)!.upload(Float32Array.from(merged)),
  });
  w.set(`bert.${name}`, Float64Array.from(Float32Array.from(merged)));
  assertClose("merged output vs float64", plain.hidden, cpuEncoder(f, w), 1e-4);

  const a = tensorFromArray(gpu, aData, [r, H], "lora A");
  const b = tensorFromArray(gpu, bData, [H, r], "lora B");
  const dA = createTensor(gpu, [r, H], "f32", "lora dA");
  const dB = createTensor(gpu, [H, r], "f32", "lora dB");
  const hidden = createTensor(gpu, [f.B * f.S, r], "f32", "lora hidden");
  const lora: LinearHook = {
    forward(rec, x, out) {
      const rows = x.shape[0] * x.shape[1];
      loraForward(rec, { x, a, b, scale, hidden: hidden.view(0, [rows, r]), out });
    },
    backward(rec, x, dOut, dX, ctx) {
      const rows = x.shape[0] * x.shape[1];
      loraBackward(rec, {
        x,
        a,
        b,
        scale,
        hidden: hidden.view(0, [rows, r]),
        dOut,
        dX,
        dA,
        dB,
        accumulate: ctx.accumulate,
      });
    },
  };
  const sites: string[] = [];
  const hooked = await run(gpu, f, {
    hooks: {
      linear: (site) => {
        sites.push(`${site.layer}.${site.module}`);
        return site.layer === layer && site.module === module ? lora : undefined;
      },
    },
  });
  assertEquals(sites.length, 6 * f.config.numLayers, "every site is asked once per forward");
  assertClose("hooked output", hooked.hidden, plain.hidden, 1e-4);
  assertClose("hooked logits", hooked.logits, plain.logits, 1e-4);
  for (const [n, g] of plain.grads) {
    const scale = n.startsWith("head.") ? maxAbs(g) : gradScale(f, n);
    assert(gradError(hooked.grads.get(n)!, g, scale) <= 1e-4, `gradient of ${n} with the hook`);
  }
  // dA = scale·Bᵀ·dW and dB = scale·dW·Aᵀ, dW the merged weight's gradient.
  const dW = plain.grads.get(`bert.${name}`)!;
  const wantA = new Float64Array(r * H), wantB = new Float64Array(H * r);
  for (let k = 0; k < r; k++) {
    for (let i = 0; i < H; i++) {
      for (let o = 0; o < H; o++) {
        wantA[k * H + i] += scale * bData[o * r + k] * dW[o * H + i];
        wantB[o * r + k] += scale * dW[o * H + i] * aData[k * H + i];
      }
    }
  }
  assert(gradError(await dA.download(), wantA) <= 1e-4, "LoRA dA");
  assert(gradError(await dB.download(), wantB) <= 1e-4, "LoRA dB");

  // Removing the hooks restores the original model.
  hooked.enc.setHooks(null);
  const again = await run(gpu, f, { reuse: hooked });
  checkForward(f, again);
  for (const t of [a, b, dA, dB, hidden]) t.destroy();
  destroy(plain);
  destroy(hooked);
});

gpuTest("hooks: an attention prefix on one layer, forward and its gradient", async (gpu) => {
  const f = await fixture("tiny-bert");
  const c = f.config;
  const NH = c.numHeads, D = c.headDim, P = 2, layer = 1;
  const n = NH * P * D;
  const key64 = randomValues(n, 7), value64 = randomValues(n, 8);
  const key = tensorFromArray(gpu, Float32Array.from(key64), [NH, P, D], "prefix key");
  const value = tensorFromArray(gpu, Float32Array.from(value64), [NH, P, D], "prefix value");
  const dKey = createTensor(gpu, [NH, P, D], "f32", "prefix dKey");
  const dValue = createTensor(gpu, [NH, P, D], "f32", "prefix dValue");
  const { enc, head } = await createModel(gpu, f, {
    trainable: () => false,
    hooks: { prefix: (l) => (l === layer ? { key, value, dKey, dValue } : undefined) },
  });
  assertEquals(enc.gradients().size, 0);
  enc.setBatch({
    inputIds: f.ref.get("input_ids")!,
    typeIds: f.ref.get("token_type_ids")!,
    positionIds: f.ref.get("position_ids")!,
    attentionMask: f.ref.get("attention_mask")!,
    batch: f.B,
    seqLen: f.S,
  });
  const R = randomValues(f.B * f.S * c.hiddenSize, 9);
  const dHidden = tensorFromArray(gpu, Float32Array.from(R), [f.B, f.S, c.hiddenSize], "dHidden");
  const rec = new Recorder(gpu);
  // The dropout counter: 1.5 drew step 1's masks, -1 step 2^32 − 1's, without a word.
  for (
    const [opts, message] of [
      [{ seed: 1.5 }, "Encoder.forward: dropout seed 1.5 is not an integer in [0, 2^32)"],
      [{ seed: -1 }, "Encoder.forward: dropout seed -1 is not an integer in [0, 2^32)"],
      [{ step: NaN }, "Encoder.forward: step NaN is not an integer ≥ 0"],
    ] as const
  ) {
    assertThrows(() => enc.forward(rec, { training: true, ...opts }), Error, message);
  }
  assertEquals(rec.length, 0);
  const out = enc.forward(rec);
  const forwardCommands = rec.length;
  enc.backward(rec, dHidden);
  // Nothing below the prefix's layer trains: the backward stops inside layer 1.
  const backward = rec.labels.slice(forwardCommands);
  assert(!backward.some((l) => l.startsWith("embedding")), "no embedding backward");
  // Each attention backward launches exactly one "(dV)" product.
  assert(backward.filter((l) => l === "attentionBackward (dV)").length === 1, "one attention");
  await rec.submit();

  const w = await readWeights(f);
  const prefixOf = (k: Float64Array, v: Float64Array): Prefix64 => ({ layer, P, key: k, value: v });
  const withPrefix = await out.download();
  assertClose("output with prefix", withPrefix, cpuEncoder(f, w, prefixOf(key64, value64)), 1e-4);
  assert(maxRelative(withPrefix, f.ref.get("last_hidden_state")!) > 1e-2, "the prefix matters");

  const loss = (k: Float64Array, v: Float64Array) => {
    const y = cpuEncoder(f, w, prefixOf(k, v));
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * R[i];
    return s;
  };
  const fdKey = Float64Array.from(
    key64,
    (_, i) => finiteDifference((k) => loss(k, value64), key64, i),
  );
  const fdValue = Float64Array.from(
    value64,
    (_, i) => finiteDifference((v) => loss(key64, v), value64, i),
  );
  assert(gradError(await dKey.download(), fdKey) <= 1e-3, "prefix dKey vs finite differences");
  assert(
    gradError(await dValue.download(), fdValue) <= 1e-3,
    "prefix dValue vs finite differences",
  );
  for (const t of [key, value, dKey, dValue, dHidden]) t.destroy();
  enc.destroy();
  head.destroy();
});

gpuTest("dropout: the same seed is bitwise reproducible, another seed differs", async (gpu) => {
  const f = await fixture("tiny-roberta");
  const o = { dropout: 0.1, training: true, seed: 1234 };
  const first = await run(gpu, f, o);
  const second = await run(gpu, f, o);
  assertEquals(second.hidden, first.hidden);
  assertEquals(second.logits, first.logits);
  assertEquals(second.loss, first.loss);
  assertEquals(second.grads, first.grads);
  assert(!first.hidden.some(Number.isNaN));
  // Dropout is on: the result is not the dropout-free one.
  assert(maxRelative(first.hidden, f.ref.get("last_hidden_state")!) > 1e-3, "dropout had effect");
  const other = await run(gpu, f, { ...o, seed: 1235, reuse: first });
  assert(maxRelative(other.hidden, second.hidden) > 1e-3, "another seed, other masks");
  destroy(first);
  destroy(second);
});

gpuTest(
  "a batch smaller than the arena gives the results of a batch of exactly that size",
  async (gpu) => {
    const f = await fixture("tiny-bert");
    const o = { dropout: 0.1, training: true, seed: 99, batch: 2, seq: 7 };
    const big = await run(gpu, f, { dropout: 0.1, training: true, seed: 5 }); // fills the arena
    const small = await run(gpu, f, { ...o, reuse: big });
    const exact = await run(gpu, f, { ...o, maxBatch: 2, maxSeq: 7 });
    assertEquals(small.hidden.length, 2 * 7 * f.config.hiddenSize);
    assertEquals(small.hidden, exact.hidden);
    assertEquals(small.logits, exact.logits);
    assertEquals(small.loss, exact.loss);
    assertEquals(small.grads, exact.grads);
    destroy(big);
    destroy(exact);
  },
);

gpuTest("head init: seeded, weights ~ N(0, 0.005²), biases within ±1/√fan_in", () => {
  const F = 60, W = 2048, C = 3;
  const v = initialHeadValues(F, W, C, 42);
  assertEquals(initialHeadValues(F, W, C, 42), v);
  assert(initialHeadValues(F, W, C, 43).dense.weight[0] !== v.dense.weight[0]);
  const w = v.dense.weight;
  let mean = 0, sq = 0;
  for (const x of w) {
    mean += x / w.length;
    sq += x * x / w.length;
  }
  const std = Math.sqrt(sq - mean * mean);
  assert(Math.abs(mean) < 1e-4, `mean ${mean}`);
  assert(Math.abs(std / HEAD_INIT_STD - 1) < 0.01, `std ${std}`);
  assert(v.dense.bias.every((x) => Math.abs(x) <= 1 / Math.sqrt(F)));
  assert(v.outProj.bias.every((x) => Math.abs(x) <= 1 / Math.sqrt(W)));
  assertEquals(v.outProj.weight.length, C * W);
});

gpuTest("parameter names and shapes follow Hugging Face", async () => {
  const f = await fixture("tiny-bert");
  const shapes = encoderParameterShapes(f.config);
  const inFile = [...f.model.tensors].filter(([n]) => n.startsWith("bert."));
  assertEquals(shapes.size, inFile.length);
  for (const [n, info] of inFile) assertEquals(shapes.get(n.slice("bert.".length)), info.shape, n);
});

gpuTest("ELECTRA: the embedding projection, forward and gradients", async (gpu) => {
  const config = parseConfig({
    model_type: "electra",
    vocab_size: 31,
    hidden_size: 16,
    embedding_size: 10,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    intermediate_size: 21,
    max_position_embeddings: 12,
    type_vocab_size: 2,
    layer_norm_eps: 1e-12,
  }, "electra test config");
  const B = 2, S = 5, H = config.hiddenSize;
  const ref = new Map<string, Float64Array>([
    ["input_ids", Float64Array.from([3, 17, 30, 5, 0, 3, 9, 9, 0, 0])],
    ["token_type_ids", Float64Array.from([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])],
    ["position_ids", Float64Array.from([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])],
    ["attention_mask", Float64Array.from([1, 1, 1, 1, 0, 1, 1, 1, 0, 0])],
  ]);
  const enc = createEncoder(gpu, config, { maxBatch: B, maxSeq: S, dropout: 0 });
  const w: Weights = new Map();
  let seed = 100;
  for (const [n, t] of encoderParameters(enc.params)) {
    const v = Float32Array.from(randomValues(t.numel, seed++), (x) => 0.5 * x);
    if (/LayerNorm\.weight$/.test(n)) v.forEach((x, i) => v[i] = 1 + x);
    t.upload(v);
    w.set(`electra.${n}`, Float64Array.from(v));
  }
  assert(enc.params.embeddings.project !== undefined);
  const input = (n: string) => ref.get(n)!;
  enc.setBatch({
    inputIds: input("input_ids"),
    typeIds: input("token_type_ids"),
    positionIds: input("position_ids"),
    attentionMask: input("attention_mask"),
    batch: B,
    seqLen: S,
  });
  const R = randomValues(B * S * H, 77);
  const dHidden = tensorFromArray(gpu, Float32Array.from(R), [B, S, H], "dHidden");
  const rec = new Recorder(gpu);
  const out = enc.forward(rec);
  enc.backward(rec, dHidden);
  await rec.submit();
  const f = { config, B, S, ref };
  assertClose("electra output", await out.download(), cpuEncoder(f, w), 1e-4);

  // Gradients against central differences of the float64 encoder at each tensor's largest
  // gradient element and two others.
  const loss = () => {
    const y = cpuEncoder(f, w);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * R[i];
    return s;
  };
  const grads = new Map<string, Float32Array>();
  for (const [n, g] of enc.gradients()) grads.set(n, await g.download() as Float32Array);
  for (const [n, ours] of grads) {
    // The key bias's gradient is exactly zero (see gradScale): measured against the key weight's.
    const scale = maxAbs(grads.get(n.replace(/key\.bias$/, "key.weight"))!);
    const x = w.get(`electra.${n}`)!;
    const argmax = ours.findIndex((v) => Math.abs(v) === maxAbs(ours));
    // Word row 0 is padding_idx (HF gives it no gradient; the float64 encoder knows no such
    // thing): probe the word table at rows 3 and 30 instead.
    const E = config.embeddingSize;
    const probes = n.startsWith("embeddings.word") ? [argmax, 3 * E, 30 * E + E - 1] : [
      argmax,
      0,
      x.length - 1,
    ];
    for (const i of probes) {
      const fd = finiteDifference(() => loss(), x, i);
      assert(Math.abs(fd - ours[i]) <= 1e-3 * scale + 1e-9, `${n}[${i}]: ${ours[i]} vs ${fd}`);
    }
  }
  dHidden.destroy();
  enc.destroy();
});

gpuTest(
  "an inference encoder gives the training encoder's output and refuses backward",
  async (gpu) => {
    const f = await fixture("tiny-roberta");
    const trained = await run(gpu, f);
    const enc = createEncoder(gpu, f.config, { maxBatch: f.B, maxSeq: f.S, inference: true });
    await loadBackbone(f.model, f.config, encoderParameters(enc.params));
    assertEquals(enc.gradients().size, 0);
    enc.setBatch({
      inputIds: f.ref.get("input_ids")!,
      typeIds: f.ref.get("token_type_ids")!,
      positionIds: f.ref.get("position_ids")!,
      attentionMask: f.ref.get("attention_mask")!,
      batch: f.B,
      seqLen: f.S,
    });
    const rec = new Recorder(gpu);
    const out = enc.forward(rec);
    await rec.submit();
    assertEquals(await out.download(), trained.hidden);
    assertThrows(() => enc.backward(rec, out), Error, "inference-only");
    enc.destroy();
    destroy(trained);
  },
);

gpuTest("padding_idx rows get no gradient, even from unmasked tokens", async (gpu) => {
  const f = await fixture("tiny-roberta");
  const pad = f.config.padTokenId;
  const enc = createEncoder(gpu, f.config, { maxBatch: 1, maxSeq: 4, dropout: 0 });
  await loadBackbone(f.model, f.config, encoderParameters(enc.params));
  // Token 2 is the pad id but attended to; position ids computed by the encoder (RoBERTa's).
  enc.setBatch({ inputIds: [0, 7, pad, 2], attentionMask: [1, 1, 1, 1], batch: 1, seqLen: 4 });
  const H = f.config.hiddenSize;
  const dHidden = tensorFromArray(gpu, Float32Array.from(randomValues(4 * H, 3)), [1, 4, H], "d");
  const rec = new Recorder(gpu);
  enc.forward(rec);
  enc.backward(rec, dHidden);
  await rec.submit();
  const word = await enc.grads.embeddings.word!.download();
  const position = await enc.grads.embeddings.position!.download();
  const row = (a: ArrayLike<number>, r: number) => Array.from(a).slice(r * H, (r + 1) * H);
  assertEquals(row(word, pad), new Array(H).fill(0), "word row of padding_idx");
  assert(row(word, 7).some((v) => v !== 0), "an ordinary word row gets a gradient");
  // RoBERTa positions here are 2, 3, 4, 5: padding_idx 1 is never used, row 2 is.
  assertEquals(row(position, pad), new Array(H).fill(0));
  assert(row(position, pad + 1).some((v) => v !== 0));
  dHidden.destroy();
  enc.destroy();
});

gpuTest("Encoder.setBatch: an id, mask or shape the model cannot take is named", async (gpu) => {
  const config = await readConfig(new URL("tiny-bert/config.json", FIXTURES).pathname);
  const enc = createEncoder(gpu, config, { maxBatch: 2, maxSeq: 5 });
  try {
    const ids = [2, 5, 7, 3, 0];
    const refused = (batch: Partial<Parameters<typeof enc.setBatch>[0]>, message: string) =>
      assertThrows(
        () => enc.setBatch({ inputIds: ids, batch: 1, seqLen: 5, ...batch }),
        Error,
        message,
      );
    refused({ batch: 3 }, "Encoder.setBatch: batch 3 is not in [1, 2]");
    refused({ inputIds: [2, 5, 7] }, "Encoder.setBatch: inputIds has 3 values, expected 1×5");
    refused(
      { inputIds: [2, 5, config.vocabSize, 3, 0] },
      `Encoder.setBatch: inputIds[0, 2] = ${config.vocabSize} is not an integer in ` +
        `[0, ${config.vocabSize})`,
    );
    refused(
      { attentionMask: [1, 1, 0.5, 0, 0] },
      "Encoder.setBatch: attentionMask[0, 2] = 0.5 is not an integer in [0, 2)",
    );
    enc.setBatch({ inputIds: ids, batch: 1, seqLen: 5, attentionMask: [1, 1, 1, 1, 0] });
  } finally {
    enc.destroy();
  }
});
