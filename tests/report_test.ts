// report.ts and train/report_table.ts on run folders written by hand: the markdown, CSV and JSON
// tables exactly, the average column, missing cells, seeds pooled into cells, the recursive
// discovery (a multi-seed run counted once, even with one of its seed folders named too),
// unfinished runs skipped, and the command line's one-line errors; --out's checks (a file, or a
// folder already holding report.ts's outputs, refused; --overwrite replaces only those, the
// earlier report's figures that are not drawn again removed; a late failure writes nothing).

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { IN_PROCESS_GPU } from "./gpu_fixture.ts";
import { checkOutDir, FIGURE_NAMES, parseReportArgs, report, settingsLine } from "../report.ts";
import { lockFolder } from "../model/atomic_write.ts";
import { distanceStats } from "../train/analysis.ts";
import { FlagError } from "../train/flags.ts";
import {
  buildTable,
  findRuns,
  methodTitle,
  modelNames,
  percent,
  renderCsv,
  renderMarkdown,
  tableJson,
  tidyPath,
} from "../train/report_table.ts";
import { type RunMetrics, summarizeSeeds } from "../train/run.ts";
import { H100_ENVIRONMENT, writeJson } from "./train_fixture.ts";
import type { RunEnvironment } from "../train/environment.ts";

type Best = Record<string, number | null>;

function settings(
  task: string,
  strategy: string,
  peft: string | null,
  seed: number,
  extra: Record<string, unknown> = {},
) {
  return {
    task,
    model: "roberta-large",
    data: `data/${task}`,
    strategy,
    peft,
    seed,
    seeds: 1,
    lr: 1e-5,
    ...extra,
  };
}

/** A single run; `best` null leaves it unfinished (no metrics.json). */
async function single(
  dir: string,
  task: string,
  strategy: string,
  peft: string | null,
  seed: number,
  best: Best | null,
  extra: Record<string, unknown> = {},
  resolved: Record<string, unknown> = {},
  environment?: RunEnvironment,
): Promise<RunMetrics | null> {
  await writeJson(`${dir}/run.json`, {
    settings: { ...settings(task, strategy, peft, seed, extra), out: dir },
    resolved,
    ...(environment ? { environment } : {}),
  });
  if (best === null) return null;
  const metrics = { final: best, best };
  await writeJson(`${dir}/metrics.json`, metrics);
  return metrics;
}

/** A --seeds run: seed-<n>/ folders and, once every seed has finished, the summary. */
async function multi(
  dir: string,
  task: string,
  strategy: string,
  peft: string | null,
  seeds: Record<number, Best | null>,
  extra: Record<string, unknown> = {},
  resolved: Record<string, unknown> = {},
  environment?: RunEnvironment,
): Promise<void> {
  const list = Object.keys(seeds).map(Number);
  await writeJson(`${dir}/run.json`, {
    settings: { ...settings(task, strategy, peft, list[0], extra), seeds: list.length, out: dir },
    seed_folders: list.map((s) => `seed-${s}`),
  });
  const results: Record<string, RunMetrics> = {};
  for (const s of list) {
    const seedDir = `${dir}/seed-${s}`;
    const m = await single(
      seedDir,
      task,
      strategy,
      peft,
      s,
      seeds[s],
      extra,
      resolved,
      environment,
    );
    if (m) results[String(s)] = m;
  }
  if (Object.keys(results).length === list.length) {
    await writeJson(`${dir}/metrics.json`, summarizeSeeds(results));
  }
}

const FT: Record<string, Best> = {
  rte: { accuracy: 0.7 },
  boolq: { accuracy: 0.75 },
  copa: { accuracy: 0.6 },
  cb: { accuracy: 0.8, macro_f1: 0.5 },
  wic: { accuracy: 0.65 },
  mrpc: { f1: 0.85, accuracy: 0.8 },
  qnli: { accuracy: 0.9 },
  cola: { mcc: 0.5 },
  stsb: { pearson: 0.88, spearman: 0.87 },
};

const H100 = H100_ENVIRONMENT;
const H200: RunEnvironment = {
  ...H100,
  adapter: { ...H100.adapter, description: "NVIDIA H200", device: "8995" },
};

interface Fixture {
  dir: string;
  paths: string[];
}
let fixture: Promise<Fixture> | null = null;

function prepare(): Promise<Fixture> {
  fixture ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const runs = `${dir}/runs`;
    // Where they ran: FT and EH-FT's RTE on one machine, its CoLA started on another; LoRA's
    // runs are from before run.json recorded it.
    for (const [task, best] of Object.entries(FT)) {
      await single(`${runs}/ft/${task}`, task, "ft", null, 42, best, {}, {}, H100);
    }
    await single(`${runs}/ft/boolq-retry`, "boolq", "ft", null, 43, null);
    await multi(
      `${runs}/ehft-bitfit/rte`,
      "rte",
      "ehft",
      "bitfit",
      {
        1: { accuracy: 0.8 },
        2: { accuracy: 0.9 },
      },
      {},
      {},
      H100,
    );
    const cola = `${runs}/ehft-bitfit/cola`;
    await single(cola, "cola", "ehft", "bitfit", 42, { mcc: 0.6 }, {}, {}, H200);
    // ...and resumed on the first (run.json's resumed_on).
    const colaRun = JSON.parse(await Deno.readTextFile(`${cola}/run.json`));
    await writeJson(`${cola}/run.json`, { ...colaRun, resumed_on: [H100] });
    await multi(`${runs}/ehft-bitfit/wic`, "wic", "ehft", "bitfit", {
      1: { accuracy: 0.7 },
      2: null,
    });
    // Two single runs of one cell: pooled as its seeds (their learning rates differ: a note).
    const more = `${dir}/more`;
    await single(`${more}/lora-1`, "rte", "peft", "lora", 1, { accuracy: 0.7 });
    await single(`${more}/lora-2`, "rte", "peft", "lora", 2, { accuracy: 0.75 }, {
      lr: 2e-5,
      maxLength: 256,
    });
    // The multi-seed run's seed-1 named directly, and runs/ twice: each still counted once.
    return { dir, paths: [runs, `${runs}/ehft-bitfit/rte/seed-1`, more, `${runs}/`] };
  })();
  return fixture;
}

const EXPECTED_MARKDOWN = [
  "| Method         |        RTE | BoolQ | COPA |   CB |  WiC | MRPC | QNLI | CoLA | STS-B |        Avg |",
  "| -------------- | ---------: | ----: | ---: | ---: | ---: | ---: | ---: | ---: | ----: | ---------: |",
  "| FT             |       70.0 |  75.0 | 60.0 | 80.0 | 65.0 | 85.0 | 90.0 | 50.0 |  88.0 |       73.7 |",
  "| LoRA           | 72.5 ± 2.5 |     – |    – |    – |    – |    – |    – |    – |     – | 72.5 (1/9) |",
  "| EH-FT (BitFit) | 85.0 ± 5.0 |     – |    – |    – |    – |    – |    – | 60.0 |     – | 72.5 (2/9) |",
  "",
  "Best dev score of each run × 100, mean ± standard deviation over seeds (population; none for " +
  "one seed). Metrics: accuracy; MRPC F1; CoLA Matthews correlation; STS-B Pearson. Avg: mean " +
  "over the tasks present, (k/9) when fewer; –: no finished run. Seeds per cell: 1 to 2 " +
  "(results.json lists them). Other metrics (CB macro-F1, MRPC accuracy, STS-B Spearman): " +
  "results.csv, results.json. Ran on: NVIDIA H100 80GB HBM3, Deno 2.9.6, ehft 0.1.0 (11 runs); " +
  "not recorded (2 runs); NVIDIA H200, Deno 2.9.6, ehft 0.1.0 → NVIDIA H100 80GB HBM3, Deno " +
  "2.9.6, ehft 0.1.0 (1 run).",
  "",
].join("\n");

const EXPECTED_CSV = [
  "method,strategy,peft,model,rte_mean,rte_std,rte_n,boolq_mean,boolq_std,boolq_n,copa_mean," +
  "copa_std,copa_n,cb_mean,cb_std,cb_n,wic_mean,wic_std,wic_n,mrpc_mean,mrpc_std,mrpc_n," +
  "qnli_mean,qnli_std,qnli_n,cola_mean,cola_std,cola_n,stsb_mean,stsb_std,stsb_n,average," +
  "average_tasks,cb_macro_f1_mean,cb_macro_f1_std,cb_macro_f1_n,mrpc_accuracy_mean," +
  "mrpc_accuracy_std,mrpc_accuracy_n,stsb_spearman_mean,stsb_spearman_std,stsb_spearman_n",
  "FT,ft,,roberta-large,70.00,,1,75.00,,1,60.00,,1,80.00,,1,65.00,,1,85.00,,1,90.00,,1," +
  "50.00,,1,88.00,,1,73.67,9,50.00,,1,80.00,,1,87.00,,1",
  "LoRA,peft,lora,roberta-large,72.50,2.50,2" + ",,,".repeat(8) + ",72.50,1" + ",,,".repeat(3),
  "EH-FT (BitFit),ehft,bitfit,roberta-large,85.00,5.00,2" + ",,,".repeat(6) + ",60.00,,1" +
  ",,," + ",72.50,2" + ",,,".repeat(3),
  "",
].join("\n");

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}
function std(xs: number[]): number {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length);
}

function expectedJson(dir: string): unknown {
  const runs = `${dir}/runs`;
  const cell = (metric: string, seeds: { seed: number; value: number; run: string }[]) => ({
    metric,
    mean: mean(seeds.map((s) => s.value)),
    std: seeds.length > 1 ? std(seeds.map((s) => s.value)) : null,
    n: seeds.length,
    undefinedSeeds: 0,
    seeds,
  });
  const metricOf: Record<string, string> = { mrpc: "f1", cola: "mcc", stsb: "pearson" };
  const ftCells = Object.fromEntries(
    Object.entries(FT).map(([task, best]) => {
      const metric = metricOf[task] ?? "accuracy";
      const c = cell(metric, [{ seed: 42, value: best[metric]!, run: `${runs}/ft/${task}` }]);
      // The run's other metrics, each over its one seed.
      const others = Object.entries(best).filter(([m]) => m !== metric);
      if (others.length === 0) return [task, c];
      const also = Object.fromEntries(others.map(([m, v]) => [m, { mean: v, std: null, n: 1 }]));
      return [task, { ...c, also }];
    }),
  );
  const lora = cell("accuracy", [
    { seed: 1, value: 0.7, run: `${dir}/more/lora-1` },
    { seed: 2, value: 0.75, run: `${dir}/more/lora-2` },
  ]);
  const ehftRte = cell("accuracy", [
    { seed: 1, value: 0.8, run: `${runs}/ehft-bitfit/rte` },
    { seed: 2, value: 0.9, run: `${runs}/ehft-bitfit/rte` },
  ]);
  const ehftCola = cell("mcc", [{ seed: 42, value: 0.6, run: `${runs}/ehft-bitfit/cola` }]);
  const order = ["rte", "boolq", "copa", "cb", "wic", "mrpc", "qnli", "cola", "stsb"];
  return {
    score: "best",
    tasks: order.map((name, i) => ({
      name,
      title: ["RTE", "BoolQ", "COPA", "CB", "WiC", "MRPC", "QNLI", "CoLA", "STS-B"][i],
      metric: metricOf[name] ?? "accuracy",
    })),
    rows: [
      {
        method: "FT",
        strategy: "ft",
        peft: null,
        model: "roberta-large",
        cells: ftCells,
        average: { mean: mean(order.map((t) => ftCells[t].mean)), tasks: 9 },
      },
      {
        method: "LoRA",
        strategy: "peft",
        peft: "lora",
        model: "roberta-large",
        cells: { rte: lora },
        average: { mean: lora.mean, tasks: 1 },
      },
      {
        method: "EH-FT (BitFit)",
        strategy: "ehft",
        peft: "bitfit",
        model: "roberta-large",
        cells: { rte: ehftRte, cola: ehftCola },
        average: { mean: mean([ehftRte.mean, ehftCola.mean]), tasks: 2 },
      },
    ],
    skipped: [
      {
        path: `${runs}/ehft-bitfit/wic`,
        reason: "unfinished (no metrics.json; 1 of 2 seeds finished)",
      },
      { path: `${runs}/ft/boolq-retry`, reason: "unfinished (no metrics.json)" },
    ],
    notes: [
      `LoRA RTE: pools runs with different settings (lr 0.00001 vs 0.00002, maxLength unrecorded vs 256): ` +
      `${dir}/more/lora-1, ${dir}/more/lora-2`,
    ],
    environments: [
      { environment: "NVIDIA H100 80GB HBM3, Deno 2.9.6, ehft 0.1.0", runs: 11 },
      { environment: null, runs: 2 },
      {
        environment: "NVIDIA H200, Deno 2.9.6, ehft 0.1.0 → NVIDIA H100 80GB HBM3, Deno 2.9.6, " +
          "ehft 0.1.0",
        runs: 1,
      },
    ],
  };
}

Deno.test("report: markdown, CSV and JSON of hand-written run folders, exactly", async () => {
  const { dir, paths } = await prepare();
  const table = buildTable(await findRuns(paths));
  assertEquals(renderMarkdown(table), EXPECTED_MARKDOWN);
  assertEquals(renderCsv(table), EXPECTED_CSV);
  assertEquals(JSON.parse(JSON.stringify(tableJson(table))), expectedJson(dir));
});

Deno.test("report: a folder that goes while the runs are found is passed over", async () => {
  // An --overwrite beside the report moves a run's entries away: findRuns failed with
  // "No such file or directory ... readdir" and the report with it.
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-gone-" });
  const realPath = Deno.realPath;
  try {
    await single(`${dir}/a`, "rte", "ft", null, 1, { accuracy: 0.7 });
    await single(`${dir}/b`, "rte", "ft", null, 2, { accuracy: 0.6 });
    await Deno.mkdir(`${dir}/b/model`);
    await Deno.mkdir(`${dir}/c/inner`, { recursive: true });
    const entered: string[] = [];
    Deno.realPath = async (path: string | URL) => {
      entered.push(String(path).slice(dir.length));
      // Gone between the listing of its parent and its reading.
      if (String(path) === `${dir}/c`) await Deno.remove(path, { recursive: true });
      return await realPath(path);
    };
    const found = await findRuns([dir]);
    assertEquals(found.runs.map((r) => r.path), [`${dir}/a`, `${dir}/b`]);
    // A run's own folders hold no runs: model/ is not read.
    assertEquals(entered, ["", "/a", "/b", "/c"]);
  } finally {
    Deno.realPath = realPath;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: discovery counts a multi-seed run once and skips unfinished runs", async () => {
  const { dir } = await prepare();
  const runs = `${dir}/runs`;
  // The multi-seed folder alone, its seed folders alone, and both.
  const parent = await findRuns([`${runs}/ehft-bitfit/rte`]);
  assertEquals(parent.runs.map((r) => [r.path, r.seeds.map((s) => s.seed)]), [
    [`${runs}/ehft-bitfit/rte`, [1, 2]],
  ]);
  const children = await findRuns([`${runs}/ehft-bitfit/rte/seed-1`]);
  assertEquals(children.runs.map((r) => [r.path, r.seeds]), [
    [`${runs}/ehft-bitfit/rte/seed-1`, [{ seed: 1, best: { accuracy: 0.8 } }]],
  ]);
  const both = await findRuns([
    `${runs}/ehft-bitfit/rte/seed-2`,
    `${runs}/ehft-bitfit/rte/seed-1`,
    `${runs}/ehft-bitfit/rte`,
  ]);
  assertEquals(both.runs.map((r) => r.path), [`${runs}/ehft-bitfit/rte`]);
  // An unfinished multi-seed run is skipped whole; its finished seed is not counted alone.
  const wic = await findRuns([`${runs}/ehft-bitfit/wic`]);
  assertEquals(wic.runs, []);
  assertEquals(wic.skipped.map((s) => s.reason), [
    "unfinished (no metrics.json; 1 of 2 seeds finished)",
  ]);
});

Deno.test("report: a seed whose metric is undefined is left out of the mean, and shown as such", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-undefined-" });
  try {
    // STS-B: two seeds score, the third's Pearson r is undefined (constant predictions);
    // LoRA's one seed is undefined only.
    await multi(`${dir}/ft-stsb`, "stsb", "ft", null, {
      1: { pearson: 0.9, spearman: 0.9 },
      2: { pearson: 0.88, spearman: null },
      3: { pearson: null, spearman: null },
    });
    await single(`${dir}/lora-stsb`, "stsb", "peft", "lora", 1, { pearson: null });
    await single(`${dir}/lora-rte`, "rte", "peft", "lora", 1, { accuracy: 0.7 });
    const summary = JSON.parse(await Deno.readTextFile(`${dir}/ft-stsb/metrics.json`));
    // metrics.json: the mean over the seeds that define the metric; std null below two of them.
    assertEquals(summary.best.pearson, 0.89);
    assertEquals(summary.std.best.spearman, null);
    assertEquals(summary.best.spearman, 0.9);
    assertEquals(summary.seeds["3"].best.pearson, null);

    const table = buildTable(await findRuns([dir]));
    const ft = table.rows.find((r) => r.method === "FT")!;
    assertEquals([ft.cells.stsb.n, ft.cells.stsb.undefinedSeeds], [2, 1]);
    const lora = table.rows.find((r) => r.method === "LoRA")!;
    assertEquals([lora.cells.stsb.mean, lora.cells.stsb.n, lora.cells.stsb.undefinedSeeds], [
      null,
      0,
      1,
    ]);
    assertEquals(lora.average, { mean: 0.7, tasks: 1 });
    const markdown = renderMarkdown(table);
    assert(markdown.includes("| 89.0 ± 1.0 (1 n/a) |"), markdown);
    assert(/\| LoRA +\| +70\.0 \|.* n\/a \| 70\.0 \(1\/9\) \|/.test(markdown), markdown);
    assert(
      markdown.includes(
        "n/a: the metric is undefined (a correlation where the predictions or the gold scores " +
          "are constant); (k n/a): k seeds so, left out of the mean. Seeds per cell: 1 to 2",
      ),
      markdown,
    );
    const csv = renderCsv(table).split("\n");
    assert(csv[2].startsWith("LoRA,peft,lora,roberta-large,70.00,,1,"), csv[2]);
    assert(csv[2].endsWith(",,,0,70.00,1,,,"), csv[2]);
    // The other metric: over the seeds that define it.
    assertEquals(ft.cells.stsb.also, { spearman: { mean: 0.9, std: null, n: 1 } });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a task of one's own is a column after the paper's nine, not in Avg", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-own-task-" });
  try {
    await single(`${dir}/sst2`, "sst2", "ehft", "bitfit", 1, { accuracy: 0.65, f1: 0.6 });
    await single(`${dir}/rte`, "rte", "ehft", "bitfit", 1, { accuracy: 0.7 });
    const table = buildTable(await findRuns([dir]));
    assertEquals(table.skipped, []);
    assertEquals(table.columns.map((c) => [c.title, c.metric]).slice(9), [["sst2", "accuracy"]]);
    assertEquals(table.rows[0].average, { mean: 0.7, tasks: 1 });
    const markdown = renderMarkdown(table);
    assert(/\| STS-B \| sst2 \| +Avg \|/.test(markdown), markdown);
    assert(/\| +65\.0 \| 70\.0 \(1\/9\) \|/.test(markdown), markdown);
    assert(
      markdown.includes(
        " sst2: not a task of the paper's table (its metric: accuracy), not in Avg.",
      ),
      markdown,
    );
    assert(
      renderCsv(table).split("\n")[0].endsWith(
        ",stsb_n,sst2_mean,sst2_std,sst2_n,average,average_tasks,sst2_f1_mean,sst2_f1_std,sst2_f1_n",
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: method titles, percentages", () => {
  assertEquals(
    [
      methodTitle("ft", null),
      methodTitle("lp", null),
      methodTitle("lpft", null),
      methodTitle("peft", "bitfit"),
      methodTitle("peft", "lora"),
      methodTitle("peft", "prefix"),
      methodTitle("ehft", "lora"),
      methodTitle("ehft-reserve", "bitfit"),
    ],
    ["FT", "LP", "LP-FT", "BitFit", "LoRA", "Prefix", "EH-FT (LoRA)", "EH-FT-reserve (BitFit)"],
  );
  assertEquals(
    [0.8765, 0.8125, 0.72499999999999998, 2 / 3, -0.0001, -0.25, -0.8765, -0.0005].map((x) =>
      percent(x)
    ),
    ["87.7", "81.3", "72.5", "66.7", "0.0", "-25.0", "-87.7", "-0.1"],
  );
  assertEquals([percent(0.5, 2), percent(0.7366666, 2)], ["50.00", "73.67"]);
});

/** results.md of the runs `prepare` writes in `dir`: the table, then the notes on it. */
function withNotes(dir: string): string {
  return EXPECTED_MARKDOWN + "\nNotes:\n\n" +
    `- LoRA RTE: pools runs with different settings (lr 0.00001 vs 0.00002, maxLength unrecorded vs 256): ${dir}/more/lora-1, ` +
    `${dir}/more/lora-2\n` +
    `- not in the table: \`${dir}/runs/ehft-bitfit/wic\`: unfinished (no metrics.json; 1 of 2 ` +
    "seeds finished)\n" +
    `- not in the table: \`${dir}/runs/ft/boolq-retry\`: unfinished (no metrics.json)\n`;
}

Deno.test("report: --out writes results.md, results.csv and results.json", async () => {
  const { dir, paths } = await prepare();
  const out = `${dir}/out`;
  const lines: string[] = [];
  await report(parseReportArgs([...paths, "--out", out]), (l) => lines.push(l));
  // The table, and below it what stderr says about it (a reader of the file sees no terminal).
  assertEquals(await Deno.readTextFile(`${out}/results.md`), withNotes(dir));
  assertEquals(await Deno.readTextFile(`${out}/results.csv`), EXPECTED_CSV);
  assertEquals(JSON.parse(await Deno.readTextFile(`${out}/results.json`)), expectedJson(dir));
  assertEquals(lines, [
    `report: skipped ${dir}/runs/ehft-bitfit/wic: unfinished (no metrics.json; 1 of 2 seeds ` +
    `finished)`,
    `report: skipped ${dir}/runs/ft/boolq-retry: unfinished (no metrics.json)`,
    `report: note: LoRA RTE: pools runs with different settings (lr 0.00001 vs 0.00002, maxLength unrecorded vs 256): ` +
    `${dir}/more/lora-1, ${dir}/more/lora-2`,
    `report: ${out}/results.md, results.csv and results.json written`,
    `report: ${out}/report.md written (no figures)`,
  ]);
  // No run here has --analysis: report.md is the table and says so.
  const md = await Deno.readTextFile(`${out}/report.md`);
  assert(md.includes(EXPECTED_MARKDOWN.trimEnd()), "report.md holds the table");
  assert(md.includes("No run here was trained with `--analysis`"), md);
});

const REPORT = new URL("../report.ts", import.meta.url).pathname;

async function runReport(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", REPORT, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: r.code, out: text(r.stdout), err: text(r.stderr) };
}

Deno.test("report.ts: prints the markdown; bad flags and paths are one-line errors", async () => {
  const { dir, paths } = await prepare();
  const ok = await runReport(paths);
  assertEquals(ok.code, 0, ok.err);
  assertEquals(ok.out, EXPECTED_MARKDOWN);
  assertEquals(ok.err.split("\n").filter((l) => l.startsWith("report: skipped")).length, 2);

  // Exit status 2 for the command refused as typed (its flags), 1 for the folders it names.
  const errors: [string[], number, string][] = [
    [[`${dir}/runs`, "--outt", "x"], 2, "report: unknown flag --outt (did you mean --out?)\n"],
    [[], 2, "report: give one or more run folders (or folders holding runs)\n"],
    [[`${dir}/nowhere`], 1, `report: ${dir}/nowhere: no such folder\n`],
    // After "--" every argument is a folder, even a leading one's (train.ts drops that "--").
    [["--", "--nowhere"], 1, "report: --nowhere: no such folder\n"],
    [
      [`${dir}/runs/ft/rte/run.json`],
      1,
      `report: ${dir}/runs/ft/rte/run.json: not a folder (give run folders or their parents)\n`,
    ],
    [
      [`${dir}/runs/ft/boolq-retry`],
      1,
      `report: skipped ${dir}/runs/ft/boolq-retry: unfinished (no metrics.json)\n` +
      `report: no finished runs under ${dir}/runs/ft/boolq-retry\n`,
    ],
  ];
  for (const [args, code, err] of errors) {
    const r = await runReport(args);
    assertEquals([r.code, r.out, r.err], [code, "", err], args.join(" "));
  }
});

/** Every file under `dir` (relative paths, sorted) with its text; folders end in "/". */
async function tree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${dir}${rel ? `/${rel}` : ""}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        out[`${path}/`] = "";
        await walk(path);
      } else out[path] = await Deno.readTextFile(`${dir}/${path}`);
    }
  };
  await walk("");
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** A finished run with hand-written --analysis files: feature_change only with `change`. */
async function analysedRun(
  dir: string,
  change: boolean,
  extra: Record<string, unknown> = {},
  resolved: Record<string, unknown> = {},
): Promise<void> {
  await single(dir, "rte", "ehft", "bitfit", 1, { accuracy: 0.8 }, extra, resolved);
  await writeJson(`${dir}/analysis/analysis.json`, {
    version: 1,
    task: "rte",
    strategy: "ehft",
    peft: "bitfit",
    stages: ["stage1", "final"],
    featureChange: change ? { pretrainedVsFinal: distanceStats([0.1, 0.2, 0.4]) } : null,
    weightDistance: [
      { step: 0, stage: "stage1", total: 0, layers: {} },
      { step: 4, stage: "final", total: 0.5, layers: {} },
    ],
    convergence: [],
  });
  await Deno.writeTextFile(
    `${dir}/log.jsonl`,
    [1, 2, 3].map((step) => JSON.stringify({ step, loss: 1 / step })).join("\n") + "\n",
  );
}

Deno.test("report: --out another report is writing into is refused, and a report written meanwhile kept", async () => {
  // Two reports into one --out both passed the check before their work, and the later
  // replaced the earlier without --overwrite.
  const { dir, paths } = await prepare();
  const out = `${dir}/out-raced`;
  await Deno.mkdir(out);
  const other = await lockFolder(out);
  assert(other !== null && other !== "held", "the test holds --out as another report would");
  try {
    await assertRejects(
      () => report(parseReportArgs([...paths, "--out", out]), () => {}),
      Error,
      `--out ${out}: another program is writing into it (a report.ts, or a run): wait for it, ` +
        "or choose another folder",
    );
  } finally {
    other.close();
  }
  assertEquals([...Deno.readDirSync(out)], []);
  // A folder this report made, taken by another as soon as made: left to it, not removed.
  const fresh = `${dir}/out-raced-new`;
  let taker: Deno.FsFile | null | "held" = null;
  const mkdir = Deno.mkdir;
  Deno.mkdir = async (path: string | URL, options?: Deno.MkdirOptions) => {
    await mkdir(path, options);
    if (String(path) === fresh && taker === null) taker = await lockFolder(fresh);
  };
  try {
    await assertRejects(
      () => report(parseReportArgs([...paths, "--out", fresh]), () => {}),
      Error,
      `--out ${fresh}: another program is writing into it`,
    );
  } finally {
    Deno.mkdir = mkdir;
    if (taker !== null && taker !== "held") (taker as Deno.FsFile).close();
  }
  assert((await Deno.stat(fresh)).isDirectory, "the other report's folder was removed");
  // Another report's files, written after this one's check: refused without --overwrite.
  const realPath = Deno.realPath;
  Deno.realPath = async (path: string | URL) => {
    await Deno.writeTextFile(`${out}/results.md`, "another report\n");
    return await realPath(path);
  };
  try {
    await assertRejects(
      () => report(parseReportArgs([...paths, "--out", out]), () => {}),
      FlagError,
      `--out ${out} already holds results.md: pass --overwrite`,
    );
  } finally {
    Deno.realPath = realPath;
  }
  assertEquals(await Deno.readTextFile(`${out}/results.md`), "another report\n");
});

Deno.test("report: --out refuses a file, and a folder holding report.ts's outputs", async () => {
  const { dir, paths } = await prepare();
  const base = `${dir}/refuse`;
  await Deno.mkdir(`${base}/figures`, { recursive: true });
  await Deno.writeTextFile(`${base}/file.txt`, "mine\n");
  // A hand-written report.md and an earlier report's figure beside the user's own files.
  await Deno.writeTextFile(`${base}/report.md`, "# My notes\n");
  await Deno.writeTextFile(`${base}/notes.txt`, "keep\n");
  await Deno.writeTextFile(`${base}/figures/training_loss.png`, "old png");
  await Deno.writeTextFile(`${base}/figures/mine.svg`, "<svg/>");
  const before = await tree(base);
  const cases: [string, string][] = [
    [
      `${base}/file.txt`,
      `--out ${base}/file.txt is a file, not a folder: give a folder for the report (or another ` +
      `path)`,
    ],
    [
      `${base}/file.txt/sub/out`,
      `--out ${base}/file.txt/sub/out: ${base}/file.txt is a file, not a folder`,
    ],
    [
      base,
      `--out ${base} already holds report.md, figures/ (1 figure file): pass --overwrite to ` +
      `replace them, or choose another folder`,
    ],
    // A folder that takes no file, found before the work (it was found only at the write).
    ["/proc/ehft-report", "--out /proc/ehft-report: cannot write in /proc: "],
    // An existing one: named as typed (not as the results.md in it).
    ["/proc", "--out /proc: cannot write in /proc: "],
  ];
  for (const [out, message] of cases) {
    const lines: string[] = [];
    await assertRejects(
      () => report(parseReportArgs([...paths, "--out", out]), (l) => lines.push(l)),
      FlagError,
      message,
    );
    // Refused before the runs are read: nothing logged, nothing written.
    assertEquals(lines, [], out);
  }
  assertEquals(await tree(base), before);
  // The same through the command line: one line, exit 2.
  for (const [out, message] of cases) {
    const r = await runReport([...paths, "--out", out]);
    assertEquals([r.code, r.out], [2, ""], out);
    assert(r.err.startsWith(`report: ${message}`) && r.err.split("\n").length === 2, r.err);
  }
  assertEquals(await tree(base), before);
  // A folder where report.md goes is not report.ts's to replace, even with --overwrite.
  await Deno.mkdir(`${dir}/odd/results.csv`, { recursive: true });
  await assertRejects(
    () => checkOutDir(`${dir}/odd`, true),
    FlagError,
    `--out ${dir}/odd: ${dir}/odd/results.csv is not a file: choose another folder`,
  );
  // A file where the figures go: refused before the work (it was found at the write, exit 1).
  await Deno.mkdir(`${dir}/fig-file`);
  await Deno.writeTextFile(`${dir}/fig-file/figures`, "my notes\n");
  await assertRejects(
    () => checkOutDir(`${dir}/fig-file`, true),
    FlagError,
    `--out ${dir}/fig-file: ${dir}/fig-file/figures is not a folder (report.ts draws its ` +
      "figures in one there): choose another folder",
  );
  // --overwrite without --out.
  assertThrows(
    () => parseReportArgs([dir, "--overwrite"]),
    FlagError,
    "--overwrite replaces the outputs in --out: give --out DIR too",
  );
  assertEquals(parseReportArgs([dir, "--out", "o", "--overwrite"]), {
    paths: [dir],
    out: "o",
    overwrite: true,
  });
});

Deno.test("report: --overwrite replaces report.ts's outputs only, and removes its old figures", async () => {
  const { dir, paths } = await prepare();
  const out = `${dir}/replace`;
  await Deno.mkdir(`${out}/figures`, { recursive: true });
  await Deno.writeTextFile(`${out}/report.md`, "# My notes\n");
  await Deno.writeTextFile(`${out}/results.csv`, "old,csv\n");
  await Deno.writeTextFile(`${out}/notes.txt`, "keep\n");
  await Deno.writeTextFile(`${out}/figures/training_loss.png`, "old png");
  await Deno.writeTextFile(`${out}/figures/head_features.svg`, "old svg");
  await Deno.writeTextFile(`${out}/figures/mine.svg`, "<svg/>");
  const lines: string[] = [];
  await report(parseReportArgs([...paths, "--out", out, "--overwrite"]), (l) => lines.push(l));
  const after = await tree(out);
  assertEquals(Object.keys(after), [
    "figures/",
    "figures/mine.svg",
    "notes.txt",
    "report.md",
    "results.csv",
    "results.json",
    "results.md",
  ]);
  assertEquals(after["notes.txt"], "keep\n");
  assertEquals(after["figures/mine.svg"], "<svg/>");
  assertEquals(after["results.csv"], EXPECTED_CSV);
  assertEquals(after["results.md"], withNotes(dir));
  assert(after["report.md"].startsWith("# Report\n"), after["report.md"]);
  assert(after["report.md"].includes(`--out ${out} --overwrite\``), after["report.md"]);
  assertEquals(lines.slice(-3), [
    `report: ${out}/results.md, results.csv and results.json written`,
    `report: ${out}: removed figures/head_features.svg, figures/training_loss.png (the earlier ` +
    `report's, not drawn now)`,
    `report: ${out}/report.md written (no figures)`,
  ]);
  // Again, the folder holding only report.ts's outputs: all replaced, nothing else appears.
  await report(parseReportArgs([...paths, "--out", out, "--overwrite"]), () => {});
  assertEquals(await tree(out), after);
  // The temporaries a killed report left go with the next report into the folder; a file of the
  // user's named like one stays.
  await Deno.writeTextFile(`${out}/results.md.tmp-0123abcd`, "half");
  await Deno.writeTextFile(`${out}/figures/training_loss.png.tmp-89abcdef`, "half");
  await Deno.writeTextFile(`${out}/notes.txt.tmp-01234567`, "the user's");
  const cleaned: string[] = [];
  await report(parseReportArgs([...paths, "--out", out, "--overwrite"]), (l) => cleaned.push(l));
  assert(
    cleaned.includes(`report: ${out}: removed 2 temporary files a killed report left`),
    `${cleaned}`,
  );
  assertEquals(await tree(out), { ...after, "notes.txt.tmp-01234567": "the user's" });
  await Deno.remove(`${out}/notes.txt.tmp-01234567`);
  // An earlier report's figures/ with nothing of the user's goes with its figures.
  await Deno.remove(`${out}/figures/mine.svg`);
  await Deno.writeTextFile(`${out}/figures/weight_distance.svg`, "old svg");
  await report(parseReportArgs([...paths, "--out", out, "--overwrite"]), () => {});
  const { "figures/": _, "figures/mine.svg": __, ...rest } = after;
  assertEquals(await tree(out), rest);
  // An old figure that cannot be removed (an immutable file): the new report stands, a note
  // names what is left.
  await Deno.mkdir(`${out}/figures`);
  await Deno.writeTextFile(`${out}/figures/training_loss.png`, "old png");
  const remove = Deno.remove;
  (Deno as unknown as { remove: unknown }).remove = (path: string, options?: Deno.RemoveOptions) =>
    String(path).endsWith("training_loss.png")
      ? Promise.reject(new Error("Operation not permitted (os error 1)"))
      : remove(path, options);
  const said: string[] = [];
  try {
    await report(parseReportArgs([...paths, "--out", out, "--overwrite"]), (l) => said.push(l));
  } finally {
    (Deno as unknown as { remove: unknown }).remove = remove;
  }
  assertEquals(said.slice(-3), [
    `report: ${out}/results.md, results.csv and results.json written`,
    `report: note: ${out}: could not remove the earlier report's figures/training_loss.png ` +
    "(Operation not permitted (os error 1)); report.md does not show them",
    `report: ${out}/report.md written (no figures)`,
  ]);
  assertEquals(await Deno.readTextFile(`${out}/results.md`), withNotes(dir));
});

Deno.test("report: a failure while drawing the figures leaves the earlier outputs as they were", async () => {
  const { dir, paths } = await prepare();
  // A run whose analysis cannot be read: found only after the table is built.
  const broken = `${dir}/broken/rte`;
  await single(broken, "rte", "ehft", "lora", 7, { accuracy: 0.9 });
  await Deno.mkdir(`${broken}/analysis`);
  await Deno.writeTextFile(`${broken}/analysis/analysis.json`, "{ not json");
  const message = `${broken}/analysis/analysis.json: not valid JSON (`;
  // Into a new folder: nothing written, no folder left behind.
  await assertRejects(
    () => report(parseReportArgs([broken, "--out", `${dir}/new/report`]), () => {}),
    Error,
    message,
  );
  await assertRejects(() => Deno.stat(`${dir}/new`), Deno.errors.NotFound);
  // Over an earlier report with --overwrite: every file of it as it was.
  const out = `${dir}/late-failure`;
  await report(parseReportArgs([...paths, "--out", out]), () => {});
  const before = await tree(out);
  await assertRejects(
    () => report(parseReportArgs([...paths, broken, "--out", out, "--overwrite"]), () => {}),
    Error,
    message,
  );
  assertEquals(await tree(out), before);
});

Deno.test("report: one data set under two spellings of --data pools; other examples are noted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-data-" });
  try {
    const task = (train: string) => ({ task: { train_sha256: train, dev_sha256: "d" } });
    const run = (name: string, data: string, train: string, seed: number) =>
      single(`${dir}/${name}`, "cb", "ft", null, seed, { macro_f1: 0.5, accuracy: 0.5 }, {
        data,
      }, task(train));
    await run("a", "data/superglue/CB", "t", 1);
    await run("b", "/home/me/ehft/data/superglue/CB", "t", 2);
    assertEquals(buildTable(await findRuns([`${dir}/a`, `${dir}/b`])).notes, []);
    await run("c", "data/superglue/CB", "other", 3);
    assertEquals(buildTable(await findRuns([`${dir}/a`, `${dir}/c`])).notes, [
      `FT CB: pools runs with different settings (data "data/superglue/CB" vs ` +
      `"data/superglue/CB", other examples): ${dir}/a, ${dir}/c`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "report: a write that fails into a new --out with figures leaves no folder behind",
  ...IN_PROCESS_GPU,
  fn: async () => {
    // The figures' folder went, and the --out made for it stayed, empty.
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-failed-new-" });
    const rename = Deno.rename;
    try {
      const run = `${dir}/runs/a`;
      await analysedRun(run, false);
      const out = `${dir}/new/report`;
      Deno.rename = () => Promise.reject(new Deno.errors.PermissionDenied("no renames today"));
      await assertRejects(
        () => report(parseReportArgs([run, "--out", out]), () => {}),
        Error,
        "no renames today",
      );
      Deno.rename = rename;
      assertEquals([...Deno.readDirSync(`${dir}/new`)], []);
    } finally {
      Deno.rename = rename;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "report: a method's other runs with --analysis are named as not drawn",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-one-per-method-" });
    try {
      const [a, b] = [`${dir}/runs/a`, `${dir}/runs/b`];
      await analysedRun(a, false);
      await analysedRun(b, false);
      const out = `${dir}/report`;
      const lines: string[] = [];
      await report(parseReportArgs([a, b, "--out", out]), (l) => lines.push(l));
      assertEquals(
        lines.at(-1),
        `report: ${out}/report.md written (2 figures of 1 run with --analysis, one per method; ` +
          `1 more of the same methods not drawn)`,
      );
      const md = await Deno.readTextFile(`${out}/report.md`);
      assert(md.includes(`\`${a}\`; not drawn (another run of a method above): \`${b}\`.`), md);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "report: figures drawn, replaced, and the earlier report's not drawn again removed",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-figures-" });
    try {
      const run = `${dir}/runs/rte`;
      const out = `${dir}/report`;
      await analysedRun(run, true);
      await Deno.mkdir(`${out}/figures`, { recursive: true });
      await Deno.writeTextFile(`${out}/figures/mine.png`, "mine");
      await report(parseReportArgs([run, "--out", out]), () => {});
      const drawn = [
        "feature_change.png",
        "feature_change.svg",
        "training_loss.png",
        "training_loss.svg",
        "weight_distance.png",
        "weight_distance.svg",
      ];
      const list = async () => {
        const names: string[] = [];
        for await (const e of Deno.readDir(`${out}/figures`)) names.push(e.name);
        return names.sort();
      };
      assertEquals(await list(), [...drawn.slice(0, 2), "mine.png", ...drawn.slice(2)]);
      const md = await Deno.readTextFile(`${out}/report.md`);
      assert(md.includes("(figures/feature_change.png)"), md);
      // Run again: refused (the figures are report.ts's), then replaced with --overwrite.
      await assertRejects(
        () => report(parseReportArgs([run, "--out", out]), () => {}),
        FlagError,
        `--out ${out} already holds results.md, results.csv, results.json, report.md, figures/ ` +
          `(6 figure files): pass --overwrite`,
      );
      await analysedRun(run, false);
      const lines: string[] = [];
      await report(parseReportArgs([run, "--out", out, "--overwrite"]), (l) => lines.push(l));
      assertEquals(await list(), ["mine.png", ...drawn.slice(2)]);
      assert(!(await Deno.readTextFile(`${out}/report.md`)).includes("feature_change"));
      assertEquals(
        lines.at(-1),
        `report: ${out}/report.md written (2 figures of 1 run with --analysis, one per method)`,
      );
      assertEquals(await Deno.readTextFile(`${out}/figures/mine.png`), "mine");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("report: FIGURE_NAMES lists every figure comparisonFigures draws", async () => {
  const source = await Deno.readTextFile(
    new URL("../train/analysis_figures.ts", import.meta.url),
  );
  const start = source.indexOf("export async function comparisonFigures");
  assert(start >= 0, "comparisonFigures not found");
  const end = source.indexOf("\nexport ", start + 1);
  const body = source.slice(start, end < 0 ? undefined : end);
  const names = [...body.matchAll(/^\s*name: "([A-Za-z0-9_.-]+)",$/gm)].map((m) => m[1]);
  assert(names.length > 0, "no figure names found");
  for (const name of names) {
    assert((FIGURE_NAMES as readonly string[]).includes(name), `${name} is not in FIGURE_NAMES`);
  }
});

Deno.test({
  name: "report: figures compare one task on one model; mixed runs get a note, not figures",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-mixed-" });
    try {
      const rte = `${dir}/runs/rte`, cb = `${dir}/runs/cb`;
      await analysedRun(rte, true);
      await analysedRun(cb, true);
      await single(cb, "cb", "ft", null, 1, { accuracy: 0.7 });
      const lines: string[] = [];
      await report(parseReportArgs([rte, cb, "--out", `${dir}/mixed`]), (l) => lines.push(l));
      assert(
        lines.some((l) =>
          l.startsWith("report: note: no figures: the runs with --analysis are on")
        ),
        lines.join("\n"),
      );
      await assertRejects(() => Deno.stat(`${dir}/mixed/figures`), Deno.errors.NotFound);
      const mixed = await Deno.readTextFile(`${dir}/mixed/report.md`);
      assert(mixed.includes("No figures: the runs with `--analysis` are on rte with"), mixed);

      // One task: the figures, and which run each method's come from.
      await report(parseReportArgs([rte, "--out", `${dir}/one`]), () => {});
      const one = await Deno.readTextFile(`${dir}/one/report.md`);
      assert(one.includes("The figures compare the runs on rte with "), one);
      assert(one.includes(`EH-FT (BitFit) \`${rte}\``), one);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A run's --model and what train.ts resolves it to (run.json's resolved.model.real_dir). */
function modelRun(
  model: string,
  realDir: string,
): [Record<string, unknown>, Record<string, unknown>] {
  return [{ model }, { model: { dir: model, real_dir: realDir } }];
}

Deno.test("report: runs of one model folder under several --model spellings are one model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-models-" });
  try {
    const tiny = "/models/tiny", other = "/models/other";
    const runs = `${dir}/runs`;
    // A relative path, an absolute one and a --seeds run (whose seed folders' run.json hold what
    // they resolved) on one folder; another folder; a run.json older than real_dir.
    await single(
      `${runs}/a1`,
      "rte",
      "ft",
      null,
      1,
      { accuracy: 0.6 },
      ...modelRun("models/tiny", tiny),
    );
    await single(`${runs}/a2`, "rte", "ft", null, 2, { accuracy: 0.7 }, ...modelRun(tiny, tiny));
    await multi(
      `${runs}/a3`,
      "rte",
      "ft",
      null,
      { 3: { accuracy: 0.8 }, 4: { accuracy: 0.9 } },
      ...modelRun("./models//tiny/", tiny),
    );
    await single(
      `${runs}/b1`,
      "rte",
      "ft",
      null,
      1,
      { accuracy: 0.4 },
      ...modelRun("models/other", other),
    );
    await single(`${runs}/c1`, "rte", "ft", null, 1, { accuracy: 0.5 }, { model: "./old//" });
    await single(`${runs}/c2`, "rte", "ft", null, 2, { accuracy: 0.3 }, { model: "old" });
    const table = buildTable(await findRuns([runs]));
    assertEquals(
      table.rows.map((r) => [r.model, r.cells.rte.n, r.cells.rte.mean]),
      [["./old//", 2, 0.4], ["models/other", 1, 0.4], [
        "models/tiny",
        4,
        (0.6 + 0.7 + 0.8 + 0.9) / 4,
      ]],
    );
    assertEquals(table.notes, [
      `model models/tiny was also given as "${tiny}", "./models//tiny/": the same folder, ` +
      `${tiny}, counted as one model`,
      `model ./old// was also given as "old": the same path, counted as one model`,
    ]);
    // A note on a cell names its row as the table does: with the model, when there are several.
    await single(`${runs}/c3`, "rte", "ft", null, 1, { accuracy: 0.5 }, { model: "old" });
    assertEquals(
      buildTable(await findRuns([runs])).notes.at(-1),
      "FT [./old//] RTE: seed 1 appears 2 times",
    );
    await Deno.remove(`${runs}/c3`, { recursive: true });
    // Two folders whose runs name them alike (a hub id at two commits): the folder after the name.
    await single(
      `${dir}/later/d1`,
      "rte",
      "ft",
      null,
      1,
      { accuracy: 0.4 },
      ...modelRun("models/tiny", "/elsewhere/tiny"),
    );
    const alike = await findRuns([`${runs}/a1`, `${dir}/later`]);
    assertEquals([...modelNames(alike.runs).values()], [
      `models/tiny (${tiny})`,
      "models/tiny (/elsewhere/tiny)",
    ]);
    assertEquals(
      ["./models//x/", "models/x", "/a/./b/", "./", "/", "a//b"].map(tidyPath),
      ["models/x", "models/x", "/a/b", ".", "/", "a/b"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "report: figures take one model under several spellings, and refuse two models",
  ...IN_PROCESS_GPU,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ehft-report-figure-models-" });
    try {
      const rel = `${dir}/runs/rel`, abs = `${dir}/runs/abs`, other = `${dir}/runs/other`;
      await analysedRun(rel, true, ...modelRun("models/tiny", "/m/tiny"));
      await analysedRun(abs, true, ...modelRun("/m/tiny", "/m/tiny"));
      await analysedRun(other, true, ...modelRun("models/other", "/m/other"));
      const lines: string[] = [];
      await report(parseReportArgs([rel, abs, "--out", `${dir}/one`]), (l) => lines.push(l));
      assert(!lines.some((l) => l.includes("no figures")), lines.join("\n"));
      const one = await Deno.readTextFile(`${dir}/one/report.md`);
      assert(one.includes("The figures compare the runs on rte with models/tiny, "), one);
      assert((await Deno.stat(`${dir}/one/figures/training_loss.svg`)).isFile);

      lines.length = 0;
      await report(parseReportArgs([rel, abs, other, "--out", `${dir}/two`]), (l) => lines.push(l));
      assert(
        lines.includes(
          "report: note: no figures: the runs with --analysis are on rte with models/tiny; rte " +
            "with models/other (run report.ts on one task's runs of one model for its figures)",
        ),
        lines.join("\n"),
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("report: runs kept inside another run's folder are found; a --seeds run's seeds once", async () => {
  // `train.ts --out runs/rte` and `deno task rte` (runs/rte/ehft-bitfit/) side by side.
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-nested-" });
  try {
    await single(`${dir}/runs/rte`, "rte", "ft", null, 1, { accuracy: 0.5 });
    await single(`${dir}/runs/rte/ehft-bitfit`, "rte", "ehft", "bitfit", 1, { accuracy: 0.6 });
    await multi(`${dir}/runs/rte/lora`, "rte", "ehft", "lora", {
      1: { accuracy: 0.7 },
      2: { accuracy: 0.9 },
    });
    // An unfinished --seeds run: skipped whole, its finished seed not counted on its own.
    await multi(`${dir}/runs/rte/prefix`, "rte", "ehft", "prefix", {
      1: { accuracy: 0.7 },
      2: null,
    });
    const found = await findRuns([`${dir}/runs`]);
    assertEquals(found.runs.map((r) => r.path).sort(), [
      `${dir}/runs/rte`,
      `${dir}/runs/rte/ehft-bitfit`,
      `${dir}/runs/rte/lora`,
    ]);
    assertEquals(found.skipped, [{
      path: `${dir}/runs/rte/prefix`,
      reason: "unfinished (no metrics.json; 1 of 2 seeds finished)",
    }]);
    const table = buildTable(found);
    assertEquals(table.rows.map((r) => [r.method, r.cells.rte.n]), [
      ["FT", 1],
      ["EH-FT (BitFit)", 1],
      ["EH-FT (LoRA)", 2],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a hub model is one model on every machine; older runs join it by --model", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-hub-" });
  try {
    const snapshot = (root: string) =>
      `${root}/hub/models--FacebookAI--roberta-large/snapshots/abc`;
    const runs = `${dir}/runs`;
    // Two machines' caches, and a run.json from before real_dir: one model, three seeds.
    const m = "FacebookAI/roberta-large";
    await single(
      `${runs}/a`,
      "rte",
      "ehft",
      "bitfit",
      1,
      { accuracy: 0.7 },
      ...modelRun(m, snapshot("/home/me/.cache/huggingface")),
    );
    await single(
      `${runs}/b`,
      "rte",
      "ehft",
      "bitfit",
      2,
      { accuracy: 0.8 },
      ...modelRun(m, snapshot("/scratch/hf")),
    );
    await single(`${runs}/c`, "rte", "ehft", "bitfit", 3, { accuracy: 0.9 }, { model: m });
    const table = buildTable(await findRuns([runs]));
    assertEquals(table.rows.map((r) => [r.model, r.cells.rte.n]), [[m, 3]]);
    // Another commit of it is another model, named with its id@commit (the older run, which
    // either could be, then stays apart).
    const later = `${dir}/later/d`;
    await single(
      later,
      "rte",
      "ehft",
      "bitfit",
      1,
      { accuracy: 0.5 },
      ...modelRun(m, snapshot("/x").replace("/abc", "/def")),
    );
    const both = buildTable(await findRuns([`${runs}/a`, later]));
    assertEquals(both.rows.map((r) => [r.model, r.cells.rte.n]), [
      [`${m} (${m}@abc)`, 1],
      [`${m} (${m}@def)`, 1],
    ]);
    assertEquals(table.notes, []);

    // An older run whose --model two folders were given as stays apart, named without a stray space.
    await single(
      `${dir}/two/a`,
      "rte",
      "ft",
      null,
      1,
      { accuracy: 0.5 },
      ...modelRun("models/x", "/a/x"),
    );
    await single(
      `${dir}/two/b`,
      "rte",
      "ft",
      null,
      1,
      { accuracy: 0.6 },
      ...modelRun("models/x", "/b/x"),
    );
    await single(`${dir}/two/c`, "rte", "ft", null, 1, { accuracy: 0.7 }, { model: "models/x" });
    assertEquals([...modelNames((await findRuns([`${dir}/two`])).runs).values()], [
      "models/x (/a/x)",
      "models/x (/b/x)",
      "models/x (models/x)",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a run whose run.json or metrics.json cannot be read is left out, named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-damaged-" });
  try {
    await single(`${dir}/good`, "rte", "ft", null, 1, { accuracy: 0.5 });
    await single(`${dir}/cut`, "rte", "ft", null, 2, { accuracy: 0.7 });
    await Deno.writeTextFile(`${dir}/cut/metrics.json`, '{"final": {"accuracy": 0.7}, "be');
    await single(`${dir}/odd`, "rte", "ft", null, 3, { accuracy: 0.9 });
    await Deno.writeTextFile(`${dir}/odd/run.json`, '{"settings": []}');
    const found = await findRuns([dir]);
    assertEquals(found.runs.map((r) => r.path), [`${dir}/good`]);
    assertEquals(found.skipped.map((s) => s.path), [`${dir}/cut`, `${dir}/odd`]);
    assert(
      found.skipped[0].reason.startsWith(`unreadable: ${dir}/cut/metrics.json: `),
      found.skipped[0].reason,
    );
    assertEquals(found.skipped[1].reason, `unreadable: ${dir}/odd/run.json: no "settings" object`);
    assertEquals(buildTable(found).rows[0].cells.rte.mean, 0.5);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a run.json's seeds or a metric out of range is left out, named, at once", async () => {
  // 50,000,000 seeds were stat'ed one by one (gigabytes, minutes); 1e300 failed the whole report
  // with "Invalid array length"; an accuracy of 1.5 showed as 150.0.
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-ranges-" });
  try {
    await single(`${dir}/good`, "rte", "ft", null, 1, { accuracy: 0.5 });
    const settings = { task: "cb", strategy: "ft", model: "m", seed: 1 };
    for (const [name, seeds] of [["huge", 1e300], ["many", 50_000_000], ["half", 2.5]]) {
      await Deno.mkdir(`${dir}/${name}`);
      await Deno.writeTextFile(
        `${dir}/${name}/run.json`,
        JSON.stringify({ settings: { ...settings, seeds } }),
      );
    }
    await Deno.mkdir(`${dir}/up`);
    await Deno.writeTextFile(
      `${dir}/up/run.json`,
      JSON.stringify({ settings, seed_folders: ["seed-1", "../../elsewhere"] }),
    );
    await single(`${dir}/over`, "rte", "ft", null, 2, { accuracy: 1.5 });
    await single(`${dir}/nothing`, "rte", "ft", null, 4, { accuracy: null });
    await single(`${dir}/r`, "stsb", "ft", null, 3, { pearson: -0.25, spearman: 1 + 1e-15 });
    const found = await findRuns([dir]);
    assertEquals(found.runs.map((r) => r.path).sort(), [`${dir}/good`, `${dir}/r`]);
    const reasons = Object.fromEntries(
      found.skipped.map((s) => [s.path.slice(dir.length + 1), s.reason]),
    );
    for (const [name, seeds] of [["huge", "1e+300"], ["many", "50000000"], ["half", "2.5"]]) {
      assertEquals(
        reasons[name],
        `unreadable: ${dir}/${name}/run.json: settings.seeds ${seeds} and seed 1 are not up to ` +
          "1000 seeds from a whole number",
      );
    }
    assertEquals(
      reasons.up,
      `unreadable: ${dir}/up/run.json: seed_folders is not a list of at most 1000 seed-<n> names`,
    );
    assertEquals(
      reasons.over,
      `unreadable: ${dir}/over/metrics.json: best.accuracy 1.5 is outside [0, 1]`,
    );
    // Undefined only where a metric can be (a correlation of constant predictions).
    assertEquals(
      reasons.nothing,
      `unreadable: ${dir}/nothing/metrics.json: best.accuracy is null (only pearson and ` +
        "spearman can be undefined)",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a --seeds run with a damaged file is counted whole or not at all", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ehft-report-damaged-seeds-" });
  try {
    // A seed's run.json, read only for where the seed ran: the run is still counted, whole.
    await multi(`${dir}/a`, "rte", "ft", null, { 1: { accuracy: 0.6 }, 2: { accuracy: 0.7 } });
    await Deno.writeTextFile(`${dir}/a/seed-1/run.json`, "{");
    let found = await findRuns([dir]);
    assertEquals(found.skipped, []);
    const cell = buildTable(found).rows[0].cells.rte;
    assertEquals([cell.n, cell.mean], [2, (0.6 + 0.7) / 2]);
    // Its metrics.json: left out, and its seed folders are not counted as runs of their own.
    await Deno.writeTextFile(`${dir}/a/metrics.json`, "{");
    found = await findRuns([dir]);
    assertEquals(found.runs, []);
    assertEquals(found.skipped.map((s) => s.path), [`${dir}/a`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a run's settings line says --f16-math (an f16 run and an f16-math one differ)", () => {
  const settings = { strategy: "ft", peft: null, seed: 1, gradAccum: 1, precision: "f16" };
  assertEquals(settingsLine(settings), "--strategy ft --seed 1 --precision f16");
  assertEquals(
    settingsLine({ ...settings, f16Math: true }),
    "--strategy ft --seed 1 --precision f16 --f16-math",
  );
  assertEquals(settingsLine({ ...settings, f16Math: false }), settingsLine(settings));
});
