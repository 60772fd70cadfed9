// Out of GPU memory in a run (train/run.ts, train/run_faults.ts): the run's own trainer is freed
// before the probe for a batch that fits, each probe is freed whether it fit or not, and the
// advice names the batch the probe found. lavapipe never runs out of memory at test sizes, so a
// device with a memory budget stands in: an allocation past it gets the out-of-memory error a
// real one would (in its innermost out-of-memory scope) and holds nothing.

import { assert, assertRejects } from "./assert.ts";
import { writeMarkerData, writeTinyBert } from "./train_fixture.ts";
import { getGpu, type Gpu } from "../kernels/device.ts";
import { parseTrainArgs } from "../train/config.ts";
import { runTraining } from "../train/run.ts";
import { RunFaultError } from "../train/run_faults.ts";
import { rte } from "../tasks/rte.ts";

/** The GPU with `budget` bytes of buffers (Infinity: no limit), counting what is held. */
function budgeted(gpu: Gpu, budget: number) {
  const real = gpu.device;
  const scopes: { filter: GPUErrorFilter; error: string | null }[] = [];
  const state = { held: 0, peak: 0, budget };
  const device = new Proxy(real, {
    get(target, key) {
      if (key === "pushErrorScope") {
        return (filter: GPUErrorFilter) => {
          scopes.push({ filter, error: null });
          target.pushErrorScope(filter);
        };
      }
      if (key === "popErrorScope") {
        return () => {
          const scope = scopes.pop();
          const popped = target.popErrorScope();
          return scope?.error ? popped.then(() => ({ message: scope.error })) : popped;
        };
      }
      if (key === "createBuffer") {
        return (desc: GPUBufferDescriptor) => {
          const buffer = target.createBuffer(desc);
          let size = desc.size;
          if (state.held + size > state.budget) {
            const scope = scopes.findLast((s) => s.filter === "out-of-memory");
            if (scope) scope.error ??= `budget of ${state.budget} bytes`;
            size = 0;
          }
          state.held += size;
          state.peak = Math.max(state.peak, state.held);
          const destroy = buffer.destroy.bind(buffer);
          Object.defineProperty(buffer, "destroy", {
            value: () => {
              state.held -= size;
              size = 0;
              destroy();
            },
          });
          return buffer;
        };
      }
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  // Its own error checks: those of a scenario must not reach the next through the shared Gpu.
  const own = {
    device: { value: device },
    checks: { value: [], writable: true },
    uncaptured: { value: [] },
  };
  return { gpu: Object.create(gpu, own) as Gpu, state };
}

Deno.test("out of GPU memory: the trainer and every probe are freed, the advice is the probe's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-oom-" });
  try {
    await writeTinyBert(`${dir}/model`, false);
    await writeMarkerData(`${dir}/data`, 48, 16);
    const args = (out: string, batch: number) =>
      parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`, "--out", out],
        ...["--strategy", "ft", "--batch-size", String(batch), "--max-steps", "2"],
        ...["--eval-every", "0", "--max-length", "64"],
      ]).config;
    const real = await getGpu();
    // What a whole run at batch 30 holds at its peak: the budget.
    const free = budgeted(real, Infinity);
    await runTraining(args(`${dir}/fits`, 30), { task: rte, quiet: true, gpu: free.gpu });
    const small = budgeted(real, free.state.peak);
    const e = await assertRejects(
      () => runTraining(args(`${dir}/big`, 48), { task: rte, quiet: true, gpu: small.gpu }),
      RunFaultError,
    );
    assert(e.message.includes("out of GPU memory"), e.message);
    const advised = Number(/try --batch-size (\d+)/.exec(e.message)?.[1]);
    // Half the batch (24) is the guess without a probe; the probe finds more.
    assert(advised > 24 && advised < 48, e.message);
    // Every buffer of the failed run and its probes freed: what stays is what a finished run
    // leaves too (the device's grown workspaces and uniforms).
    assert(small.state.held <= free.state.held, `${small.state.held} > ${free.state.held} bytes`);
    // A budget not even a batch of 1 fits in: no batch advice, a shorter length instead.
    const tiny = budgeted(real, 200_000);
    const none = await assertRejects(
      () => runTraining(args(`${dir}/none`, 8), { task: rte, quiet: true, gpu: tiny.gpu }),
      RunFaultError,
    );
    assert(
      none.message.includes("no batch size fits this adapter at this sequence length; try"),
      none.message,
    );
    assert(tiny.state.held <= free.state.held, `${tiny.state.held} > ${free.state.held} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
