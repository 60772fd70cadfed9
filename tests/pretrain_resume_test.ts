// pretrain() (train/pretrain.ts) stopped and resumed, on the tiny-bert-mlm fixture:
//
// - a run stopped after a checkpoint that fell between two log lines resumes to the same log (the
//   next line averages the steps before the checkpoint too), the same result and the same bytes;
// - a resume that finds the run at its last step returns the run's held-out result (not null) and
//   its tokens, from a checkpoint written before the held-out result was kept in it too;
// - at --batch-size 1 --max-length 8 a batch with more masked tokens than a quarter of the batch
//   plus one (the old bound, 3) trains instead of stopping the run.

import { assert, assertEquals, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { readConfig } from "../model/config.ts";
import { openSafetensors, type TensorInput, writeSafetensors } from "../model/safetensors.ts";
import { MLM_IDS, mlmInitialValues, TINY_BERT_MLM } from "./train_fixture.ts";
import {
  checkPretrainState,
  pretrain,
  PRETRAIN_ADAMW,
  type PretrainOptions,
  trainingBatch,
} from "../train/pretrain.ts";

const IDS = MLM_IDS;

/** The fixture's config and starting values. */
async function fixture() {
  const config = await readConfig(`${TINY_BERT_MLM}config.json`);
  const model = await openSafetensors(`${TINY_BERT_MLM}model.safetensors`);
  try {
    return { config, initial: await mlmInitialValues(config, model) };
  } finally {
    model.close();
  }
}

/** `count` sequences of `length` ids (5..14, shifted per sequence). */
function sequences(count: number, length: number, shift = 0): Uint32Array[] {
  return Array.from(
    { length: count },
    (_, k) => Uint32Array.from({ length }, (_, i) => 5 + (k * 3 + i + shift) % 10),
  );
}

async function readLog(dir: string): Promise<Record<string, unknown>[]> {
  const text = await Deno.readTextFile(`${dir}/log.jsonl`);
  return text.split("\n").filter((l) => l.length > 0).map((l) => {
    const { seconds: _, ...rest } = JSON.parse(l);
    return rest;
  });
}

gpuTest(
  "pretrain: stopped between log lines and resumed: the same log, result and bytes",
  async (gpu) => {
    const { config, initial } = await fixture();
    const root = await Deno.makeTempDir({ prefix: "ehft-pretrain-resume-" });
    const N = 12;
    // Log lines at 4, 8, 12; checkpoints at 6 and 12: the checkpoint at 6 holds steps 5 and 6,
    // which the line at 8 averages with 7 and 8.
    const options = (out: string): PretrainOptions => ({
      config,
      initial,
      ids: IDS,
      train: sequences(12, 7),
      heldOut: sequences(4, 5, 1),
      out,
      steps: N,
      batchSize: 4,
      maxSeq: 12,
      schedule: { name: "linear", lr: 3e-3, total: N, warmupRatio: 0.1 },
      adamw: PRETRAIN_ADAMW,
      seed: 3,
      evalEvery: 6,
      checkpointEvery: 6,
      logEvery: 4,
      evalSequences: 0,
      resume: false,
      modelDtype: "F32",
      quiet: true,
    });
    try {
      const a = `${root}/a`;
      const resultA = await pretrain(gpu, options(a));
      const logA = await readLog(a);
      assertEquals(logA.filter((r) => "loss" in r).map((r) => r.step), [4, 8, 12]);
      assert(resultA.heldOut !== null);

      // B: stopped at the step-8 log line, after the checkpoint at 6.
      const b = `${root}/b`;
      await pretrain(gpu, {
        ...options(b),
        onLog: (r) => {
          if (r.step === 8 && "loss" in r) throw new Error("stop here");
        },
      }).then(
        () => assert(false, "run B should have stopped"),
        (e) => assertEquals((e as Error).message, "stop here"),
      );
      const resultB = await pretrain(gpu, { ...options(b), resume: true });
      assertEquals(await readLog(b), logA, "log.jsonl after resume");
      assertEquals(resultB.heldOut, resultA.heldOut);
      const bytes = (p: string) => Deno.readFile(p);
      for (const f of ["model/model.safetensors", "checkpoint.safetensors"]) {
        assertEquals(await bytes(`${b}/${f}`), await bytes(`${a}/${f}`), f);
      }
      assert(resultB.tokens < resultA.tokens, "the resumed run trained steps 7 to 12 only");
      assertEquals([resultB.totalTokens, resultA.totalTokens], [resultA.tokens, resultA.tokens]);

      // A resume that finds nothing left to train (a run stopped after its last checkpoint):
      // the run's held-out result and tokens, not null and 0.
      const again = await pretrain(gpu, { ...options(a), resume: true });
      assertEquals(again.heldOut, resultA.heldOut);
      assertEquals([again.tokens, again.totalTokens], [0, resultA.totalTokens]);
      assertEquals(await readLog(a), logA, "log.jsonl after a resume at the end");

      // A checkpoint from before the pending stats and the held-out result were kept: its last
      // evaluation's loss and accuracy, and the held-out masks' token count.
      const path = `${a}/checkpoint.safetensors`;
      const reader = await openSafetensors(path);
      const tensors: Record<string, TensorInput> = {};
      for (const [name, info] of reader.tensors) {
        tensors[name] = { dtype: "F32", shape: [...info.shape], data: await reader.readF32(name) };
      }
      const metadata = { ...reader.metadata };
      reader.close();
      const state = JSON.parse(metadata.ehft_training_state);
      assert("pending" in state && "held_out" in state, metadata.ehft_training_state);
      delete state.pending;
      delete state.held_out;
      metadata.ehft_training_state = JSON.stringify(state);
      await writeSafetensors(path, tensors, metadata);
      const older = await pretrain(gpu, { ...options(a), resume: true });
      assertEquals(older.heldOut, resultA.heldOut, "held-out result from an older checkpoint");
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

gpuTest("pretrain: a batch of 1 × 8 with 4 masked tokens trains", async (gpu) => {
  const { config, initial } = await fixture();
  const root = await Deno.makeTempDir({ prefix: "ehft-pretrain-rows-" });
  // Sequences of 6 tokens, one per batch: seed 8's first batch has 4 of its 6 chosen, more than
  // the bound the head was once sized by (a quarter of the 8 slots plus one per row: 3).
  const train = sequences(8, 6);
  const seed = 8, steps = 2;
  const most = Math.max(
    ...[...Array(steps).keys()].map((s) => trainingBatch(train, IDS, 1, seed, s).positions.length),
  );
  assert(most > Math.ceil(0.25 * 8) + 1, `the run's batches have at most ${most} masked tokens`);
  try {
    const result = await pretrain(gpu, {
      config,
      initial,
      ids: IDS,
      train,
      heldOut: sequences(3, 6, 1),
      out: root,
      steps,
      batchSize: 1,
      maxSeq: 8,
      schedule: { name: "linear", lr: 1e-3, total: steps, warmupRatio: 0 },
      adamw: PRETRAIN_ADAMW,
      seed,
      evalEvery: steps,
      checkpointEvery: steps,
      logEvery: 1,
      evalSequences: 0,
      resume: false,
      modelDtype: "F32",
      quiet: true,
    });
    assertEquals(result.steps, steps);
    assert(result.heldOut !== null && Number.isFinite(result.heldOut.loss));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("pretrain resume: the checkpoint state's pending steps are 0-based step indices", () => {
  // A checkpoint in the first log block holds step 0: refused as damaged when the check read
  // them 1-based, which stopped every run killed before its first log line from resuming.
  const state = {
    stage: 0,
    stageStep: 5,
    step: 5,
    adamStep: 5,
    best: {},
    last: null,
    logLines: 1,
    pending: { steps: [0, 1, 2, 3, 4], loss: [7, 7, 7, 7, 7], grad_norm: [1, 1, 1, 1, null] },
  };
  const counts = { tokens: 60, masked: 9 };
  checkPretrainState("c", { ...state, pending: { ...state.pending, ...counts } }, 10);
  for (const steps of [[1, 2, 3, 4, 5], [0, 1, 2, 2, 4], [-1, 1, 2, 3, 4]]) {
    const e = assertThrows(() =>
      checkPretrainState("c", { ...state, pending: { ...state.pending, ...counts, steps } }, 10)
    );
    assert(e.message.startsWith("c: training state pending is "), e.message);
  }
});
