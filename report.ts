// The results of finished runs as the paper's Table 1:
//   deno run -A report.ts RUN_DIR... [--out DIR]
// Each RUN_DIR is a run folder, a multi-seed run folder or a folder holding runs (searched
// recursively). Prints the markdown table; with --out also writes DIR/results.md, results.csv and
// results.json. Unfinished runs are listed on stderr as skipped. How the cells are computed:
// train/report_table.ts.

import { writeFileAtomic } from "./model/atomic_write.ts";
import { closestFlag, FlagError, runMain } from "./train/flags.ts";
import {
  buildTable,
  findRuns,
  renderCsv,
  renderMarkdown,
  type ResultsTable,
  tableJson,
} from "./train/report_table.ts";
import { parseArgs } from "node:util";

const FLAGS = { out: { type: "string" } } as const;

export interface ReportArgs {
  paths: string[];
  out: string | null;
}

/** Parses report.ts's arguments: run folders and --out. */
export function parseReportArgs(args: string[]): ReportArgs {
  for (const arg of args) {
    if (!arg.startsWith("--") || arg === "--") continue;
    const name = arg.slice(2).split("=")[0];
    if (!(name in FLAGS)) {
      const hint = closestFlag(name, Object.keys(FLAGS));
      throw new FlagError(`unknown flag --${name}${hint ? ` (did you mean --${hint}?)` : ""}`);
    }
  }
  let parsed;
  try {
    parsed = parseArgs({ args, options: FLAGS, strict: true, allowPositionals: true });
  } catch (e) {
    throw new FlagError((e as Error).message.split("\n")[0]);
  }
  if (parsed.values.out === "") throw new FlagError("--out: expected a folder");
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
  }
  return table;
}

if (import.meta.main) {
  await runMain("report", async (args) => {
    const parsed = parseReportArgs(args);
    const table = await report(parsed);
    console.log(renderMarkdown(table).trimEnd());
  });
}
