// Figures for the analysis: small typed chart descriptions turned into Vega-Lite specs, drawn as
// SVG by Vega without a browser, and as PNG by resvg (WebAssembly). The text of both is DejaVu
// Sans, shipped in train/fonts/ (its licence beside it): a WebAssembly renderer sees no system
// fonts, and Vega without a canvas only guesses text widths, so the same font file gives Vega
// its text widths (fontkit) and resvg its glyphs.
//
// Every dependency is pinned inline and comes from npm; nothing here needs a browser, a canvas
// package or a display.

import * as vega from "npm:vega@6.4.0";
import * as vl from "npm:vega-lite@6.5.0";
import type { TopLevelSpec } from "npm:vega-lite@6.5.0";
import { initWasm, Resvg } from "npm:@resvg/resvg-wasm@2.6.2";
import * as fontkit from "npm:fontkit@2.0.4";
import { writeFileAtomic } from "../model/atomic_write.ts";

/** A Vega-Lite specification, as the chart functions return it and `renderSvg` takes it. */
export type VegaLiteSpec = TopLevelSpec;

/** The family name of the shipped font; the SVGs name it first in their font stack. */
export const FONT_FAMILY = "DejaVu Sans";
/** Verdana and DejaVu Sans (a Bitstream Vera descendant) have near-identical widths. */
const FONT_STACK = `${FONT_FAMILY}, Verdana, sans-serif`;
const FONT_URL = new URL("./fonts/DejaVuSans.ttf", import.meta.url);

// ---------------------------------------------------------------------------------------------
// Chart descriptions

/**
 * One line: `points` are `[x, y]` pairs, joined in the order given (x need not increase: two
 * points at one x draw a vertical step, e.g. a backbone restored between two stages).
 */
export interface LineSeries {
  name: string;
  points: [number, number][];
}

/** Lines sharing one x and one y axis (weight distance, loss, accuracy, gradient norm vs step). */
export interface LineChart {
  title: string;
  subtitle?: string;
  /** Axis titles; put the unit in them, e.g. "step (optimizer updates)". */
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  /** Log-scaled y axis; points with y <= 0 cannot be drawn on it and are left out. */
  logY?: boolean;
  /** Legend title (default "series"). */
  legendTitle?: string;
  /** The series are ordered (layers 0..L-1): a sequential colour scale instead of categories. */
  ordered?: boolean;
  /** A dot on every point; default: only when no series has more than 30 points. */
  showPoints?: boolean;
  /** Plot area size in px (default 560 x 320); the figure adds axes, title and legend. */
  width?: number;
  height?: number;
}

/** One distribution: the raw values (e.g. one L2 distance per example). */
export interface DistributionSeries {
  name: string;
  values: number[];
}

/** Several distributions on one shared value axis (one row per series). */
export interface DistributionChart {
  title: string;
  subtitle?: string;
  /** The value axis title, with its unit. */
  xLabel: string;
  /** Title of the axis naming the series (default: none; the series names speak). */
  seriesLabel?: string;
  series: DistributionSeries[];
  /**
   * "box" (default): a box (quartiles, median, min-max whiskers), the mean as a diamond and every
   * value as a dot; "histogram": one histogram per series, stacked, with shared bins.
   */
  style?: "box" | "histogram";
  /** Plot width in px (default 560). */
  width?: number;
}

/** One 2-D point: `label` picks its colour, `panel` its facet. */
export interface ScatterPoint {
  x: number;
  y: number;
  label: string;
  panel?: string;
}

/** A scatter plot coloured by label, one panel per distinct `panel` (t-SNE of features). */
export interface ScatterChart {
  title: string;
  subtitle?: string;
  points: ScatterPoint[];
  /** Axis titles (default "t-SNE 1" / "t-SNE 2"). */
  xLabel?: string;
  yLabel?: string;
  /** Legend title (default "label"). */
  legendTitle?: string;
  /** Panels per row (default: all in one row up to 3). */
  columns?: number;
  /** Size of one panel in px (default: 480 alone, 290 for two per row, 210 for three). */
  panelSize?: number;
}

// ---------------------------------------------------------------------------------------------
// Specs

const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";

/** Readable at a README's width: 12-16 px text, thin light grid, a colour-blind-safe palette. */
const CONFIG = {
  font: FONT_STACK,
  // No per-mark ARIA descriptions: they would repeat every data point in the SVG as text.
  aria: false,
  background: "white",
  padding: 12,
  view: { stroke: "#c8c8c8", strokeWidth: 0.8 },
  title: {
    fontSize: 16,
    fontWeight: "normal",
    color: "#111111",
    anchor: "start",
    offset: 12,
    subtitleFontSize: 12,
    subtitleColor: "#555555",
    subtitlePadding: 5,
  },
  axis: {
    labelFontSize: 12,
    labelColor: "#333333",
    titleFontSize: 13,
    titleFontWeight: "normal",
    titleColor: "#222222",
    titlePadding: 8,
    gridColor: "#e4e4e4",
    gridWidth: 0.7,
    domainColor: "#888888",
    tickColor: "#888888",
  },
  legend: {
    labelFontSize: 12,
    labelColor: "#333333",
    labelLimit: 280,
    titleFontSize: 12.5,
    titleFontWeight: "normal",
    titleColor: "#222222",
    titleLimit: 280,
    symbolStrokeWidth: 2.5,
  },
  header: {
    labelFontSize: 13,
    labelColor: "#222222",
    titleFontSize: 13,
    titleFontWeight: "normal",
  },
  range: { category: { scheme: "tableau10" } },
  line: { strokeWidth: 2 },
} as const;

function titleOf(title: string, subtitle?: string) {
  return subtitle ? { text: title, subtitle } : title;
}

function finite(v: number): boolean {
  return Number.isFinite(v);
}

function uniqueNames(kind: string, names: string[]): void {
  const seen = new Set<string>();
  for (const n of names) {
    if (seen.has(n)) throw new Error(`${kind}: two series are named "${n}"`);
    seen.add(n);
  }
}

/** Categorical colours: tableau10 up to 10 names, tableau20 up to 20, then a sequential ramp. */
function colourScale(domain: string[], ordered = false) {
  if (ordered || domain.length > 20) {
    return { domain, scheme: { name: "viridis", extent: [0, 0.88] } };
  }
  return domain.length > 10 ? { domain, scheme: "tableau20" } : { domain };
}

/** Legend in several columns when it has many entries, so it does not outgrow the plot. */
function legendFor(title: string, entries: number, rowsFit: number) {
  const columns = Math.max(1, Math.ceil(entries / Math.max(4, rowsFit)));
  return columns > 1 ? { title, columns, symbolLimit: 0 } : { title, symbolLimit: 0 };
}

/** Vega-Lite spec of a line chart: one coloured line per series, legend in series order. */
export function lineChartSpec(chart: LineChart): VegaLiteSpec {
  if (chart.series.length === 0) throw new Error(`line chart "${chart.title}": no series`);
  uniqueNames(`line chart "${chart.title}"`, chart.series.map((s) => s.name));
  const width = chart.width ?? 560;
  const height = chart.height ?? 320;
  const values: { series: string; x: number; y: number; i: number }[] = [];
  for (const s of chart.series) {
    for (const [i, [x, y]] of s.points.entries()) {
      if (!finite(x) || !finite(y) || (chart.logY && y <= 0)) continue;
      values.push({ series: s.name, x, y, i });
    }
  }
  const names = chart.series.map((s) => s.name);
  const longest = Math.max(...chart.series.map((s) => s.points.length));
  const showPoints = chart.showPoints ?? longest <= 30;
  return {
    $schema: SCHEMA,
    title: titleOf(chart.title, chart.subtitle),
    width,
    height,
    config: CONFIG,
    data: { values },
    mark: showPoints ? { type: "line", point: { filled: true, size: 28 } } : { type: "line" },
    encoding: {
      x: {
        field: "x",
        type: "quantitative",
        title: chart.xLabel,
        scale: { zero: false },
        // Centred end labels: a flush last label crowds its neighbour ("1,800 2,000").
        axis: { labelFlush: false },
      },
      y: {
        field: "y",
        type: "quantitative",
        title: chart.yLabel,
        scale: chart.logY ? { type: "log" } : { zero: false },
        axis: chart.logY ? { format: "~g" } : {},
      },
      color: {
        field: "series",
        type: "nominal",
        scale: colourScale(names, chart.ordered),
        legend: legendFor(chart.legendTitle ?? "series", names.length, Math.floor(height / 17)),
      },
      order: { field: "i", type: "quantitative" },
    },
  } as VegaLiteSpec;
}

/**
 * A deterministic jitter in [-1, 1): the golden-ratio sequence, evenly spread for any count, so
 * the same data draw the same figure (Vega-Lite's own jitter calls random()).
 */
function jitter(i: number): number {
  const f = (i * 0.6180339887498949) % 1;
  return 2 * f - 1;
}

/** Vega-Lite spec of several distributions sharing one value axis. */
export function distributionChartSpec(chart: DistributionChart): VegaLiteSpec {
  if (chart.series.length === 0) throw new Error(`distribution "${chart.title}": no series`);
  uniqueNames(`distribution "${chart.title}"`, chart.series.map((s) => s.name));
  const names = chart.series.map((s) => s.name);
  const width = chart.width ?? 560;
  const values: { series: string; value: number; jitter: number }[] = [];
  for (const s of chart.series) {
    let i = 0;
    for (const v of s.values) {
      if (finite(v)) values.push({ series: s.name, value: v, jitter: jitter(i++) });
    }
  }
  const colour = { field: "series", type: "nominal", scale: colourScale(names), legend: null };
  if (chart.style === "histogram") {
    return {
      $schema: SCHEMA,
      title: titleOf(chart.title, chart.subtitle),
      config: CONFIG,
      data: { values },
      facet: {
        row: {
          field: "series",
          type: "nominal",
          sort: names,
          title: chart.seriesLabel ?? null,
          header: { labelAngle: 0, labelAlign: "left", labelOrient: "top", labelPadding: 4 },
        },
      },
      spacing: 6,
      spec: {
        width,
        height: 70,
        mark: { type: "bar", binSpacing: 0.5 },
        encoding: {
          x: { field: "value", type: "quantitative", bin: { maxbins: 40 }, title: chart.xLabel },
          y: { aggregate: "count", type: "quantitative", title: "examples" },
          color: colour,
        },
      },
    } as VegaLiteSpec;
  }
  const y = {
    field: "series",
    type: "nominal",
    sort: names,
    title: chart.seriesLabel ?? null,
    axis: { labelLimit: 200, ticks: false, domain: false },
  };
  const x = { field: "value", type: "quantitative", title: chart.xLabel, scale: { zero: false } };
  return {
    $schema: SCHEMA,
    title: titleOf(
      chart.title,
      chart.subtitle ??
        "box: quartiles and median, whiskers: min to max, diamond: mean, dots: values",
    ),
    width,
    height: { step: 46 },
    config: CONFIG,
    data: { values },
    layer: [
      {
        mark: { type: "point", filled: true, size: 14, opacity: 0.45 },
        encoding: {
          x,
          y,
          yOffset: { field: "jitter", type: "quantitative", scale: { domain: [-3.2, 3.2] } },
          color: colour,
        },
      },
      {
        mark: {
          type: "boxplot",
          extent: "min-max",
          size: 16,
          box: { fillOpacity: 0.18, strokeWidth: 1.2 },
          median: { color: "#222222", strokeWidth: 2 },
          rule: { strokeWidth: 1.2 },
          ticks: { size: 10 },
        },
        encoding: { x, y, color: colour, stroke: colour },
      },
      {
        mark: {
          type: "point",
          shape: "diamond",
          filled: true,
          size: 70,
          color: "#222222",
          stroke: "white",
          strokeWidth: 0.8,
        },
        encoding: { x: { ...x, aggregate: "mean" }, y },
      },
    ],
  } as VegaLiteSpec;
}

/** Vega-Lite spec of a scatter plot: colour by label, one panel per `panel` value (own scales). */
export function scatterChartSpec(chart: ScatterChart): VegaLiteSpec {
  if (chart.points.length === 0) throw new Error(`scatter "${chart.title}": no points`);
  const labels: string[] = [];
  const panels: string[] = [];
  const values: { x: number; y: number; label: string; panel: string }[] = [];
  for (const p of chart.points) {
    if (!finite(p.x) || !finite(p.y)) continue;
    if (!labels.includes(p.label)) labels.push(p.label);
    const panel = p.panel ?? "";
    if (!panels.includes(panel)) panels.push(panel);
    values.push({ x: p.x, y: p.y, label: p.label, panel });
  }
  // Scores (STS-B's, rounded) read in order; names stay in the order they first come.
  if (labels.every((l) => l.trim() !== "" && Number.isFinite(Number(l)))) {
    labels.sort((a, b) => Number(a) - Number(b));
  }
  const faceted = panels.length > 1 || panels[0] !== "";
  const columns = chart.columns ?? Math.min(panels.length, 3);
  const size = chart.panelSize ?? (columns <= 1 ? 480 : columns === 2 ? 290 : 210);
  const n = values.length / panels.length;
  const dot = n > 2000 ? 8 : n > 500 ? 14 : 24;
  const inner = {
    width: size,
    height: size,
    mark: { type: "circle", size: dot, opacity: 0.75 },
    encoding: {
      x: {
        field: "x",
        type: "quantitative",
        title: chart.xLabel ?? "t-SNE 1",
        scale: { zero: false },
      },
      y: {
        field: "y",
        type: "quantitative",
        title: chart.yLabel ?? "t-SNE 2",
        scale: { zero: false },
      },
      color: {
        field: "label",
        type: "nominal",
        scale: colourScale(labels),
        legend: {
          ...legendFor(chart.legendTitle ?? "label", labels.length, Math.floor(size / 17)),
          symbolOpacity: 1,
          symbolSize: 110,
        },
      },
    },
  };
  const head = { $schema: SCHEMA, title: titleOf(chart.title, chart.subtitle), config: CONFIG };
  if (!faceted) return { ...head, data: { values }, ...inner } as VegaLiteSpec;
  return {
    ...head,
    data: { values },
    facet: { field: "panel", type: "nominal", sort: panels, title: null },
    columns,
    spacing: 24,
    spec: inner,
    resolve: { scale: { x: "independent", y: "independent" } },
  } as VegaLiteSpec;
}

// ---------------------------------------------------------------------------------------------
// Rendering

let fontBytes: Promise<Uint8Array<ArrayBuffer>> | undefined;

/** The shipped TTF, read beside this module: from disk in a checkout, over HTTP when imported by URL. */
function loadFont(): Promise<Uint8Array<ArrayBuffer>> {
  fontBytes ??= readUrl(FONT_URL).catch((e) => {
    fontBytes = undefined;
    throw new Error(`plots: cannot load the font ${FONT_URL.href}: ${(e as Error).message}`);
  });
  return fontBytes;
}

async function readUrl(url: URL): Promise<Uint8Array<ArrayBuffer>> {
  if (url.protocol === "file:") return await Deno.readFile(url);
  const res = await fetch(url);
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

type TextItem = { fontSize?: number; limit?: number };
let metricsReady: Promise<void> | undefined;

/**
 * Gives Vega real text widths. Without a canvas Vega estimates every character at 0.8 em, which
 * leaves wide gaps beside legends and axis labels; `textMetrics.width` is Vega's documented hook
 * for a custom measure (vl-convert uses it the same way). Widths come from fontkit's layout of
 * the shipped font (with kerning), cached per string and size, so they match resvg's glyphs.
 */
function installTextMetrics(): Promise<void> {
  metricsReady ??= loadFont().then((bytes) => {
    const font = fontkit.create(bytes as unknown as Buffer) as fontkit.Font;
    const perEm = font.unitsPerEm;
    const cache = new Map<string, number>();
    const em = (text: string): number => {
      let w = cache.get(text);
      if (w === undefined) {
        w = font.layout(text).advanceWidth / perEm;
        cache.set(text, w);
      }
      return w;
    };
    // The export exists at run time (vega re-exports vega-scenegraph's) but not in vega's types.
    const metrics = (vega as unknown as { textMetrics: { width: unknown } }).textMetrics;
    metrics.width = (item: TextItem, text?: unknown): number => {
      const size = item.fontSize != null ? +item.fontSize || 0 : 11;
      const s = text == null ? "" : String(text).trim();
      if (size <= 0 || s === "") return 0;
      const w = em(s) * size;
      // Vega truncates text longer than `limit` with an ellipsis; its width is then the limit.
      return item.limit && item.limit > 0 ? Math.min(w, item.limit) : w;
    };
  });
  return metricsReady;
}

/**
 * Renders a Vega-Lite spec to an SVG document (Vega's headless SVG string renderer; no browser,
 * no canvas). The output depends only on the spec: no timestamps, no random ids.
 */
export async function renderSvg(spec: VegaLiteSpec): Promise<string> {
  await installTextMetrics();
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return shortNumbers(stableIds(await view.toSVG()));
  } finally {
    view.finalize();
  }
}

/**
 * Vega numbers clip paths (and gradients) with process-wide counters, so the same figure drawn
 * twice would differ; renumbered in order of appearance, the SVG depends on the spec alone.
 */
function stableIds(svg: string): string {
  const renamed = new Map<string, string>();
  const counts = new Map<string, number>();
  return svg.replace(
    /(id="|url\(#)(clip|gradient_|p_gradient_)(\d+)/g,
    (_m, before: string, kind: string, n: string) => {
      let id = renamed.get(kind + n);
      if (id === undefined) {
        const k = (counts.get(kind) ?? 0) + 1;
        counts.set(kind, k);
        id = `${kind}${k}`;
        renamed.set(kind + n, id);
      }
      return before + id;
    },
  );
}

const GEOMETRY = /\s(d|transform|x|y|x1|x2|y1|y2|width|height|stroke-width)="([^"]*)"/g;

/**
 * Rounds the coordinates in geometry attributes to 0.01 px ("137.1734676732931" becomes
 * "137.17"): a third less SVG for scatter plots, invisible even at 2x. Text is left alone.
 */
function shortNumbers(svg: string): string {
  return svg.replace(GEOMETRY, (_m, name: string, value: string) => {
    const short = value.replace(/-?\d+\.\d{3,}(?:e-?\d+)?/g, (n) => {
      const r = Number(Number(n).toFixed(2));
      return String(Object.is(r, -0) ? 0 : r);
    });
    return ` ${name}="${short}"`;
  });
}

let resvgReady: Promise<void> | undefined;

/**
 * Starts resvg's WebAssembly module once per process. The .wasm file is one of the package's own
 * exports ("./index_bg.wasm"), so `import.meta.resolve` on the pinned npm specifier names it in
 * Deno's npm cache (or in node_modules/ where a project uses one): a file: URL both when this
 * module runs from a checkout and when it is imported by URL, since npm packages are always
 * installed locally; the static import above makes sure the package is. A non-file: answer
 * (some future embedding) is fetched instead. The `import source` form that Deno also runs is not
 * accepted by `deno check`, and fetching a CDN copy would need network access at render time.
 */
function startResvg(): Promise<void> {
  resvgReady ??= (async () => {
    const url = new URL(import.meta.resolve("npm:@resvg/resvg-wasm@2.6.2/index_bg.wasm"));
    const bytes = await readUrl(url);
    await initWasm(await WebAssembly.compile(bytes));
  })().catch((e) => {
    resvgReady = undefined;
    throw new Error(`plots: cannot start resvg: ${(e as Error).message}`);
  });
  return resvgReady;
}

/** Options of `renderPng`. */
export interface PngOptions {
  /** Pixels per SVG unit (default 2: crisp on high-density screens and when scaled down). */
  scale?: number;
  /** Background colour (default white; the SVG paints its own white background anyway). */
  background?: string;
}

/** Rasterizes an SVG to PNG bytes with resvg, text in the shipped font. */
export async function renderPng(svg: string, opts: PngOptions = {}): Promise<Uint8Array> {
  const [font] = await Promise.all([loadFont(), startResvg()]);
  const resvg = new Resvg(svg, {
    fitTo: { mode: "zoom", value: opts.scale ?? 2 },
    background: opts.background ?? "white",
    font: {
      fontBuffers: [font],
      defaultFontFamily: FONT_FAMILY,
      sansSerifFamily: FONT_FAMILY,
    },
    shapeRendering: 2,
    textRendering: 1,
  });
  try {
    const image = resvg.render();
    try {
      return image.asPng();
    } finally {
      image.free();
    }
  } finally {
    resvg.free();
  }
}

/** Paths `writeFigure` wrote. */
export interface FigurePaths {
  svg: string;
  png: string;
}

/**
 * Renders `spec` and writes `<dir>/<name>.svg` and `<dir>/<name>.png`, each atomically (a reader
 * never sees half a file); creates `dir` if needed.
 */
export async function writeFigure(
  dir: string,
  name: string,
  spec: VegaLiteSpec,
  opts: PngOptions = {},
): Promise<FigurePaths> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
    throw new Error(`figure name "${name}": use letters, digits, ".", "_" and "-" only`);
  }
  const svg = await renderSvg(spec);
  const png = await renderPng(svg, opts);
  await Deno.mkdir(dir, { recursive: true });
  const paths = { svg: `${dir}/${name}.svg`, png: `${dir}/${name}.png` };
  await writeFileAtomic(paths.svg, svg);
  await writeFileAtomic(paths.png, png);
  return paths;
}
