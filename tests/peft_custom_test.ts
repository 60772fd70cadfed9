// A parameter-efficient method of one's own (RunOptions.peft): runTraining creates it in place of
// config.peft's, run.json and the saved models name it, a final model that keeps its tensors is
// refused by predict rather than run without them, and a linear hook is told the frozen weight
// (HookContext.weight) a rescaling method needs for its input gradient.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { gpuTest, IN_PROCESS_GPU } from "./gpu_fixture.ts";
import { writeMarkerData, writeNarrowHead, writeTinyBert } from "./train_fixture.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor } from "../kernels/tensor.ts";
import { loadBackbone } from "../model/checkpoint.ts";
import { readConfig } from "../model/config.ts";
import { createEncoder, encoderParameters, type LinearHook } from "../model/encoder.ts";
import { openSafetensors } from "../model/safetensors.ts";
import { LoraMethod } from "../peft/lora.ts";
import type { PeftMethod } from "../peft/method.ts";
import { predict } from "../predict.ts";
import { parseTrainArgs } from "../train/config.ts";
import { type RunOptions, runTraining } from "../train/run.ts";
import { rte } from "../tasks/rte.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** The names in a folder, sorted. */
async function entries(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** LoRA under another name: a method the toolkit does not know by name. */
const MINE: RunOptions["peft"] = {
  name: "my-lora",
  create: (gpu, config, options) => {
    const inner = new LoraMethod(gpu, config, options);
    const method: PeftMethod = {
      name: "my-lora",
      prefixLength: 0,
      trainsBackbone: inner.trainsBackbone,
      parameters: () => inner.parameters(),
      gradients: () => inner.gradients(),
      noDecay: inner.noDecay,
      hooks: () => inner.hooks(),
      destroy: () => inner.destroy(),
    };
    return method;
  },
};

Deno.test({
  name: "RunOptions.peft: the method of one's own trains, is named, and is not predicted without",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-peft-custom-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const run = async (
        out: string,
        strategy: string,
        peft: RunOptions["peft"] | null = MINE,
        ...more: string[]
      ) => {
        const { config } = parseTrainArgs([
          ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
          ...["--head", `${dir}/head.safetensors`, "--strategy", strategy, "--batch-size", "8"],
          ...(strategy === "ft" ? [] : ["--peft", "lora"]),
          ...["--max-steps", "4", "--eval-every", "0", "--out", out, ...more],
        ]);
        return await runTraining(config, { task: rte, quiet: true, peft: peft ?? undefined });
      };
      const meta = async (path: string) => {
        const reader = await openSafetensors(path);
        reader.close();
        return reader.metadata;
      };
      // PEFT alone: the method is active at the end; its tensors are kept beside the backbone.
      await run(`${dir}/peft`, "peft");
      const runJson = JSON.parse(await Deno.readTextFile(`${dir}/peft/run.json`));
      assertEquals(runJson.resolved.peft_method, "my-lora");
      const final = await meta(`${dir}/peft/model/model.safetensors`);
      assertEquals([final.peft, final.peft_state], ["my-lora", "separate"]);
      const reader = await openSafetensors(`${dir}/peft/model/model.safetensors`);
      assert([...reader.tensors.keys()].some((n) => n.startsWith("lora.")), "its tensors are kept");
      reader.close();
      await assertRejects(
        () =>
          predict({
            model: `${dir}/peft/model`,
            task: rte,
            data: `${dir}/data`,
            split: "val",
            batchSize: 8,
          }),
        Error,
        'carries the tensors of the still active PEFT method "my-lora"',
      );
      // EH-FT: Stage 1 trains it (named in stage1/), Stage 2 drops it.
      await run(`${dir}/ehft`, "ehft");
      const stage1 = await meta(`${dir}/ehft/stage1/model.safetensors`);
      assertEquals(stage1.peft, "my-lora");
      const dropped = await meta(`${dir}/ehft/model/model.safetensors`);
      assertEquals(dropped.peft_state, "dropped");
      // Resumed without it (or with another), the run would give its tensors to another method.
      await Deno.remove(`${dir}/ehft/metrics.json`);
      await assertRejects(
        () => run(`${dir}/ehft`, "ehft", null, "--resume"),
        Error,
        `--resume: ${dir}/ehft was started with the PEFT method "my-lora", not config.peft's`,
      );
      // A built-in method's name, or a method that calls itself something else: refused.
      await assertRejects(
        () => run(`${dir}/named`, "ehft", { ...MINE, name: "lora" }),
        Error,
        `RunOptions.peft: "lora" is a built-in method's name`,
      );
      await assertRejects(
        () => run(`${dir}/renamed`, "ehft", { ...MINE!, name: "ours" }),
        Error,
        `RunOptions.peft: create() made a method named "my-lora", not "ours"`,
      );
      // Refused before anything is written: no folder left for a new run, and with --overwrite
      // the old run is still there, whole.
      assert(!(await exists(`${dir}/renamed`)), "a refused run left its folder");
      const before = await entries(`${dir}/ehft`);
      await assertRejects(
        () => run(`${dir}/ehft`, "ehft", { ...MINE!, name: "ours" }, "--overwrite"),
        Error,
        `RunOptions.peft: create() made a method named "my-lora", not "ours"`,
      );
      assertEquals(await entries(`${dir}/ehft`), before);
      // A strategy without a PEFT stage has nowhere to put it.
      await assertRejects(
        () => run(`${dir}/ft`, "ft"),
        Error,
        "RunOptions.peft (my-lora): strategy ft has no PEFT stage",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// Guards a trainer that ignores PeftMethod.noDecay (every built-in method answers false).
Deno.test({
  name: "RunOptions.peft: a tensor the method exempts from weight decay does not decay",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-peft-nodecay-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`);
      const exemptB: RunOptions["peft"] = {
        ...MINE!,
        create: (gpu, config, options) => ({
          ...MINE!.create(gpu, config, options),
          noDecay: (name: string) => name.includes("lora_B"),
        }),
      };
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--strategy", "peft", "--peft", "lora", "--batch-size", "8", "--max-steps", "1"],
        ...["--eval-every", "0", "--out", `${dir}/out`],
      ]);
      const decays = new Map<string, boolean>();
      await runTraining(config, {
        task: rte,
        quiet: true,
        peft: exemptB,
        onStageStart: ({ trainer }) => {
          for (const t of trainer.optimizer!.tensors) decays.set(t.name, t.decay);
          return Promise.resolve();
        },
      });
      const lora = [...decays].filter(([n]) => n.startsWith("lora."));
      assert(lora.length > 0, "the method's tensors are trained");
      for (const [n, decay] of lora) assertEquals(decay, !n.includes("lora_B"), n);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

gpuTest(
  "a linear hook is told the frozen weight its products read, forward and backward",
  async (gpu) => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-hook-weight-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      const config = await readConfig(`${dir}/model/config.json`);
      const seen: string[] = [];
      const hook: LinearHook = {
        forward: (_rec, x, out, ctx) => {
          assertEquals(ctx.weight.shape, [out.shape[2], x.shape[2]]);
          seen.push(`forward ${ctx.layer} ${ctx.module}`);
        },
        backward: (_rec, x, dOut, _dX, ctx) => {
          assertEquals(ctx.weight.shape, [dOut.shape[2], x.shape[2]]);
          seen.push(`backward ${ctx.layer} ${ctx.module}`);
        },
      };
      const encoder = createEncoder(gpu, config, {
        maxBatch: 1,
        maxSeq: 4,
        dropout: 0,
        trainable: () => false,
        hooks: { linear: (site) => site.module === "value" ? hook : undefined },
      });
      const reader = await openSafetensors(`${dir}/model/model.safetensors`);
      await loadBackbone(reader, config, encoderParameters(encoder.params));
      reader.close();
      encoder.setBatch({
        batch: 1,
        seqLen: 4,
        inputIds: Uint32Array.from([2, 5, 6, 3]),
        attentionMask: Uint32Array.from([1, 1, 1, 1]),
      });
      const rec = new Recorder(gpu);
      encoder.forward(rec);
      const dHidden = createTensor(gpu, [1, 4, config.hiddenSize], "f32", "dHidden");
      encoder.backward(rec, dHidden, {});
      await rec.submit();
      const layers = Array.from({ length: config.numLayers }, (_, l) => l);
      assertEquals(
        seen.filter((s) => s.startsWith("forward")),
        layers.map((l) => `forward ${l} value`),
      );
      assertEquals(
        seen.filter((s) => s.startsWith("backward")).sort(),
        layers.map((l) => `backward ${l} value`).sort(),
      );
      dHidden.destroy();
      encoder.destroy();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
