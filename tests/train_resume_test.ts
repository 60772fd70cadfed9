// Checkpoints and --resume: a train.ts run killed (SIGKILL) after a checkpoint in Stage 1, resumed
// (with --out alone: run.json gives the rest), killed again in Stage 2, and resumed to the end
// gives the same log, metrics and weights, bit for bit, as an uninterrupted run (dropout on,
// shuffled data: the masks and the order depend only on the seed and the step). --resume on a
// finished run changes nothing; a folder that holds a run is refused without --resume or
// --overwrite.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  assertSameFiles,
  capturingErrors,
  copyTree,
  exists,
  readLogRecords,
  readTree,
  rewriteSafetensors,
  sameBytes,
  sigkill,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { createHash } from "node:crypto";
import { lockFolder } from "../model/atomic_write.ts";
import { type LoadedTensor, openSafetensors } from "../model/safetensors.ts";
import { parseTrainArgs, runSettings, type TrainConfig } from "../train/config.ts";
import { FlagError } from "../train/flags.ts";
import { parseOverRecorded, recordedSettings } from "../train/resume_settings.ts";
import { type RunOptions, runTraining } from "../train/run.ts";
import { rte } from "../tasks/rte.ts";

const TRAIN_TS = new URL("../train.ts", import.meta.url).pathname;
const RTE_TS = new URL("../tasks/rte.ts", import.meta.url).pathname;

/** The stage index of the checkpoint in `dir`, or null while there is none. */
async function checkpointStage(dir: string): Promise<number | null> {
  const path = `${dir}/checkpoint.safetensors`;
  if (!(await exists(path))) return null;
  try {
    const reader = await openSafetensors(path);
    reader.close();
    return JSON.parse(reader.metadata.ehft_training_state).stage;
  } catch {
    return null; // replaced while being opened: ask again
  }
}

/** The training state of the checkpoint in `dir`. */
async function trainingState(dir: string): Promise<Record<string, number>> {
  const reader = await openSafetensors(`${dir}/checkpoint.safetensors`);
  reader.close();
  return JSON.parse(reader.metadata.ehft_training_state);
}

/** train.ts (or `script`) started with `args`, and its whole stderr once it ends. */
function spawnTrain(
  args: string[],
  script = TRAIN_TS,
  denoFlags: string[] = [],
): { child: Deno.ChildProcess; stderr: Promise<string> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...denoFlags, script, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  return { child, stderr: new Response(child.stderr).text() };
}

/**
 * Writes `dir`/main.ts: a training of its flags (task RTE) that handles signals as train.ts does
 * (stopWithWord, saying "t: ..."), with `onStageStart` the body of the stage-start hook (it has
 * `config`, the hook's `index` and `stopRequested` in scope). Returns its path.
 */
async function writeSignalScript(dir: string, onStageStart: string): Promise<string> {
  const url = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
  const script = `${dir}/main.ts`;
  await Deno.writeTextFile(
    script,
    `import { parseTrainArgs } from ${url("../train/config.ts")};
import { runTraining } from ${url("../train/run.ts")};
import { interruptedMessage, stopRequested, stopWithWord } from ${url("../train/run_faults.ts")};
import { rte } from ${url("../tasks/rte.ts")};
stopWithWord("t", interruptedMessage);
const { config } = parseTrainArgs(Deno.args);
await runTraining(config, { task: rte, quiet: true, onStageStart: async ({ index }) => {
  ${onStageStart}
} });
`,
  );
  return script;
}

/** Runs a Deno script (train.ts, or one of writeSignalScript's) with `args`: its exit code and
 * stderr lines. */
async function runScript(
  script: string,
  args: string[],
): Promise<{ code: number; lines: string[] }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: r.code, lines: new TextDecoder().decode(r.stderr).trim().split("\n") };
}

/** Starts train.ts (or `script`) and SIGKILLs it once `ready` holds; returns whether it was. */
async function runAndKill(
  args: string[],
  ready: () => Promise<boolean>,
  script = TRAIN_TS,
): Promise<boolean> {
  const { child, stderr } = spawnTrain(args, script);
  let finished = false;
  const status = child.status.then((s) => {
    finished = true;
    return s;
  });
  while (!finished && !(await ready())) await new Promise((r) => setTimeout(r, 10));
  const killed = !finished && sigkill(child);
  const s = await status;
  if (!killed && !s.success) throw new Error(`train.ts failed: ${await stderr}`);
  await stderr;
  return killed;
}

async function mtimes(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const name of (await readTree(dir)).keys()) {
    out.set(name, (await Deno.stat(`${dir}/${name}`)).mtime!.getTime());
  }
  return out;
}

Deno.test({
  name: "train: a killed run resumed from its checkpoints ends as an uninterrupted one",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-resume-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "lora"],
        // Stage 1 is steps 1-12: after the checkpoint at step 4, 8 steps (about 0.6 s here) to
        // kill it in before stage1/ is written; at 6 steps (ratio 0.25) that was 2 steps, about
        // 160 ms, and a fast or busy machine could miss it.
        ...["--batch-size", "8", "--max-steps", "24", "--stage1-ratio", "0.5"],
        ...["--stage1-lr", "1e-2", "--lr", "3e-3", "--eval-every", "3", "--checkpoint-every", "4"],
      ];
      const run = async (out: string, ...more: string[]) => {
        const { config } = parseTrainArgs([...common, "--out", out, ...more]);
        return await runTraining(config, { task: rte, quiet: true });
      };

      const whole = `${dir}/whole`;
      const expected = await run(whole);

      const killed = `${dir}/killed`;
      const args = [...common, "--out", killed];
      // Killed in Stage 1 (steps 1-12) after its first checkpoint...
      assert(
        await runAndKill(args, async () => (await checkpointStage(killed)) === 0),
        "the run ended before it could be killed",
      );
      assert(!(await exists(`${killed}/metrics.json`)));
      assert(!(await exists(`${killed}/stage1`)), "killed before the end of Stage 1");
      // ...resumed with --out alone (run.json gives the rest), and killed again in Stage 2...
      assert(
        await runAndKill(
          ["--out", killed, "--resume"],
          async () => (await checkpointStage(killed)) === 1,
        ),
        "the resumed run ended before it could be killed",
      );
      assert(!(await exists(`${killed}/metrics.json`)));
      // ...and resumed to the end, in another folder (moved to a bigger disk, say): the same run.
      const movedRun = `${dir}/moved-run`;
      await Deno.rename(killed, movedRun);
      const resumed = await run(movedRun, "--resume");
      assertEquals(resumed, expected);
      await Deno.rename(movedRun, killed);

      const a = await readTree(whole);
      const b = await readTree(killed);
      assertEquals([...b.keys()].sort(), [...a.keys()].sort());
      assertSameFiles(b, a, "after resuming");
      const log = new TextDecoder().decode(a.get("log.jsonl")!).trim().split("\n");
      assertEquals(log.filter((l) => l.includes('"loss"')).length, 24);

      // --resume on a finished run: exit 0, nothing changes.
      const before = await mtimes(killed);
      const again = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", TRAIN_TS, ...args, "--resume"],
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdout: "null",
        stderr: "piped",
      }).output();
      assertEquals(again.code, 0, new TextDecoder().decode(again.stderr));
      assertEquals(await mtimes(killed), before);
      const after = await readTree(killed);
      assert([...b].every(([k, v]) => sameBytes(after.get(k)!, v)) && after.size === b.size);

      // Killed between writing metrics.json and removing its checkpoint (or inside an atomic
      // write): --resume clears what was left and changes nothing else.
      await Deno.writeTextFile(`${killed}/checkpoint.safetensors`, "left behind");
      await Deno.writeTextFile(`${killed}/metrics.json.tmp-0123abcd`, "{");
      assertEquals(await run(killed, "--resume"), expected);
      const cleared = await readTree(killed);
      assertEquals([...cleared.keys()].sort(), [...b.keys()].sort());
      assertSameFiles(cleared, b, "a finished run resumed");

      // A folder holding a run is refused without --resume or --overwrite.
      await assertRejects(() => run(killed), Error, "already holds a run");
      const refused = await runScript(TRAIN_TS, args);
      const stderr = refused.lines.join("\n");
      assertEquals(refused.code, 2);
      assert(stderr.startsWith(`train: ${killed} already holds a run`), stderr);
      assert(!stderr.includes("\n"), stderr);
      assertEquals(await mtimes(killed), before);
      // --resume with other settings is refused too, naming the flag.
      const seed = await assertRejects(() => run(killed, "--resume", "--seed", "7"), Error);
      assert(/other settings \(--seed \d+ in run\.json, 7 now\)$/.test(seed.message), seed.message);
      // The same model, data and folder under other spellings are the same settings.
      const respelled = ["--model", `${dir}//model/`, "--data", `${dir}/./data`];
      assertEquals(await run(`${killed}/`, "--resume", ...respelled), expected);
      assertEquals(await mtimes(killed), before);
      // ...judged by where the model was when the run started (run.json's real_dir), not by
      // where its first spelling leads now (another working folder, a link moved since).
      const runJson = await Deno.readTextFile(`${killed}/run.json`);
      const moved = JSON.parse(runJson);
      moved.resolved.model.real_dir = `${dir}/elsewhere`;
      await Deno.writeTextFile(`${killed}/run.json`, JSON.stringify(moved));
      const elsewhere = await assertRejects(() => run(killed, "--resume", ...respelled), Error);
      assert(elsewhere.message.includes(`(--model "${dir}/model" in run.json`), elsewhere.message);
      await Deno.writeTextFile(`${killed}/run.json`, runJson);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a task script's killed run goes on with --out and --resume alone",
  fn: () =>
    withTinyRun("ehft-task-resume-", [], async (dir, out) => {
      // A BERT typed at 1e-5: the script's recipe, also 1e-5, would train a BERT at 3e-5
      // (recipeLearningRate), and the resume would be refused as another --lr.
      const args = [
        ...["--model", `${dir}/model`, "--data", `${dir}/data`, "--out", out, "--lr", "1e-5"],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--max-steps", "100", "--eval-every", "0", "--checkpoint-every", "2"],
      ];
      assert(
        await runAndKill(args, async () => (await checkpointStage(out)) !== null, RTE_TS),
        "the run ended before it could be killed",
      );
      const { child, stderr } = spawnTrain(["--out", out, "--resume"], RTE_TS);
      const text = await stderr;
      assertEquals((await child.status).code, 0, text);
      assert(text.includes(`--resume: the settings recorded in ${out}/run.json\n`), text);
      assert(/^rte: 64 train and 32 val examples .*\nresumed at step \d+ /m.test(text), text);
      const settings = JSON.parse(await Deno.readTextFile(`${out}/run.json`)).settings;
      assertEquals([settings.lr, settings.maxSteps, settings.strategy], [1e-5, 100, "ft"]);
      const steps = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n")
        .filter((l) => l.includes('"loss"'));
      assertEquals(steps.length, 100);
      assert(await exists(`${out}/metrics.json`));
    }),
});

Deno.test({
  name:
    "train --seeds: a summary that cannot be written says the run is kept, and --resume ends it",
  fn: () =>
    withTinyRun("ehft-train-summary-", [], async (dir, out) => {
      const args = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", out],
        ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "2", "--seeds", "2"],
        "--no-autotune",
      ];
      // The summary metrics.json may not be made (as a full disk or a read-only folder would
      // refuse it); each seed's own results are written.
      const denied = spawnTrain(args, TRAIN_TS, [`--deny-write=${out}/metrics.json`]);
      const last = (await denied.stderr).trim().split("\n").at(-1)!;
      assertEquals((await denied.child.status).code, 1, last);
      assert(
        last.startsWith(`train: ${out}/metrics.json: write failed: `) &&
          /; the run in \S+ is kept; once it can be written, continue with: deno run -A \S*train\.ts .* --resume$/
            .test(last),
        last,
      );
      assert(await exists(`${out}/seed-43/metrics.json`));
      const { child, stderr } = spawnTrain(["--out", out, "--resume"]);
      assertEquals((await child.status).code, 0, await stderr);
      assert(await exists(`${out}/metrics.json`));
      // A write that fails inside a seed's training (its model): what was kept and the command,
      // said once (runTraining's own wrapping said the command a second time).
      const one = `${dir}/one-seed`;
      const model = spawnTrain(
        [
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", one],
          ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "2", "--no-autotune"],
        ],
        TRAIN_TS,
        [`--deny-write=${one}/model`],
      );
      const said = (await model.stderr).trim().split("\n").at(-1)!;
      assertEquals((await model.child.status).code, 1, said);
      assertEquals(said.split("continue with").length, 2, said);
    }),
});

Deno.test({
  name:
    "train: SIGTERM mid-run checkpoints that step; the resumed run ends as an uninterrupted one",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // A scheduler's time limit sends SIGTERM, then SIGKILL after a grace period: the run stopped
    // at once, losing every step since its last periodic checkpoint (here: none is written).
    await withTinyRun("ehft-train-sigterm-", ["--max-steps", "400"], async (dir, out, run) => {
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--eval-every", "0", "--max-steps", "400", "--checkpoint-every", "0"],
      ];
      const { child, stderr } = spawnTrain([...common, "--out", out]);
      // Training has begun once the first block of steps is logged.
      const logged = async () =>
        (await Deno.readTextFile(`${out}/log.jsonl`).catch(() => "")).includes('"loss"');
      while (!(await logged())) await new Promise((r) => setTimeout(r, 10));
      const logged32 = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").length;
      child.kill("SIGTERM");
      assertEquals((await child.status).code, 143);
      const lines = (await stderr).trim().split("\n");
      assert(lines.some((l) => l.startsWith("train: SIGTERM: stopping once this step is done")));
      const { step } = await trainingState(out);
      // Taken at the end of the step it came in (it waited for the next block of 32 log lines).
      assert(step > 0 && step < logged32 + 32, `checkpoint at step ${step}, ${logged32} logged`);
      assert(
        lines.at(-1)!.includes(`the last good checkpoint (step ${step}) is kept`),
        lines.at(-1),
      );
      assert(!(await exists(`${out}/metrics.json`)));
      const resumed = await run("--resume", "--checkpoint-every", "0");
      const whole = `${dir}/whole`;
      const { config } = parseTrainArgs([...common, "--out", whole]);
      assertEquals(resumed, await runTraining(config, { task: rte, quiet: true }));
      assertSameFiles(await readTree(out), await readTree(whole), "after the SIGTERM's resume");
    });
  },
});

Deno.test({
  name:
    "train: a SIGTERM in a step that ends with an evaluation, Stage 1's save or the run's end " +
    "checkpoints before it; the resumed run does it first and ends as an uninterrupted one",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // The step's end was done first (the run's last evaluation, and the model's save, too): a
    // long dev evaluation could outlast a scheduler's grace period, and the SIGKILL lost every
    // step since the last periodic checkpoint. A --seeds run's next seed is never started.
    const cases: { name: string; flags: string[]; place: Record<string, unknown> }[] = [
      {
        name: "a periodic evaluation",
        flags: ["--strategy", "ft", "--max-steps", "3", "--eval-every", "1"],
        place: { stage: 0, stageStep: 1, step: 1 },
      },
      {
        name: "Stage 1's end (its save, no evaluation)",
        flags: ["--strategy", "ehft", "--max-steps", "10", "--eval-every", "0"],
        place: { stage: 0, stageStep: 1, step: 1 },
      },
      {
        name: "Stage 1's end with its evaluation",
        flags: ["--strategy", "ehft", "--max-steps", "10", "--eval-every", "1"],
        place: { stage: 0, stageStep: 1, step: 1 },
      },
      {
        name: "an f16 evaluation of a step in parts (--grad-accum)",
        flags: [
          ...["--strategy", "ft", "--max-steps", "2", "--eval-every", "1"],
          ...["--precision", "f16", "--grad-accum", "2"],
        ],
        place: { stage: 0, stageStep: 1, step: 1 },
      },
      {
        name: "a seed's last step (the run's end), of two seeds",
        flags: ["--strategy", "ft", "--max-steps", "1", "--eval-every", "0", "--seeds", "2"],
        place: { stage: 0, stageStep: 1, step: 1 },
      },
    ];
    for (const c of cases) {
      await withTinyRun("ehft-train-sigterm-owed-", [], async (dir, out) => {
        // Before the first stage's first step, and taken (a signal comes a little later).
        const script = await writeSignalScript(
          dir,
          `if (!config.resume && index === 0) {
    Deno.kill(Deno.pid, "SIGTERM");
    while (!stopRequested()) await new Promise((r) => setTimeout(r, 1));
  }`,
        );
        const common = [
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
          ...["--batch-size", "8", ...c.flags],
        ];
        const script_ = (...more: string[]) =>
          runScript(script, [...common, "--out", out, ...more]);
        const stopped = await script_();
        assertEquals(stopped.code, 143, `${c.name}: ${stopped.lines.join(" | ")}`);
        assert(
          stopped.lines.at(-1)!.startsWith("t: terminated by SIGTERM; "),
          stopped.lines.at(-1),
        );
        const seeds = c.flags.includes("--seeds");
        const first = seeds ? `${out}/seed-42` : out;
        const { version: _, adamStep: _a, adamApplied: _b, logLines, settingsSha256, ...state } =
          await trainingState(first) as Record<string, unknown>;
        assertEquals(state, { ...c.place, best: {}, last: null, owed: true }, c.name);
        assert(/^[0-9a-f]{64}$/.test(String(settingsSha256)), `${settingsSha256}`);
        // The step's line is in the log, what it ends with is not.
        const log = (await Deno.readTextFile(`${first}/log.jsonl`)).trim().split("\n");
        assertEquals(log.length, logLines, c.name);
        assert(log.every((l) => !l.includes('"metrics"')), `${c.name}: ${log.join(" | ")}`);
        assert(!(await exists(`${first}/stage1`)), `${c.name}: Stage 1's model was saved`);
        assert(!(await exists(`${first}/metrics.json`)), `${c.name}: the run ended`);
        if (seeds) assert(!(await exists(`${out}/seed-43`)), "seed 43 was started");

        const resumed = await script_("--resume");
        assertEquals(resumed.code, 0, `${c.name}: ${resumed.lines.join(" | ")}`);
        const whole = `${dir}/whole`;
        const { config } = parseTrainArgs([...common, "--out", whole]);
        await runTraining(config, { task: rte, quiet: true });
        assertSameFiles(await readTree(out), await readTree(whole), `${c.name}, resumed`);
      });
    }
  },
});

Deno.test({
  name:
    "train: a SIGTERM taken while the last step's GPU work is awaited checkpoints before its evaluation",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // The loop checks for a stop right after it hands a step to the GPU; a signal during the
    // step's GPU work reached its listener in the evaluation's wait for the step's results, and
    // the run's last step went on to its evaluation and saves, exit 0. Sent here from that wait.
    await withTinyRun("ehft-train-sigterm-in-gpu-", [], async (dir, out) => {
      const url = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
      const script = `${dir}/in_gpu.ts`;
      await Deno.writeTextFile(
        script,
        `import { parseTrainArgs } from ${url("../train/config.ts")};
import { runTraining } from ${url("../train/run.ts")};
import { Trainer } from ${url("../train/trainer.ts")};
import { interruptedMessage, stopRequested, stopWithWord } from ${url("../train/run_faults.ts")};
import { rte } from ${url("../tasks/rte.ts")};
stopWithWord("t", interruptedMessage);
const take = Trainer.prototype.takeStats;
let sent = false;
Trainer.prototype.takeStats = async function () {
  const stats = await take.call(this);
  if (!sent && !parseTrainArgs(Deno.args).config.resume) {
    sent = true;
    Deno.kill(Deno.pid, "SIGTERM");
    while (!stopRequested()) await new Promise((r) => setTimeout(r, 1));
  }
  return stats;
};
const { config } = parseTrainArgs(Deno.args);
await runTraining(config, { task: rte, quiet: true });
`,
      );
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--max-steps", "1", "--eval-every", "0"],
      ];
      const stopped = await runScript(script, [...common, "--out", out]);
      assertEquals(stopped.code, 143, stopped.lines.join(" | "));
      const state = await trainingState(out) as Record<string, unknown>;
      assertEquals([state.step, state.owed], [1, true]);
      assert(!(await exists(`${out}/metrics.json`)), "the run ended");
      const resumed = await runScript(script, [...common, "--out", out, "--resume"]);
      assertEquals(resumed.code, 0, resumed.lines.join(" | "));
      assert(await exists(`${out}/metrics.json`), "the resumed run did not end");
    });
  },
});

Deno.test({
  name: "train: a SIGTERM is taken at the end of the step it came in, not at a log block's",
  fn: async () => {
    // Its listener ran only at the loop's next real wait (a log block's read every 32 steps, an
    // evaluation): a 30-step run without evaluations ran to its end and exited 0.
    await withTinyRun("ehft-train-sigterm-soon-", [], async (dir, out) => {
      // Sent as the first step starts; not waited for.
      const script = await writeSignalScript(dir, `Deno.kill(Deno.pid, "SIGTERM");`);
      const { code, lines } = await runScript(script, [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--max-steps", "30", "--eval-every", "0", "--checkpoint-every", "0", "--out", out],
      ]);
      assertEquals(code, 143, lines.join(" | "));
      const { step } = await trainingState(out);
      // The first step's end; a second's at most, should the signal come late.
      assert(step <= 2, `checkpoint at step ${step}`);
    });
  },
});

Deno.test({
  name: "train --resume: a checkpoint missing a tensor the run trains is refused, naming it",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // One without the head, or AdamW's moments, resumed from the pretrained weights and zero
    // moments, and finished with exit status 0.
    // Stage 1 (one step of EH-FT/BitFit) checkpointed, then a failure as Stage 2 starts.
    const flags = [
      ...["--strategy", "ehft", "--peft", "bitfit", "--max-steps", "10"],
      ...["--checkpoint-every", "1"],
    ];
    await withTinyRun("ehft-train-cut-checkpoint-", flags, async (_dir, out, run, stopAtStage2) => {
      await stopAtStage2();
      const path = `${out}/checkpoint.safetensors`;
      const whole = await Deno.readFile(path);
      for (const name of ["param/head.dense.bias", "adam_m/head.dense.bias"]) {
        await Deno.writeFile(path, whole);
        await rewriteSafetensors(path, (_, tensors) => {
          tensors.delete(name);
          tensors.delete(name.replace("adam_m/", "adam_v/"));
        });
        await assertRejects(
          () => run("--resume"),
          Error,
          `${path}: no "${name}", which the run trains (the checkpoint is not whole: ` +
            "--overwrite starts the run again)",
        );
      }
      // run.json's settings edited since the checkpoint (here its lr, typed to match): refused
      // (it resumed under the edited lr, a run of neither).
      await Deno.writeFile(path, whole);
      const runJson = await Deno.readTextFile(`${out}/run.json`);
      const record = JSON.parse(runJson);
      const lr = record.settings.lr * 2;
      record.settings.lr = lr;
      await Deno.writeTextFile(`${out}/run.json`, JSON.stringify(record));
      await assertRejects(
        () => run("--lr", String(lr), "--resume"),
        Error,
        `${path}: written under other settings than ${out}/run.json records now`,
      );
      await Deno.writeTextFile(`${out}/run.json`, runJson);
      // As it was written, it resumes.
      await Deno.writeFile(path, whole);
      await run("--resume");
      assert(await exists(`${out}/metrics.json`));
    });
  },
});

Deno.test({
  name: "train: a stderr whose reader is gone (2>&1 | head) silences the progress, not the run",
  fn: async () => {
    await withTinyRun("ehft-train-epipe-", [], async (dir, out) => {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...["run", "-A", TRAIN_TS, "--task", "rte", "--model", `${dir}/model`],
          ...["--data", `${dir}/data`, "--out", out, "--strategy", "ft", "--batch-size", "8"],
          ...["--max-steps", "70", "--eval-every", "10"],
        ],
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      // The first line read, the pipe closes: every later progress write fails (EPIPE). It
      // threw out of the training loop, and the run ended with status 1 and no word.
      const reader = child.stderr.getReader();
      await reader.read();
      await reader.cancel();
      assertEquals((await child.status).code, 0);
      assert(await exists(`${out}/metrics.json`), "the run finished");
    });
  },
});

for (
  const [signal, how, code] of [
    ["SIGINT", "interrupted", 130],
    ["SIGTERM", "terminated by SIGTERM", 143], // a scheduler's time limit: it died without a word
  ] as const
) {
  Deno.test({
    name: `train: ${signal} stops the run with status ${code} and the command that resumes it`,
    fn: async () => {
      await withTinyRun("ehft-train-sigint-", [], async (dir, out) => {
        const args = [
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", out],
          ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "400", "--eval-every", "0"],
          ...["--checkpoint-every", "2", "--max-length", "100000"],
        ];
        const { child, stderr } = spawnTrain(args);
        while ((await checkpointStage(out)) === null) await new Promise((r) => setTimeout(r, 10));
        child.kill(signal);
        const status = await child.status;
        const text = await stderr;
        const last = text.trim().split("\n").at(-1)!;
        assertEquals(status.code, code, last);
        // The first line says how long the inputs are: the model's limit, not the flag's 100000.
        assert(
          /^rte: \d+ train and \d+ val examples of ≤ 33 tokens, 400 steps, on /m.test(text),
          text,
        );
        assert(
          new RegExp(
            `^train: ${how}; the last good checkpoint \\(step \\d+\\) is kept in .+; to go on: ` +
              "deno run -A .+ --resume$",
          ).test(last),
          last,
        );
        assert(await exists(`${out}/checkpoint.safetensors`));
        assert(!(await exists(`${out}/metrics.json`)));
      });
    },
  });
}

Deno.test({
  name: "train --precision f16: loss scale in the log, a killed run resumes bit for bit",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-f16-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "bitfit"],
        ...["--batch-size", "8", "--max-steps", "12", "--stage1-ratio", "0.25"],
        ...["--eval-every", "0", "--checkpoint-every", "2", "--precision", "f16"],
      ];
      const run = async (out: string, ...more: string[]) => {
        const { config } = parseTrainArgs([...common, "--out", out, ...more]);
        return await runTraining(config, { task: rte, quiet: true });
      };
      const whole = `${dir}/whole`;
      const expected = await run(whole);
      const log = (await readLogRecords(whole)).filter((l) => "loss" in l);
      assertEquals(log.length, 12);
      assert(log.every((l) => l.loss_scale === 2 ** 16 && l.skipped === false), "loss scale");

      // Killed in Stage 2 after a checkpoint, resumed: the same files, bit for bit (the loss
      // scale's state is in the checkpoint).
      const killed = `${dir}/killed`;
      const args = [...common, "--out", killed];
      assert(
        await runAndKill(args, async () => (await checkpointStage(killed)) === 1),
        "the run ended before it could be killed",
      );
      // The checkpoint counts AdamW's updates (none skipped here); one from before they were
      // counted resumes as well, and the count is what the bias correction goes on from.
      const state = await trainingState(killed);
      assertEquals(state.adamApplied, state.adamStep);
      const older = `${dir}/older`, skipped = `${dir}/skipped`;
      await copyTree(killed, older);
      await copyTree(killed, skipped);
      await rewriteSafetensors(`${older}/checkpoint.safetensors`, (metadata) => {
        const { adamApplied: _, ...before } = JSON.parse(metadata.ehft_training_state);
        metadata.ehft_training_state = JSON.stringify(before);
      });
      await rewriteSafetensors(`${skipped}/checkpoint.safetensors`, (metadata) => {
        const s = JSON.parse(metadata.ehft_training_state);
        metadata.ehft_training_state = JSON.stringify({ ...s, adamApplied: s.adamStep - 1 });
      });
      assertEquals(await run(older, "--resume"), expected);
      assertSameFiles(await readTree(older), await readTree(whole), "an older checkpoint");
      await run(skipped, "--resume");
      const weights = "model/model.safetensors";
      const moved = (await readTree(skipped)).get(weights)!;
      assert(!sameBytes(moved, (await readTree(whole)).get(weights)!), "one update fewer");
      assertEquals(await run(killed, "--resume"), expected);
      const a = await readTree(whole);
      const b = await readTree(killed);
      assertEquals([...b.keys()].sort(), [...a.keys()].sort());
      assertSameFiles(b, a, "after resuming");
      await assertRejects(
        () => run(killed, "--resume", "--precision", "f32"),
        Error,
        '--precision "f16" in run.json, "f32" now',
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "train --resume: from a checkpoint at Stage 1's last step, the run ends as an uninterrupted one",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-boundary-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      // Stage 1 is steps 1-2, so its last step is a checkpoint step as well.
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "bitfit"],
        ...["--batch-size", "8", "--max-steps", "8", "--stage1-ratio", "0.25"],
        ...["--eval-every", "0", "--checkpoint-every", "2"],
      ];
      const run = async (out: string, more: string[], options: Partial<RunOptions> = {}) => {
        const { config } = parseTrainArgs([...common, "--out", out, ...more]);
        return await runTraining(config, { task: rte, quiet: true, ...options });
      };
      // What a run killed as Stage 2 begins leaves: copied from the uninterrupted run then.
      const whole = `${dir}/whole`;
      const killed = `${dir}/killed`;
      const expected = await run(whole, [], {
        onStageStart: async ({ index }) => {
          if (index !== 1) return;
          await copyTree(whole, killed);
        },
      });
      const reader = await openSafetensors(`${killed}/checkpoint.safetensors`);
      reader.close();
      const state = JSON.parse(reader.metadata.ehft_training_state);
      assertEquals([state.stage, state.stageStep, state.step], [0, 2, 2]);
      // A checkpoint that is not one of this run's places, or holds a NaN: refused, naming it.
      const path = `${killed}/checkpoint.safetensors`;
      const original = await Deno.readFile(path);
      await rewriteSafetensors(path, (metadata) => {
        const moved = { ...JSON.parse(metadata.ehft_training_state), stage: 5, step: 14 };
        metadata.ehft_training_state = JSON.stringify(moved);
      });
      await assertRejects(
        () => run(killed, ["--resume"]),
        Error,
        `${path}: its training state (stage 5, step 2 of it, 14 in all) is not a place in this ` +
          "run (stages of 2, 6 steps)",
      );
      let damaged = "";
      await rewriteSafetensors(path, (_, tensors) => {
        damaged = [...tensors.keys()].find((n) => n.startsWith("param/head."))!;
        (tensors.get(damaged)!.data as Float32Array)[0] = NaN;
      });
      await assertRejects(
        () => run(killed, ["--resume"]),
        Error,
        `${path}: tensor "${damaged}" holds NaN (element 0 of `,
      );
      // An f32 run skips no step: a count of fewer updates is a damaged checkpoint.
      await Deno.writeFile(path, original);
      await rewriteSafetensors(path, (metadata) => {
        const fewer = { ...JSON.parse(metadata.ehft_training_state), adamApplied: 1 };
        metadata.ehft_training_state = JSON.stringify(fewer);
      });
      await assertRejects(
        () => run(killed, ["--resume"]),
        Error,
        `${path}: its training state has adamApplied 1 and adamStep 2, but a run without loss ` +
          "scaling skips no step",
      );
      await Deno.writeFile(path, original);
      // run.json records where the run started; a resume elsewhere says so, and goes on.
      const runJson = await Deno.readTextFile(`${killed}/run.json`);
      const started = JSON.parse(runJson).environment;
      assertEquals(started.deno, Deno.version.deno);
      assertEquals(typeof started.adapter.description, "string");
      const elsewhere = `${dir}/elsewhere`;
      await copyTree(killed, elsewhere);
      const moved = JSON.parse(runJson);
      moved.environment.adapter.description = "Another GPU";
      await Deno.writeTextFile(`${elsewhere}/run.json`, JSON.stringify(moved));
      const notes = await capturingErrors(() => run(elsewhere, ["--resume"]));
      assertEquals(notes.result, expected);
      assertEquals(notes.lines.length, 1, notes.lines.join("\n"));
      assert(
        notes.lines[0].startsWith(
          `--resume: ${elsewhere}/run.json records a start on Another GPU, Deno ${Deno.version.deno}, `,
        ),
        notes.lines[0],
      );
      // ...and keeps where it went on, for report.ts.
      const resumedOn = JSON.parse(await Deno.readTextFile(`${elsewhere}/run.json`)).resumed_on;
      assertEquals(resumedOn.length, 1);
      assertEquals(resumedOn[0].adapter.description, started.adapter.description);
      const same = await capturingErrors(() => run(killed, ["--resume"]));
      assertEquals(same.result, expected);
      assertEquals(same.lines, [], "resumed where it started: no note");
      assertSameFiles(await readTree(killed), await readTree(whole), "resumed at Stage 1's end");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/**
 * Sets a checkpoint's f16 loss scale (as rewriteSafetensors hands over its metadata and tensors),
 * its SHA-256 too; returns the scale it replaced.
 */
function setLossScale(
  metadata: Record<string, string>,
  tensors: Map<string, LoadedTensor>,
  value: number,
): number {
  const scale = Float32Array.from(tensors.get("loss_scale")!.data as Float32Array);
  const was = scale[0];
  scale[0] = value;
  tensors.set("loss_scale", { dtype: "F32", shape: [scale.length], data: scale });
  const sums = JSON.parse(metadata.ehft_tensors_sha256);
  sums.loss_scale = createHash("sha256").update(new Uint8Array(scale.buffer)).digest("hex");
  metadata.ehft_tensors_sha256 = JSON.stringify(sums);
  return was;
}

/**
 * A fresh folder with the tiny model, the marker data and a narrow head; `run(...more)` trains ft
 * for 2 steps (with `flags`) into `out`, or resumes it with "--resume". Removed afterwards.
 */
async function withTinyRun(
  prefix: string,
  flags: string[],
  fn: (
    dir: string,
    out: string,
    run: (...more: string[]) => Promise<unknown>,
    stopAtStage2: () => Promise<void>,
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await writeTinyBert(`${dir}/model`, false);
    await writeMarkerData(`${dir}/data`);
    await writeNarrowHead(`${dir}/head.safetensors`);
    const out = `${dir}/run`;
    const start = (more: string[], options: Partial<RunOptions> = {}) => {
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--max-steps", "2", "--eval-every", "0", "--out", out, ...flags, ...more],
      ]);
      return runTraining(config, { task: rte, quiet: true, ...options });
    };
    const run = (...more: string[]) => start(more);
    // A two-stage run of `flags` stopped as its Stage 2 starts (Stage 1's checkpoint written).
    const stopAtStage2 = async () => {
      await assertRejects(
        () =>
          start([], {
            onStageStart: ({ index }) => {
              if (index === 1) throw new Error("stopped for the test");
            },
          }),
        Error,
        "stopped for the test",
      );
    };
    await fn(dir, out, run, stopAtStage2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "train --resume: the checkpoint's best scores and f16 loss scale come back with it",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // A resumed run that had already met its best dev score, and whose loss scale had backed
    // off, goes on from both: the uninterrupted tests never see them differ from a fresh start
    // (the marker task meets its best again; the scale stays at 2^16 without a skip).
    const flags = [
      ...["--strategy", "ehft", "--peft", "bitfit", "--max-steps", "4", "--stage1-ratio", "0.5"],
      ...["--stage1-lr", "1e-30", "--lr", "1e-30", "--checkpoint-every", "1", "--eval-every", "1"],
      ...["--precision", "f16"],
    ];
    await withTinyRun("ehft-train-resume-state-", flags, async (_dir, out, run, stopAtStage2) => {
      await stopAtStage2();
      // Stage 1's checkpoint, as if its run had scored 0.99 and backed its scale off to 1024.
      await rewriteSafetensors(`${out}/checkpoint.safetensors`, (metadata, tensors) => {
        const state = JSON.parse(metadata.ehft_training_state);
        assertEquals(state.step, 2);
        metadata.ehft_training_state = JSON.stringify({ ...state, best: { accuracy: 0.99 } });
        assertEquals(setLossScale(metadata, tensors, 1024), 2 ** 16);
      });
      const metrics = await run("--resume") as { best: { accuracy: number } };
      const log = await readLogRecords(out);
      const steps = log.filter((l) => "loss" in l);
      assertEquals(steps.map((l) => [l.step, l.loss_scale]), [
        [1, 2 ** 16],
        [2, 2 ** 16],
        [3, 1024],
        [4, 1024],
      ]);
      const scores = log.filter((l) => l.stage === "stage2" && "metrics" in l);
      assert(scores.every((l) => l.metrics.accuracy < 0.99), JSON.stringify(scores));
      assertEquals(metrics.best.accuracy, 0.99, "metrics.json's best");
    });
  },
});

Deno.test({
  name: "train --resume: f16 skips in a row go on counting from the log's last ones",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // A run stopped after 49 skipped steps in a row stops at its next skip once resumed, as it
    // would have: counting from 0 again, a diverged run trained 50 more steps of nothing.
    const flags = [
      ...["--strategy", "ehft", "--peft", "bitfit", "--max-steps", "52"],
      ...["--stage1-ratio", "0.9423", "--checkpoint-every", "49", "--precision", "f16"],
    ];
    await withTinyRun("ehft-train-resume-skips-", flags, async (_dir, out, run, stopAtStage2) => {
      await stopAtStage2();
      // Stage 1's 49 steps as if each had been skipped, and a loss scale at which the next
      // step's gradients overflow f16.
      const lines = await readLogRecords(out);
      assertEquals(lines.filter((l) => "loss" in l).length, 49);
      const skipped = lines.map((l) => "loss" in l ? { ...l, skipped: true } : l);
      await Deno.writeTextFile(
        `${out}/log.jsonl`,
        skipped.map((l) => JSON.stringify(l)).join("\n") + "\n",
      );
      await rewriteSafetensors(
        `${out}/checkpoint.safetensors`,
        (metadata, tensors) => void setLossScale(metadata, tensors, 2 ** 30),
      );
      await assertRejects(
        () => run("--resume"),
        Error,
        "step 50 (stage2): 50 steps in a row had non-finite gradients",
      );
    });
  },
});

Deno.test({
  name: "train --seeds: a seed folder another train.ts is running in is refused",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // `train.ts --out <out>/seed-43 --resume` beside the --seeds run locked only its own --out,
    // and both trained seed 43 into one folder.
    await withTinyRun("ehft-train-seed-lock-", ["--seeds", "2"], async (_dir, out, run) => {
      // Seed 43's folder is taken by another process as soon as it is made.
      let other: Deno.FsFile | null | "held" = null;
      const mkdir = Deno.mkdir;
      Deno.mkdir = async (path: string | URL, options?: Deno.MkdirOptions) => {
        await mkdir(path, options);
        if (String(path) === `${out}/seed-43` && other === null) {
          other = await lockFolder(String(path));
        }
      };
      try {
        await assertRejects(
          () => run(),
          Error,
          `${out}/seed-43 is in use: another train.ts is running in it (wait for it to end, ` +
            "then --resume)",
        );
      } finally {
        Deno.mkdir = mkdir;
        if (other !== null && other !== "held") (other as Deno.FsFile).close();
      }
      assert(await exists(`${out}/seed-42/metrics.json`), "seed 42 trained");
      assert(!(await exists(`${out}/seed-43/run.json`)), "seed 43 left alone");
      await run("--resume");
      assert(await exists(`${out}/metrics.json`), "the run goes on once the folder is free");
    });
  },
});

Deno.test({
  name: "train --resume on a folder that holds no run says so, and starts one",
  ...IN_PROCESS_GPU,
  fn: async () => {
    await withTinyRun("ehft-train-fresh-resume-", [], async (dir, out) => {
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "1", "--eval-every", "0"],
        ...["--out", out, "--resume"],
      ]);
      const { lines } = await capturingErrors(() => runTraining(config, { task: rte }));
      assert(lines.includes(`--resume: ${out} holds no run yet: starting one`), lines.join("\n"));
      assert(await exists(`${out}/metrics.json`));
    });
  },
});

Deno.test({
  name: "train --resume: a model or --head changed in place since the start is refused",
  ...IN_PROCESS_GPU,
  fn: async () => {
    await withTinyRun("ehft-train-changed-", [], async (dir, out, run) => {
      const expected = await run();
      // Unfinished again (as if killed before its first checkpoint): --resume checks its inputs.
      const unfinish = () => Deno.remove(`${out}/metrics.json`);
      await unfinish();
      const config = await Deno.readTextFile(`${dir}/model/config.json`);
      const edited = { ...JSON.parse(config), hidden_dropout_prob: 0.3 };
      await Deno.writeTextFile(`${dir}/model/config.json`, JSON.stringify(edited));
      await assertRejects(
        () => run("--resume"),
        Error,
        `--resume: the model in ${dir}/model is not the one ${out} was started on (its config, ` +
          `tokenizer or weights changed; --overwrite to restart on it)`,
      );
      await Deno.writeTextFile(`${dir}/model/config.json`, config);
      const weights = await Deno.readFile(`${dir}/model/model.safetensors`);
      const changed = weights.slice();
      changed[changed.length - 1] ^= 1;
      await Deno.writeFile(`${dir}/model/model.safetensors`, changed);
      await assertRejects(() => run("--resume"), Error, "is not the one");
      await Deno.writeFile(`${dir}/model/model.safetensors`, weights);
      await writeNarrowHead(`${dir}/head.safetensors`, 64, 8);
      await assertRejects(
        () => run("--resume"),
        Error,
        `--resume: the --head file is not the one ${out} was started on`,
      );
      await writeNarrowHead(`${dir}/head.safetensors`);
      // As it was: the run goes on (here, from its start) to the same end.
      assertEquals(await run("--resume"), expected);
    });
  },
});

Deno.test({
  name:
    "train --resume: a run.json from before a fingerprint, --precision or constant's warmup resumes",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // Runs started by earlier versions lack what later ones record; each absence is accepted as
    // what those versions did (f32; no warmup to differ by), not refused as another setting.
    const constant = ["--schedule", "constant", "--warmup-ratio", "0"];
    await withTinyRun("ehft-train-old-run-", constant, async (_dir, out, run) => {
      const expected = await run();
      await Deno.remove(`${out}/metrics.json`);
      const path = `${out}/run.json`;
      const old = JSON.parse(await Deno.readTextFile(path));
      delete old.settings.precision;
      delete old.resolved.task.train_sha256;
      delete old.resolved.task.dev_sha256;
      delete old.resolved.model.sha256;
      delete old.resolved.head_sha256;
      delete old.resolved.schedule.constant_warmup;
      delete old.resolved.schedule.warmup_steps;
      await Deno.writeTextFile(path, JSON.stringify(old));
      assertEquals(await run("--resume"), expected);
    });
  },
});

Deno.test({
  name: "train --overwrite: the old run stays until the new one can start, and goes entirely",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-overwrite-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const common = [
        ...["--task", "rte", "--data", `${dir}/data`, "--head", `${dir}/head.safetensors`],
        ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "2", "--eval-every", "0"],
      ];
      const run = async (out: string, ...more: string[]) => {
        const { config } = parseTrainArgs([...common, "--out", out, ...more]);
        return await runTraining(config, { task: rte, quiet: true });
      };
      const out = `${dir}/run`;
      await run(out, "--model", `${dir}/model`);
      // What an --analysis, --predict-test or LoRA (adapter/) run adds, and a file of the user's.
      await Deno.mkdir(`${out}/analysis`);
      await Deno.writeTextFile(`${out}/analysis/analysis.json`, "{}");
      await Deno.mkdir(`${out}/adapter`);
      await Deno.writeTextFile(`${out}/adapter/adapter_config.json`, "{}");
      await Deno.writeTextFile(`${out}/RTE.jsonl`, "{}\n");
      await Deno.writeTextFile(`${out}/notes.txt`, "mine\n");
      const before = await readTree(out);

      // A bad model, data folder or head: refused, and the old run is all there. Weights or a
      // head that hold a NaN too (found at the upload, after the old run had gone), and a head
      // given as a folder (it was "Is a directory").
      await copyTree(`${dir}/model`, `${dir}/nan-model`);
      const poisoned = (path: string, name: (n: string) => boolean) =>
        rewriteSafetensors(path, (_, tensors) => {
          const [key, t] = [...tensors].find(([n]) => name(n))!;
          const data = Float32Array.from(t.data as Float32Array);
          data[1] = NaN;
          tensors.set(key, { ...t, dtype: "F32", data });
        });
      await poisoned(
        `${dir}/nan-model/model.safetensors`,
        (n) => n.endsWith("output.dense.weight"),
      );
      await Deno.copyFile(`${dir}/head.safetensors`, `${dir}/nan-head.safetensors`);
      await poisoned(`${dir}/nan-head.safetensors`, (n) => n === "head.dense.weight");
      const bad: [string[], string][] = [
        [["--model", `${dir}/nowhere`], "nowhere"],
        [["--model", `${dir}/model`, "--data", `${dir}/empty`], "empty"],
        [["--model", `${dir}/model`, "--head", `${dir}/model/config.json`], "config.json"],
        [["--model", `${dir}/nan-model`], "holds NaN (element 1 of"],
        [["--model", `${dir}/model`, "--head", `${dir}/nan-head.safetensors`], "holds NaN"],
        [["--model", `${dir}/model`, "--head", `${dir}/model`], `--head ${dir}/model is a folder`],
      ];
      await Deno.mkdir(`${dir}/empty`);
      for (const [more, said] of bad) {
        await assertRejects(() => run(out, ...more, "--overwrite"), Error, said);
        assertSameFiles(await readTree(out), before, `after --overwrite ${more.join(" ")}`);
      }

      // An input inside what --overwrite removes: refused before anything goes.
      await assertRejects(
        () =>
          run(
            out,
            "--model",
            `${dir}/model`,
            "--head",
            `${out}/model/model.safetensors`,
            "--overwrite",
          ),
        Error,
        `--head ${out}/model/model.safetensors is inside the run's model in ${out}, which ` +
          "--overwrite removes",
      );
      assertSameFiles(await readTree(out), before, "after --overwrite with --head inside it");
      await assertRejects(
        () => run(out, "--model", `${out}/model`, "--overwrite"),
        Error,
        `--model ${out}/model is the run's model in ${out}, which --overwrite removes: copy it ` +
          "elsewhere first, or choose another --out",
      );

      // A good one replaces every file of the old run, and only those: with them go the
      // temporaries a killed write of the old run left, not those of a run kept inside it or
      // another program's write in progress.
      await Deno.writeTextFile(`${out}/checkpoint.safetensors.tmp-0123abcd`, "half");
      await Deno.writeTextFile(`${out}/predictions.jsonl.tmp-a1b2c3d4`, "predict.ts writing");
      await Deno.mkdir(`${out}/inner`);
      await Deno.writeTextFile(`${out}/inner/checkpoint.safetensors.tmp-89abcdef`, "in progress");
      await run(out, "--model", `${dir}/model`, "--overwrite", "--seed", "7");
      assert(!(await exists(`${out}/analysis`)), "the old analysis/ is left");
      assert(!(await exists(`${out}/adapter`)), "the old adapter/ is left");
      assert(!(await exists(`${out}/RTE.jsonl`)), "the old submission file is left");
      assertEquals(await Deno.readTextFile(`${out}/notes.txt`), "mine\n");
      const entries: string[] = [];
      for await (const e of Deno.readDir(out)) entries.push(e.name);
      assertEquals(entries.filter((n) => /tmp-|^\.removing-/.test(n)), [
        "predictions.jsonl.tmp-a1b2c3d4",
      ]);
      await Deno.remove(`${out}/predictions.jsonl.tmp-a1b2c3d4`);
      assertEquals(
        await Deno.readTextFile(`${out}/inner/checkpoint.safetensors.tmp-89abcdef`),
        "in progress",
      );
      await Deno.remove(`${out}/inner`, { recursive: true });
      const settings = JSON.parse(await Deno.readTextFile(`${out}/run.json`)).settings;
      assertEquals(settings.seed, 7);

      // Run files without run.json are not train.ts's: neither replaced nor continued.
      const foreign = `${dir}/foreign`;
      await Deno.mkdir(`${foreign}/model`, { recursive: true });
      await Deno.writeTextFile(`${foreign}/model/weights.bin`, "mine");
      for (const flag of ["--overwrite", "--resume"]) {
        await assertRejects(
          () => run(foreign, "--model", `${dir}/model`, flag),
          FlagError,
          `${foreign} holds model but no run.json, so it is not a run of train.ts`,
        );
        assertEquals(await Deno.readTextFile(`${foreign}/model/weights.bin`), "mine");
      }
      // --resume with --out alone: said so (it was "--task is required"), exit 2.
      const alone = spawnTrain(["--out", foreign, "--resume"]);
      const aloneSaid = (await alone.stderr).trim();
      assertEquals([(await alone.child.status).code, aloneSaid], [
        2,
        `train: --resume: ${foreign} holds model but no run.json, so there are no recorded ` +
        "settings to go on with (a run's run.json is written first): choose another --out",
      ]);

      // --resume on other data (a killed run here: a finished one is done) is refused; the
      // fingerprints of both splits are in run.json.
      const resolvedTask = JSON.parse(await Deno.readTextFile(`${out}/run.json`)).resolved.task;
      assert(/^[0-9a-f]{64}$/.test(resolvedTask.train_sha256), resolvedTask.train_sha256);
      assert(/^[0-9a-f]{64}$/.test(resolvedTask.dev_sha256), resolvedTask.dev_sha256);
      await Deno.rename(`${out}/metrics.json`, `${dir}/metrics.json`);
      const val = await Deno.readTextFile(`${dir}/data/val.jsonl`);
      await Deno.writeTextFile(`${dir}/data/val.jsonl`, val.replace('"label"', '"x": 1, "label"'));
      // (The same examples, written otherwise: still the same data.)
      await run(out, "--model", `${dir}/model`, "--resume", "--seed", "7");
      await Deno.rename(`${out}/metrics.json`, `${dir}/metrics.json`);
      await Deno.writeTextFile(`${dir}/data/val.jsonl`, val.split("\n").slice(1).join("\n"));
      await assertRejects(
        () => run(out, "--model", `${dir}/model`, "--resume", "--seed", "7"),
        Error,
        `--resume: the val split in ${dir}/data is not the data ${out} was started on`,
      );
      await Deno.writeTextFile(`${dir}/data/val.jsonl`, val);
      await Deno.rename(`${dir}/metrics.json`, `${out}/metrics.json`);

      // A multi-seed run: a seed not yet started is checked against its finished siblings.
      const seeds = `${dir}/seeds`;
      const seedsMetrics = await run(
        seeds,
        "--model",
        `${dir}/model`,
        "--seeds",
        "2",
        "--seed",
        "3",
      );
      await Deno.remove(`${seeds}/metrics.json`);
      await Deno.remove(`${seeds}/seed-4`, { recursive: true });
      const train = await Deno.readTextFile(`${dir}/data/train.jsonl`);
      await Deno.writeTextFile(`${dir}/data/train.jsonl`, train.split("\n").slice(1).join("\n"));
      await assertRejects(
        () => run(seeds, "--model", `${dir}/model`, "--seeds", "2", "--seed", "3", "--resume"),
        Error,
        `--resume: the train split in ${dir}/data is not the data ${seeds}/seed-3 was started on`,
      );
      await Deno.writeTextFile(`${dir}/data/train.jsonl`, train);
      // --overwrite of a multi-seed run: the first seed trains on what the checks prepared.
      assertEquals(
        await run(seeds, "--model", `${dir}/model`, "--seeds", "2", "--seed", "3", "--overwrite"),
        seedsMetrics,
      );
      // Killed inside the summary's atomic write: --resume writes it and clears the temporary.
      await Deno.remove(`${seeds}/metrics.json`);
      await Deno.writeTextFile(`${seeds}/metrics.json.tmp-0123abcd`, '{"fi');
      assertEquals(
        await run(seeds, "--model", `${dir}/model`, "--seeds", "2", "--seed", "3", "--resume"),
        seedsMetrics,
      );
      assert(!(await exists(`${seeds}/metrics.json.tmp-0123abcd`)), "the temporary is left");
      // Finished: a seed's killed write (here its model's) is cleared by --resume too.
      await Deno.writeTextFile(`${seeds}/seed-4/model/model.safetensors.tmp-89abcdef`, "half");
      assertEquals(
        await run(seeds, "--model", `${dir}/model`, "--seeds", "2", "--seed", "3", "--resume"),
        seedsMetrics,
      );
      assert(!(await exists(`${seeds}/seed-4/model/model.safetensors.tmp-89abcdef`)), "left");

      // A damaged run.json or metrics.json is named in the error.
      const resume = () => run(out, "--model", `${dir}/model`, "--resume", "--seed", "7");
      const damaged = [
        ["metrics.json", '{"final": ', "not valid JSON"],
        ["metrics.json", "[]", "not a JSON object (a run's metrics.json is one)"],
        // run.json is read first: metrics.json stays damaged.
        ["run.json", '{"settings": ', "not valid JSON"],
        ["run.json", "null", "not a JSON object (a run's run.json is one)"],
      ];
      for (const [file, text, problem] of damaged) {
        await Deno.writeTextFile(`${out}/${file}`, text);
        await assertRejects(resume, Error, `${out}/${file}: ${problem}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "train --resume: past Stage 1 with its stage1/ removed, says it cannot be made again",
  fn: async () => {
    // It finished without stage1/, saying nothing.
    await withTinyRun("ehft-train-stage1-gone-", [], async (dir, out) => {
      const script = await writeSignalScript(
        dir,
        `if (index === 1) Deno.kill(Deno.pid, "SIGTERM");`,
      );
      const { code, lines } = await runScript(script, [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--strategy", "ehft", "--peft", "bitfit", "--batch-size", "8", "--max-steps", "10"],
        ...["--eval-every", "0", "--checkpoint-every", "0", "--no-autotune", "--out", out],
      ]);
      assertEquals(code, 143, lines.join(" | "));
      assertEquals((await trainingState(out)).stage, 1);
      await Deno.remove(`${out}/stage1`, { recursive: true });
      const { child, stderr } = spawnTrain(["--out", out, "--resume"]);
      const said = await stderr;
      assertEquals((await child.status).code, 0, said);
      assert(
        said.includes(
          `--resume: ${out}/stage1 is missing (removed since?): Stage 1's snapshot cannot be made ` +
            "again",
        ),
        said,
      );
    });
  },
});

Deno.test({
  name:
    "train: --resume, and its --dry-run, from another working folder find a relative --model, " +
    "--data and --head; the dry run refuses what the resume would",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-train-cwd-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      await Deno.mkdir(`${dir}/elsewhere`);
      const spawn = (cwd: string, args: string[], denoFlags: string[] = []) =>
        new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", ...denoFlags, TRAIN_TS, ...args],
          cwd,
          env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        }).output();
      // Trained, then stopped by its model's write: its checkpoint is the run's last step.
      const started = await spawn(dir, [
        ...["--task", "rte", "--model", "model", "--data", "data", "--head", "head.safetensors"],
        ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "2", "--eval-every", "0"],
        ...["--checkpoint-every", "1", "--out", "run", "--no-autotune"],
      ], [`--deny-write=${dir}/run/model`]);
      assertEquals(started.code, 1, new TextDecoder().decode(started.stderr));
      // A dry run of the resume says what the resume would: ready, or refused as typed.
      const elsewhere = `${dir}/elsewhere`;
      const dry = await spawn(elsewhere, ["--out", `${dir}/run`, "--resume", "--dry-run"]);
      assertEquals(dry.code, 0, new TextDecoder().decode(dry.stderr));
      const said = new TextDecoder().decode(dry.stdout);
      assert(said.includes('"ready":true') && !said.includes("not in the Hugging Face"), said);
      const other = await spawn(elsewhere, [
        ...["--out", `${dir}/run`, "--resume", "--dry-run", "--seed", "7"],
      ]);
      assertEquals(other.code, 2);
      assert(
        new TextDecoder().decode(other.stderr).includes(
          `train: --resume: ${dir}/run was started with other settings (--seed 42 in run.json, ` +
            "7 now)",
        ),
      );
      const resumed = await spawn(elsewhere, ["--out", `${dir}/run`, "--resume"]);
      assertEquals(resumed.code, 0, new TextDecoder().decode(resumed.stderr));
      assert(await exists(`${dir}/run/model/model.safetensors`));
      assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/run/run.json`)).resolved.cwd, dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "runTraining: a setting left null (precision, f16Math) is recorded as its default, " +
    "which train.ts --resume reads back",
  ...IN_PROCESS_GPU,
  fn: () =>
    withTinyRun("ehft-train-null-", [], async (dir, out) => {
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--strategy", "ft", "--batch-size", "8", "--max-steps", "2", "--eval-every", "0"],
        ...["--out", out],
      ]);
      const loose = { ...config, precision: null, f16Math: null } as unknown as TrainConfig;
      await runTraining(loose, { task: rte, quiet: true });
      const { settings } = JSON.parse(await Deno.readTextFile(`${out}/run.json`));
      assertEquals([settings.precision, settings.f16Math], ["f32", false]);
      const { child, stderr } = spawnTrain(["--out", out, "--resume"]);
      assertEquals((await child.status).code, 0, await stderr);
    }),
});

Deno.test("train: --resume with a typed setting not the run's names it, not a flag it implies", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-train-typed-" });
  try {
    // An f16 --f16-math run resumed with --precision f32 was refused as "--f16-math needs
    // --precision f16", a flag the user had not typed.
    const { config } = parseTrainArgs([
      ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", dir],
      ...["--precision", "f16", "--f16-math", "--max-steps", "4"],
    ]);
    await Deno.writeTextFile(`${dir}/run.json`, JSON.stringify({ settings: runSettings(config) }));
    const args = ["--out", dir, "--resume", "--precision", "f32"];
    const recorded = (await recordedSettings(args))!;
    const e = (() => {
      try {
        parseOverRecorded(args, {}, recorded, () => undefined);
      } catch (e) {
        return e as Error;
      }
      return null;
    })();
    assert(e instanceof FlagError, String(e));
    assertEquals(
      e.message,
      `--resume: ${dir} was started with other settings (--precision "f16" in run.json, "f32" now)`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
