// --analysis (train/analysis.ts) on the tiny-bert fixture and the marker task: the numbers it
// writes against a float64 computation from the run's own saved weights and an independent
// feature pass, and the training itself bit for bit as without --analysis.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import {
  assertSameFiles,
  capturingErrors,
  markerTrainBatches,
  readLogRecords,
  readTree,
  writeMarkerData,
  writeNarrowHead,
  writeTinyBert,
} from "./train_fixture.ts";
import { getGpu } from "../kernels/device.ts";
import { loadBackbone } from "../model/checkpoint.ts";
import { encoderParameters } from "../model/encoder.ts";
import { openSafetensors } from "../model/safetensors.ts";
import type { AnalysisData, HeadFeatures } from "../train/analysis.ts";
import { distanceStats, layerOf, rowDistancesHost, RunAnalysis } from "../train/analysis.ts";
import { parseTrainArgs } from "../train/config.ts";
import { ADAMW_DEFAULTS } from "../train/optimizer.ts";
import { runTraining } from "../train/run.ts";
import { Trainer } from "../train/trainer.ts";
import { rte } from "../tasks/rte.ts";
import { report } from "../report.ts";

/** Every backbone tensor of a saved model, by name relative to the prefix, in float64. */
async function backbone(path: string): Promise<Map<string, Float64Array>> {
  const reader = await openSafetensors(path);
  const out = new Map<string, Float64Array>();
  for (const name of reader.tensors.keys()) {
    if (!name.startsWith("bert.")) continue;
    out.set(name.slice(5), Float64Array.from(await reader.readF32(name)));
  }
  reader.close();
  return out;
}

Deno.test({
  name: "train --analysis: distances as float64 from the saved weights, training unchanged",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-analysis-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`, 40, 24);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const common = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "bitfit"],
        ...["--batch-size", "8", "--max-steps", "12", "--stage1-ratio", "0.25"],
        ...["--stage1-lr", "1e-2", "--lr", "3e-3", "--eval-every", "0"],
      ];
      const run = async (out: string, ...more: string[]) => {
        const { config } = parseTrainArgs([...common, "--out", out, ...more]);
        return await runTraining(config, { task: rte, quiet: true });
      };
      const plain = await run(`${dir}/plain`);
      const out = `${dir}/analysed`;
      const analysed = await run(out, "--analysis");

      // The training is what it is without --analysis: metrics, log and weights, bit for bit.
      assertEquals(analysed, plain);
      const a = await readTree(`${dir}/plain`);
      const b = await readTree(out);
      assertSameFiles(b, a, "with --analysis");

      const data: AnalysisData = JSON.parse(
        await Deno.readTextFile(`${out}/analysis/analysis.json`),
      );
      assertEquals(data.stages, ["stage1", "stage2"]);
      // Weight distance at the end against float64 from the saved final and pretrained weights.
      const theta = await backbone(`${out}/model/model.safetensors`);
      const theta0 = await backbone(`${dir}/model/model.safetensors`);
      const squares = new Map<string, number>();
      let total = 0;
      for (const [name, t] of theta) {
        const t0 = theta0.get(name)!;
        let s = 0;
        for (let i = 0; i < t.length; i++) s += (t[i] - t0[i]) ** 2;
        squares.set(layerOf(name), (squares.get(layerOf(name)) ?? 0) + s);
        total += s;
      }
      const last = data.weightDistance.at(-1)!;
      assertEquals(last.step, 12);
      const close = (got: number, want: number, what: string) =>
        assert(Math.abs(got - want) <= 1e-5 * want + 1e-9, `${what}: ${got} vs float64 ${want}`);
      close(last.total, Math.sqrt(total), "total distance");
      for (const [layer, s] of squares) close(last.layers[layer], Math.sqrt(s), layer);
      assert(total > 0, "the backbone moved");
      // Stage 2 starts from the restored (pretrained) backbone: distance 0 there.
      const start2 = data.weightDistance.find((w) => w.stage === "stage2" && w.step === 3);
      assertEquals(start2?.total, 0);

      // Feature change: an independent pass of the pretrained and of the saved final model.
      const before = await plainFeatures(dir, `${dir}/model/model.safetensors`);
      const after = await plainFeatures(dir, `${out}/model/model.safetensors`);
      const want = distanceStats(rowDistancesHost(before.values, after.values, before.width));
      const got = data.featureChange!.pretrainedVsFinal;
      assertEquals(got.values.length, 40);
      got.values.forEach((v, i) => close(v, want.values[i], `feature change of example ${i}`));
      close(got.mean, want.mean, "mean feature change");
      assert(data.featureChange!.stage1VsFinal!.values.length === 40, "stage 1 → final");

      // Convergence: an accuracy per step, gradient norms in the first steps of stage 2.
      assertEquals(data.convergence.map((c) => c.step), [...Array(12).keys()].map((i) => i + 1));
      assert(data.convergence.every((c) => c.accuracy! >= 0 && c.accuracy! <= 1), "accuracies");
      const norms = data.convergence.filter((c) => c.backboneGradNorm !== undefined);
      assertEquals(norms.map((c) => c.step), [4, 5, 6, 7, 8, 9, 10, 11, 12]);
      assert(norms.every((c) => c.backboneGradNorm! > 0), "gradient norms");
      // The backbone's share of the step's gradient norm (the log's is over every tensor), in
      // f16 too, whose gradients are scaled by the loss scale until the norm divides it out.
      for (const [folder, f16] of [[out, false], [`${dir}/analysed-f16`, true]] as const) {
        if (f16) await run(folder, "--analysis", "--precision", "f16");
        const logged = new Map(
          (await readLogRecords(folder)).filter((l) => "grad_norm" in l).map((l) => [
            l.step,
            l.grad_norm as number,
          ]),
        );
        const analysis: AnalysisData = JSON.parse(
          await Deno.readTextFile(`${folder}/analysis/analysis.json`),
        );
        const points = analysis.convergence.filter((c) => c.backboneGradNorm !== undefined);
        assertEquals(points.length, 9, folder);
        for (const c of points) {
          const total = logged.get(c.step)!;
          assert(c.backboneGradNorm! <= total * (1 + 1e-5), `${folder} step ${c.step}: ${total}`);
          assert(c.backboneGradNorm! > 1e-3 * total, `${folder} step ${c.step}: ${total}`);
        }
      }

      // Head features of the final stage's start: every training and dev row, labelled.
      const head: HeadFeatures = JSON.parse(
        await Deno.readTextFile(`${out}/analysis/head_features.json`),
      );
      assertEquals([head.stage, head.train.values.length, head.dev.values.length], [
        "stage2",
        40,
        24,
      ]);
      assertEquals(head.train.values[0].length, 64);
      assertEquals(new Set(head.train.labels), new Set(["entailment", "not_entailment"]));

      await assertRejects(
        () => run(out, "--resume", "--analysis"),
        Error,
        "--analysis with --resume",
      );

      // The run's figures, SVG and PNG each.
      const figures = [
        "weight_distance",
        "training_loss",
        "training_accuracy",
        "backbone_gradient",
        "feature_change",
        "head_features",
      ];
      for (const name of figures) {
        const svg = await Deno.readTextFile(`${out}/analysis/${name}.svg`);
        assert(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"), `${name}.svg`);
        const png = await Deno.readFile(`${out}/analysis/${name}.png`);
        assertEquals([...png.slice(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], `${name}.png`);
      }
      // Its t-SNE layout is kept, for report.ts to reuse.
      await Deno.stat(`${out}/analysis/head_features_tsne.json`);
      // figures.json, written after the last figure, lists them with their captions.
      const listed: { name: string; caption: string }[] = JSON.parse(
        await Deno.readTextFile(`${out}/analysis/figures.json`),
      );
      assertEquals(listed.map((f) => f.name), figures);
      assert(listed.every((f) => f.caption.length > 10), "captions");
      // A run killed between its results and its figures: --resume draws them, the same ones.
      const tsneBefore = await Deno.readTextFile(`${out}/analysis/head_features.svg`);
      for (const f of ["figures.json", "head_features.svg", "head_features.png"]) {
        await Deno.remove(`${out}/analysis/${f}`);
      }
      assertEquals(await run(out, "--resume"), plain);
      assertEquals(await Deno.readTextFile(`${out}/analysis/head_features.svg`), tsneBefore);
      await Deno.stat(`${out}/analysis/head_features.png`);
      assertEquals(
        JSON.parse(await Deno.readTextFile(`${out}/analysis/figures.json`)),
        JSON.parse(JSON.stringify(listed)),
      );
      // Figures that cannot be written (a full disk): one line, with the command that draws them
      // (the run's own, resumed; in-process here, a program of one's own's: resume: true).
      await Deno.remove(`${out}/analysis/figures.json`);
      const open = Deno.open;
      (Deno as unknown as { open: unknown }).open = (path: string, options?: Deno.OpenOptions) =>
        /\.svg\.tmp-/.test(String(path))
          ? Promise.reject(new Error("No space left on device (os error 28)"))
          : open(path, options);
      let said: string[];
      try {
        said = (await capturingErrors(() => run(out, "--resume"))).lines;
      } finally {
        (Deno as unknown as { open: unknown }).open = open;
      }
      const warning = said.find((l) => l.startsWith("analysis: figures not drawn (")) ?? "";
      assert(warning.includes("No space left on device"), said.join("\n"));
      assert(
        warning.includes(`; the measurements are in ${out}/analysis/analysis.json; to draw them: `),
        warning,
      );
      assert(warning.includes("resume: true"), warning);
      assertEquals(await run(out, "--resume"), plain);
      await Deno.stat(`${out}/analysis/figures.json`);
      // The t-SNE figure: one dot per training and dev row.
      const tsneSvg = await Deno.readTextFile(`${out}/analysis/head_features.svg`);
      assertEquals(markCounts(tsneSvg, "mark-symbol"), [40, 24]);

      // report.ts over this run and an ft run: report.md with the comparison figures.
      const ft = `${dir}/ft`;
      const ftArgs = [
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ft", "--batch-size", "8"],
        ...["--max-steps", "6", "--lr", "3e-3", "--eval-every", "0", "--analysis", "--out", ft],
      ];
      await runTraining(parseTrainArgs(ftArgs).config, { task: rte, quiet: true });
      const reportDir = `${dir}/report`;
      await report({ paths: [out, ft], out: reportDir }, () => {});
      const md = await Deno.readTextFile(`${reportDir}/report.md`);
      const shown = [
        "feature_change",
        "weight_distance",
        "training_loss",
        "training_accuracy",
        "backbone_gradient",
      ];
      for (const name of [...shown, "head_features"]) {
        assert(md.includes(`(figures/${name}.png)`), `report.md shows ${name}`);
        await Deno.stat(`${reportDir}/figures/${name}.svg`);
        await Deno.stat(`${reportDir}/figures/${name}.png`);
      }
      assert(md.includes("FT ") && md.includes("EH-FT (BitFit) "), "captions name both methods");
      const wd = await Deno.readTextFile(`${reportDir}/figures/weight_distance.svg`);
      assertEquals(markCounts(wd, "mark-line"), [1, 1], "one line per method");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The number of drawn elements in each mark group of class `cls` ("mark-line", ...). */
function markCounts(svg: string, cls: string): number[] {
  const re = new RegExp(`<g class="${cls} role-mark[^"]*"[^>]*>(.*?)</g>`, "g");
  return [...svg.matchAll(re)].map((m) => [...m[1].matchAll(/<path/g)].length);
}

Deno.test("analysis: distance statistics and row distances in float64", () => {
  const s = distanceStats([3, 1, 2, 10]);
  assertEquals([s.mean, s.median], [4, 2.5]);
  assert(Math.abs(s.std - Math.sqrt(12.5)) < 1e-12);
  assertEquals(rowDistancesHost(Float32Array.of(0, 0, 1, 1), Float32Array.of(3, 4, 1, 1), 2), [
    5,
    0,
  ]);
  assertEquals(layerOf("encoder.layer.11.output.dense.weight"), "layer.11");
  assertEquals(layerOf("embeddings.word_embeddings.weight"), "embeddings");
});

/** The head's input features of a plain trainer (no PEFT method) with `weights` loaded. */
async function plainFeatures(
  dir: string,
  weights: string,
): Promise<{ values: Float32Array; width: number }> {
  const { model, longest, batches } = await markerTrainBatches(`${dir}/model`, `${dir}/data`, 8);
  model.weights.close();
  const config = model.config;
  const trainer = new Trainer(await getGpu(), {
    config,
    loss: "bce",
    headClasses: 1,
    maxExamples: 8,
    maxSeq: longest,
    headSeed: 0,
    dropoutSeed: 0,
    adamw: ADAMW_DEFAULTS,
  });
  try {
    const reader = await openSafetensors(weights);
    await loadBackbone(reader, config, encoderParameters(trainer.encoder.params));
    reader.close();
    return await trainer.headFeatures(batches, "input");
  } finally {
    trainer.destroy();
  }
}

Deno.test({
  name: "train --analysis with prefix-tuning: the pretrained features are the backbone's alone",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-analysis-prefix-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`, 40, 24);
      await writeNarrowHead(`${dir}/head.safetensors`);
      const out = `${dir}/run`;
      const { config } = parseTrainArgs([
        ...["--task", "rte", "--model", `${dir}/model`, "--data", `${dir}/data`],
        ...["--head", `${dir}/head.safetensors`, "--strategy", "ehft", "--peft", "prefix"],
        ...["--prefix-length", "4", "--batch-size", "8", "--max-steps", "8"],
        ...["--stage1-ratio", "0.25", "--eval-every", "0", "--out", out, "--analysis"],
      ]);
      await runTraining(config, { task: rte, quiet: true });
      // EH-FT drops the prefix rows: the final model is a plain backbone too. Stage 1's
      // prefix rows, installed before the first step, must not be in the "pretrained" pass.
      const before = await plainFeatures(dir, `${dir}/model/model.safetensors`);
      const after = await plainFeatures(dir, `${out}/model/model.safetensors`);
      const want = rowDistancesHost(before.values, after.values, before.width);
      const data: AnalysisData = JSON.parse(
        await Deno.readTextFile(`${out}/analysis/analysis.json`),
      );
      const got = data.featureChange!.pretrainedVsFinal.values;
      assertEquals(got.length, 40);
      got.forEach((v, i) =>
        assert(Math.abs(v - want[i]) <= 1e-5 * want[i] + 1e-9, `example ${i}: ${v} vs ${want[i]}`)
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "analysis: step results are read in blocks (bounded GPU buffers), the same numbers",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // One buffer per step was held to the end: 33k on QNLI over 10 epochs.
    const dir = await Deno.makeTempDir({ prefix: "ehft-analysis-blocks-" });
    try {
      await writeTinyBert(`${dir}/model`, false);
      await writeMarkerData(`${dir}/data`, 40, 8);
      const { model, longest, batches } = await markerTrainBatches(
        `${dir}/model`,
        `${dir}/data`,
        8,
      );
      const config = model.config;
      const gpu = await getGpu();
      const analyse = async (readEvery: number) => {
        const trainer = new Trainer(gpu, {
          config,
          loss: "bce",
          headClasses: 1,
          maxExamples: 8,
          maxSeq: longest,
          headSeed: 3,
          dropoutSeed: 4,
          adamw: ADAMW_DEFAULTS,
        });
        await loadBackbone(model.weights, config, encoderParameters(trainer.encoder.params));
        const analysis = new RunAnalysis(trainer, {
          trainBatches: batches,
          devBatches: batches.slice(0, 1),
          loss: "bce",
          labelNames: rte.labels,
          stages: ["main"],
        }, { weightEvery: 4, gradSteps: 2, readEvery });
        const live: number[] = [];
        try {
          trainer.beginStage({ head: true, backbone: "all", peft: false }, ADAMW_DEFAULTS);
          await analysis.start();
          await analysis.stageStart(0, 0);
          for (let step = 0; step < 9; step++) {
            await analysis.beforeStep();
            await trainer.step(batches[step % batches.length], 1e-3, step);
            await analysis.afterStep(step + 1, batches[step % batches.length]);
            live.push(gpu.liveBytes);
          }
          await analysis.stageEnd(0, 9);
          const data = await analysis.finish({ task: "rte", strategy: "ft", peft: null });
          return { data, live };
        } finally {
          analysis.destroy();
          trainer.destroy();
        }
      };
      const blocks = await analyse(3);
      const once = await analyse(1000);
      assertEquals(blocks.data, once.data);
      assertEquals(blocks.data.convergence.length, 9);
      // Read after steps 3, 6 and 9: what is held then does not grow with the steps.
      assertEquals(blocks.live[5], blocks.live[2]);
      assertEquals(blocks.live[8], blocks.live[2]);
      assert(once.live[8] > once.live[2], "unread results are held");
      model.weights.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
