// The figures of `--analysis` (train/analysis.ts): per run into <out>/analysis/, and across runs
// for report.ts (one line, box or panel per method on shared axes), each with a caption stating
// the numbers it shows. Drawing: train/plots.ts; t-SNE: train/tsne.ts.

import type { AnalysisData, DistanceStats, HeadFeatures } from "./analysis.ts";
import {
  distributionChartSpec,
  lineChartSpec,
  scatterChartSpec,
  type VegaLiteSpec,
  writeFigure,
} from "./plots.ts";
import { methodTitle, PEFT_ORDER, STRATEGY_ORDER } from "./report_table.ts";
import { tsne } from "./tsne.ts";
import { writeJsonAtomic } from "../model/atomic_write.ts";
import { errorText, jsonErrorText } from "../model/error_text.ts";

/** One figure: its file name (without extension), spec and caption. */
export interface Figure {
  name: string;
  spec: VegaLiteSpec;
  caption: string;
}

/** What the figures of one run need: its analysis, head features and logged losses. */
export interface RunAnalysisFiles {
  /** The run folder. */
  dir: string;
  /** "FT", "EH-FT (BitFit)", ... */
  method: string;
  data: AnalysisData;
  headFeatures: HeadFeatures | null;
  /**
   * The t-SNE layout of `headFeatures` (analysis/head_features_tsne.json, written with the run's
   * figures), or null until `headLayout` computes it: the report reuses the run's own.
   */
  layout: HeadLayout | null;
  /** (step, loss) of every logged training step. */
  losses: [number, number][];
}

/** A 2-D layout of head features: train then dev rows, labelled. */
export interface HeadLayout {
  points: { x: number; y: number; label: string; panel: string }[];
  perplexity: number;
}

const LAYOUT_FILE = "analysis/head_features_tsne.json";

/** Why an analysis file could not be read: not valid JSON (on one line), or the read's error. */
function unreadable(e: unknown): string {
  return e instanceof SyntaxError ? `not valid JSON (${jsonErrorText(e)})` : errorText(e);
}

/** Reads a run folder's analysis/ files and log.jsonl; null when it has no analysis. */
export async function readRunAnalysis(dir: string): Promise<RunAnalysisFiles | null> {
  let data: AnalysisData;
  try {
    data = JSON.parse(await Deno.readTextFile(`${dir}/analysis/analysis.json`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${dir}/analysis/analysis.json: ${unreadable(e)}`);
  }
  let headFeatures: HeadFeatures | null = null;
  try {
    headFeatures = JSON.parse(await Deno.readTextFile(`${dir}/analysis/head_features.json`));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(`${dir}/analysis/head_features.json: ${unreadable(e)}`);
    }
  }
  let layout: HeadLayout | null = null;
  try {
    layout = JSON.parse(await Deno.readTextFile(`${dir}/${LAYOUT_FILE}`));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(`${dir}/${LAYOUT_FILE}: ${unreadable(e)}`);
    }
  }
  return {
    dir,
    method: methodTitle(data.strategy, data.peft),
    data,
    headFeatures,
    layout,
    losses: await readLosses(`${dir}/log.jsonl`),
  };
}

/** (step, loss) of every training line of a log.jsonl. */
export async function readLosses(path: string): Promise<[number, number][]> {
  const out: [number, number][] = [];
  const text = await Deno.readTextFile(path);
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line);
    } catch {
      throw new Error(`${path}:${i + 1}: not JSON`);
    }
    if (typeof entry.loss === "number" && typeof entry.step === "number") {
      out.push([entry.step, entry.loss]);
    }
  });
  return out;
}

const fmt = (x: number) => (Math.abs(x) >= 1000 ? x.toFixed(0) : x.toPrecision(4));

/** The 2-D t-SNE of a run's head features, train then dev rows. */
export async function headFeatureLayout(h: HeadFeatures, seed = 0): Promise<HeadLayout> {
  const rows = [...h.train.values, ...h.dev.values];
  const labels = [...h.train.labels, ...h.dev.labels];
  const panels = [
    ...h.train.values.map(() => "train"),
    ...h.dev.values.map(() => "dev"),
  ];
  const flat = new Float32Array(rows.length * h.width);
  rows.forEach((r, i) => flat.set(r, i * h.width));
  const result = await tsne(flat, rows.length, h.width, { seed });
  const points = labels.map((label, i) => ({
    x: result.embedding[2 * i],
    y: result.embedding[2 * i + 1],
    label,
    panel: panels[i],
  }));
  return { points, perplexity: result.perplexity };
}

/** A run's head-feature layout: the one kept with its figures, else computed (and kept in `r`). */
async function headLayout(r: RunAnalysisFiles): Promise<HeadLayout> {
  r.layout ??= await headFeatureLayout(r.headFeatures!);
  return r.layout;
}

/** Writes the run's layout beside its figures, once computed, so that reports reuse it. */
export async function keepHeadLayout(r: RunAnalysisFiles): Promise<void> {
  if (r.layout) await writeJsonAtomic(`${r.dir}/${LAYOUT_FILE}`, r.layout);
}

/** Nearest-neighbour label agreement in the 2-D layout: how separable the head features look. */
export function neighbourAgreement(points: { x: number; y: number; label: string }[]): number {
  if (points.length < 2) return 1;
  let agree = 0;
  for (const [i, p] of points.entries()) {
    let best = Infinity, label = "";
    for (const [j, q] of points.entries()) {
      if (i === j) continue;
      const d = (p.x - q.x) ** 2 + (p.y - q.y) ** 2;
      if (d < best) [best, label] = [d, q.label];
    }
    if (label === p.label) agree++;
  }
  return agree / points.length;
}

function distanceSeries(name: string, s: DistanceStats) {
  return { name, values: s.values };
}

/** The figures of one run. */
export async function runFigures(r: RunAnalysisFiles): Promise<Figure[]> {
  const d = r.data;
  const figures: Figure[] = [];
  const wd = d.weightDistance;
  const layers = Object.keys(wd[0]?.layers ?? {});
  const last = wd.at(-1);
  figures.push({
    name: "weight_distance",
    spec: lineChartSpec({
      title: `Distance of the backbone from its pretrained weights (${r.method})`,
      xLabel: "training step",
      yLabel: "‖θ − θ₀‖₂",
      legendTitle: "tensors",
      series: [
        { name: "whole backbone", points: wd.map((w) => [w.step, w.total]) },
        ...layers.map((l) => ({
          name: l,
          points: wd.map((w) => [w.step, w.layers[l]] as [number, number]),
        })),
      ],
    }),
    caption: last
      ? `‖θ − θ₀‖₂ reaches ${fmt(last.total)} at step ${last.step} (${r.method}).`
      : "No weight distance was recorded.",
  });
  figures.push({
    name: "training_loss",
    spec: lineChartSpec({
      title: `Training loss (${r.method})`,
      xLabel: "training step",
      yLabel: "loss",
      series: [{ name: r.method, points: r.losses }],
    }),
    caption: r.losses.length
      ? `Training loss from ${fmt(r.losses[0][1])} at step ${r.losses[0][0]} to ${
        fmt(r.losses.at(-1)![1])
      } at step ${r.losses.at(-1)![0]}.`
      : "No training loss was logged.",
  });
  const acc = d.convergence.filter((c) => c.accuracy !== null);
  if (acc.length) {
    figures.push({
      name: "training_accuracy",
      spec: lineChartSpec({
        title: `Accuracy on each training batch (${r.method})`,
        xLabel: "training step",
        yLabel: "batch accuracy",
        series: [{ name: r.method, points: acc.map((c) => [c.step, c.accuracy!]) }],
      }),
      caption: `Batch accuracy averages ${fmt(mean(acc.map((c) => c.accuracy!)))} over the run, ` +
        `${fmt(mean(acc.slice(-10).map((c) => c.accuracy!)))} over its last ${
          Math.min(10, acc.length)
        } steps.`,
    });
  }
  const grads = d.convergence.filter((c) => c.backboneGradNorm !== undefined);
  if (grads.length) {
    figures.push({
      name: "backbone_gradient",
      spec: lineChartSpec({
        title: `Gradient norm reaching the backbone, first steps of the final stage (${r.method})`,
        xLabel: "training step",
        yLabel: "‖∂L/∂θ‖₂ (log scale)",
        logY: true,
        series: [{ name: r.method, points: grads.map((c) => [c.step, c.backboneGradNorm!]) }],
      }),
      caption: `The backbone's gradient norm averages ${
        fmt(mean(grads.map((c) => c.backboneGradNorm!)))
      } over the first ${grads.length === 1 ? "step" : `${grads.length} steps`} of ${
        grads[0].stage
      }.`,
    });
  }
  if (d.featureChange) {
    const fc = d.featureChange;
    const series = [distanceSeries("pretrained → final", fc.pretrainedVsFinal)];
    if (fc.stage1VsFinal) series.push(distanceSeries("end of Stage 1 → final", fc.stage1VsFinal));
    figures.push({
      name: "feature_change",
      spec: distributionChartSpec({
        title: `Change of the head's input feature per training input (${r.method})`,
        xLabel: "L2 distance of the feature",
        series,
      }),
      caption: `Mean feature change ${fmt(fc.pretrainedVsFinal.mean)} (median ${
        fmt(fc.pretrainedVsFinal.median)
      }) from the pretrained backbone${
        fc.stage1VsFinal ? `, ${fmt(fc.stage1VsFinal.mean)} from the end of Stage 1` : ""
      }, over ${fc.pretrainedVsFinal.values.length} training inputs.`,
    });
  }
  if (r.headFeatures) {
    const h = r.headFeatures;
    const layout = await headLayout(r);
    figures.push({
      name: "head_features",
      spec: scatterChartSpec({
        title: `t-SNE of the head's hidden layer at the start of ${h.stage} (${r.method})`,
        legendTitle: "label",
        points: layout.points,
      }),
      caption: `t-SNE (perplexity ${fmt(layout.perplexity)}) of ${h.train.values.length} ` +
        `training and ${h.dev.values.length} dev inputs' ${h.width}-d head features at the ` +
        `start of ${h.stage}; nearest-neighbour label agreement ${
          fmt(neighbourAgreement(layout.points.filter((p) => p.panel === "train")))
        } (train).`,
    });
  }
  return figures;
}

/** Each point's y replaced by the mean of the last `window` points' (fewer at the start). */
function runningMean(points: [number, number][], window: number): [number, number][] {
  return points.map(([x], i) => {
    const from = Math.max(0, i - window + 1);
    return [x, mean(points.slice(from, i + 1).map((p) => p[1]))];
  });
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/** The figures comparing runs (one per method; the first run of a method when seeds repeat). */
export async function comparisonFigures(runs: RunAnalysisFiles[]): Promise<Figure[]> {
  const byMethod = new Map<string, RunAnalysisFiles>();
  for (const r of runs) if (!byMethod.has(r.method)) byMethod.set(r.method, r);
  // In the results table's order: FT, LP, LP-FT, the PEFT methods, EH-FT, EH-FT-reserve.
  const rank = (r: RunAnalysisFiles) =>
    STRATEGY_ORDER.indexOf(r.data.strategy) * 10 + PEFT_ORDER.indexOf(r.data.peft ?? "");
  const rs = [...byMethod.values()].sort((a, b) => rank(a) - rank(b));
  const figures: Figure[] = [];
  const withChange = rs.filter((r) => r.data.featureChange);
  if (withChange.length) {
    figures.push({
      name: "feature_change",
      spec: distributionChartSpec({
        title: "Change of the head's input feature per training input",
        xLabel: "L2 distance, pretrained → fine-tuned",
        series: withChange.map((r) =>
          distanceSeries(r.method, r.data.featureChange!.pretrainedVsFinal)
        ),
      }),
      caption: "Mean feature change: " +
        withChange.map((r) => `${r.method} ${fmt(r.data.featureChange!.pretrainedVsFinal.mean)}`)
          .join(", ") +
        ".",
    });
  }
  figures.push({
    name: "weight_distance",
    spec: lineChartSpec({
      title: "Distance of the backbone from its pretrained weights",
      xLabel: "training step",
      yLabel: "‖θ − θ₀‖₂",
      legendTitle: "method",
      series: rs.map((r) => ({
        name: r.method,
        points: r.data.weightDistance.map((w) => [w.step, w.total] as [number, number]),
      })),
    }),
    caption: "‖θ − θ₀‖₂ at the end: " +
      rs.map((r) => `${r.method} ${fmt(r.data.weightDistance.at(-1)?.total ?? NaN)}`).join(", ") +
      ".",
  });
  figures.push({
    name: "training_loss",
    spec: lineChartSpec({
      title: "Training loss",
      xLabel: "training step",
      yLabel: "loss",
      legendTitle: "method",
      series: rs.filter((r) => r.losses.length).map((r) => ({ name: r.method, points: r.losses })),
    }),
    caption: "Training loss, mean of the last 10 logged steps: " +
      rs.filter((r) => r.losses.length).map((r) =>
        `${r.method} ${fmt(mean(r.losses.slice(-10).map((l) => l[1])))}`
      ).join(", ") + ".",
  });
  const withAccuracy = rs.filter((r) => r.data.convergence.some((c) => c.accuracy !== null));
  if (withAccuracy.length) {
    const smoothed = (r: RunAnalysisFiles) =>
      runningMean(
        r.data.convergence.filter((c) => c.accuracy !== null).map((c) => [c.step, c.accuracy!]),
        10,
      );
    figures.push({
      name: "training_accuracy",
      spec: lineChartSpec({
        title: "Accuracy on the training batches",
        xLabel: "training step",
        yLabel: "batch accuracy, mean of the last 10 steps",
        legendTitle: "method",
        series: withAccuracy.map((r) => ({ name: r.method, points: smoothed(r) })),
      }),
      caption: "Training-batch accuracy over the last 10 steps: " +
        withAccuracy.map((r) => `${r.method} ${fmt(smoothed(r).at(-1)![1])}`).join(", ") + ".",
    });
  }
  const grads = rs.filter((r) => r.data.convergence.some((c) => c.backboneGradNorm !== undefined));
  if (grads.length) {
    const norms = (r: RunAnalysisFiles) =>
      r.data.convergence.filter((c) => c.backboneGradNorm !== undefined);
    // The final stage's first step (every step has a point; an f16 step skipped for overflow
    // has no norm, and is a gap, not a shift).
    const stageFirst = (r: RunAnalysisFiles) => {
      const stage = norms(r)[0].stage;
      let first = Infinity;
      for (const c of r.data.convergence) if (c.stage === stage) first = Math.min(first, c.step);
      return first;
    };
    // Steps counted from the final stage's start, so that methods with and without a Stage 1
    // share the axis.
    figures.push({
      name: "backbone_gradient",
      spec: lineChartSpec({
        title: "Gradient norm reaching the backbone in the first steps of the final stage",
        xLabel: "step of the final stage",
        yLabel: "‖∂L/∂θ‖₂ (log scale)",
        logY: true,
        legendTitle: "method",
        series: grads.map((r) => {
          const first = stageFirst(r);
          const points = norms(r).map((c) => [c.step - first + 1, c.backboneGradNorm!]);
          return { name: r.method, points: points as [number, number][] };
        }),
      }),
      caption: "Mean backbone gradient norm over the first steps of the final stage: " +
        grads.map((r) => `${r.method} ${fmt(mean(norms(r).map((c) => c.backboneGradNorm!)))}`)
          .join(", ") +
        ".",
    });
  }
  const heads = rs.filter((r) => r.headFeatures);
  if (heads.length) {
    const points: { x: number; y: number; label: string; panel: string }[] = [];
    const agreement: string[] = [];
    for (const r of heads) {
      const layout = await headLayout(r);
      const train = layout.points.filter((p) => p.panel === "train");
      agreement.push(`${r.method} ${fmt(neighbourAgreement(train))}`);
      for (const p of train) points.push({ ...p, panel: r.method });
    }
    figures.push({
      name: "head_features",
      spec: scatterChartSpec({
        title: "t-SNE of the head's hidden layer on the training set, start of the final stage",
        legendTitle: "label",
        points,
        columns: Math.min(3, heads.length),
      }),
      caption: "Nearest-neighbour label agreement in the layout (1 = every point's neighbour " +
        `shares its label): ${agreement.join(", ")}.`,
    });
  }
  return figures;
}

/** Writes the figures (SVG and PNG each) into `dir`; returns them. */
export async function writeFigures(dir: string, figures: Figure[]): Promise<Figure[]> {
  for (const f of figures) await writeFigure(dir, f.name, f.spec);
  return figures;
}
