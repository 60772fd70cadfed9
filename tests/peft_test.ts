// The parameter-efficient methods (peft/) on the tiny fixtures: which tensors each trains, its
// initialisation, its effect on the encoder through the hooks, its gradients, LoRA's merge and
// Hugging Face PEFT adapter, and removal (EH-FT's Stage 1 → Stage 2 hand-off).
//
// Bounds: LoRA's hooked output vs the merged weights' within 1e-5 (assertClose: both are float32
// computations of the same function, differing only in rounding order); LoRA dA/dB vs the
// merged-weight identity within 1e-5 of each tensor's largest element (float32 sums over the
// batch's rows, then the identity in float64); the merged weights vs W + scale·B·A in float64
// within 1e-6; prefix gradients vs central differences of the float32 encoder along random
// directions within 1e-2 relative (the differences of a float32 forward carry ~1e-4 of noise at
// h = 1e-2; the encoder's own test checks prefix gradients against a float64 reference).

import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { randomValues } from "./random.ts";
import type { Gpu } from "../kernels/device.ts";
import { Recorder } from "../kernels/recorder.ts";
import { type Tensor, tensorFromArray } from "../kernels/tensor.ts";
import { loadBackbone } from "../model/checkpoint.ts";
import { type ModelConfig, parseConfig, readConfig } from "../model/config.ts";
import {
  createEncoder,
  type Encoder,
  type EncoderBatch,
  type EncoderOptions,
  encoderParameters,
  encoderParameterShapes,
} from "../model/encoder.ts";
import { openSafetensors, type SafetensorsReader } from "../model/safetensors.ts";
import { BitFit, isBitFitParameter } from "../peft/bitfit.ts";
import {
  initialLoraA,
  LORA_MODULE_PATHS,
  LORA_TARGETS,
  loraAdapterName,
  LoraMethod,
  mergeLora,
  saveLoraAdapter,
} from "../peft/lora.ts";
import { createPeft, PEFT_DEFAULTS, PEFT_NAMES, type PeftOptions } from "../peft/method.ts";
import { initialPrefixValues, PREFIX_INIT_STD, PrefixTuning } from "../peft/prefix.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url);

interface Fixture {
  config: ModelConfig;
  model: SafetensorsReader;
  batch: EncoderBatch;
}

const fixtures = new Map<string, Promise<Fixture>>();

/** A fixture's config, weights and input batch (reference.safetensors). */
function fixture(name: "tiny-bert" | "tiny-roberta"): Promise<Fixture> {
  let f = fixtures.get(name);
  if (!f) {
    f = (async () => {
      const dir = new URL(`${name}/`, FIXTURES).pathname;
      const config = await readConfig(`${dir}config.json`);
      const model = await openSafetensors(`${dir}model.safetensors`);
      const ref = await openSafetensors(`${dir}reference.safetensors`);
      const input = async (n: string) =>
        Array.from((await ref.read(n)).data as BigInt64Array, Number);
      const [B, S] = ref.tensors.get("input_ids")!.shape;
      const batch: EncoderBatch = {
        inputIds: await input("input_ids"),
        typeIds: await input("token_type_ids"),
        positionIds: await input("position_ids"),
        attentionMask: await input("attention_mask"),
        batch: B,
        seqLen: S,
      };
      ref.close();
      return { config, model, batch };
    })();
    fixtures.set(name, f);
  }
  return f;
}

/** An encoder of the fixture (dropout 0, pretrained weights loaded), its batch set. */
async function encoderOf(
  gpu: Gpu,
  f: Fixture,
  opts: Partial<EncoderOptions> = {},
): Promise<Encoder> {
  const enc = createEncoder(gpu, f.config, {
    maxBatch: f.batch.batch,
    maxSeq: f.batch.seqLen,
    dropout: 0,
    trainable: () => false,
    ...opts,
  });
  await loadBackbone(f.model, f.config, encoderParameters(enc.params));
  enc.setBatch(f.batch);
  return enc;
}

/**
 * Forward (and, given dHidden, backward; `times` > 1 adds further backwards with accumulate);
 * returns the final hidden state.
 */
async function pass(enc: Encoder, dHidden?: Tensor, times = 1): Promise<Float32Array> {
  const rec = new Recorder(enc.gpu);
  const out = enc.forward(rec);
  if (dHidden) {
    for (let i = 0; i < times; i++) enc.backward(rec, dHidden, { accumulate: i > 0 });
  }
  await rec.submit();
  return await out.download() as Float32Array;
}

/** A random dHidden [B, S, H] and its float64 values. */
function randomGrad(gpu: Gpu, f: Fixture, seed: number): { t: Tensor; values: Float64Array } {
  const { batch: B, seqLen: S } = f.batch;
  const values = randomValues(B * S * f.config.hiddenSize, seed);
  return {
    t: tensorFromArray(gpu, Float32Array.from(values), [B, S, f.config.hiddenSize], "dHidden"),
    values,
  };
}

async function download(t: Tensor): Promise<Float32Array> {
  return await t.download() as Float32Array;
}

/** max |a − e| / max |e|. */
function gradError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let err = 0, max = 0;
  for (let i = 0; i < expected.length; i++) {
    err = Math.max(err, Math.abs(actual[i] - expected[i]));
    max = Math.max(max, Math.abs(expected[i]));
  }
  return max === 0 ? (err === 0 ? 0 : Infinity) : err / max;
}

function maxRelative(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let mean = 0;
  for (let i = 0; i < expected.length; i++) mean += Math.abs(expected[i]) / expected.length;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]) / (Math.abs(expected[i]) + mean));
  }
  return worst;
}

function stats(values: Float32Array[]): { n: number; mean: number; std: number; maxAbs: number } {
  let n = 0, sum = 0, sq = 0, maxAbs = 0;
  for (const v of values) {
    for (const x of v) {
      n++;
      sum += x;
      sq += x * x;
      maxAbs = Math.max(maxAbs, Math.abs(x));
    }
  }
  const mean = sum / n;
  return { n, mean, std: Math.sqrt(sq / n - mean * mean), maxAbs };
}

function options(o: Partial<PeftOptions> = {}): PeftOptions {
  return { ...PEFT_DEFAULTS, ...o };
}

// ---------------------------------------------------------------------------------------------

gpuTest("PEFT names, defaults and option checks", async (gpu) => {
  assertEquals(PEFT_NAMES, ["bitfit", "lora", "prefix"]);
  assertEquals(PEFT_DEFAULTS, { loraR: 8, loraAlpha: 16, prefixLength: 16, seed: 0 });
  const { config } = await fixture("tiny-bert");
  assertThrows(() => createPeft("lora", gpu, config, options({ loraR: 0 })), Error, "--lora-r");
  assertThrows(() => createPeft("lora", gpu, config, options({ loraAlpha: NaN })), Error, "alpha");
  assertThrows(
    () => createPeft("prefix", gpu, config, options({ prefixLength: 2.5 })),
    Error,
    "--prefix-length",
  );
  assertThrows(
    () => createPeft("ia3" as "lora", gpu, config, options()),
    Error,
    "allowed: bitfit, lora, prefix",
  );
  // Options a method does not use are not its concern.
  createPeft("bitfit", gpu, config, options({ loraR: 0, prefixLength: 0 })).destroy();
});

gpuTest("BitFit trains exactly the listed biases", async (gpu) => {
  const f = await fixture("tiny-bert");
  const names = [...encoderParameterShapes(f.config).keys()];
  assertEquals(names.length, 5 + 2 * 16);
  const expected = ["embeddings.LayerNorm.bias"];
  for (const l of [0, 1]) {
    for (
      const m of [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
      ]
    ) {
      expected.push(`encoder.layer.${l}.${m}.bias`);
    }
  }
  const bitfit = createPeft("bitfit", gpu, f.config, options());
  assert(bitfit instanceof BitFit);
  const { trainsBackbone } = bitfit; // usable unbound, as a predicate
  assertEquals(names.filter(trainsBackbone), expected);
  for (const n of ["embeddings.LayerNorm.weight", "encoder.layer.1.output.LayerNorm.weight"]) {
    assert(!trainsBackbone(n), n);
  }
  assert(!isBitFitParameter("bert.encoder.layer.0.output.dense.bias"), "names are relative");
  assertEquals(bitfit.parameters().size, 0);
  assertEquals(bitfit.gradients().size, 0);
  assertEquals(bitfit.hooks(), undefined);
  assertEquals(bitfit.prefixLength, 0);

  // ELECTRA's embeddings_project is an embedding-side layer: its bias stays frozen.
  const electra = parseConfig({
    model_type: "electra",
    vocab_size: 31,
    hidden_size: 16,
    embedding_size: 10,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    intermediate_size: 21,
    max_position_embeddings: 12,
  }, "electra test config");
  const electraNames = [...encoderParameterShapes(electra).keys()];
  assert(electraNames.includes("embeddings_project.bias"));
  assertEquals(electraNames.filter(trainsBackbone).length, 1 + 8);
  assert(!trainsBackbone("embeddings_project.bias"));

  // Given to the encoder, it allocates exactly these gradients.
  const enc = await encoderOf(gpu, f, { trainable: trainsBackbone });
  assertEquals([...enc.gradients().keys()], expected);
  enc.destroy();
});

gpuTest(
  "LoRA: names, shapes, initialisation (seeded), nothing of the backbone trains",
  async (gpu) => {
    const f = await fixture("tiny-bert");
    const c = f.config, H = c.hiddenSize;
    const lora = createPeft("lora", gpu, c, options());
    assert(lora instanceof LoraMethod);
    assertEquals([lora.r, lora.alpha, lora.scale, lora.prefixLength], [8, 16, 2, 0]);
    const names: string[] = [];
    for (const l of [0, 1]) {
      for (const path of Object.values(LORA_MODULE_PATHS)) {
        names.push(`lora.encoder.layer.${l}.${path}.lora_A.weight`);
        names.push(`lora.encoder.layer.${l}.${path}.lora_B.weight`);
      }
    }
    assert(names.includes("lora.encoder.layer.0.attention.self.query.lora_A.weight"));
    assert(names.includes("lora.encoder.layer.1.attention.output.dense.lora_B.weight"));
    const params = lora.parameters(), grads = lora.gradients();
    assertEquals([...params.keys()], names);
    assertEquals([...grads.keys()], names);
    for (const [n, t] of params) {
      assertEquals([...t.shape], n.includes("lora_A") ? [8, H] : [H, 8], n);
      assertEquals([...grads.get(n)!.shape], [...t.shape], n);
      assert(!lora.noDecay(n), `${n} decays`);
    }
    assert([...encoderParameterShapes(c).keys()].every((n) => !lora.trainsBackbone(n)));
    assertEquals(lora.hooks().prefix, undefined);

    const A: Float32Array[] = [];
    for (const [n, t] of params) {
      const v = await download(t);
      if (n.includes("lora_A")) A.push(v);
      else assert(v.every((x) => x === 0), `${n} starts at zero`);
      assert((await download(grads.get(n)!)).every((x) => x === 0), `gradient of ${n} starts at 0`);
    }
    // Kaiming-uniform with a = √5: U(−1/√in, 1/√in), whose std is bound/√3.
    const bound = 1 / Math.sqrt(H);
    const s = stats(A);
    assert(s.maxAbs <= bound && s.maxAbs > 0.98 * bound, `max |A| ${s.maxAbs} vs bound ${bound}`);
    assert(Math.abs(s.mean) < 4 * bound / Math.sqrt(3 * s.n), `mean ${s.mean}`);
    assert(Math.abs(s.std / (bound / Math.sqrt(3)) - 1) < 0.06, `std ${s.std}`);
    assertEquals(A, initialLoraA(c, 8, 0));

    const again = createPeft("lora", gpu, c, options());
    const other = createPeft("lora", gpu, c, options({ seed: 1 }));
    for (const n of names.filter((n) => n.includes("lora_A"))) {
      const v = await download(params.get(n)!);
      assertEquals(await download(again.parameters().get(n)!), v, `${n}: same seed, same values`);
      const w = await download(other.parameters().get(n)!);
      assert(w.filter((x, i) => x === v[i]).length === 0, `${n}: another seed, other values`);
    }
    for (const m of [lora, again, other]) m.destroy();
  },
);

gpuTest("LoRA: B = 0 leaves the output bitwise unchanged; removal restores it", async (gpu) => {
  const f = await fixture("tiny-roberta");
  const enc = await encoderOf(gpu, f);
  const original = await pass(enc);
  const lora = createPeft("lora", gpu, f.config, options({ seed: 3 })) as LoraMethod;
  enc.setHooks(lora.hooks());
  const dHidden = randomGrad(gpu, f, 11);
  assertEquals(await pass(enc, dHidden.t), original, "B = 0: bitwise the pretrained output");
  // With B = 0 only B learns at first (dA = scale·Bᵀ·… = 0).
  for (const s of lora.sites) {
    assert((await download(s.dA)).every((x) => x === 0), `${s.path} dA = 0`);
    assert((await download(s.dB)).some((x) => x !== 0), `${s.path} dB ≠ 0`);
  }
  for (const s of lora.sites) {
    s.b.upload(Float32Array.from(randomValues(s.b.numel, 20 + s.layer), (x) => 0.2 * x));
  }
  assert(maxRelative(await pass(enc), original) > 1e-3, "a non-zero B changes the output");
  enc.setHooks(null);
  lora.destroy();
  assertEquals(await pass(enc), original, "hooks removed: bitwise the pretrained output");
  assertThrows(
    () =>
      lora.hooks().linear!({ layer: 0, module: "query" })!.forward(
        new Recorder(gpu),
        dHidden.t,
        dHidden.t,
        {
          ...{ layer: 0, module: "query", training: false, seed: 0, stream: 0, accumulate: false },
          weight: dHidden.t,
        },
      ),
    Error,
    "destroyed",
  );
  dHidden.t.destroy();
  enc.destroy();
});

gpuTest(
  "LoRA with random B equals merging scale·B·A into W: output, gradients, accumulate",
  async (gpu) => {
    const f = await fixture("tiny-bert");
    const c = f.config, H = c.hiddenSize;
    const r = 3, alpha = 5, scale = alpha / r;
    const lora = createPeft("lora", gpu, c, options({ loraR: r, loraAlpha: alpha, seed: 5 }));
    assert(lora instanceof LoraMethod);
    assertEquals(lora.sites.map((s) => s.module), [...LORA_TARGETS, ...LORA_TARGETS]);
    const A = new Map<string, Float32Array>(), B = new Map<string, Float32Array>();
    for (const [i, s] of lora.sites.entries()) {
      const b = Float32Array.from(randomValues(H * r, 40 + i), (x) => 0.3 * x);
      s.b.upload(b);
      B.set(s.path, b);
      A.set(s.path, await download(s.a));
    }
    const enc = await encoderOf(gpu, f, { hooks: lora.hooks() });
    const dHidden = randomGrad(gpu, f, 12);
    const hooked = await pass(enc, dHidden.t);
    const dA = new Map<string, Float32Array>(), dB = new Map<string, Float32Array>();
    for (const s of lora.sites) {
      dA.set(s.path, await download(s.dA));
      dB.set(s.path, await download(s.dB));
    }
    // ctx.accumulate: a second backward of the same forward adds (gradient accumulation).
    await pass(enc, dHidden.t, 2);
    for (const s of lora.sites) {
      assertClose(
        `${s.path} dA accumulated`,
        await download(s.dA),
        dA.get(s.path)!.map((x) => 2 * x),
        1e-6,
      );
      assertClose(
        `${s.path} dB accumulated`,
        await download(s.dB),
        dB.get(s.path)!.map((x) => 2 * x),
        1e-6,
      );
    }
    // An inference encoder (evaluation) runs the same hooks to the same output.
    const evalEnc = await encoderOf(gpu, f, {
      inference: true,
      trainable: undefined,
      hooks: lora.hooks(),
    });
    assertEquals(await pass(evalEnc), hooked, "inference encoder with the hooks");
    evalEnc.destroy();

    // Merge: W += scale·B·A on the GPU, against float64.
    const params = encoderParameters(enc.params);
    const W = new Map<string, Float32Array>();
    for (const s of lora.sites) W.set(s.path, await download(params.get(`${s.path}.weight`)!));
    const rec = new Recorder(gpu);
    mergeLora(rec, lora, enc.params);
    await rec.submit();
    for (const s of lora.sites) {
      const a = A.get(s.path)!, b = B.get(s.path)!, w = W.get(s.path)!;
      const want = new Float64Array(H * H);
      for (let o = 0; o < H; o++) {
        for (let i = 0; i < H; i++) {
          let sum = 0;
          for (let k = 0; k < r; k++) sum += b[o * r + k] * a[k * H + i];
          want[o * H + i] = w[o * H + i] + scale * sum;
        }
      }
      assertClose(`merged ${s.path}`, await download(params.get(`${s.path}.weight`)!), want, 1e-6);
    }

    // The merged model without hooks computes the hooked one's output; its weight gradients give
    // dA = scale·Bᵀ·dW and dB = scale·dW·Aᵀ.
    enc.setHooks(null);
    enc.setTrainable((n) => lora.sites.some((s) => n === `${s.path}.weight`));
    const merged = await pass(enc, dHidden.t);
    assertClose("hooked vs merged output", hooked, merged, 1e-5);
    const dW = enc.gradients();
    for (const s of lora.sites) {
      const g = await download(dW.get(`${s.path}.weight`)!);
      const a = A.get(s.path)!, b = B.get(s.path)!;
      const wantA = new Float64Array(r * H), wantB = new Float64Array(H * r);
      for (let k = 0; k < r; k++) {
        for (let i = 0; i < H; i++) {
          for (let o = 0; o < H; o++) {
            wantA[k * H + i] += scale * b[o * r + k] * g[o * H + i];
            wantB[o * r + k] += scale * g[o * H + i] * a[k * H + i];
          }
        }
      }
      const eA = gradError(dA.get(s.path)!, wantA), eB = gradError(dB.get(s.path)!, wantB);
      assert(eA <= 1e-5, `${s.path} dA off by ${eA.toExponential(2)} of its max`);
      assert(eB <= 1e-5, `${s.path} dB off by ${eB.toExponential(2)} of its max`);
    }
    assertThrows(() => mergeLora(new Recorder(gpu), new BitFit(), enc.params), Error, "LoRA");
    // The Trainer's names (with the model's prefix): the fix is said.
    const prefixed = new Map([...encoderParameters(enc.params)].map(([n, t]) => [`x.${n}`, t]));
    const path = lora.sites[0].path;
    assertThrows(
      () => mergeLora(new Recorder(gpu), lora, prefixed),
      Error,
      `mergeLora: no tensor "${path}.weight" among the encoder's parameters (they are named ` +
        `"x.${path}.weight": give the names encoderParameters gives`,
    );
    dHidden.t.destroy();
    lora.destroy();
    enc.destroy();
  },
);

gpuTest("saveLoraAdapter writes a Hugging Face PEFT adapter that reads back", async (gpu) => {
  const f = await fixture("tiny-roberta");
  const c = f.config, H = c.hiddenSize, r = 4;
  const lora = createPeft("lora", gpu, c, options({ loraR: r, loraAlpha: 8, seed: 9 }));
  assert(lora instanceof LoraMethod);
  for (const [i, s] of lora.sites.entries()) {
    s.b.upload(Float32Array.from(randomValues(s.b.numel, 60 + i)));
  }
  const dir = await Deno.makeTempDir({ prefix: "peft_test_" });
  try {
    await saveLoraAdapter(dir, lora, c, { baseModel: "roberta-base" });
    const files = [];
    for await (const e of Deno.readDir(dir)) files.push(e.name);
    assertEquals(files.sort(), ["adapter_config.json", "adapter_model.safetensors"]);
    const json = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    const expected: Record<string, unknown> = {
      peft_type: "LORA",
      task_type: null,
      base_model_name_or_path: "roberta-base",
      r,
      lora_alpha: 8,
      lora_dropout: 0,
      target_modules: ["query", "key", "value", "attention.output.dense"],
      bias: "none",
      fan_in_fan_out: false,
      inference_mode: true,
      modules_to_save: null,
      // What PEFT reads to build the adapter: rsLoRA would scale by α/√r, DoRA add magnitudes,
      // patterns give modules their own r and α, layers_to_transform skip layers.
      revision: null,
      init_lora_weights: true,
      layers_to_transform: null,
      layers_pattern: null,
      rank_pattern: {},
      alpha_pattern: {},
      use_rslora: false,
      use_dora: false,
    };
    assertEquals(json, expected, "adapter_config.json");

    const reader = await openSafetensors(`${dir}/adapter_model.safetensors`);
    assertEquals(reader.metadata, { format: "pt" });
    const names: string[] = [];
    for (const l of [0, 1]) {
      for (const path of Object.values(LORA_MODULE_PATHS)) {
        for (const w of ["A", "B"]) {
          names.push(`base_model.model.roberta.encoder.layer.${l}.${path}.lora_${w}.weight`);
        }
      }
    }
    assertEquals(new Set(reader.tensors.keys()), new Set(names));
    assert(reader.tensors.has(
      "base_model.model.roberta.encoder.layer.1.attention.output.dense.lora_B.weight",
    ));
    // Reload into a fresh method of another seed: the same tensors, bitwise.
    const reloaded = createPeft("lora", gpu, c, options({ loraR: r, loraAlpha: 8, seed: 10 }));
    assert(reloaded instanceof LoraMethod);
    for (const [i, s] of lora.sites.entries()) {
      for (const [w, t] of [["A", s.a], ["B", s.b]] as const) {
        const name = loraAdapterName(c, s, w);
        const info = reader.tensors.get(name)!;
        assertEquals(info.dtype, "F32", name);
        assertEquals(info.shape, w === "A" ? [r, H] : [H, r], name);
        const data = (await reader.read(name)).data as Float32Array;
        assertEquals(data, await download(t), name);
        (w === "A" ? reloaded.sites[i].a : reloaded.sites[i].b).upload(data);
      }
    }
    reader.close();
    const enc = await encoderOf(gpu, f, { hooks: lora.hooks() });
    const out = await pass(enc);
    enc.setHooks(reloaded.hooks());
    assertEquals(await pass(enc), out, "the reloaded adapter computes the same output");
    enc.destroy();
    reloaded.destroy();

    // For a bare AutoModel the names go without the backbone prefix.
    await saveLoraAdapter(`${dir}/bare`, lora, c, { prefixedNames: false });
    const bare = await openSafetensors(`${dir}/bare/adapter_model.safetensors`);
    assert(bare.tensors.has("base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"));
    bare.close();
    const bareConfig = JSON.parse(await Deno.readTextFile(`${dir}/bare/adapter_config.json`));
    assertEquals(bareConfig.base_model_name_or_path, null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const bitfit = createPeft("bitfit", gpu, c, options());
  let error: Error | undefined;
  await saveLoraAdapter("/nonexistent", bitfit, c).catch((e) => error = e);
  assert(error?.message.includes("needs a LoRA method"), String(error));
  lora.destroy();
});

gpuTest("Prefix: names, shapes, initialisation N(0, 0.01²) (seeded)", async (gpu) => {
  const f = await fixture("tiny-bert");
  const c = f.config;
  const prefix = createPeft("prefix", gpu, c, options());
  assert(prefix instanceof PrefixTuning);
  assertEquals(prefix.prefixLength, 16);
  const names = ["0.key", "0.value", "1.key", "1.value"].map((n) => `prefix.encoder.layer.${n}`);
  const params = prefix.parameters(), grads = prefix.gradients();
  assertEquals([...params.keys()], names);
  assertEquals([...grads.keys()], names);
  const values: Float32Array[] = [];
  for (const [n, t] of params) {
    assertEquals([...t.shape], [c.numHeads, 16, c.headDim], n);
    assertEquals([...grads.get(n)!.shape], [c.numHeads, 16, c.headDim], n);
    assert(!prefix.noDecay(n), `${n} decays`);
    values.push(await download(t));
    assert((await download(grads.get(n)!)).every((x) => x === 0), `gradient of ${n} starts at 0`);
  }
  assert([...encoderParameterShapes(c).keys()].every((n) => !prefix.trainsBackbone(n)));
  assertEquals(prefix.hooks().linear, undefined);
  assertEquals(values, initialPrefixValues(c, 16, 0));
  // The documented initialisation (README, peft/README.md): N(0, 0.01²).
  assertEquals(PREFIX_INIT_STD, 0.01);
  const s = stats(values);
  assertEquals(s.n, 2 * 2 * c.numHeads * 16 * c.headDim);
  assert(Math.abs(s.mean) < 4 * PREFIX_INIT_STD / Math.sqrt(s.n), `mean ${s.mean}`);
  assert(Math.abs(s.std / PREFIX_INIT_STD - 1) < 0.1, `std ${s.std}`);
  assert(s.maxAbs < 6 * PREFIX_INIT_STD, `max ${s.maxAbs}`);

  const again = createPeft("prefix", gpu, c, options());
  const other = createPeft("prefix", gpu, c, options({ seed: 1 }));
  for (const [i, n] of names.entries()) {
    assertEquals(await download(again.parameters().get(n)!), values[i], `${n}: same seed`);
    const w = await download(other.parameters().get(n)!);
    assert(w.filter((x, j) => x === values[i][j]).length === 0, `${n}: another seed differs`);
  }
  for (const m of [prefix, again, other]) m.destroy();
});

gpuTest("Prefix: output, gradients vs finite differences, accumulate, removal", async (gpu) => {
  const f = await fixture("tiny-bert");
  const c = f.config, P = 3;
  const prefix = createPeft("prefix", gpu, c, options({ prefixLength: P, seed: 2 }));
  assert(prefix instanceof PrefixTuning);
  const small = await encoderOf(gpu, f, { maxPrefix: P - 1, hooks: prefix.hooks() });
  assertThrows(() => small.forward(new Recorder(gpu)), Error, "maxPrefix");
  small.destroy();

  const enc = await encoderOf(gpu, f, { maxPrefix: P });
  const original = await pass(enc);
  enc.setHooks(prefix.hooks());
  assert(maxRelative(await pass(enc), original) > 1e-3, "the initial prefix matters");
  // Larger rows than the initial ones, so that the prefix weighs on the output.
  const params = prefix.parameters();
  const theta = new Map<string, Float32Array>();
  let seed = 80;
  for (const [n, t] of params) {
    const v = Float32Array.from(randomValues(t.numel, seed++), (x) => 0.5 * x);
    t.upload(v);
    theta.set(n, v);
  }
  const dHidden = randomGrad(gpu, f, 13);
  const R = dHidden.values;
  const loss = (y: Float32Array) => y.reduce((sum, v, i) => sum + v * R[i], 0);
  const out = await pass(enc, dHidden.t);
  assert(maxRelative(out, original) > 1e-2, "the prefix changes the output");
  const grads = new Map<string, Float32Array>();
  for (const [n, g] of prefix.gradients()) grads.set(n, await download(g));

  // Directional derivatives of the float32 encoder, one random direction per tensor.
  const h = 1e-2;
  for (const [n, t] of params) {
    const v = theta.get(n)!, g = grads.get(n)!;
    const u = randomValues(v.length, seed++);
    const at = async (eps: number) => {
      t.upload(Float32Array.from(v, (x, i) => x + eps * u[i]));
      return loss(await pass(enc));
    };
    const fd = (await at(h) - await at(-h)) / (2 * h);
    t.upload(v);
    const analytic = g.reduce((sum, x, i) => sum + x * u[i], 0);
    const err = Math.abs(fd - analytic) / Math.abs(analytic);
    assert(err <= 1e-2, `${n}: ⟨grad, u⟩ ${analytic}, finite differences ${fd}`);
  }
  // A second backward of the same forward adds.
  await pass(enc, dHidden.t, 2);
  for (const [n, g] of prefix.gradients()) {
    assertClose(`${n} accumulated`, await download(g), grads.get(n)!.map((x) => 2 * x), 1e-6);
  }
  enc.setHooks(null);
  prefix.destroy();
  assertEquals(await pass(enc), original, "hooks removed: bitwise the pretrained output");
  assertThrows(() => prefix.hooks().prefix!(0), Error, "destroyed");
  dHidden.t.destroy();
  enc.destroy();
});
