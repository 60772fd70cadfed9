// What a training run says when it cannot go on: a non-finite loss or gradient, a GPU too small
// for the batch, a lost device. Each becomes one message that names the step or the tensor, says
// what was kept (the last checkpoint is never overwritten by a bad step: checkpoints are written
// after the step statistics are checked), and says how to go on.

import { allocation, DeviceLostError, GpuError } from "../kernels/device.ts";
import type { StepStats } from "./trainer.ts";
import { microBatchSize } from "./config.ts";
import { CHECKPOINT_FILE } from "./training_checkpoint.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { removePendingTemporaries } from "../model/atomic_write.ts";

/** A run stopped by a fault; its message is the whole story, on one line. */
export class RunFaultError extends Error {
  /** The index, in the stats checked (checkStepStats), of the step that stopped the run. */
  readonly at?: number;
  /** Takes the message as it is; `at` as above. */
  constructor(message: string, at?: number) {
    super(message);
    this.name = "RunFaultError";
    if (at !== undefined) this.at = at;
  }
}

/** f16 runs: this many skipped steps in a row mean the model diverged, not an overflow. */
export const MAX_CONSECUTIVE_SKIPS = 50;

/** Where a run stands, for the messages. */
export interface RunPlace {
  dir: string;
  /** The checkpoint file and the step it holds, or null when none was written yet. */
  checkpoint: { path: string; step: number } | null;
}

/**
 * The command that continues this run: the current one, with --resume (and no --overwrite). A
 * program of the user's own that calls runTraining (not train.ts or a task script) may not read
 * its command line: it is told to run with `resume: true` as well.
 */
export function resumeCommand(
  args: readonly string[] = flagArgs ?? Deno.args,
  main: string = Deno.mainModule,
  readsFlags: boolean = flagArgs !== null,
): string {
  let script = main;
  try {
    const url = new URL(main);
    if (url.protocol === "file:") {
      const path = decodeURIComponent(url.pathname);
      const cwd = Deno.cwd();
      script = path.startsWith(`${cwd}/`) ? path.slice(cwd.length + 1) : path;
    }
  } catch {
    // Not a URL: use it as it is.
  }
  // --analysis measures a run from its first step, so a resumed run goes on without it.
  const analysis = args.includes("--analysis");
  const dropped = new Set(["--overwrite", "--resume", "--analysis"]);
  const kept = args.filter((a) => !dropped.has(a));
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'\\''`)}'`);
  const command = ["deno run -A", quote(script), ...kept.map(quote), "--resume"].join(" ");
  // This toolkit's train.ts and task scripts (wherever they are served from), and any script
  // that trains through trainFromArgs (runTaskScript), read the flags.
  const train = new URL("../train.ts", import.meta.url).href;
  const tasks = new URL("../tasks/", import.meta.url).href;
  const ours = readsFlags || main === train || (main.startsWith(tasks) && main.endsWith(".ts"));
  if (ours) {
    // A shell comment: the line can be pasted whole.
    return command +
      (analysis
        ? "  # without --analysis, which measures a run from its start (--overwrite --analysis " +
          "to have it)"
        : "");
  }
  return `runTraining with resume: true, overwrite: false${
    analysis ? ", analysis: false" : ""
  } in the same config (${command}, if ${script} passes its arguments to parseTrainArgs)`;
}

/**
 * The command that draws a finished run's missing --analysis figures: the run's own, with
 * --resume and without --analysis (a finished run resumed draws what is missing).
 */
export function drawFiguresCommand(): string {
  const args = (flagArgs ?? Deno.args).filter((a) => a !== "--analysis");
  return resumeCommand(args, Deno.mainModule, flagArgs !== null);
}

/** The flags this process trains from (`trainFromArgs`), or null for a program of one's own. */
let flagArgs: readonly string[] | null = null;

/** Says that this process trains from train.ts's flags `args`: its resume command is them. */
export function readsTrainFlags(args: readonly string[]): void {
  flagArgs = [...args];
}

/** The run (or seed) training in this process now, for what Ctrl-C says; null otherwise. */
let training: RunPlace | null = null;
/** Whether this process's run folder holds a run that --resume continues (its run.json). */
let resumable = false;

/**
 * Marks `place` as the seed training now (null: none, e.g. between seeds, or once its
 * checkpoint is gone at its end); runTraining's seeds call it.
 */
export function setTrainingPlace(place: RunPlace | null): void {
  training = place;
}

/** Marks the run folder as holding a run --resume continues (false: none, or no longer ours). */
export function setRunResumable(on: boolean): void {
  resumable = on;
}

/** The run folder whose training has ended while what follows it runs (the test predictions). */
let finished: string | null = null;

/**
 * Marks the training of the run in `out` as done, while the work after it runs (RunOptions'
 * afterRun: train.ts's --predict-test); null once that is over.
 */
export function setRunFinished(out: string | null): void {
  finished = out;
}

/** The signals stopWithWord handles: how each is said, and the shell's exit status for it. */
const STOP_SIGNALS = [
  ["SIGINT", "interrupted", 130],
  ["SIGTERM", "terminated by SIGTERM", 143],
] as const;

/** Whether a training loop is between its steps' ends now (setStepLoop), and a stop it owes. */
let stepLoop = false;
let stopRequest: (() => Promise<void>) | null = null;

/**
 * Says that a training loop runs now (train's stages, pretrain's steps): a SIGTERM then asks it
 * to checkpoint at the end of its step and stop (stopRequested) rather than stopping at once.
 */
export function setStepLoop(on: boolean): void {
  stepLoop = on;
}

/**
 * The stop a SIGTERM asked of the training loop, or null: the loop checks after each step, and
 * if there is one, writes its checkpoint and awaits it (it says what was kept and exits).
 */
export function stopRequested(): (() => Promise<void>) | null {
  return stopRequest;
}

/**
 * Lets a signal that came during a step reach its listener by the step's end: call it as the
 * step starts, and await what it returns once the step is done. A step's awaits resolve without
 * the event loop waiting for anything, and only a wait polls the signals: a SIGTERM waited for
 * the next log block's read (up to 32 steps) or the next evaluation, a short run's to its end
 * (exit 0 for a SIGTERM), and a Ctrl-C seconds. A message through a channel of its own (a turn of
 * the loop, 0.05 ms) was not enough: the signal's listener ran at the next wait all the same. A
 * timer is a wait: `setTimeout(0)` costs about 3 ms here, so it is set as the step starts and is
 * due long before a GPU step ends, then a message turn lets a listener that the timer's wait
 * woke run before the loop looks at `stopRequested`. Steps shorter than the timer (a tiny model
 * on a fast GPU) would each wait for it: a turn is taken at most every `SIGNAL_TURN_MS`, so such
 * steps lose at most a few percent and a signal waits at most that much longer. `now` is the
 * clock (performance.now()), a parameter for the tests.
 */
export function signalTurn(now: number = performance.now()): () => Promise<void> {
  // A clock behind the last turn (a test's) takes a turn, not none from then on.
  if (now >= lastSignalTurn && now - lastSignalTurn < SIGNAL_TURN_MS) {
    return () => Promise.resolve();
  }
  lastSignalTurn = now;
  const timer = new Promise<void>((resolve) => setTimeout(resolve, 0));
  return async () => {
    await timer;
    await messageTurn();
  };
}

/** The least time between two of signalTurn's waits, in ms. */
export const SIGNAL_TURN_MS = 100;
let lastSignalTurn = -Infinity;

/** One turn of the event loop: a message through a channel whose ports are then closed. */
function messageTurn(): Promise<void> {
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => {
      port1.close();
      port2.close();
      resolve();
    };
    port2.postMessage(0);
  });
}

/**
 * On Ctrl-C (SIGINT) or SIGTERM, removes the temporary files of the atomic writes under way
 * (their targets stay as they were), says `name: <message(how)>` on stderr and exits with the
 * shell's status for the signal (130, 143): `how` is "interrupted" or "terminated by SIGTERM".
 * A SIGTERM (a scheduler's time limit, with a grace period before its SIGKILL) during a training
 * loop is kept for the loop's step end instead: it writes a checkpoint there, so the resumed run
 * loses no step; a second one stops at once. SIGHUP keeps its default (a handler would undo
 * nohup); Windows has SIGINT alone.
 */
export function stopWithWord(name: string, message: (how: string) => Promise<string>): void {
  for (const [signal, how, status] of STOP_SIGNALS) {
    if (Deno.build.os === "windows" && signal !== "SIGINT") continue;
    const stop = async () => {
      removePendingTemporaries();
      console.error(`\n${name}: ${await message(how)}`);
      Deno.exit(status);
    };
    Deno.addSignalListener(signal, async () => {
      if (signal === "SIGTERM" && stepLoop && stopRequest === null) {
        stopRequest = stop;
        console.error(
          `\n${name}: SIGTERM: stopping once this step is done and kept (another SIGTERM stops ` +
            "at once)",
        );
        return;
      }
      await stop();
    });
  }
}

/**
 * What Ctrl-C (or a SIGTERM: `how` "terminated by SIGTERM") says in train.ts and the task
 * scripts: before the run folder holds a run, only that (an --overwrite has not replaced the old
 * run yet, so a resume command would be wrong); then what a seed training now has kept, if one
 * is, and the command that goes on.
 */
export async function interruptedMessage(how = "interrupted"): Promise<string> {
  if (finished !== null) {
    return `${how} after the training, which is done and kept in ${finished}; to finish what ` +
      `follows it (a --predict-test file): ${resumeCommand()}`;
  }
  if (!resumable && !training) return `${how} before the training started`;
  // The file itself: Ctrl-C may come between a checkpoint's rename and its being noted here.
  const kept = training
    ? `${
      keptCheckpoint({
        ...training,
        checkpoint: await checkpointOnDisk(training.dir) ?? training.checkpoint,
      })
    }; `
    : "";
  return `${how}; ${kept}to go on: ${resumeCommand()}`;
}

/**
 * The checkpoint in a run folder and its step, read from the file's header (openSafetensors; the
 * tensors are not read), or null when there is none or it cannot be read.
 */
export async function checkpointOnDisk(
  dir: string,
): Promise<{ path: string; step: number } | null> {
  const path = `${dir}/${CHECKPOINT_FILE}`;
  try {
    const reader = await openSafetensors(path);
    reader.close();
    const step = JSON.parse(reader.metadata.ehft_training_state).step;
    return Number.isSafeInteger(step) ? { path, step } : null;
  } catch {
    return null;
  }
}

/** What was kept; `judged`: whether the checkpoint's step is known good (its stats checked). */
function keptCheckpoint(place: RunPlace, judged = true): string {
  const c = place.checkpoint;
  if (!c) return "no checkpoint was written yet (--checkpoint-every sets how often)";
  return judged
    ? `the last good checkpoint (step ${c.step}) is kept in ${c.path}`
    : `the last checkpoint (step ${c.step}; its outputs may not be finite either) is kept in ` +
      c.path;
}

/**
 * Checks one block of logged steps. f32: any non-finite loss or gradient norm stops the run,
 * naming the step. f16: a skipped step (non-finite gradients; the loss scaler lowers the scale)
 * is expected now and then, but `MAX_CONSECUTIVE_SKIPS` in a row stop it too. Returns the number
 * of skipped steps in a row at the end of the block (pass it to the next call).
 */
export function checkStepStats(
  steps: readonly { stage: string; step: number }[],
  stats: readonly StepStats[],
  consecutiveSkips: number,
  place: RunPlace,
): number {
  let run = consecutiveSkips;
  for (const [i, s] of stats.entries()) {
    const where = `step ${steps[i].step} (${steps[i].stage})`;
    if (s.skipped !== undefined) {
      run = s.skipped ? run + 1 : 0;
      if (run >= MAX_CONSECUTIVE_SKIPS) {
        // Not "good": the weights gave non-finite gradients at every scale since the last
        // applied step, and resuming as it was runs into the same wall.
        throw new RunFaultError(
          `${where}: ${run} steps in a row had non-finite gradients (loss ${s.loss}, loss scale ` +
            `now ${s.lossScale}): the model diverged, training stopped; ${
              keptCheckpoint(place, false)
            }. Start again with a lower --lr or --precision f32 (settings of the run: ` +
            "--overwrite restarts it, or use another --out)",
          i,
        );
      }
      continue;
    }
    if (!Number.isFinite(s.loss) || !Number.isFinite(s.gradNorm)) {
      throw new RunFaultError(
        `${where}: the loss is ${s.loss} and the gradient norm ${s.gradNorm}: training stopped ` +
          `before this step's weights reached a checkpoint; ${keptCheckpoint(place)}. Continue ` +
          `with a lower --lr (it is a setting of the run: use --overwrite to restart), or resume ` +
          `as it was: ${resumeCommand()}`,
        i,
      );
    }
  }
  return run;
}

/**
 * The fault of an evaluation at `where` whose outputs were not finite (evaluate's
 * NonFiniteOutputsError, its message `outputs`): the run stops there, as on a non-finite loss.
 */
export function nonFiniteOutputsFault(
  where: string,
  split: string,
  outputs: string,
  place: RunPlace,
  f16: boolean,
): RunFaultError {
  return new RunFaultError(
    `${where}: evaluating on ${split}, ${outputs}: training stopped; ` +
      `${keptCheckpoint(place, false)}. ` +
      `Train again with a lower --lr${f16 ? " or --precision f32" : ""} (settings of the run: ` +
      `--overwrite restarts it, or use another --out)`,
  );
}

/** The messages of a write that failed (atomic writes say "write failed"; mkdir, the system's). */
const WRITE_FAILURE =
  /write failed: |No space left on device|Read-only file system|Disk quota exceeded|os error (28|30|122)\b|Requires write access|\(os error 13\): mkdir /;

/** Whether `e` is a write that failed (a full disk, a read-only folder), not a GPU's error. */
export function isWriteFailure(e: unknown): e is Error {
  return e instanceof Error && !(e instanceof GpuError) && WRITE_FAILURE.test(e.message);
}

/**
 * The message of an error that ended a run, made actionable: a GPU allocation beyond the
 * adapter's limits or memory gets the batch size (or sequence length) that should fit; a lost
 * device, or a write that failed (a full disk), gets what was kept and the --resume command.
 * Other errors are returned as they are.
 */
export function explainRunError(
  e: unknown,
  run: {
    batchSize: number;
    /** --grad-accum (default 1): the GPU holds ⌈batchSize / gradAccum⌉ examples at once. */
    gradAccum?: number;
    maxLength: number | null;
    place: RunPlace;
    /**
     * The largest batch found to allocate on this adapter (train/run.ts probes for it); null when
     * not even a batch of 1 does; absent when not probed.
     */
    fitsBatch?: number | null;
    /** The fewest --grad-accum parts found to fit (train/run.ts); absent: from fitsBatch. */
    fitsParts?: number;
  },
): unknown {
  if (e instanceof RunFaultError) return e;
  // A full disk, a folder made read-only: what was kept, and how to go on once there is room.
  if (isWriteFailure(e)) {
    return new RunFaultError(
      `${e.message}; ${keptCheckpoint(run.place)}; once it can be written, continue with: ` +
        resumeCommand(),
    );
  }
  if (e instanceof DeviceLostError) {
    return new RunFaultError(
      `${e.message}; ${keptCheckpoint(run.place)}; continue with: ${resumeCommand()}`,
    );
  }
  if (!(e instanceof GpuError)) return e;
  const a = allocation(e.message);
  if (!a) return e;
  // Copying a tensor back to save it (a checkpoint, the model): the training state fitted, so
  // no batch size is to blame; other processes took the memory meanwhile.
  if (e.message.startsWith("download of tensor")) {
    return new RunFaultError(
      `${e.message}: no GPU memory was left to read a tensor back (saving, evaluating or ` +
        `logging; other processes on this GPU?); ${
          keptCheckpoint(run.place)
        }; free that memory and continue with: ` +
        `${resumeCommand()}`,
    );
  }
  // Not even a batch of 1 at this length (probed): a shorter --max-length may still fit.
  if (run.fitsBatch === null) {
    const shorter = run.maxLength !== null && run.maxLength > 32
      ? `--max-length ${Math.floor(run.maxLength / 2)}, `
      : "";
    return new RunFaultError(
      `${e.message}: no batch size fits this adapter at this sequence length; try ${shorter}a ` +
        `smaller model or a GPU with more memory (--overwrite to restart with it)`,
    );
  }
  // Parameters, gradients and optimizer state do not shrink with the batch (unprobed: a guess from
  // what failed; allocated after the activations, they may also fail for a batch too large).
  if (/arena "|parameters|gradients|adam /.test(e.message) && run.fitsBatch === undefined) {
    return new RunFaultError(
      `${e.message}: the model itself does not fit this adapter (no batch size helps); use a ` +
        `smaller model or a GPU with more memory`,
    );
  }
  const K = run.gradAccum ?? 1;
  // What the GPU holds at once: the batch, or one of its --grad-accum parts.
  const B = microBatchSize(run);
  // Activations grow linearly with the batch: the same share of the limit at a smaller one,
  // unless a probe found the batch that fits.
  const fits = run.fitsBatch ??
    (a.limit !== null && a.bytes > 0
      ? Math.max(1, Math.floor((B * a.limit) / a.bytes))
      : Math.max(1, Math.floor(B / 2)));
  const shorter = run.maxLength !== null && run.maxLength > 32
    ? `--max-length ${Math.floor(run.maxLength / 2)}`
    : null;
  // --grad-accum keeps the batch (and so the run's recipe) in parts that fit.
  const parts = run.fitsParts ?? Math.ceil(run.batchSize / fits);
  const keep = `--grad-accum ${parts} (the batch of ${run.batchSize} in parts of ≤ ` +
    `${Math.ceil(run.batchSize / parts)})`;
  const advice = fits >= B
    ? `try ${shorter ?? "a smaller --max-length"}`
    : K > 1
    ? `try ${keep}${shorter ? ` or ${shorter}` : ""}`
    : `try --batch-size ${fits}, ${keep}${shorter ? `, or ${shorter}` : ""}`;
  const what = K > 1
    ? `the micro-batch of ${B} (--batch-size ${run.batchSize}, --grad-accum ${K})`
    : `the batch of ${B}`;
  return new RunFaultError(
    `${e.message}: ${what} does not fit this adapter; ${advice} (--overwrite to restart with it)`,
  );
}
