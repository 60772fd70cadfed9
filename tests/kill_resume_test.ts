// A training run SIGKILLed at ten random moments (seeded): after each kill, `--resume` finishes
// the run, and its metrics, log and weights equal an uninterrupted run's with the same seed, bit
// for bit. The moments fall anywhere: during start-up, between steps, inside a checkpoint or a
// log write, while the final model is saved; checkpoints every 2 steps make most kills land
// between two of them.

import { assert, assertEquals } from "./assert.ts";
import { rng } from "./random.ts";
import {
  assertSameFiles,
  readTree,
  sigkill,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";

const TRAIN_TS = new URL("../train.ts", import.meta.url).pathname;
const KILLS = 10;

function command(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", TRAIN_TS, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "null",
    stderr: "piped",
  });
}

/** Runs train.ts to the end; returns its wall time in ms. */
async function runToEnd(args: string[]): Promise<number> {
  const start = performance.now();
  const r = await command(args).output();
  if (!r.success) throw new Error(`train.ts failed: ${new TextDecoder().decode(r.stderr)}`);
  return performance.now() - start;
}

/** Starts train.ts and SIGKILLs it after `ms`; returns whether it was still running. */
async function runAndKillAfter(args: string[], ms: number): Promise<boolean> {
  const child = command(args).spawn();
  const stderr = new Response(child.stderr).text();
  let finished = false;
  const status = child.status.then((s) => (finished = true, s));
  await Promise.race([status, new Promise((r) => setTimeout(r, ms))]);
  const killed = !finished && sigkill(child);
  const s = await status;
  await stderr;
  if (!killed && !s.success) throw new Error(`train.ts failed before the kill: ${await stderr}`);
  return killed;
}

Deno.test({
  name: "train: killed at ten random moments, each --resume ends as an uninterrupted run",
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-kill-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`, 48, 16);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "bitfit"],
        ...["--batch-size", "8", "--max-steps", "18", "--stage1-ratio", "0.25"],
        ...["--eval-every", "6", "--checkpoint-every", "2", "--no-autotune"],
      ];
      const whole = `${dir}/whole`;
      const first = await runToEnd([...common, "--out", whole]);
      const expected = await readTree(whole);
      // A second run: the same files, and a wall time without the first run's cold caches (Deno's
      // and the shader compiler's), which would put the later kills past the end of the run.
      const again = `${dir}/again`;
      const wall = Math.min(first, await runToEnd([...common, "--out", again]));
      assertSameFiles(await readTree(again), expected, "a second uninterrupted run");
      await Deno.remove(again, { recursive: true });

      const next = rng(20261126);
      let killedCount = 0;
      // Moments are drawn in [0, window): a run that ended before its kill (the machine got
      // quicker than when it was timed, say) halves the window for the kills after it.
      let window = wall;
      for (let k = 0; k < KILLS; k++) {
        const out = `${dir}/kill-${k}`;
        const args = [...common, "--out", out];
        // Anywhere in the run, start-up included.
        const at = Math.round(next() * window);
        const killed = await runAndKillAfter(args, at);
        if (killed) killedCount++;
        else window /= 2;
        await runToEnd([...args, "--resume"]);
        const got = await readTree(out);
        assertEquals([...got.keys()].sort(), [...expected.keys()].sort(), `kill ${k} at ${at} ms`);
        assertSameFiles(got, expected, `kill ${k} at ${at} ms`);
        await Deno.remove(out, { recursive: true });
      }
      // The moments are random: most must have hit a running process.
      assert(killedCount >= KILLS / 2, `only ${killedCount} of ${KILLS} kills hit the run`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
