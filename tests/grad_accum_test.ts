// Gradient accumulation (train.ts --grad-accum, Trainer's gradAccum): a step given its batch in
// parts runs each part and sums their weighted gradients into one update, which is the step of
// the whole batch up to the order of the sums (dropout off here: each part draws masks of its own).
// The tiny-bert fixture's batches of 3, split 2 + 1 (unequal parts: the weights matter); then
// train.ts's runs, in parts and not. Trainer.step's refusals (too many parts, a part too large, a
// target its loss cannot take) are checked here too.

import { dropoutSteps } from "./encoder_step.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest, IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  type ReferenceTraining,
  referenceTraining,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import type { Gpu } from "../kernels/device.ts";
import type { TrainBatch } from "../train/batches.ts";
import { checkRunModes, microBatchSize, parseTrainArgs } from "../train/config.ts";
import { startLines, taskScriptRecipe } from "../train/default_model.ts";
import { FlagError } from "../train/flags.ts";
import { TASKS } from "../tasks/all.ts";
import { runTraining } from "../train/run.ts";
import { rte, RTE_MINI_RECIPE, RTE_RECIPE } from "../tasks/rte.ts";
import { createPeft, type PeftName } from "../peft/method.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { type StepStats, Trainer, type TrainerOptions } from "../train/trainer.ts";

/** The stages' kinds: full fine-tuning, a PEFT method with the head, the head alone. */
const ALL = { head: true, backbone: "all", peft: false } as const;
const PEFT = { head: true, backbone: "peft", peft: true } as const;
const HEAD = { head: true, backbone: "none", peft: false } as const;
type Trains = typeof ALL | typeof PEFT | typeof HEAD;
const PEFT_OPTIONS = { loraR: 4, loraAlpha: 8, prefixLength: 3, seed: 1 };

/** The tiny-bert reference batches and weights, dropout off (parts draw masks of their own). */
async function fixture(): Promise<ReferenceTraining> {
  const f = await referenceTraining();
  return { ...f, options: { ...f.options, dropout: 0 } };
}

/** Examples [from, to) of a batch (one row per example), with its padding. */
function part(b: TrainBatch, from: number, to: number): TrainBatch {
  const S = b.encoder.seqLen;
  const rows = (a: ArrayLike<number> | undefined) => Uint32Array.from(a!).slice(from * S, to * S);
  return {
    examples: to - from,
    encoder: {
      inputIds: rows(b.encoder.inputIds),
      typeIds: rows(b.encoder.typeIds),
      positionIds: rows(b.encoder.positionIds),
      attentionMask: rows(b.encoder.attentionMask),
      batch: to - from,
      seqLen: S,
    },
    targets: b.targets.slice(from, to),
  };
}

/** Steps every batch (as `split` gives it) at lr 1e-3; the stats and the parameters after. */
async function train(
  gpu: Gpu,
  f: ReferenceTraining,
  extra: Partial<TrainerOptions>,
  split: (b: TrainBatch) => TrainBatch | TrainBatch[],
  trains: Trains = ALL,
  peft: PeftName | null = null,
): Promise<{ stats: StepStats[]; params: Map<string, Float32Array> }> {
  const method = peft ? createPeft(peft, gpu, f.options.config, PEFT_OPTIONS) : null;
  const trainer = new Trainer(gpu, {
    ...f.options,
    ...extra,
    peft: method,
    maxPrefix: method?.prefixLength,
  });
  try {
    await f.load(trainer);
    trainer.beginStage(trains, ADAMW_DEFAULTS);
    for (const [k, batch] of f.batches.entries()) await trainer.step(split(batch), 1e-3, k);
    const params = new Map<string, Float32Array>();
    for (const [name, t] of trainer.trainableParameters()) {
      params.set(name, (await t.download()) as Float32Array);
    }
    return { stats: await trainer.takeStats(), params };
  } finally {
    trainer.destroy();
  }
}

function relative(a: number, b: number): number {
  return Math.abs(a - b) / Math.abs(b);
}

gpuTest(
  "grad accumulation: a batch in parts of 2 and 1 takes the whole batch's steps",
  async (gpu) => {
    const f = await fixture();
    try {
      const cases: [string, Trains, PeftName | null][] = [
        ["full fine-tuning", ALL, null],
        ["the head alone", HEAD, null],
        ["BitFit", PEFT, "bitfit"],
        ["LoRA", PEFT, "lora"],
        ["prefix-tuning", PEFT, "prefix"],
      ];
      for (const [what, trains, peft] of cases) {
        const whole = await train(gpu, f, {}, (b) => b, trains, peft);
        const parts = await train(
          gpu,
          f,
          { maxExamples: 2, gradAccum: 2 },
          (b) => [part(b, 0, 2), part(b, 2, 3)],
          trains,
          peft,
        );
        assertEquals(parts.stats.length, whole.stats.length);
        for (const [i, s] of parts.stats.entries()) {
          const w = whole.stats[i];
          // The loss: the parts' means weighted 2/3 and 1/3; the norm: of the summed gradients.
          assert(
            relative(s.loss, w.loss) <= 1e-5,
            `${what} step ${i}: loss ${s.loss} vs ${w.loss}`,
          );
          assert(
            relative(s.gradNorm, w.gradNorm) <= 1e-4,
            `${what} step ${i}: gradient norm ${s.gradNorm} vs ${w.gradNorm}`,
          );
        }
        // Three AdamW steps later, the parameters as one vector.
        let diff = 0, size = 0;
        for (const [name, want] of whole.params) {
          const got = parts.params.get(name)!;
          for (let i = 0; i < want.length; i++) {
            diff += (got[i] - want[i]) ** 2;
            size += want[i] ** 2;
          }
        }
        assert(
          Math.sqrt(diff / size) <= 1e-5,
          `${what}: parameters ${Math.sqrt(diff / size)} apart`,
        );
      }
    } finally {
      f.close();
    }
  },
);

gpuTest("grad accumulation: each micro-batch draws dropout masks of its own", async (gpu) => {
  // Step t's part i is the encoder's dropout step t·K + i (K = gradAccum): no two parts of any
  // two steps share masks, and with K = 1 it is the step itself.
  const f = await fixture();
  try {
    for (const K of [1, 2]) {
      const trainer = new Trainer(gpu, {
        ...f.options,
        dropout: 0.1,
        maxExamples: K === 1 ? 3 : 2,
        gradAccum: K,
      });
      const steps = dropoutSteps(trainer.encoder);
      try {
        await f.load(trainer);
        trainer.beginStage(ALL, ADAMW_DEFAULTS);
        for (const [k, batch] of f.batches.entries()) {
          await trainer.step(K === 1 ? batch : [part(batch, 0, 2), part(batch, 2, 3)], 1e-3, k);
        }
        assertEquals(steps, Array.from({ length: K * f.batches.length }, (_, i) => i), `K ${K}`);
      } finally {
        trainer.destroy();
      }
    }
  } finally {
    f.close();
  }
});

gpuTest(
  "grad accumulation: one part is its batch's step bit for bit; more than gradAccum is refused",
  async (gpu) => {
    const f = await fixture();
    try {
      const whole = await train(gpu, f, {}, (b) => b);
      const one = await train(gpu, f, { gradAccum: 3 }, (b) => [b]);
      assertEquals(one.stats, whole.stats);
      for (const [name, want] of whole.params) {
        assertEquals(
          new Uint32Array(one.params.get(name)!.buffer),
          new Uint32Array(want.buffer),
          name,
        );
      }
      const trainer = new Trainer(gpu, { ...f.options, maxExamples: 1, gradAccum: 2 });
      try {
        trainer.beginStage(ALL, ADAMW_DEFAULTS);
        const b = f.batches[0];
        await assertRejects(
          () => trainer.step([part(b, 0, 1), part(b, 1, 2), part(b, 2, 3)], 1e-3, 0),
          Error,
          "Trainer.step: 3 micro-batches, not in [1, 2] (gradAccum)",
        );
        // Each part must fit the Trainer's batch, as a whole batch must.
        await assertRejects(() => trainer.step([b], 1e-3, 0), Error, "not in [1, 1]");
        // A target the loss cannot take is refused before the step (it made every weight NaN).
        for (const bad of [NaN, 2, -0.5]) {
          await assertRejects(
            () => trainer.step([{ ...part(b, 0, 1), targets: Float32Array.of(bad) }], 1e-3, 0),
            Error,
            `Trainer: target ${bad} of example 0 is not a label in [0, 1] (loss bce)`,
          );
        }
      } finally {
        trainer.destroy();
      }
      const ce = new Trainer(gpu, { ...f.options, loss: "ce", headClasses: 3, maxExamples: 1 });
      try {
        ce.beginStage(ALL, ADAMW_DEFAULTS);
        const one = part(f.batches[0], 0, 1);
        for (const targets of [Uint32Array.of(3), Float32Array.of(1.5), Float32Array.of(NaN)]) {
          await assertRejects(
            () => ce.step({ ...one, targets }, 1e-3, 0),
            Error,
            `Trainer: target ${targets[0]} of example 0 is not a class id in [0, 3) (loss ce)`,
          );
        }
        // Refused before anything was submitted: the next good step trains as the first.
        await ce.step({ ...one, targets: Uint32Array.of(2) }, 1e-3, 0);
        const [stats] = await ce.takeStats();
        assert(
          Number.isFinite(stats.loss) && Number.isFinite(stats.gradNorm),
          JSON.stringify(stats),
        );
      } finally {
        ce.destroy();
      }
    } finally {
      f.close();
    }
  },
);

Deno.test({
  name:
    "train --grad-accum: the run of the whole batches, in parts; recorded, and kept on --resume",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-grad-accum-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      // 60 examples in batches of 8: every epoch ends with a batch of 4 (parts 3 + 1).
      await writeMarkerData(`${dir}/data`, 60, 20);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const run = async (out: string, ...more: string[]) => {
        const { config } = parseTrainArgs([
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
          ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "lora"],
          ...["--batch-size", "8", "--epochs", "2", "--dropout", "0", "--lr", "3e-3"],
          ...["--stage1-lr", "1e-2", "--eval-every", "4", "--out", out, ...more],
        ]);
        return await runTraining(config, { task: rte, quiet: true });
      };
      const losses = async (out: string) =>
        (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l))
          .filter((l) => "loss" in l).map((l) => l.loss as number);
      const whole = await run(`${dir}/whole`);
      // Parts of 3, 3, 2 (and 3, 1 at each epoch's end); the dev split in batches of 3 too.
      const parts = await run(`${dir}/parts`, "--grad-accum", "3");
      const [a, b] = [await losses(`${dir}/whole`), await losses(`${dir}/parts`)];
      assertEquals(b.length, a.length);
      assertEquals(b.length, 16);
      for (const [i, loss] of b.entries()) {
        assert(relative(loss, a[i]) <= 1e-4, `step ${i + 1}: loss ${loss} vs ${a[i]}`);
      }
      assertEquals(parts.best, whole.best);
      const settings = JSON.parse(await Deno.readTextFile(`${dir}/parts/run.json`)).settings;
      assertEquals([settings.batchSize, settings.gradAccum], [8, 3]);
      // A resume in other parts would not give the run it continues: refused, naming the flag.
      await Deno.remove(`${dir}/parts/metrics.json`);
      await assertRejects(
        () => run(`${dir}/parts`, "--grad-accum", "2", "--resume"),
        Error,
        "was started with other settings (--grad-accum 3 in run.json, 2 now)",
      );
      // A run from before --grad-accum (no gradAccum in its run.json) ran a batch at once.
      const old = JSON.parse(await Deno.readTextFile(`${dir}/whole/run.json`));
      delete old.settings.gradAccum;
      await Deno.writeTextFile(`${dir}/whole/run.json`, JSON.stringify(old));
      await Deno.remove(`${dir}/whole/metrics.json`);
      assertEquals(await run(`${dir}/whole`, "--resume"), whole);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("grad accumulation: a library caller's config is checked as the flags are", () => {
  const base = { resume: false, overwrite: false, analysis: false, batchSize: 8 };
  // Left out (a config from before --grad-accum, or written by hand): the batch at once.
  checkRunModes(base);
  assertEquals(microBatchSize({ batchSize: 8 }), 8);
  assertEquals(microBatchSize({ batchSize: 8, gradAccum: 3 }), 3);
  assertThrows(
    () => checkRunModes({ ...base, gradAccum: 16 }),
    FlagError,
    "--grad-accum 16 is more than --batch-size 8",
  );
  assertThrows(() => checkRunModes({ ...base, gradAccum: 2.5 }), FlagError, "got 2.5");
  assertThrows(
    () => checkRunModes({ ...base, gradAccum: 2, analysis: true }),
    FlagError,
    "--analysis with --grad-accum",
  );
});

Deno.test("grad accumulation: the task script's start line says the parts' size", () => {
  const { recipe } = taskScriptRecipe(["--grad-accum", "3"], RTE_RECIPE, RTE_MINI_RECIPE);
  const { config } = parseTrainArgs(["--grad-accum", "3"], recipe, () => "data/superglue/RTE");
  const lines = startLines(TASKS.rte, config, true, RTE_RECIPE, 128);
  assert(lines[2].includes(", batch 32 in parts of ≤ 11, "), lines[2]);
});
