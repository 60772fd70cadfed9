// train/plots.ts: every chart kind renders to a well-formed SVG with the expected series, points
// and text, and to a PNG at twice the SVG's size whose text was really drawn in the shipped font.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import {
  type DistributionChart,
  distributionChartSpec,
  FONT_FAMILY,
  type LineChart,
  lineChartSpec,
  renderPng,
  renderSvg,
  type ScatterChart,
  scatterChartSpec,
  type VegaLiteSpec,
  writeFigure,
} from "../train/plots.ts";

// ---------------------------------------------------------------------------------------------
// SVG helpers

/** Checks the document is one balanced <svg> element and returns its width and height. */
function checkSvg(svg: string): { width: number; height: number } {
  assert(svg.startsWith("<svg"), `not an SVG: ${svg.slice(0, 40)}`);
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([A-Za-z][\w:-]*)(?:\s[^>]*?)?(\/?)>/g)) {
    const [, close, name, selfClose] = m;
    if (selfClose) continue;
    if (close) {
      const open = stack.pop();
      assertEquals(open, name, `</${name}> closes <${open}>`);
    } else stack.push(name);
  }
  assertEquals(stack.length, 0, `unclosed elements: ${stack.join(" ")}`);
  assert(svg.trimEnd().endsWith("</svg>"), "document does not end with </svg>");
  const head = svg.slice(0, svg.indexOf(">"));
  const width = Number(/\bwidth="([\d.]+)"/.exec(head)?.[1]);
  const height = Number(/\bheight="([\d.]+)"/.exec(head)?.[1]);
  assert(width > 100 && height > 100, `size ${width} x ${height}`);
  return { width, height };
}

/** The contents of each leaf mark group whose class starts with `cls` (they hold no <g>). */
function groups(svg: string, cls: string): string[] {
  const re = new RegExp(`<g class="${cls}[^"]*"[^>]*>(.*?)</g>`, "g");
  return [...svg.matchAll(re)].map((m) => m[1]);
}

function count(s: string, re: RegExp): number {
  return [...s.matchAll(re)].length;
}

/** The texts drawn in groups of class `cls` (e.g. legend labels). */
function texts(svg: string, cls: string): string[] {
  return groups(svg, cls).flatMap((g) =>
    [...g.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1])
  );
}

function hasText(svg: string, text: string): boolean {
  const escaped = text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
  return svg.includes(`>${escaped}</text>`);
}

// ---------------------------------------------------------------------------------------------
// PNG helpers: a minimal decoder for what resvg writes (8-bit RGBA or RGB, not interlaced).

interface Image {
  width: number;
  height: number;
  rgba: Uint8Array;
}

async function inflate(data: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function decodePng(png: Uint8Array): Promise<Image> {
  assertEquals([...png.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "PNG signature");
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let width = 0, height = 0, channels = 0;
  const idat: Uint8Array[] = [];
  for (let at = 8; at < png.length;) {
    const length = view.getUint32(at);
    const type = new TextDecoder().decode(png.subarray(at + 4, at + 8));
    const body = png.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      const [depth, colour, , , interlace] = body.subarray(8, 13);
      assertEquals(depth, 8, "bit depth");
      assertEquals(interlace, 0, "interlace");
      channels = colour === 6 ? 4 : colour === 2 ? 3 : 0;
      assert(channels > 0, `colour type ${colour}`);
    } else if (type === "IDAT") idat.push(body);
    else if (type === "IEND") break;
    at += 12 + length;
  }
  const joined = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  idat.reduce((o, c) => (joined.set(c, o), o + c.length), 0);
  const raw = await inflate(joined);
  const stride = width * channels;
  assertEquals(raw.length, height * (stride + 1), "decompressed size");
  const px = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = px.subarray(y * stride, (y + 1) * stride);
    const up = y > 0 ? px.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? row[i - channels] : 0;
      const b = up[i];
      const c = i >= channels ? up[i - channels] : 0;
      let p: number;
      if (filter === 0) p = 0;
      else if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else {
        const q = a + b - c, pa = Math.abs(q - a), pb = Math.abs(q - b), pc = Math.abs(q - c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      row[i] = (src[i] + p) & 255;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    for (let k = 0; k < 3; k++) rgba[i * 4 + k] = px[i * channels + k];
    rgba[i * 4 + 3] = channels === 4 ? px[i * channels + 3] : 255;
  }
  return { width, height, rgba };
}

/** Pixels darker than mid grey inside [x0, x1) x [y0, y1). */
function darkPixels(img: Image, x0: number, y0: number, x1: number, y1: number): number {
  let n = 0;
  for (let y = y0; y < Math.min(y1, img.height); y++) {
    for (let x = x0; x < Math.min(x1, img.width); x++) {
      const i = (y * img.width + x) * 4;
      if (img.rgba[i] + img.rgba[i + 1] + img.rgba[i + 2] < 3 * 110) n++;
    }
  }
  return n;
}

function differingPixels(a: Image, b: Image): number {
  assertEquals([a.width, a.height], [b.width, b.height]);
  let n = 0;
  for (let i = 0; i < a.rgba.length; i += 4) {
    if (
      a.rgba[i] !== b.rgba[i] || a.rgba[i + 1] !== b.rgba[i + 1] || a.rgba[i + 2] !== b.rgba[i + 2]
    ) n++;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Charts

const STRATEGIES = ["ft", "lp", "lpft", "ehft"];

function lineChart(pointsPerSeries: number, extra: Partial<LineChart> = {}): LineChart {
  return {
    title: "Distance from the pretrained weights",
    xLabel: "step (optimizer updates)",
    yLabel: "weight distance (L2 norm)",
    legendTitle: "strategy",
    series: STRATEGIES.map((name, k) => ({
      name,
      points: Array.from(
        { length: pointsPerSeries },
        (_, i) => [i * 10, (k + 1) * Math.sqrt(i + 1)] as [number, number],
      ),
    })),
    ...extra,
  };
}

Deno.test("line chart: one line per series with every point, legend, titles", async () => {
  const n = 120;
  const svg = await renderSvg(lineChartSpec(lineChart(n)));
  checkSvg(svg);
  const lines = groups(svg, "mark-line role-mark");
  const paths = lines.flatMap((g) => [...g.matchAll(/<path[^>]*\sd="([^"]*)"/g)].map((m) => m[1]));
  assertEquals(paths.length, STRATEGIES.length, "line paths");
  for (const d of paths) {
    // One move and n - 1 line segments: M x,y L x,y ...
    assertEquals(count(d, /M/g), 1, "one subpath per series");
    assertEquals(count(d, /L/g), n - 1, "segments per line");
  }
  assertEquals(groups(svg, "mark-symbol role-mark").length, 0, "no dots past 30 points");
  assertEquals(texts(svg, "mark-text role-legend-label"), STRATEGIES);
  assertEquals(texts(svg, "mark-text role-legend-title"), ["strategy"]);
  for (const t of ["Distance from the pretrained weights", "step (optimizer updates)"]) {
    assert(hasText(svg, t), `missing text "${t}"`);
  }
  assert(hasText(svg, "weight distance (L2 norm)"), "y axis title");
  assert(svg.includes(`font-family="${FONT_FAMILY}`), "the shipped font is named first");
  // Readable sizes: no text below 11 px.
  for (const m of svg.matchAll(/font-size="([\d.]+)px"/g)) assert(Number(m[1]) >= 11, m[0]);
});

Deno.test("line chart: dots on short series, log y drops what it cannot draw", async () => {
  const chart = lineChart(8, { logY: true, yLabel: "gradient norm (log scale)" });
  chart.series[0].points[2] = [20, 0];
  chart.series[1].points[3] = [30, Number.NaN];
  const spec = lineChartSpec(chart);
  const svg = await renderSvg(spec);
  checkSvg(svg);
  const symbols = groups(svg, "mark-symbol role-mark").map((g) => count(g, /<path/g));
  assertEquals(symbols.reduce((a, b) => a + b, 0), 4 * 8 - 2, "one dot per drawable point");
  const values = (spec.data as { values: unknown[] }).values;
  assertEquals(values.length, 4 * 8 - 2);
  assert(JSON.stringify(spec).includes('"type":"log"'), "log scale");
  // Many series: sequential colours and a legend in columns.
  const layers = lineChartSpec({
    ...lineChart(5),
    ordered: true,
    series: Array.from(
      { length: 24 },
      (_, l) => ({ name: `layer ${l}`, points: [[0, l], [1, l]] }),
    ),
  });
  const legend = JSON.stringify((layers as { encoding: unknown }).encoding);
  assert(legend.includes('"columns":2') && legend.includes("viridis"), legend);
  const layersSvg = await renderSvg(layers);
  assertEquals(texts(layersSvg, "mark-text role-legend-label").length, 24);
});

Deno.test("chart descriptions are checked", () => {
  assertThrows(() => lineChartSpec({ ...lineChart(3), series: [] }), Error, "no series");
  const twice = lineChart(3);
  twice.series[1].name = twice.series[0].name;
  assertThrows(() => lineChartSpec(twice), Error, 'two series are named "ft"');
  assertThrows(() => scatterChartSpec({ title: "t", points: [] }), Error, "no points");
});

function distribution(style?: "box" | "histogram"): DistributionChart {
  let seed = 3;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  return {
    title: "Feature change per example",
    xLabel: "L2 distance of features (per dev example)",
    style,
    series: STRATEGIES.map((name, k) => ({
      name,
      values: Array.from({ length: 50 + 10 * k }, () => k + 2 * rand()),
    })),
  };
}

Deno.test("distribution (box): one box, one mean and every value per series", async () => {
  const chart = distribution();
  const total = chart.series.reduce((n, s) => n + s.values.length, 0);
  const svg = await renderSvg(distributionChartSpec(chart));
  checkSvg(svg);
  const symbolGroups = groups(svg, "mark-symbol role-mark").map((g) => count(g, /<path/g));
  assertEquals(symbolGroups, [total, STRATEGIES.length], "value dots, then mean diamonds");
  const rects = groups(svg, "mark-rect role-mark").map((g) => count(g, /<path/g));
  assert(rects.length >= 2, "box and median marks");
  for (const r of rects) assertEquals(r, STRATEGIES.length, "one box part per series");
  assertEquals(texts(svg, "mark-text role-axis-label").filter((t) => STRATEGIES.includes(t)), [
    ...STRATEGIES,
  ]);
  for (const t of [chart.title, chart.xLabel]) assert(hasText(svg, t), `missing "${t}"`);
  // The same data draw the same figure (the jitter is not random).
  assertEquals(await renderSvg(distributionChartSpec(chart)), svg);
});

Deno.test("distribution (histogram): one panel of bars per series, shared bins", async () => {
  const chart = distribution("histogram");
  const svg = await renderSvg(distributionChartSpec(chart));
  checkSvg(svg);
  const panels = groups(svg, "mark-rect role-mark").map((g) => count(g, /<path/g));
  assertEquals(panels.length, STRATEGIES.length, "histogram panels");
  for (const bars of panels) assert(bars >= 3 && bars <= 40, `${bars} bars`);
  for (const s of STRATEGIES) assert(hasText(svg, s), `panel "${s}"`);
  assert(hasText(svg, "examples"), "count axis title");
  assert(hasText(svg, chart.xLabel), "value axis title");
});

function scatter(panels: boolean): ScatterChart {
  const points = [];
  for (const [p, n] of [["train", 60], ["dev", 25]] as const) {
    for (let i = 0; i < n; i++) {
      points.push({
        x: Math.cos(i) * (i % 3),
        y: Math.sin(i) * (i % 5),
        label: ["entailment", "neutral", "contradiction"][i % 3],
        panel: panels ? p : undefined,
      });
    }
  }
  return { title: "t-SNE of the features", legendTitle: "gold label", points };
}

Deno.test("scatter: one dot per point, one panel per set, legend of labels", async () => {
  const svg = await renderSvg(scatterChartSpec(scatter(true)));
  checkSvg(svg);
  const dots = groups(svg, "mark-symbol role-mark").map((g) => count(g, /<path/g));
  assertEquals(dots, [60, 25], "dots per panel, in the given panel order");
  assertEquals(texts(svg, "mark-text role-legend-label"), [
    "entailment",
    "neutral",
    "contradiction",
  ]);
  assertEquals(texts(svg, "mark-text role-legend-title"), ["gold label"]);
  // Scores (STS-B's, rounded to labels) in their order, not the order they first come in.
  const scores = scatter(false);
  scores.points.forEach((p, i) => p.label = String([5, 4, 3, 1, 2, 0][i % 6]));
  const scored = await renderSvg(scatterChartSpec(scores));
  assertEquals(texts(scored, "mark-text role-legend-label"), ["0", "1", "2", "3", "4", "5"]);
  for (const t of ["train", "dev", "t-SNE 1", "t-SNE 2", "t-SNE of the features"]) {
    assert(hasText(svg, t), `missing "${t}"`);
  }
  const single = await renderSvg(scatterChartSpec(scatter(false)));
  checkSvg(single);
  assertEquals(groups(single, "mark-symbol role-mark").map((g) => count(g, /<path/g)), [85]);
});

Deno.test("SVG output depends on the spec alone (clip ids renumbered)", async () => {
  const spec = lineChartSpec(lineChart(5));
  // A clipped mark makes Vega number a clip path from a process-wide counter.
  const clipped = { ...spec, mark: { type: "line", clip: true } } as VegaLiteSpec;
  const a = await renderSvg(clipped);
  const b = await renderSvg(clipped);
  assert(a.includes('id="clip1"') && a.includes("url(#clip1)"), "clip path present");
  assertEquals(a, b);
});

Deno.test("PNG: twice the SVG's size, not blank, text drawn in the shipped font", async () => {
  const svg = await renderSvg(lineChartSpec(lineChart(40)));
  const { width, height } = checkSvg(svg);
  const png = await renderPng(svg);
  const img = await decodePng(png);
  assertEquals([img.width, img.height], [2 * width, 2 * height]);
  assertEquals((await decodePng(await renderPng(svg, { scale: 1 }))).width, width);
  // The title (dark #111 text) sits in the top-left band: dark pixels there mean glyphs drew.
  assert(darkPixels(img, 0, 0, img.width, 60) > 500, "title text drawn");
  // Dropping every <text> element must change many pixels: axis labels, titles and legend.
  const noText = await decodePng(await renderPng(svg.replace(/<text[^>]*>[^<]*<\/text>/g, "")));
  const changed = differingPixels(img, noText);
  assert(changed > 5000, `only ${changed} pixels differ without text`);
  // Lines are coloured: some strongly saturated pixels.
  let saturated = 0;
  for (let i = 0; i < img.rgba.length; i += 4) {
    const [r, g, b] = [img.rgba[i], img.rgba[i + 1], img.rgba[i + 2]];
    if (Math.max(r, g, b) - Math.min(r, g, b) > 80) saturated++;
  }
  assert(saturated > 2000, `${saturated} coloured pixels`);
});

Deno.test("writeFigure writes name.svg and name.png atomically", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/figures`;
    const paths = await writeFigure(out, "loss", lineChartSpec(lineChart(10)));
    assertEquals(paths, { svg: `${out}/loss.svg`, png: `${out}/loss.png` });
    const svg = await Deno.readTextFile(paths.svg);
    checkSvg(svg);
    const img = await decodePng(await Deno.readFile(paths.png));
    assertEquals(img.width, 2 * checkSvg(svg).width);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assertEquals(names, ["loss.png", "loss.svg"], "no temporary files left");
    await assertRejects(
      () => writeFigure(out, "../escape", lineChartSpec(lineChart(3))),
      Error,
      "figure name",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
