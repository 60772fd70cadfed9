// Faults during a run (train/run_faults.ts): a non-finite loss in f32 stops the run naming the
// step and keeping the last good checkpoint; f16 skips such steps but stops when they never end;
// non-finite outputs in an evaluation stop it too;
// an allocation beyond the adapter's limits names a batch size that fits; a lost device says how
// to resume.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU, withLimits } from "./gpu_fixture.ts";
import { exists, writeMarkerData, writeNarrowHead, writeTinyBert } from "./train_fixture.ts";
import { allocation, getGpu, GpuError, requestGpu } from "../kernels/device.ts";
import { expectBindable, type Tensor } from "../kernels/tensor.ts";
import { initialHeadValues } from "../model/head.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";
import { parseTrainArgs } from "../train/config.ts";
import { type RunOptions, runTraining } from "../train/run.ts";
import {
  explainRunError,
  interruptedMessage,
  MAX_CONSECUTIVE_SKIPS,
  resumeCommand,
  RunFaultError,
  setRunFinished,
  setRunResumable,
  setTrainingPlace,
  SIGNAL_TURN_MS,
  signalTurn,
} from "../train/run_faults.ts";
import { RunLog, trailingSkips } from "../train/run.ts";
import { rte } from "../tasks/rte.ts";

async function withRunFolder(fn: (dir: string, args: string[]) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-faults-" });
  try {
    await writeTinyBert(`${dir}/model`, false);
    await writeMarkerData(`${dir}/data`, 32, 16);
    await writeNarrowHead(`${dir}/head.safetensors`);
    await fn(dir, [
      ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
      ...["--head", `${dir}/head.safetensors`, "--batch-size", "8", "--eval-every", "0"],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function train(args: string[], options: Partial<RunOptions> = {}) {
  const { config } = parseTrainArgs(args);
  return runTraining(config, { task: rte, quiet: true, ...options });
}

/** A stage-start hook writing NaN into the head's output weight: the next step's loss is NaN. */
function poisonAtStage(index: number): RunOptions["onStageStart"] {
  return ({ index: i, trainer }) => {
    if (i !== index) return;
    const w = trainer.headParameters().get("head.out_proj.weight")!;
    w.upload(new Float32Array(w.numel).fill(NaN));
  };
}

Deno.test({
  name: "run faults: a NaN loss in f32 stops the run at its step, the last checkpoint kept",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      const out = `${dir}/run`;
      const args = [
        ...common,
        ...["--strategy", "ehft", "--peft", "bitfit", "--max-steps", "12"],
        ...["--stage1-ratio", "0.25", "--checkpoint-every", "2", "--out", out],
      ];
      // Stage 1 is steps 1-3 (checkpoint at 2); the head is poisoned as Stage 2 starts.
      const e = await assertRejects(
        () => train(args, { onStageStart: poisonAtStage(1) }),
        Error,
        "step 4 (stage2): the loss is NaN and the gradient norm NaN: training stopped",
      );
      assert(!e.message.includes("\n"), "one line");
      assert(e.message.includes(`the last good checkpoint (step 2) is kept in ${out}/`), e.message);
      assert(e.message.includes("--resume"), e.message);
      assert(!(await exists(`${out}/metrics.json`)), "no results");
      const reader = await openSafetensors(`${out}/checkpoint.safetensors`);
      assertEquals(JSON.parse(reader.metadata.ehft_training_state).step, 2);
      reader.close();
      // The log has the bad step (null: JSON has no NaN), nothing after it.
      const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l));
      assert(log.some((l) => l.step === 4 && l.loss === null), "step 4 logged");
      assertEquals(log.filter((l) => "loss" in l).at(-1).step, 4);
    }),
});

Deno.test({
  name: "run faults: f16 skips non-finite steps, and stops when they never end",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      const out = `${dir}/run`;
      const steps = MAX_CONSECUTIVE_SKIPS + 5;
      const args = [
        ...common,
        ...["--strategy", "ft", "--max-steps", String(steps), "--precision", "f16"],
        ...["--out", out],
      ];
      const e = await assertRejects(
        () => train(args, { onStageStart: poisonAtStage(0) }),
        Error,
        `step ${MAX_CONSECUTIVE_SKIPS} (main): ${MAX_CONSECUTIVE_SKIPS} steps in a row had ` +
          "non-finite gradients",
      );
      // Resuming as it was would stop again, and --resume refuses another --lr or precision.
      assert(!e.message.includes("--resume") && !e.message.includes("last good"), e.message);
      assert(
        e.message.endsWith(
          "Start again with a lower --lr or --precision f32 (settings of the run: --overwrite " +
            "restarts it, or use another --out)",
        ),
        e.message,
      );
      const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((l) => "loss" in l);
      assert(log.every((l) => l.skipped === true), "every step skipped");
      // The log ends at the step that stopped the run, not at its block's end (a checkpoint's
      // every 4 steps here: 52).
      assertEquals(log.at(-1).step, MAX_CONSECUTIVE_SKIPS);
      // The scale halves at each skip.
      assertEquals(log[0].loss_scale, 2 ** 16);
      assertEquals(log[3].loss_scale, 2 ** 13);
    }),
});

Deno.test({
  name: "run faults: f16 steps skipped at a stage's end are said, all of them too",
  fn: () =>
    withRunFolder(async (dir, common) => {
      // A head whose outputs are large but finite: every step's f16 gradients overflow (the
      // scale would have to halve ten times), so no step changes the weights, and the run had
      // ended with exit status 0 and not a word about it.
      const v = initialHeadValues(24, 64, 1, 7);
      await writeSafetensors(`${dir}/loud.safetensors`, {
        "head.dense.weight": { dtype: "F32", shape: [64, 24], data: v.dense.weight },
        "head.dense.bias": { dtype: "F32", shape: [64], data: v.dense.bias },
        "head.out_proj.weight": {
          dtype: "F32",
          shape: [1, 64],
          data: v.outProj.weight.map((x) => x * 1e8),
        },
        "head.out_proj.bias": { dtype: "F32", shape: [1], data: v.outProj.bias },
      });
      const args = [
        ...common,
        ...["--head", `${dir}/loud.safetensors`, "--strategy", "ft", "--max-steps", "4"],
        ...["--precision", "f16", "--out", `${dir}/run`, "--no-autotune"],
      ];
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../train.ts", import.meta.url).pathname, ...args],
        env: { NO_COLOR: "1" },
        stdout: "null",
      }).output();
      const said = new TextDecoder().decode(stderr);
      assertEquals(code, 0, said);
      assert(
        said.includes(
          "main: 4 of its 4 steps skipped (non-finite gradients; loss scale at the last step 8192): " +
            "none of them changed the weights",
        ),
        said,
      );
    }),
});

Deno.test({
  name: "run faults: an evaluation whose outputs are not finite stops the run, naming them",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      // f16: the poisoned head's steps are skipped (under 50 in a row), so the evaluation is the
      // first to see the NaN (it would score NaN logits as class 0).
      const out = `${dir}/run`;
      const args = [
        ...common,
        ...["--strategy", "ft", "--max-steps", "4", "--precision", "f16", "--out", out],
        ...["--eval-every", "2", "--checkpoint-every", "1"],
      ];
      const e = await assertRejects(
        () => train(args, { onStageStart: poisonAtStage(0) }),
        Error,
        "step 2 (main): evaluating on val, the model's outputs are not finite for 16 of 16 " +
          "examples (example 0: NaN): training stopped; the last checkpoint (step 1; its " +
          `outputs may not be finite either) is kept in ${out}/checkpoint.safetensors. `,
      );
      assert(!e.message.includes("\n"), "one line");
      assert(
        e.message.endsWith(
          "a lower --lr or --precision f32 (settings of the run: " +
            "--overwrite restarts it, or use another --out)",
        ),
        e.message,
      );
      assert(!(await exists(`${out}/metrics.json`)), "no results");
    }),
});

Deno.test({
  name: "run faults: beyond the adapter's buffer limit, the error names a batch size that fits",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      const gpu = await getGpu();
      // The largest parameter (word embeddings, 101 × 24 f32) takes 9696 bytes; at batch 32 the
      // encoder's activations ([batch · seq, 37] and more) do not fit 12000-byte buffers.
      const small = withLimits(gpu, { maxBufferSize: 12000 });
      const args = [...common, "--strategy", "ft", "--max-steps", "2"];
      const e = await assertRejects(
        () => train([...args, "--batch-size", "32", "--out", `${dir}/big`], { gpu: small }),
        Error,
        "more than this adapter's largest buffer (12000 bytes): the batch of 32 does not fit",
      );
      assert(!e.message.includes("\n"), "one line");
      const m = /try --batch-size (\d+)/.exec(e.message);
      assert(m, e.message);
      const fits = Number(m[1]);
      assert(fits >= 1 && fits < 32, e.message);
      // And it does.
      const metrics = await train([...args, "--batch-size", String(fits), "--out", `${dir}/fits`], {
        gpu: small,
      });
      assert("final" in metrics, "the suggested batch trained");
    }),
});

Deno.test({
  name: "run faults: beyond the adapter's storage binding limit, the batch that fits by the ratio",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      const gpu = await getGpu();
      // Buffers of any size allocate; a binding is checked when a kernel is launched, so a probe
      // of allocations found "a batch of 255 fits" (and then 254 …) instead of the ratio's. (The
      // gradient norm's slices need 64 KiB bindings: the limit cannot go lower.)
      const small = withLimits(gpu, { maxStorageBufferBindingSize: 65800 });
      await writeMarkerData(`${dir}/many`, 256, 16);
      const args = [...common, "--data", `${dir}/many`, "--strategy", "ft", "--max-steps", "1"];
      const e = await assertRejects(
        () => train([...args, "--batch-size", "256", "--out", `${dir}/wide`], { gpu: small }),
        Error,
        "exceeds this adapter's storage binding limit of 65800 bytes: the batch of 256 does not fit",
      );
      // Said as the trainer is built, for the widest activation (the FFN's), not at a launch.
      assert(e.message.startsWith('Encoder: activation ("layer 0 intermediate", '), e.message);
      const m = /, (\d+) bytes\) exceeds .*try --batch-size (\d+)/.exec(e.message);
      assert(m, e.message);
      const fits = Number(m[2]);
      // Found over the run's own batches (parts of shorter rows take less than the ratio to
      // the largest batch says): each way trains.
      assert(fits >= 1 && fits < 256, e.message);
      const parts = /--grad-accum (\d+)/.exec(e.message);
      assert(parts, e.message);
      const accum = await train([
        ...args,
        "--batch-size",
        "256",
        "--grad-accum",
        parts[1],
        "--out",
        `${dir}/parts`,
      ], {
        gpu: small,
      });
      assert("final" in accum, "the suggested parts trained");
      const metrics = await train([...args, "--batch-size", String(fits), "--out", `${dir}/fit`], {
        gpu: small,
      });
      assert("final" in metrics, "the suggested batch trained");
    }),
});

Deno.test({
  name: "run faults: a lost device says so, with the command that resumes the run",
  ...IN_PROCESS_GPU,
  fn: () =>
    withRunFolder(async (dir, common) => {
      const gpu = await requestGpu();
      const out = `${dir}/run`;
      const args = [
        ...common,
        ...["--strategy", "ehft", "--peft", "bitfit", "--max-steps", "8"],
        ...["--stage1-ratio", "0.25", "--checkpoint-every", "2", "--out", out],
      ];
      const e = await assertRejects(
        () =>
          train(args, {
            gpu,
            onStageStart: ({ index }) => {
              if (index === 1) gpu.device.destroy();
            },
          }),
        Error,
        "GPU device lost",
      );
      assert(!e.message.includes("\n"), "one line");
      assert(e.message.includes("the last good checkpoint (step 2)"), e.message);
      assert(e.message.includes("--resume"), e.message);
    }),
});

Deno.test("run faults: the resume command is the current one with --resume", () => {
  const cwd = Deno.cwd();
  const train = new URL("../train.ts", import.meta.url);
  const cb = new URL("../tasks/cb.ts", import.meta.url);
  const relative = (u: URL) =>
    u.pathname.startsWith(`${cwd}/`) ? u.pathname.slice(cwd.length + 1) : u.pathname;
  assertEquals(
    resumeCommand(
      ["--task", "rte", "--overwrite", "--out", "runs/a b", "--lr", "1e-5"],
      train.href,
    ),
    `deno run -A ${relative(train)} --task rte --out 'runs/a b' --lr 1e-5 --resume`,
  );
  assertEquals(resumeCommand(["--resume"], cb.href), `deno run -A ${relative(cb)} --resume`);
  // --analysis cannot be resumed (it measures from the first step): left out, and said so.
  assertEquals(
    resumeCommand(["--analysis", "--lr", "1e-5"], cb.href),
    `deno run -A ${relative(cb)} --lr 1e-5 --resume  # without --analysis, which measures a run ` +
      `from its start (--overwrite --analysis to have it)`,
  );
  // A task script of one's own (runTaskScript, through trainFromArgs) reads the flags too.
  assertEquals(
    resumeCommand(["--lr", "1e-5"], "file:///home/me/my_task.ts", true),
    "deno run -A /home/me/my_task.ts --lr 1e-5 --resume",
  );
  // A program of one's own that calls runTraining (not through trainFromArgs: the third
  // argument) may not read its command line, even one
  // called train.ts; its path is decoded and quoted, and a URL kept whole.
  const own = (command: string, script: string) =>
    `runTraining with resume: true, overwrite: false in the same config (${command}, if ` +
    `${script} passes its arguments to parseTrainArgs)`;
  assertEquals(
    resumeCommand(["--lr", "1e-5"], "file:///home/me/my_sweep.ts", false),
    own("deno run -A /home/me/my_sweep.ts --lr 1e-5 --resume", "/home/me/my_sweep.ts"),
  );
  assertEquals(
    resumeCommand([], "file:///home/me/my%20runs/train.ts", false),
    own("deno run -A '/home/me/my runs/train.ts' --resume", "/home/me/my runs/train.ts"),
  );
  assertEquals(
    resumeCommand([], "https://example.com/x/sweep.ts", false),
    own("deno run -A https://example.com/x/sweep.ts --resume", "https://example.com/x/sweep.ts"),
  );
});

Deno.test("run faults: a write that failed (a full disk) says what was kept and how to go on", () => {
  const place = { dir: "runs/x", checkpoint: { path: "runs/x/checkpoint.safetensors", step: 40 } };
  const run = { batchSize: 32, maxLength: 256, place };
  for (
    const message of [
      "runs/x/metrics.json: write failed: No space left on device (os error 28)",
      "Read-only file system (os error 30): mkdir 'runs/x/stage1'",
    ]
  ) {
    const e = explainRunError(new Error(message), run) as Error;
    assertEquals(
      e.message,
      `${message}; the last good checkpoint (step 40) is kept in runs/x/checkpoint.safetensors; ` +
        `once it can be written, continue with: ${resumeCommand()}`,
    );
  }
  // Other errors are as they were.
  const other = new Error("runs/x/data.jsonl:3: not JSON");
  assert(explainRunError(other, run) === other);
});

Deno.test("run faults: out of GPU memory names the allocation, its bytes and a batch that fits", () => {
  // lavapipe never runs out of memory at test sizes: the message as Gpu.scoped words it.
  const oom = new GpuError(
    'allocating tensor "layer 3 intermediate" (805306368 bytes): out of GPU memory (Not enough ' +
      "memory left)",
  );
  const place = { dir: "runs/x", checkpoint: { path: "runs/x/checkpoint.safetensors", step: 40 } };
  const run = { batchSize: 32, maxLength: 256, place };
  const probed = explainRunError(oom, { ...run, fitsBatch: 12 }) as Error;
  assertEquals(
    probed.message,
    'allocating tensor "layer 3 intermediate" (805306368 bytes): out of GPU memory (Not enough ' +
      "memory left): the batch of 32 does not fit this adapter; try --batch-size 12, " +
      "--grad-accum 3 (the batch of 32 in parts of ≤ 11), or --max-length 128 (--overwrite to " +
      "restart with it)",
  );
  // Already in parts (--grad-accum): more parts, the same batch.
  const parted = explainRunError(oom, { ...run, gradAccum: 2, fitsBatch: 5 }) as Error;
  assert(
    parted.message.endsWith(
      "the micro-batch of 16 (--batch-size 32, --grad-accum 2) does not fit this adapter; try " +
        "--grad-accum 7 (the batch of 32 in parts of ≤ 5) or --max-length 128 (--overwrite to " +
        "restart with it)",
    ),
    parted.message,
  );
  // Without a probe: half the batch.
  const halved = explainRunError(oom, run) as Error;
  assert(halved.message.includes("try --batch-size 16, --grad-accum 2 "), halved.message);
  // Parameters do not shrink with the batch.
  const model = explainRunError(
    new GpuError('allocating arena "encoder parameters" (1400000000 bytes): out of GPU memory'),
    run,
  ) as Error;
  assert(model.message.includes("the model itself does not fit this adapter"), model.message);
  // Probed: not even a batch of 1 fits at this length, which a shorter --max-length may change.
  const none = explainRunError(oom, { ...run, fitsBatch: null }) as Error;
  assert(none.message.includes("no batch size fits this adapter"), none.message);
  assert(none.message.includes("try --max-length 128, a smaller model"), none.message);
  // A batch of 1 (nothing smaller to probe) that fails in its activations: a shorter length.
  const one = explainRunError(oom, { ...run, batchSize: 1 }) as Error;
  assert(one.message.includes("the batch of 1 does not fit this adapter; try --max-length 128"));
  // Out of memory while copying a tensor back to save it: the batch trained, so no batch advice.
  const saving = explainRunError(
    new GpuError(
      'download of tensor "embeddings.word_embeddings.weight": out of GPU memory (Not enough ' +
        "memory left)",
    ),
    run,
  ) as Error;
  assert(!saving.message.includes("--batch-size"), saving.message);
  assert(saving.message.includes("no GPU memory was left to read a tensor back"), saving.message);
  assert(saving.message.includes("the last good checkpoint (step 40) is kept"), saving.message);
  assert(saving.message.includes("--resume"), saving.message);
});

Deno.test("run faults: a tensor beyond one storage binding gets the batch that fits, from the ratio", () => {
  // The launchers' own message (expectBindable), the tensor named before its bytes: it was
  // passed on raw, without advice or a resume line.
  const fake = {
    gpu: { limits: { maxStorageBufferBindingSize: 134217728 } },
    bindingSize: 268435456,
    label: "layer 0 gelu",
  } as unknown as Tensor;
  const e = assertThrows(() => expectBindable("linearForward", "out", fake), GpuError);
  assertEquals(allocation(e.message), { bytes: 268435456, limit: 134217728, binding: true });
  // The encoder's own for f16's whole attention probabilities reads the same way.
  assertEquals(
    allocation(
      'Encoder: attention probabilities ("layer probs", 167772160 bytes) exceeds this ' +
        'adapter\'s storage binding limit of 134217728 bytes (precision "f16" keeps them whole; ' +
        '"f32" runs flash attention, which does not)',
    ),
    { bytes: 167772160, limit: 134217728, binding: true },
  );
  const place = { dir: "runs/x", checkpoint: null };
  const advice = explainRunError(e, { batchSize: 32, maxLength: 512, place }) as Error;
  assert(advice instanceof RunFaultError);
  assertEquals(
    advice.message,
    'linearForward: out ("layer 0 gelu", 268435456 bytes) exceeds this adapter\'s storage ' +
      "binding limit of 134217728 bytes: the batch of 32 does not fit this adapter; try " +
      "--batch-size 16, --grad-accum 2 (the batch of 32 in parts of ≤ 16), or --max-length 256 " +
      "(--overwrite to restart with it)",
  );
});

Deno.test("run faults: a resumed f16 run goes on counting the skips in a row its log ended with", () => {
  const step = (n: number, skipped: boolean) =>
    JSON.stringify({ stage: "main", step: n, loss: 0.7, lr: 1e-5, skipped });
  const evaluation = JSON.stringify({ stage: "main", step: 3, split: "val", metrics: {} });
  assertEquals(
    trailingSkips([step(1, true), step(2, false), step(3, true), evaluation, step(4, true), ""]),
    2,
  );
  assertEquals(trailingSkips([step(1, false)]), 0);
  // f32 logs have no skipped field.
  assertEquals(trailingSkips([JSON.stringify({ stage: "main", step: 1, loss: 0.7 })]), 0);
  assertEquals(trailingSkips([]), 0);
  // A line that is JSON but not a record (a damaged log) ends the count, as unreadable ones do.
  for (const line of ["null", "5", '"nan"', "true", "[]"]) {
    assertEquals(trailingSkips([step(1, true), line, step(2, true)]), 1);
  }
});

Deno.test("run log: --resume keeps the checkpoint's lines, and a log with fewer or none is refused untouched", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/log.jsonl`;
    const text = '{"step":1}\n{"step":2}\n{"step":3}\n';
    await Deno.writeTextFile(path, text + '{"step":4}\n{"st');
    const log = await RunLog.open(path, 3);
    log.close();
    assertEquals(log.lines, 3);
    assertEquals(await Deno.readTextFile(path), text);
    // The line break that ends the last line does not begin a fourth.
    await assertRejects(
      () => RunLog.open(path, 4),
      Error,
      `${path}: fewer lines than the checkpoint's 4 (the log was cut short or edited): ` +
        "--overwrite starts the run again",
    );
    for (const keep of [-1, 1.5, NaN, "x" as unknown as number]) {
      const e = await assertRejects(() => RunLog.open(path, keep), Error);
      assert(e.message.startsWith(`${path}: the checkpoint's line count `), e.message);
    }
    assertEquals(await Deno.readTextFile(path), text);
    // No log at all (it was the system's "No such file or directory (os error 2)"); none made.
    await assertRejects(
      () => RunLog.open(`${dir}/gone.jsonl`, 3),
      Error,
      `${dir}/gone.jsonl: missing, and the checkpoint keeps its first 3 lines (the log was ` +
        "removed or moved): --overwrite starts the run again",
    );
    assert(!(await exists(`${dir}/gone.jsonl`)), "a log was made");
    // A byte that is not UTF-8: refused, the log as it was (a lossy read kept it as U+FFFD).
    const bytes = new TextEncoder().encode(text);
    bytes[3] = 0xff;
    await Deno.writeFile(path, bytes);
    await assertRejects(
      () => RunLog.open(path, 2),
      Error,
      `${path}: line 1: not valid UTF-8: byte 0xFF at byte 4 of the line (save the file as ` +
        "UTF-8) (the log is damaged: --overwrite starts the run again)",
    );
    assertEquals(await Deno.readFile(path), bytes);
    // A kept line cut short or edited (it was kept, and the finished log was no JSONL).
    const torn = '{"step":1}\n{"step":2,"lo\n{"step":3}\n';
    await Deno.writeTextFile(path, torn);
    await assertRejects(
      () => RunLog.open(path, 3),
      Error,
      `${path}: line 2 is not a JSON object (the log is damaged: --overwrite starts the run again)`,
    );
    assertEquals(await Deno.readTextFile(path), torn);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run faults: a failed write of log.jsonl (a full disk) names the file and how to go on", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = await RunLog.open(`${dir}/log.jsonl`, 0);
    await log.write([{ step: 1 }]);
    log.close(); // the next write fails, as on a full disk
    const e = await assertRejects(() => log.write([{ step: 2 }]), Error);
    assert(e.message.startsWith(`${dir}/log.jsonl: write failed: `), e.message);
    assert(
      e.message.includes("goes on from its last checkpoint") && e.message.includes("--resume"),
    );
    assertEquals(await Deno.readTextFile(`${dir}/log.jsonl`), '{"step":1}\n');
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run faults: what Ctrl-C says, before the training and during it", async () => {
  assertEquals(await interruptedMessage(), "interrupted before the training started");
  setTrainingPlace({
    dir: "runs/x",
    checkpoint: { path: "runs/x/checkpoint.safetensors", step: 8 },
  });
  try {
    const line = await interruptedMessage();
    assert(
      line.startsWith(
        "interrupted; the last good checkpoint (step 8) is kept in runs/x/checkpoint.safetensors; " +
          "to go on: ",
      ) && line.endsWith(resumeCommand()),
      line,
    );
    setTrainingPlace({ dir: "runs/x", checkpoint: null });
    assert(
      (await interruptedMessage()).includes("no checkpoint was written yet"),
      await interruptedMessage(),
    );
    // Ctrl-C between a checkpoint's rename and its being noted: the file on disk says what is kept.
    const dir = Deno.makeTempDirSync();
    try {
      const state = JSON.stringify({ step: 6, stage: 0 });
      await writeSafetensors(`${dir}/checkpoint.safetensors`, {
        x: { dtype: "F32", shape: [1], data: new Float32Array([1]) },
      }, { ehft_training_state: state });
      setTrainingPlace({ dir, checkpoint: { path: `${dir}/checkpoint.safetensors`, step: 4 } });
      assert(
        (await interruptedMessage()).startsWith(
          `interrupted; the last good checkpoint (step 6) is kept in ${dir}/checkpoint.safetensors`,
        ),
        await interruptedMessage(),
      );
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
    // Between seeds, or after a seed's end: no seed's checkpoint to name, the run goes on.
    setTrainingPlace(null);
    setRunResumable(true);
    assertEquals(await interruptedMessage(), `interrupted; to go on: ${resumeCommand()}`);
    // After the training (the test predictions): it is done and kept, whatever came before. It
    // said "before the training started" once the folder's state was let go.
    setRunResumable(false);
    setRunFinished("runs/x");
    assertEquals(
      await interruptedMessage("terminated by SIGTERM"),
      "terminated by SIGTERM after the training, which is done and kept in runs/x; to finish " +
        `what follows it (a --predict-test file): ${resumeCommand()}`,
    );
  } finally {
    setTrainingPlace(null);
    setRunResumable(false);
    setRunFinished(null);
  }
});

Deno.test("run faults: a step's signal turn waits for a timer at most every SIGNAL_TURN_MS", async () => {
  // Which settles first: a 0 ms timer set just before the turn is taken, or the turn. A turn that
  // waits for a timer of its own settles after that one (timers of one delay fire in order), a
  // skipped turn at once: an order of events, not a duration.
  const first = async (at: number): Promise<string> => {
    const timer = new Promise<string>((resolve) => setTimeout(() => resolve("timer"), 0));
    const turn = signalTurn(at)().then(() => "turn");
    const winner = await Promise.race([turn, timer]);
    await Promise.all([turn, timer]);
    return winner;
  };
  const t0 = 1e9; // later than any turn a test before this one took
  assertEquals(await first(t0), "timer");
  assertEquals(await first(t0 + SIGNAL_TURN_MS / 2), "turn");
  assertEquals(await first(t0 + SIGNAL_TURN_MS - 1), "turn");
  assertEquals(await first(t0 + SIGNAL_TURN_MS), "timer");
  assertEquals(await first(t0 + SIGNAL_TURN_MS + 1), "turn");
});
