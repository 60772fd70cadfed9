// Three training steps of full fine-tuning, and EH-FT's and EH-FT-reserve's two stages with
// their hand-off for BitFit (ehft_reference.safetensors), LoRA and prefix-tuning
// (ehft_peft_reference.safetensors), against PyTorch (tests/fixtures/tiny-bert/
// adamw_reference.safetensors, made by tools/make_fixtures.py): torch.optim.AdamW in float64
// with lr 1e-3 constant, β (0.9, 0.98), ε 1e-6, weight decay 0.1 except biases and LayerNorm
// weights, BCE mean over batches of 3 in file order, dropout 0, no clipping. The engine's own
// step (train/trainer.ts: forward, loss, backward, clip, AdamW in one submit) is driven with the
// fixture's pre-tokenized batches.
//
// Bounds: each step's loss within 1e-4 relative; every parameter's change over the three steps
// within 1e-2 · lr · steps of the reference's change (Adam moves each element by up to ~lr per
// step whatever its gradient's size, so the changes, not relative gradients, are compared).

import { assert, assertClose, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { referenceBatches } from "./train_fixture.ts";
import type { Gpu } from "../kernels/device.ts";
import { NN_COPY, setMatmulTuner } from "../kernels/matmul.ts";
import { Recorder } from "../kernels/recorder.ts";
import { loadBackbone, loadHead } from "../model/checkpoint.ts";
import { readConfig } from "../model/config.ts";
import { encoderParameters } from "../model/encoder.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { Trainer } from "../train/trainer.ts";
import { createPeft } from "../peft/method.ts";
import { resolveStages } from "../train/strategy.ts";

const DIR = new URL("./fixtures/tiny-bert/", import.meta.url).pathname;

/** A reference's AdamW settings, from its metadata (no clipping). */
function referenceAdamw(meta: Record<string, string>) {
  return {
    ...ADAMW_DEFAULTS,
    beta1: JSON.parse(meta.betas)[0],
    beta2: JSON.parse(meta.betas)[1],
    eps: Number(meta.eps),
    weightDecay: Number(meta.weight_decay),
    maxGradNorm: 0,
  };
}

/** Throws unless every tensor's change (`after` − `initial`) is within `bound` of torch's. */
function assertChanges(
  after: ReadonlyMap<string, Float32Array>,
  initial: ReadonlyMap<string, Float32Array>,
  deltas: ReadonlyMap<string, Float64Array>,
  bound: number,
): void {
  let worst = 0;
  for (const [name, now] of after) {
    const before = initial.get(name)!;
    const delta = deltas.get(name)!;
    assertEquals(delta.length, now.length, name);
    for (let i = 0; i < now.length; i++) {
      const err = Math.abs(now[i] - before[i] - delta[i]);
      worst = Math.max(worst, err);
      if (!(err <= bound)) {
        throw new Error(
          `${name}[${i}]: change ${now[i] - before[i]}, torch ${delta[i]} (bound ${bound})`,
        );
      }
    }
  }
  assert(worst < bound, `worst change error ${worst}`);
}

/** The fixture's steps through the engine; the reference, losses, and each trained tensor's change. */
async function fixtureSteps(gpu: Gpu) {
  const ref = await openSafetensors(`${DIR}/adamw_reference.safetensors`);
  const meta = ref.metadata;
  const lr = Number(meta.lr);
  const steps = Number(meta.steps);
  const B = Number(meta.batch_size);
  assertEquals([lr, steps, B, meta.dropout, meta.clipping], [1e-3, 3, 3, "0", "none"]);
  const batches = await referenceBatches(B);
  assertEquals(batches.length, steps);
  const losses = (await ref.read("losses")).data as Float64Array;
  const S = batches[0].encoder.seqLen;

  const config = await readConfig(`${DIR}/config.json`);
  const model = await openSafetensors(`${DIR}/model.safetensors`);
  const adamw = referenceAdamw(meta);
  const trainer = new Trainer(gpu, {
    config,
    loss: "bce",
    headClasses: 1,
    maxExamples: B,
    maxSeq: S,
    dropout: 0,
    headSeed: 0,
    dropoutSeed: 0,
    adamw,
  });
  try {
    await loadBackbone(model, config, encoderParameters(trainer.encoder.params));
    await loadHead(model, trainer.headParameters());
    trainer.beginStage({ head: true, backbone: "all", peft: false }, adamw);
    const trained = trainer.trainableParameters();
    const initial = new Map<string, Float32Array>();
    for (const name of model.tensors.keys()) initial.set(name, await model.readF32(name));
    assertEquals([...trained.keys()].sort(), [...initial.keys()].sort(), "every tensor trains");

    for (const [k, batch] of batches.entries()) await trainer.step(batch, lr, k);
    const stats = await trainer.takeStats();
    assertEquals(stats.length, steps);
    assertEquals(trainer.optimizer!.step, steps);
    const after = new Map<string, Float32Array>();
    for (const [name, t] of trained) after.set(name, (await t.download()) as Float32Array);
    const deltas = new Map<string, Float64Array>();
    for (const name of trained.keys()) {
      deltas.set(name, (await ref.read(`delta.${name}`)).data as Float64Array);
    }
    return { lr, steps, losses, stats, initial, after, deltas };
  } finally {
    trainer.destroy();
    model.close();
    ref.close();
  }
}

gpuTest("train: three AdamW steps of ft match torch.optim.AdamW", async (gpu) => {
  const { lr, steps, losses, stats, initial, after, deltas } = await fixtureSteps(gpu);
  assertClose("losses", stats.map((s) => s.loss), Array.from(losses), 1e-4);
  assertChanges(after, initial, deltas, 1e-2 * lr * steps);
});

/**
 * EH-FT's references (tools/make_fixtures.py): BitFit's in ehft_reference.safetensors, LoRA's
 * and prefix-tuning's in ehft_peft_reference.safetensors under "<peft>.", which also holds the
 * adapters' initial values ("<peft>.init.<name>"; LoRA's B not zero, so that the low-rank term
 * enters the first forward) and their change over Stage 1 ("<peft>.stage1.delta.<name>").
 */
const EHFT_REFERENCES = [
  { method: "bitfit", file: "ehft_reference.safetensors", base: "" },
  { method: "lora", file: "ehft_peft_reference.safetensors", base: "lora." },
  { method: "prefix", file: "ehft_peft_reference.safetensors", base: "prefix." },
] as const;

for (const { method, file, base } of EHFT_REFERENCES) {
  for (const strategy of ["ehft", "ehft-reserve"] as const) {
    gpuTest(
      `train: ${strategy} (${method})'s stages and hand-off match torch (${file})`,
      async (gpu) => {
        // Stage 1 trains the method's tensors and the head; the hand-off (Trainer.handOff, as
        // train/run.ts makes it) restores the backbone to model.safetensors (BitFit's biases kept
        // for ehft-reserve), keeps the head, and drops the method for ehft; a fresh AdamW trains
        // every tensor for the rest (the adamw reference's batches, constant lr, no clipping).
        // LoRA and prefix-tuning leave the backbone as it was in Stage 1, so only BitFit's
        // cases see the restore; theirs see the adapters dropped or kept.
        const reserve = strategy === "ehft-reserve";
        const key = (k: string) => `${base}${reserve ? "reserve." : ""}${k}`;
        const ref = await openSafetensors(`${DIR}/${file}`);
        const meta = ref.metadata;
        const lr = Number(meta.lr);
        const stage1 = Number(meta.stage1_steps);
        assertEquals([meta.schedule, meta.clipping, meta.dropout], ["constant", "none", "0"]);
        const batches = await referenceBatches(3);
        const stages = resolveStages({
          strategy,
          peft: method,
          totalSteps: batches.length,
          stage1Ratio: stage1 / batches.length,
          lr,
          stage1Lr: lr,
        });
        assertEquals(stages.map((s) => s.steps), [stage1, batches.length - stage1]);
        const losses = (await ref.read(key("losses"))).data as Float64Array;
        const config = await readConfig(`${DIR}/config.json`);
        const model = await openSafetensors(`${DIR}/model.safetensors`);
        const adamw = referenceAdamw(meta);
        const peft = createPeft(method, gpu, config, {
          loraR: Number(meta.lora_r ?? 8),
          loraAlpha: Number(meta.lora_alpha ?? 16),
          prefixLength: Number(meta.prefix_length ?? 16),
          seed: 0,
        });
        const trainer = new Trainer(gpu, {
          config,
          loss: "bce",
          headClasses: 1,
          maxExamples: 3,
          maxSeq: batches[0].encoder.seqLen,
          dropout: 0,
          headSeed: 0,
          dropoutSeed: 0,
          adamw,
          peft,
        });
        try {
          await loadBackbone(model, config, encoderParameters(trainer.encoder.params));
          await loadHead(model, trainer.headParameters());
          const initial = new Map<string, Float32Array>();
          for (const name of model.tensors.keys()) initial.set(name, await model.readF32(name));
          const adapters = trainer.peftParameters();
          const fixtureAdapters = [...ref.tensors.keys()].filter((n) =>
            n.startsWith(`${base}init.`)
          );
          assertEquals(
            [...adapters.keys()].sort(),
            fixtureAdapters.map((n) => n.slice(`${base}init.`.length)).sort(),
            "the adapters' names",
          );
          for (const [name, t] of adapters) {
            const values = await ref.readF32(`${base}init.${name}`);
            t.upload(values);
            initial.set(name, values);
          }

          trainer.beginStage(stages[0].trains, adamw);
          for (let k = 0; k < stage1; k++) await trainer.step(batches[k], lr, k);
          if (adapters.size > 0) {
            const after = new Map<string, Float32Array>();
            const deltas = new Map<string, Float64Array>();
            for (const [name, t] of adapters) {
              after.set(name, (await t.download()) as Float32Array);
              deltas.set(
                name,
                (await ref.read(`${base}stage1.delta.${name}`)).data as Float64Array,
              );
            }
            assertChanges(after, initial, deltas, 1e-2 * lr * stage1);
          }

          await trainer.handOff(stages[1], model);
          trainer.beginStage(stages[1].trains, adamw);
          for (let k = stage1; k < batches.length; k++) await trainer.step(batches[k], lr, k);
          const stats = await trainer.takeStats();
          assertClose("losses", stats.map((s) => s.loss), Array.from(losses), 1e-4);
          const after = new Map<string, Float32Array>();
          const deltas = new Map<string, Float64Array>();
          for (const [name, t] of trainer.trainableParameters()) {
            after.set(name, (await t.download()) as Float32Array);
            deltas.set(name, (await ref.read(key(`delta.${name}`))).data as Float64Array);
          }
          const referenced = [...ref.tensors.keys()].filter((n) => n.startsWith(key("delta.")));
          assertEquals(after.size, referenced.length, "every tensor the reference trains trains");
          assertChanges(after, initial, deltas, 1e-2 * lr * batches.length);
        } finally {
          trainer.destroy();
          model.close();
          ref.close();
        }
      },
    );
  }
}

gpuTest(
  "train: evaluation runs without dropout: dropout 0.1 predicts torch's dropout-free logits",
  async (gpu) => {
    // Trainer.predict and headFeatures (evaluation, predict.ts, --predict-test, analysis) run the
    // encoder without dropout whatever the Trainer's; a step runs it with dropout.
    const [batch] = await referenceBatches(3);
    const config = await readConfig(`${DIR}/config.json`);
    const model = await openSafetensors(`${DIR}/model.safetensors`);
    const ref = await openSafetensors(`${DIR}/reference.safetensors`);
    const trainers = [0.1, 0].map((dropout) =>
      new Trainer(gpu, {
        config,
        loss: "bce",
        headClasses: 1,
        maxExamples: 3,
        maxSeq: batch.encoder.seqLen,
        dropout,
        headSeed: 0,
        dropoutSeed: 0,
        adamw: ADAMW_DEFAULTS,
      })
    );
    try {
      const outputs: Float32Array[] = [];
      const features: Float32Array[] = [];
      for (const trainer of trainers) {
        await loadBackbone(model, config, encoderParameters(trainer.encoder.params));
        await loadHead(model, trainer.headParameters());
        outputs.push((await trainer.predict([batch]))[0]);
        features.push((await trainer.headFeatures([batch], "hidden")).values);
      }
      const logits = (await ref.read("logits")).data as Float64Array;
      assertClose("logits with dropout 0.1", outputs[0], Array.from(logits), 1e-4);
      assertEquals(outputs[0], outputs[1], "the same logits with dropout 0.1 and 0");
      assertEquals(features[0], features[1], "the same head features with dropout 0.1 and 0");
      // A step's forward does drop units: its logits are not the dropout-free ones.
      const [dropped] = trainers;
      dropped.beginStage({ head: true, backbone: "all", peft: false }, ADAMW_DEFAULTS);
      await dropped.step(batch, 1e-30, 0);
      const stepLogits = (await dropped.stepOutputs().download()) as Float32Array;
      const moved = stepLogits.some((x, i) => Math.abs(x - outputs[1][i]) > 1e-3);
      assert(moved, `a step's logits ${stepLogits} equal the dropout-free ${outputs[1]}`);
    } finally {
      for (const t of trainers) t.destroy();
      model.close();
      ref.close();
    }
  },
);

gpuTest(
  "train: the same steps with every transposed product copied first (nn_): same bits",
  async (gpu) => {
    // What an autotune on a GPU may choose (kernels/matmul.ts's nn_ variants): every product of
    // the step, forward and backward, through one workspace per operand within one submit.
    const plain = await fixtureSteps(gpu);
    setMatmulTuner(gpu, () => "nn_vec4_8x8");
    let copies = 0;
    const dispatch = Recorder.prototype.dispatch;
    Recorder.prototype.dispatch = function (label, ...rest) {
      if (label.includes(NN_COPY)) copies++;
      return dispatch.call(this, label, ...rest);
    };
    try {
      const nn = await fixtureSteps(gpu);
      // The fixture's 33 token rows leave the weight gradients' k odd: only forwards are copied.
      assert(copies > 0, "no operand was copied");
      assertEquals(nn.stats.map((s) => s.loss), plain.stats.map((s) => s.loss));
      for (const [name, now] of nn.after) assertEquals(now, plain.after.get(name), name);
    } finally {
      Recorder.prototype.dispatch = dispatch;
      setMatmulTuner(gpu, undefined);
    }
  },
);

gpuTest(
  "train: settings the Trainer cannot train with are refused, naming the setting",
  async (gpu) => {
    const config = await readConfig(`${DIR}/config.json`);
    const base = {
      config,
      loss: "bce" as const,
      headClasses: 1,
      maxExamples: 2,
      maxSeq: 8,
      dropout: 0,
      headSeed: 0,
      dropoutSeed: 0,
    };
    const refused = (opts: Record<string, unknown>, message: string) => {
      let error: Error | null = null;
      try {
        new Trainer(gpu, { ...base, ...opts } as typeof base).destroy();
      } catch (e) {
        error = e as Error;
      }
      assert(error?.message === message, `${JSON.stringify(opts)}: ${error?.message}`);
    };
    refused({ loss: "hinge" }, 'Trainer: loss "hinge" is not one of bce, ce, mse');
    refused({ headClasses: 0 }, "Trainer: headClasses 0 is not a positive integer");
    refused({ dropoutSeed: -1 }, "Trainer: dropout seed -1 is not an integer in [0, 2^32)");
    // "false" would have switched f16 arithmetic on.
    refused(
      { precision: "f16", f16Math: "false" },
      'Trainer: f16Math is "false", not true or false',
    );
    refused({ lossScaling: 1 }, "Trainer: lossScaling is 1, not true or false");
    // Softmax over one output: a loss and gradient of 0 whatever the head says.
    refused(
      { loss: "ce" },
      "Trainer: cross-entropy over a 1-output head needs inputsPerExample > 1 (the choices of a " +
        "multiple-choice task); with one input, give headClasses ≥ 2, or loss bce",
    );
    const trainer = new Trainer(gpu, base);
    try {
      const head = { head: true, backbone: "all", peft: false } as const;
      const stage = (
        trains: Record<string, unknown>,
        adamw: Record<string, unknown>,
        message: string,
      ) => {
        let error: Error | null = null;
        try {
          trainer.beginStage({ ...head, ...trains } as typeof head, {
            ...ADAMW_DEFAULTS,
            ...adamw,
          });
        } catch (e) {
          error = e as Error;
        }
        assert(error?.message === message, `${JSON.stringify(adamw)}: ${error?.message}`);
      };
      stage({}, { beta1: 2 }, "Trainer.beginStage: AdamW's beta1 is 2, expected a value in [0, 1)");
      stage(
        {},
        { eps: -1 },
        "Trainer.beginStage: AdamW's eps is -1, expected a value finite and ≥ 0",
      );
      stage(
        {},
        { beta2: NaN },
        "Trainer.beginStage: AdamW's beta2 is NaN, expected a value in [0, 1)",
      );
      stage(
        {},
        { maxGradNorm: Infinity },
        "Trainer.beginStage: AdamW's maxGradNorm is Infinity, expected a value finite and ≥ 0 " +
          "(0: no clipping)",
      );
      stage(
        { backbone: "some" },
        {},
        'Trainer.beginStage: backbone "some" is not one of all, none, peft',
      );
      // Refused before anything changed: no stage begun.
      assert(trainer.trainableParameters().size === 0, "a refused stage began");
      trainer.beginStage(head, ADAMW_DEFAULTS);
      // A step number seeds dropout: 1.5 would draw step 1's masks, -1 step 2^32 − 1's.
      const one = { encoder: {}, targets: new Float32Array(1) } as never;
      for (
        const [step, lr, message] of [
          [1.5, 1e-3, "Trainer.step: step 1.5 is not an integer ≥ 0"],
          [-1, 1e-3, "Trainer.step: step -1 is not an integer ≥ 0"],
          [2, NaN, "Trainer.step: lr NaN is not a finite number ≥ 0"],
        ] as const
      ) {
        await assertRejects(() => trainer.step(one, lr, step), Error, message);
      }
    } finally {
      trainer.destroy();
    }
    // Used after destroy(): said at the call, not as an internal buffer's error at the next
    // submit (nor as "no stage begun").
    const batch = { batch: 1, seqLen: 2, ids: new Int32Array(2), mask: new Int32Array([1, 1]) };
    await assertRejects(
      () => trainer.step({ encoder: batch, targets: new Float32Array(1) } as never, 1e-3, 0),
      Error,
      "Trainer.step: the trainer was destroyed",
    );
    assertThrows(
      () => trainer.encoder.setBatch(batch as never),
      Error,
      "Encoder.setBatch: the encoder was destroyed",
    );
  },
);
