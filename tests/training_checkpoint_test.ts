// The training state a checkpoint carries (train/training_checkpoint.ts): what --resume goes on
// from, so a damaged one is refused in one line naming the file before anything is written (a
// bad line count would cut log.jsonl), and a place outside the run's stages too.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { tensorFromArray } from "../kernels/tensor.ts";
import { writeSafetensors } from "../model/safetensors.ts";
import {
  checkTrainingPlace,
  checkWholeCheckpoint,
  readTrainingCheckpoint,
  type TrainingState,
  writeTrainingCheckpoint,
} from "../train/training_checkpoint.ts";

const STATE: TrainingState = {
  stage: 1,
  stageStep: 3,
  step: 7,
  adamStep: 3,
  best: { accuracy: 0.5, f1: null },
  last: { accuracy: 0.25, f1: null },
  logLines: 9,
};

/** A checkpoint at `path` whose state is the text `state`, with one parameter. */
async function writeState(path: string, state: string): Promise<void> {
  await writeSafetensors(
    path,
    { "param/head.w": { dtype: "F32", shape: [2], data: new Float32Array([1, -2]) } },
    { format: "ehft-training-checkpoint", ehft_training_state: state },
  );
}

Deno.test("training checkpoint: its state is read back as written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/checkpoint.safetensors`;
    await writeState(path, JSON.stringify({ version: 1, ...STATE }));
    const loaded = (await readTrainingCheckpoint(path))!;
    assertEquals(loaded.state, STATE);
    assertEquals([...loaded.params.get("head.w")!], [1, -2]);
    await writeState(path, JSON.stringify({ version: 1, ...STATE, best: {}, last: null }));
    assertEquals((await readTrainingCheckpoint(path))!.state.last, null);
    // The updates of an f16 stage with a skipped step; absent before they were recorded.
    await writeState(path, JSON.stringify({ version: 1, ...STATE, adamApplied: 2 }));
    assertEquals((await readTrainingCheckpoint(path))!.state, { ...STATE, adamApplied: 2 });
    // Stopped by a SIGTERM before its step's evaluation.
    await writeState(path, JSON.stringify({ version: 1, ...STATE, owed: true }));
    assertEquals((await readTrainingCheckpoint(path))!.state, { ...STATE, owed: true });
    assertEquals(await readTrainingCheckpoint(`${dir}/none.safetensors`), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training checkpoint: a damaged state is one line naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/checkpoint.safetensors`;
    const state = (change: Record<string, unknown>) =>
      JSON.stringify({ version: 1, ...STATE, ...change });
    const cases: [string, string][] = [
      // The parser's own words after the parenthesis (they change with V8's versions).
      ['{"version":1,', "its training state is not valid JSON ("],
      ["null", "its training state is not a JSON object"],
      ["[1]", "its training state is not a JSON object"],
      [state({ version: 2 }), "checkpoint format 2, expected 1"],
      [state({ logLines: "x" }), 'training state logLines is "x", not a count'],
      [state({ logLines: -1 }), "training state logLines is -1, not a count"],
      [state({ stage: 1.5 }), "training state stage is 1.5, not a count"],
      [state({ step: null }), "training state step is null, not a count"],
      [
        state({ stageStep: 2 ** 53 + 2 }),
        "training state stageStep is 9007199254740994, not a count",
      ],
      [state({ adamStep: undefined }), "training state adamStep is undefined, not a count"],
      [
        state({ adamApplied: 4 }),
        "training state adamApplied is 4, not a count of at most adamStep (3)",
      ],
      [
        state({ adamApplied: "2" }),
        'training state adamApplied is "2", not a count of at most adamStep (3)',
      ],
      [
        state({ adamApplied: -1 }),
        "training state adamApplied is -1, not a count of at most adamStep (3)",
      ],
      [state({ best: [] }), "training state best is not an object of metrics"],
      [state({ best: null }), "training state best is not an object of metrics"],
      [state({ last: { accuracy: "high" } }), "training state last is not an object of metrics"],
      [state({ owed: "yes" }), 'training state owed is "yes", not true or false'],
      [state({ owed: 1 }), "training state owed is 1, not true or false"],
    ];
    for (const [text, problem] of cases) {
      await writeState(path, text);
      const e = await assertRejects(() => readTrainingCheckpoint(path), Error);
      if (problem.endsWith("(")) assert(e.message.startsWith(`${path}: ${problem}`), e.message);
      else assertEquals(e.message, `${path}: ${problem}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training checkpoint: a moment without its pair is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/checkpoint.safetensors`;
    const t = { dtype: "F32" as const, shape: [1], data: new Float32Array([1]) };
    const meta = {
      format: "ehft-training-checkpoint",
      ehft_training_state: JSON.stringify({ version: 1, ...STATE }),
    };
    for (
      const [name, problem] of [["adam_m/w", "has m but no v"], ["adam_v/w", "has v but no m"]]
    ) {
      await writeSafetensors(path, { "param/w": t, [name]: t }, meta);
      await assertRejects(() => readTrainingCheckpoint(path), Error, `${path}: "w" ${problem}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("training checkpoint: every tensor the run trains must be in it", () => {
  const f = new Float32Array(1);
  const checkpoint = {
    params: new Map([["a", f], ["b", f]]),
    moments: new Map([["a", { m: f, v: f }]]),
  };
  checkWholeCheckpoint("c", checkpoint, ["a", "b"], ["a"]);
  checkWholeCheckpoint("c", checkpoint, ["b"], []); // more than asked: uploadByName's to judge
  for (
    const [params, moments, name] of [
      [["a", "b", "x"], ["a"], "param/x"],
      [["a"], ["a", "b"], "adam_m/b"],
    ] as const
  ) {
    assertThrows(
      () => checkWholeCheckpoint("c", checkpoint, params, moments),
      Error,
      `c: no "${name}", which the run trains (the checkpoint is not whole: --overwrite starts ` +
        "the run again)",
    );
  }
});

Deno.test("training checkpoint: its place must be one in the run's stages", () => {
  const stages = [2, 6];
  // Within a stage, and at an earlier stage's last step (Stage 2 not begun).
  checkTrainingPlace("c", STATE, [4, 6]);
  checkTrainingPlace("c", { ...STATE, stage: 0, stageStep: 2, step: 2 }, stages);
  checkTrainingPlace("c", { ...STATE, stage: 1, stageStep: 5, step: 7 }, stages);
  // The run's end, by a SIGTERM's stop that owes it (its evaluation, the model's save).
  checkTrainingPlace("c", { ...STATE, stage: 1, stageStep: 6, step: 8, owed: true }, stages);
  for (
    const place of [
      { stage: 2, stageStep: 0, step: 8 },
      { stage: 0, stageStep: 3, step: 3 },
      { stage: 1, stageStep: 3, step: 3 },
      // Before a stage's first step, and at the run's end: never written (but owing the end).
      { stage: 1, stageStep: 0, step: 2 },
      { stage: 1, stageStep: 6, step: 8 },
    ]
  ) {
    const e = assertThrows(() => checkTrainingPlace("c", { ...STATE, ...place }, stages), Error);
    assert(e.message.startsWith(`c: its training state (stage ${place.stage}, step `), e.message);
    assert(e.message.endsWith("is not a place in this run (stages of 2, 6 steps)"), e.message);
  }
});

gpuTest(
  "training checkpoint: a bit flipped in a tensor's bytes is refused, naming the tensor",
  async (gpu) => {
    // Finite values pass readFinite: it resumed into another result, saying nothing.
    const dir = await Deno.makeTempDir();
    const w = tensorFromArray(gpu, new Float32Array([1, -2, 3]), [3], "w");
    const m = tensorFromArray(gpu, new Float32Array([0.5, 0.25, 0.125]), [3], "m");
    const v = tensorFromArray(gpu, new Float32Array([4, 5, 6]), [3], "v");
    const scale = tensorFromArray(gpu, new Float32Array([1024, 7, 2, 0]), [4], "loss scale");
    try {
      const path = `${dir}/checkpoint.safetensors`;
      const tensors = {
        params: new Map([["head.w", w]]),
        moments: new Map([["head.w", { m, v }]]),
      };
      await writeTrainingCheckpoint(path, STATE, tensors);
      const loaded = (await readTrainingCheckpoint(path))!;
      assertEquals([...loaded.params.get("head.w")!], [1, -2, 3]);
      const whole = await Deno.readFile(path);
      // The last tensor's last byte: its low mantissa bits (6 becomes 6 + 2^-21).
      const flipped = whole.slice();
      flipped[flipped.length - 4] ^= 1;
      await Deno.writeFile(path, flipped);
      const e = await assertRejects(() => readTrainingCheckpoint(path), Error);
      assert(
        /^.*checkpoint\.safetensors: tensor "[^"]+" is not what it was written as \(its SHA-256 differs from the one the checkpoint records\): the file is damaged$/
          .test(e.message),
        e.message,
      );
      // Every kind of tensor is checked: a weight, each moment, the loss-scale state.
      await writeTrainingCheckpoint(path, STATE, { ...tensors, lossScale: scale });
      const written = await Deno.readFile(path);
      const headerLength = Number(new DataView(written.buffer).getBigUint64(0, true));
      const header = JSON.parse(new TextDecoder().decode(written.subarray(8, 8 + headerLength)));
      const names = Object.keys(header).filter((n) => n !== "__metadata__");
      assertEquals(names.length, 4, names.join(", "));
      for (const name of names) {
        const bad = written.slice();
        bad[8 + headerLength + header[name].data_offsets[0]] ^= 1;
        await Deno.writeFile(path, bad);
        const e = await assertRejects(() => readTrainingCheckpoint(path), Error);
        assert(e.message.includes(`tensor "${name}" is not what it was written as`), e.message);
      }
    } finally {
      for (const t of [w, m, v, scale]) t.destroy();
      await Deno.remove(dir, { recursive: true });
    }
  },
);
