// Every strategy × PEFT method learns a small separable task on the tiny-bert fixture (dev
// accuracy ≥ 0.95 at the end), and EH-FT's hand-off does what the paper says: after Stage 1 the
// backbone is the pretrained one bit for bit, Stage 2 starts from the head Stage 1 ended with,
// BitFit moved only biases in Stage 1, and ehft-reserve keeps the PEFT-trained tensors.
//
// The task: the label is whether the (one-word) hypothesis is a marker word (tests/
// train_fixture.ts). The learning rates are far above the paper's (a random 2-layer model with
// hidden size 24, 32-56 steps), dropout is off, the lr constant, no clipping, and the head is
// 64 units wide (`--head` with a narrow fresh head) to keep each run to a few seconds.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  exists,
  markerTrainBatches,
  readLogRecords,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { isBitFitParameter } from "../peft/bitfit.ts";
import { parseTrainArgs } from "../train/config.ts";
import { runTraining } from "../train/run.ts";
import { Trainer } from "../train/trainer.ts";
import { getGpu } from "../kernels/device.ts";
import { loadBackbone } from "../model/checkpoint.ts";
import { encoderParameters } from "../model/encoder.ts";
import { headParameters } from "../model/head.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import type { TrainBatch } from "../train/batches.ts";
import { learningRate } from "../train/schedule.ts";
import type { Stage } from "../train/strategy.ts";
import { rte } from "../tasks/rte.ts";

const HEAD_WIDTH = 64;

interface Setup {
  dir: string;
  model: string;
  data: string;
  head: string;
}

let setup: Promise<Setup> | null = null;

function prepare(): Promise<Setup> {
  setup ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-strategies-" });
    // Removed when the module unloads, whichever tests a filter picked.
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const model = `${dir}/model`;
    await writeTinyBert(model, false);
    const data = `${dir}/data`;
    await writeMarkerData(data);
    const head = `${dir}/head.safetensors`;
    await writeNarrowHead(head, HEAD_WIDTH);
    return { dir, model, data, head };
  })();
  return setup;
}

async function readAll(path: string): Promise<Map<string, Float32Array>> {
  const reader = await openSafetensors(path);
  try {
    const out = new Map<string, Float32Array>();
    for (const name of reader.tensors.keys()) out.set(name, await reader.readF32(name));
    return out;
  } finally {
    reader.close();
  }
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return x.every((v, i) => v === y[i]);
}

/** The model's tensors as the trainer holds them now, under checkpoint names. */
async function snapshot(trainer: Trainer): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, t] of [...trainer.backboneParameters(), ...trainer.headParameters()]) {
    out.set(name, (await t.download()) as Float32Array);
  }
  return out;
}

async function train(
  name: string,
  args: string[],
  onStageStart?: (info: { stage: Stage; index: number; trainer: Trainer }) => Promise<void>,
) {
  const s = await prepare();
  const out = `${s.dir}/${name}`;
  const { config } = parseTrainArgs([
    ...["--task", "rte", "--model", s.model, "--data", s.data, "--head", s.head],
    ...["--batch-size", "16", "--dropout", "0", "--schedule", "constant"],
    ...["--max-grad-norm", "0", "--eval-every", "8", "--checkpoint-every", "0", "--out", out],
    ...args,
  ]);
  const metrics = await runTraining(config, { task: rte, quiet: true, onStageStart });
  return { out, metrics, config };
}

const CASES: [string, string[]][] = [
  ["ft", ["--strategy", "ft", "--lr", "3e-3", "--max-steps", "32"]],
  ["lp", ["--strategy", "lp", "--lr", "1e-2", "--max-steps", "40"]],
  ["lpft", ["--strategy", "lpft", "--stage1-lr", "1e-2", "--lr", "3e-3", "--max-steps", "32"]],
];
for (const peft of ["bitfit", "lora", "prefix"]) {
  const steps = peft === "prefix" ? "56" : "32";
  CASES.push([`peft-${peft}`, [
    ...["--strategy", "peft", "--peft", peft, "--lr", "1e-2", "--max-steps", steps],
  ]]);
  for (const strategy of ["ehft", "ehft-reserve"]) {
    CASES.push([`${strategy}-${peft}`, [
      ...["--strategy", strategy, "--peft", peft],
      ...["--stage1-lr", "1e-2", "--lr", "3e-3", "--max-steps", "32"],
    ]]);
  }
}

for (const [name, args] of CASES) {
  Deno.test({
    name: `train: ${name} learns the marker task (dev accuracy ≥ 0.95)`,
    ...IN_PROCESS_GPU,
    fn: async () => {
      // Only lp, whose stages never run the encoder's backward, keeps one set of activations.
      const inference: boolean[] = [];
      const { out, metrics } = await train(name, args, ({ trainer }) => {
        inference.push(trainer.encoder.inference);
        return Promise.resolve();
      });
      assertEquals(new Set(inference), new Set([name === "lp"]), name);
      assert((metrics.final.accuracy ?? 0) >= 0.95, `${name}: ${JSON.stringify(metrics)}`);
      const written = JSON.parse(await Deno.readTextFile(`${out}/metrics.json`));
      assertEquals(written, metrics);
      const saved = await readAll(`${out}/model/model.safetensors`);
      assert(
        saved.has("head.out_proj.weight") && saved.has("bert.encoder.layer.1.output.dense.weight"),
      );
      // The sequence budget shrinks by the prefix length (tiny-bert has 33 positions).
      const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
      assertEquals(run.resolved.max_length, name.endsWith("prefix") ? 33 - 16 : 33);
      const twoStage = name.startsWith("ehft") || name === "lpft";
      assertEquals(await exists(`${out}/stage1/model.safetensors`), twoStage);
      // Guards a per-stage --eval-every count: evaluations fall on global steps (8, 16, …), plus
      // Stage 1's end (step 3 of 32).
      const evals = (await readLogRecords(out)).filter((l) => "metrics" in l);
      const total = Number(args[args.indexOf("--max-steps") + 1]);
      const every = Array.from({ length: total / 8 }, (_, i) => 8 * (i + 1));
      assertEquals(evals.map((l) => l.step), twoStage ? [3, ...every] : every, name);
      assertEquals(await exists(`${out}/checkpoint.safetensors`), false);
    },
  });
}

Deno.test({
  name:
    "train: ehft hand-off: pretrained backbone bitwise, Stage 1's head, BitFit moved biases only",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const s = await prepare();
    const pretrained = await readAll(`${s.model}/model.safetensors`);
    for (const peft of ["bitfit", "lora"] as const) {
      for (const strategy of ["ehft", "ehft-reserve"] as const) {
        let atStage2: Map<string, Float32Array> | null = null;
        const { out } = await train(
          `handoff-${strategy}-${peft}`,
          [
            ...["--strategy", strategy, "--peft", peft, "--stage1-lr", "1e-2", "--lr", "3e-3"],
            ...["--max-steps", "10", "--stage1-ratio", "0.5", "--eval-every", "0"],
          ],
          async ({ index, trainer }) => {
            if (index === 1) atStage2 = await snapshot(trainer);
          },
        );
        const stage1 = await readAll(`${out}/stage1/model.safetensors`);
        const start = atStage2! as Map<string, Float32Array>;
        const what = `${strategy} ${peft}`;
        // No adapter: ehft drops LoRA, and ehft-reserve's factors hold only on the weights Stage
        // 2 trained (model/ has them merged), not on the base model an adapter names.
        assertEquals(await exists(`${out}/adapter`), false, what);
        const final = await openSafetensors(`${out}/model/model.safetensors`);
        const state = strategy === "ehft" ? "dropped" : peft === "lora" ? "merged" : "in_backbone";
        assertEquals(final.metadata.peft_state, state, what);
        final.close();
        // Guards an evaluation at Stage 1's end under --eval-every 0: only the run's end is scored.
        const evals = (await readLogRecords(out)).filter((l) => "metrics" in l);
        assertEquals(evals.map((l) => [l.stage, l.step]), [["stage2", 10]], what);
        // The Stage-1 snapshot: BitFit's trained biases in place, everything else pretrained.
        let moved = 0;
        for (const [name, value] of pretrained) {
          const relative = name.replace(/^bert\./, "");
          const trained = peft === "bitfit" && isBitFitParameter(relative);
          const same = bitsEqual(stage1.get(name)!, value);
          if (trained) moved += same ? 0 : 1;
          else assert(same, `${what}: Stage 1 changed ${name}`);
        }
        if (peft === "bitfit") {
          const biases = [...pretrained.keys()].filter((n) => isBitFitParameter(n.slice(5)));
          // The key bias adds the same score to every key of a row, so softmax cancels its
          // gradient (to rounding): it may stay put. Every other bias moves.
          assert(moved >= biases.length - 2, `${what}: ${moved} of ${biases.length} biases moved`);
        } else {
          const lora = [...stage1.keys()].filter((n) => n.startsWith("lora."));
          assertEquals(lora.length, 2 * 4 * 2, `${what}: A and B of 4 modules in 2 layers`);
        }
        // Stage 2 starts from Stage 1's head and the pretrained backbone (bitwise); reserve
        // keeps BitFit's biases.
        for (const [name, value] of start) {
          if (name.startsWith("head.")) {
            assert(bitsEqual(value, stage1.get(name)!), `${what}: Stage 2's ${name}`);
            continue;
          }
          const keep = strategy === "ehft-reserve" && peft === "bitfit" &&
            isBitFitParameter(name.slice(5));
          const expected = keep ? stage1.get(name)! : pretrained.get(name)!;
          assert(bitsEqual(value, expected), `${what}: Stage 2 starts with ${name} changed`);
        }
      }
    }
  },
});

Deno.test({
  name: "train: each stage has its own schedule; a step takes its global step's batch and dropout",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // ehft over 10 steps (Stage 1: 4, Stage 2: 6) against ft over the same 10. The batches come
    // from the run's data stream, not a stage's: the same ones in the same order (Stage 2 does
    // not start the epochs over); Trainer.step is told the global step (its dropout masks'
    // counter: Stage 2's masks are not Stage 1's again); each stage's learning rate warms up and
    // decays over the stage's own steps (Stage 2 starts at 0, not at its global step's rate).
    type Call = { ids: number[][]; lr: number; step: number };
    const spy = (calls: Call[]) => ({ index, trainer }: { index: number; trainer: Trainer }) => {
      if (index > 0) return Promise.resolve();
      const step = trainer.step.bind(trainer);
      trainer.step = (batch, lr, at) => {
        const parts = Array.isArray(batch) ? batch : [batch] as TrainBatch[];
        calls.push({ ids: parts.map((b) => Array.from(b.encoder.inputIds)), lr, step: at });
        return step(batch, lr, at);
      };
      return Promise.resolve();
    };
    const common = ["--max-steps", "10", "--eval-every", "0", "--schedule", "linear"];
    const ehft: Call[] = [], ft: Call[] = [];
    const { config } = await train("stages-ehft", [
      ...["--strategy", "ehft", "--peft", "bitfit", "--stage1-ratio", "0.4"],
      ...["--stage1-lr", "1e-2", "--lr", "3e-3", "--warmup-ratio", "0.25", ...common],
    ], spy(ehft));
    await train("stages-ft", ["--strategy", "ft", "--lr", "3e-3", ...common], spy(ft));
    assertEquals(ehft.map((c) => c.step), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "the steps");
    assertEquals(ehft.map((c) => c.ids), ft.map((c) => c.ids), "the batches");
    assert(
      JSON.stringify(ehft[4].ids) !== JSON.stringify(ehft[0].ids),
      "the second epoch's first batch is another",
    );
    const lrs = (lr: number, total: number) =>
      Array.from(
        { length: total },
        (_, j) => learningRate({ name: "linear", lr, total, warmupRatio: config.warmupRatio }, j),
      );
    assertEquals(ehft.map((c) => c.lr), [...lrs(1e-2, 4), ...lrs(3e-3, 6)], "the learning rates");
    assertEquals([ehft[0].lr, ehft[4].lr], [0, 0], "each stage starts its warmup at 0");
    const logged = (await readLogRecords(config.out)).filter((l) => "lr" in l);
    assertEquals(logged.map((l) => l.lr), ehft.map((c) => c.lr), "log.jsonl's learning rates");
  },
});

Deno.test({
  name: "train: --weight-decay, --max-grad-norm and --f16-math reach the optimizer and encoder",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // Recorded in run.json, they must also be what the Trainer trains with (each was parsed and
    // recorded, and would have trained at its default, had the hand-over dropped it).
    const seen: { weightDecay: number; maxGradNorm: number; f16Math: boolean }[] = [];
    const { out } = await train("typed-settings", [
      ...["--strategy", "ehft", "--peft", "lora", "--stage1-lr", "1e-2", "--lr", "3e-3"],
      ...["--max-steps", "2", "--weight-decay", "0.37", "--max-grad-norm", "0.25"],
      ...["--precision", "f16", "--f16-math", "--eval-every", "0"],
    ], ({ trainer }) => {
      const { weightDecay, maxGradNorm } = trainer.optimizer!.settings;
      seen.push({ weightDecay, maxGradNorm, f16Math: trainer.encoder.f16Math });
      return Promise.resolve();
    });
    const typed = { weightDecay: 0.37, maxGradNorm: 0.25, f16Math: true };
    assertEquals(seen, [typed, typed], "each stage's optimizer and the encoder");
    const run = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
    const { weightDecay, maxGradNorm } = run.resolved.adamw;
    assertEquals([weightDecay, maxGradNorm], [0.37, 0.25], "run.json's resolved.adamw");
  },
});

Deno.test({
  name: "lp: the frozen backbone keeps one set of activations, and trains bit for bit the same",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // Linear probing never runs the encoder's backward: its per-layer activations (6.75 GiB at
    // RoBERTa-large, batch 32 × 128) were kept all the same.
    const { model, data } = await prepare();
    const gpu = await getGpu();
    const { model: opened, longest, batches } = await markerTrainBatches(model, data, 16);
    const config = opened.config;
    const run = async (frozenBackbone: boolean) => {
      const before = gpu.liveBytes;
      const trainer = new Trainer(gpu, {
        config,
        loss: "bce",
        headClasses: 1,
        maxExamples: 16,
        maxSeq: longest,
        headWidth: HEAD_WIDTH,
        headSeed: 5,
        dropoutSeed: 6,
        adamw: ADAMW_DEFAULTS,
        frozenBackbone,
      });
      const held = gpu.liveBytes - before;
      try {
        await loadBackbone(opened.weights, config, encoderParameters(trainer.encoder.params));
        const headOnly = { head: true, backbone: "none", peft: false } as const;
        trainer.beginStage(headOnly, ADAMW_DEFAULTS);
        for (let step = 0; step < 4; step++) await trainer.step(batches[step], 1e-2, step);
        const weights = await Promise.all(
          [...headParameters(trainer.head).values()].map((t) => t.download()),
        );
        if (frozenBackbone) {
          assertThrows(
            () => trainer.beginStage({ ...headOnly, backbone: "all" }, ADAMW_DEFAULTS),
            Error,
            "frozenBackbone",
          );
        }
        return { held, weights, stats: await trainer.takeStats() };
      } finally {
        trainer.destroy();
      }
    };
    const frozen = await run(true);
    const full = await run(false);
    assertEquals(frozen.weights, full.weights);
    assertEquals(frozen.stats, full.stats);
    assert(frozen.held < full.held, `${frozen.held} vs ${full.held} bytes`);
    opened.weights.close();
  },
});

Deno.test({
  name: "train: the best score counts only the final stage's evaluations (Stage 1's are logged)",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // Stage 1 learns the task; Stage 2 starts from a zeroed head at a rate too small to move it,
    // so its evaluations score worse than Stage 1's, which must not become the run's best.
    const { out, metrics } = await train(
      "best-final-stage",
      [
        ...["--strategy", "lpft", "--stage1-lr", "1e-2", "--lr", "1e-9"],
        ...["--max-steps", "32", "--stage1-ratio", "0.5"],
      ],
      async ({ index, trainer }) => {
        if (index !== 1) return;
        for (const t of trainer.headParameters().values()) t.upload(new Float32Array(t.numel));
        await trainer.gpu.flushErrors();
      },
    );
    const evals = (await readLogRecords(out)).filter((l) => "metrics" in l);
    const best = (stage: string) =>
      Math.max(...evals.filter((l) => l.stage === stage).map((l) => l.metrics.accuracy));
    assert(best("stage1") > best("stage2"), `stage1 ${best("stage1")}, stage2 ${best("stage2")}`);
    assertEquals(metrics.best.accuracy, best("stage2"));
  },
});
