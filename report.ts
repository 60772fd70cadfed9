// The results of finished runs as the paper's Table 1:
//   deno run -A report.ts RUN_DIR... [--out DIR]
// Each RUN_DIR is a run folder, a multi-seed run folder or a folder holding runs (searched
// recursively). Prints the markdown table; with --out also writes DIR/results.md, results.csv and
// results.json, and DIR/report.md: the table, then the figures comparing the runs trained with
// --analysis (DIR/figures/*.svg and .png, one line, box or panel per method, each with a caption
// stating its numbers; train/analysis_figures.ts). Unfinished runs are listed on stderr as
// skipped. How the cells are computed: train/report_table.ts.

import { writeFileAtomic } from "./model/atomic_write.ts";
import { REPORT_HELP } from "./train/help.ts";
import {
  comparisonFigures,
  readRunAnalysis,
  type RunAnalysisFiles,
  writeFigures,
} from "./train/analysis_figures.ts";
import { FlagError, parseFlagsAndPositionals, runMain } from "./train/flags.ts";
import {
  buildTable,
  findRuns,
  renderCsv,
  renderMarkdown,
  type ResultsTable,
  tableJson,
} from "./train/report_table.ts";

export const FLAGS = { out: { type: "string" } } as const;

export interface ReportArgs {
  paths: string[];
  out: string | null;
}

/**
 * Parses report.ts's arguments: run folders and --out (flag rules as in train/flags.ts; after
 * `--` every argument is a run folder).
 */
export function parseReportArgs(args: string[]): ReportArgs {
  const parsed = parseFlagsAndPositionals(FLAGS, args, { positionals: true });
  if (parsed.positionals.length === 0) {
    throw new FlagError("give one or more run folders (or folders holding runs)");
  }
  return { paths: parsed.positionals, out: parsed.values.out ?? null };
}

/** Finds the runs, builds the table and writes it (stdout, and --out's files). */
export async function report(
  args: ReportArgs,
  log: (line: string) => void = (line) => console.error(line),
): Promise<ResultsTable> {
  const found = await findRuns(args.paths);
  const table = buildTable(found);
  for (const s of table.skipped) log(`report: skipped ${s.path}: ${s.reason}`);
  for (const n of table.notes) log(`report: note: ${n}`);
  if (table.rows.length === 0) {
    throw new Error(`no finished runs under ${args.paths.join(", ")}`);
  }
  const markdown = renderMarkdown(table);
  if (args.out !== null) {
    await Deno.mkdir(args.out, { recursive: true });
    await writeFileAtomic(`${args.out}/results.md`, markdown);
    await writeFileAtomic(`${args.out}/results.csv`, renderCsv(table));
    await writeFileAtomic(
      `${args.out}/results.json`,
      JSON.stringify(tableJson(table), null, 2) + "\n",
    );
    log(`report: ${args.out}/results.md, results.csv and results.json written`);
    const analysed = await analysedRuns(found.runs.map((r) => r.path));
    const figures = analysed.length
      ? await writeFigures(`${args.out}/figures`, await comparisonFigures(analysed))
      : [];
    await writeFileAtomic(
      `${args.out}/report.md`,
      reportMarkdown(args, markdown, found.runs, figures),
    );
    log(
      `report: ${args.out}/report.md written (${figures.length} figures from ${analysed.length} ` +
        `runs with --analysis)`,
    );
  }
  return table;
}

/** The runs with analysis data: each run folder, or each seed folder of a multi-seed run. */
async function analysedRuns(paths: readonly string[]): Promise<RunAnalysisFiles[]> {
  const out: RunAnalysisFiles[] = [];
  for (const path of paths) {
    const own = await readRunAnalysis(path);
    if (own) {
      out.push(own);
      continue;
    }
    const seeds: string[] = [];
    for await (const e of Deno.readDir(path)) {
      if (e.isDirectory && /^seed-\d+$/.test(e.name)) seeds.push(e.name);
    }
    seeds.sort((a, b) => Number(a.slice(5)) - Number(b.slice(5)));
    for (const seed of seeds) {
      const r = await readRunAnalysis(`${path}/${seed}`);
      if (r) out.push(r);
    }
  }
  return out;
}

/** A run's settings as the flags that give them (run.json's "settings"). */
function settingsLine(s: Record<string, unknown>): string {
  const keys = [
    ["model", "model"],
    ["strategy", "strategy"],
    ["peft", "peft"],
    ["epochs", "epochs"],
    ["maxSteps", "max-steps"],
    ["batchSize", "batch-size"],
    ["maxLength", "max-length"],
    ["lr", "lr"],
    ["stage1Lr", "stage1-lr"],
    ["seed", "seed"],
    ["seeds", "seeds"],
    ["precision", "precision"],
  ];
  return keys.filter(([k]) => s[k] !== null && s[k] !== undefined)
    .map(([k, flag]) => `--${flag} ${s[k]}`).join(" ");
}

function reportMarkdown(
  args: ReportArgs,
  table: string,
  runs: readonly { path: string; task: string; settings: Record<string, unknown> }[],
  figures: { name: string; caption: string }[],
): string {
  const command = ["deno run -A report.ts", ...args.paths, "--out", args.out!].join(" ");
  const lines = ["# Report", "", `Made by \`${command}\` from these runs:`, ""];
  for (const r of runs) {
    lines.push(`- \`${r.path}\`: \`--task ${r.task} ${settingsLine(r.settings)}\``);
  }
  lines.push("", "## Results", "", table.trimEnd());
  lines.push("", "## Figures", "");
  if (figures.length === 0) {
    lines.push("No run here was trained with `--analysis`, so there are no figures.");
  }
  for (const f of figures) {
    lines.push(`![${f.caption}](figures/${f.name}.png)`, "", f.caption, "");
  }
  return lines.join("\n").trimEnd() + "\n";
}

if (import.meta.main) {
  await runMain("report", async (args) => {
    const parsed = parseReportArgs(args);
    const table = await report(parsed);
    console.log(renderMarkdown(table).trimEnd());
  }, REPORT_HELP);
}
