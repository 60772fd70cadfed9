// The results of finished runs as the paper's Table 1:
//   deno run -A report.ts RUN_DIR... [--out DIR [--overwrite]]
// Each RUN_DIR is a run folder, a multi-seed run folder or a folder holding runs (searched
// recursively). Prints the markdown table; with --out also writes DIR/results.md, results.csv and
// results.json, and DIR/report.md: the table, then the figures comparing the runs trained with
// --analysis (DIR/figures/*.svg and .png, one line, box or panel per method, each with a caption
// stating its numbers; train/analysis_figures.ts). Unfinished runs are listed on stderr as
// skipped. How the cells are computed: train/report_table.ts.
//
// --out is checked before anything is read (checkOutDir): a file is refused, and so is a folder
// that already holds any of report.ts's outputs (OUTPUT_FILES, figures/<FIGURE_NAMES>.svg|png)
// unless --overwrite; other files in DIR are never touched. Everything is computed first, the
// figures drawn in memory, so a failure (a broken analysis file) writes nothing; then every file
// is written to a temporary beside it (a full disk there still changes nothing) before they
// replace the earlier ones in one pass, figures, results.*, and report.md last; only then are the
// earlier report's figures that this one does not draw removed.

import {
  lockFolder,
  removeStaleTemporaries,
  writeFilesAtomic,
  writtenPath,
} from "./model/atomic_write.ts";
import { seedFolderNames } from "./model/load.ts";
import { REPORT_HELP } from "./train/help.ts";
import { plural, writeStdout } from "./model/progress_text.ts";
import { stopWithWord } from "./train/run_faults.ts";
import {
  comparisonFigures,
  readRunAnalysis,
  type RunAnalysisFiles,
} from "./train/analysis_figures.ts";
import {
  checkFoldersCanBeMade,
  checkWritable,
  FlagError,
  parseFlagsAndPositionals,
  runMain,
} from "./train/flags.ts";
import { renderPng, renderSvg } from "./train/plots.ts";
import {
  buildTable,
  findRuns,
  type FoundRun,
  modelNames,
  renderCsv,
  renderMarkdown,
  renderNotes,
  type ResultsTable,
  tableJson,
} from "./train/report_table.ts";

export const FLAGS = { out: { type: "string" }, overwrite: { type: "boolean" } } as const;

export interface ReportArgs {
  paths: string[];
  out: string | null;
  /** Replace report.ts's outputs already in --out (absent: refuse them). */
  overwrite?: boolean;
}

/** The files report.ts writes into --out besides figures/ (report.md is written last). */
export const OUTPUT_FILES = ["results.md", "results.csv", "results.json", "report.md"] as const;

/** The folder of --out that holds the figures. */
export const FIGURES_DIR = "figures";

/**
 * The figures report.ts can draw (train/analysis_figures.ts comparisonFigures), each as
 * figures/<name>.svg and .png: the only files of figures/ that --overwrite replaces or removes.
 */
export const FIGURE_NAMES = [
  "feature_change",
  "weight_distance",
  "training_loss",
  "training_accuracy",
  "backbone_gradient",
  "head_features",
] as const;

/**
 * Parses report.ts's arguments: run folders, --out and --overwrite (flag rules as in
 * train/flags.ts; after `--` every argument is a run folder).
 */
export function parseReportArgs(args: string[]): ReportArgs {
  const parsed = parseFlagsAndPositionals(FLAGS, args, { positionals: true });
  if (parsed.positionals.length === 0) {
    throw new FlagError("give one or more run folders (or folders holding runs)");
  }
  const out = parsed.values.out ?? null;
  if (parsed.values.overwrite && out === null) {
    throw new FlagError("--overwrite replaces the outputs in --out: give --out DIR too");
  }
  return {
    paths: parsed.positionals,
    out,
    ...(parsed.values.overwrite ? { overwrite: true } : {}),
  };
}

/**
 * Checks --out before any work: a folder (or a path to be made), not a file or a path through
 * one, holding none of report.ts's outputs unless `overwrite`. Returns the outputs it holds
 * (paths relative to `out`).
 */
export async function checkOutDir(out: string, overwrite: boolean): Promise<string[]> {
  const info = await statOrNull(out, "--out");
  // Probed with a file made and removed: a folder that takes none (read-only, /proc) is found
  // now, not once every figure is drawn.
  if (info === null) {
    await checkFoldersCanBeMade(out, "--out", true);
    return [];
  }
  if (!info.isDirectory) {
    throw new FlagError(
      `--out ${out} is a file, not a folder: give a folder for the report (or another path)`,
    );
  }
  // results.md a link: written through, into its target's folder.
  const first = `${out}/${OUTPUT_FILES[0]}`;
  if ((await writtenPath(first)) === first) await checkWritable(out, `--out ${out}`);
  else await checkFoldersCanBeMade(first, "--out", true);
  const figuresDir = await statOrNull(`${out}/${FIGURES_DIR}`, "--out");
  if (figuresDir !== null && !figuresDir.isDirectory) {
    throw new FlagError(
      `--out ${out}: ${out}/${FIGURES_DIR} is not a folder (report.ts draws its figures in ` +
        `one there): choose another folder`,
    );
  }
  const held: string[] = [];
  const names = [
    ...OUTPUT_FILES,
    ...FIGURE_NAMES.flatMap((n) => [`${FIGURES_DIR}/${n}.svg`, `${FIGURES_DIR}/${n}.png`]).sort(),
  ];
  for (const name of names) {
    const found = await statOrNull(`${out}/${name}`, "--out");
    if (found === null) continue;
    if (!found.isFile) {
      throw new FlagError(`--out ${out}: ${out}/${name} is not a file: choose another folder`);
    }
    held.push(name);
  }
  if (held.length > 0 && !overwrite) {
    const top = held.filter((h) => !h.startsWith(`${FIGURES_DIR}/`));
    const drawn = held.length - top.length;
    const listed = [
      ...top,
      ...(drawn ? [`${FIGURES_DIR}/ (${drawn} figure file${drawn === 1 ? "" : "s"})`] : []),
    ];
    throw new FlagError(
      `--out ${out} already holds ${listed.join(", ")}: pass --overwrite to replace ` +
        `${held.length === 1 ? "it" : "them"}, or choose another folder`,
    );
  }
  return held;
}

/** `path`'s info (a link followed), or null when it does not exist. */
async function statOrNull(path: string, flag: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
    throw new FlagError(`${flag} ${path}: cannot check it: ${(e as Error).message}`);
  }
}

/** Finds the runs, builds the table and writes it (stdout, and --out's files). */
export async function report(
  args: ReportArgs,
  log: (line: string) => void = (line) => console.error(line),
): Promise<ResultsTable> {
  const overwrite = args.overwrite ?? false;
  if (args.out !== null) await checkOutDir(args.out, overwrite);
  const found = await findRuns(args.paths);
  const table = buildTable(found);
  for (const s of table.skipped) log(`report: skipped ${s.path}: ${s.reason}`);
  for (const n of table.notes) log(`report: note: ${n}`);
  if (table.rows.length === 0) {
    throw new Error(`no finished runs under ${args.paths.join(", ")}`);
  }
  const markdown = renderMarkdown(table);
  if (args.out !== null) {
    const out = args.out;
    // The files keep what stderr said about the table (pooled settings, repeated seeds, runs
    // left out): a reader of results.md sees no terminal.
    const notes = renderNotes(table);
    const tableFile = notes ? `${markdown}\n${notes}` : markdown;
    // Everything first, the figures drawn in memory: a failure here writes nothing.
    const analysed = await analysedRuns(found.runs);
    // Runs are of one model when they trained on one folder, however --model was spelled.
    const names = modelNames(found.runs);
    const groups = [...new Set(analysed.map((r) => `${r.task} with ${names.get(r.modelKey)}`))];
    // A figure compares methods on one task and one model: mixed runs would sit side by side.
    const mixed = groups.length > 1;
    if (mixed) {
      log(
        `report: note: no figures: the runs with --analysis are on ${groups.join("; ")} ` +
          `(run report.ts on one task's runs of one model for its figures)`,
      );
    }
    const figures = analysed.length && !mixed
      ? await comparisonFigures(analysed.map((r) => r.files))
      : [];
    // comparisonFigures draws each method's first run: say which, and what they are on.
    const drawnFrom = new Map<string, string>();
    const notDrawn: string[] = [];
    for (const r of figures.length ? analysed : []) {
      if (!drawnFrom.has(r.files.method)) drawnFrom.set(r.files.method, r.files.dir);
      else notDrawn.push(r.files.dir);
    }
    const figureNote = figures.length
      ? `The figures compare the runs on ${groups[0]}, one run per method: ` +
        [...drawnFrom].map(([m, dir]) => `${m} \`${dir}\``).join(", ") +
        (notDrawn.length
          ? `; not drawn (another run of a method above): ` +
            notDrawn.map((d) => `\`${d}\``).join(", ")
          : "") +
        "."
      : mixed
      ? `No figures: the runs with \`--analysis\` are on ${groups.join("; ")}; a figure ` +
        `compares methods on one task and one model.`
      : null;
    const files: [string, string | Uint8Array][] = [];
    for (const f of figures) {
      const svg = await renderSvg(f.spec);
      files.push([`${FIGURES_DIR}/${f.name}.svg`, svg]);
      files.push([`${FIGURES_DIR}/${f.name}.png`, await renderPng(svg)]);
    }
    files.push(
      ["results.md", tableFile],
      ["results.csv", renderCsv(table)],
      ["results.json", JSON.stringify(tableJson(table), null, 2) + "\n"],
    );
    files.push(["report.md", reportMarkdown(args, tableFile, found.runs, figures, figureNote)]);
    // Every file is written in full before any replaces an earlier one, report.md last; then the
    // earlier report's figures that this one does not draw go.
    const made = figures.length ? `${out}/${FIGURES_DIR}` : out;
    const existed = await Deno.stat(made).then(() => true, () => false);
    const outExisted = await Deno.stat(out).then(() => true, () => false);
    madeFolders = [...(existed ? [] : [made]), ...(outExisted || made === out ? [] : [out])];
    await Deno.mkdir(made, { recursive: true });
    // Locked while it writes: two reports into one --out both passed its check above, and the
    // later replaced the earlier without --overwrite.
    const lock = await lockFolder(out);
    let stale: string[];
    try {
      if (lock === "held") {
        throw new Error(
          `--out ${out}: another program is writing into it (a report.ts, or a run): wait for ` +
            "it, or choose another folder",
        );
      }
      // What another report wrote there since the check counts as the folder's now.
      stale = (await checkOutDir(out, overwrite)).filter((h) => !files.some(([n]) => n === h));
      await writeFilesAtomic(files.map(([name, data]) => [`${out}/${name}`, data] as const));
    } catch (e) {
      // Nothing was replaced: a folder made for the files goes too (when still empty), unless
      // another program holds it (it may be about to write into it).
      if (lock !== "held") {
        if (!existed) await Deno.remove(made).catch(() => {});
        if (!outExisted && made !== out) await Deno.remove(out).catch(() => {});
        lock?.close();
      }
      throw e;
    } finally {
      madeFolders = [];
    }
    // The new report is written: an old figure that cannot be removed is a note, not a failure.
    const removed: string[] = [];
    const kept: string[] = [];
    for (const name of stale) {
      await Deno.remove(`${out}/${name}`).then(() => removed.push(name), (e) => {
        // Gone already (removed by hand meanwhile): as good as removed.
        if (e instanceof Deno.errors.NotFound) removed.push(name);
        else kept.push(`${name} (${(e as Error).message})`);
      });
    }
    // The temporaries a killed report.ts left (SIGKILL, a power cut): of report.ts's own files
    // only, while the folder is locked (no other report writes them now).
    const figureFiles = FIGURE_NAMES.flatMap((n) => [`${n}.svg`, `${n}.png`]);
    const leftovers = await removeStaleTemporaries(out, OUTPUT_FILES).catch(() => 0) +
      await removeStaleTemporaries(`${out}/${FIGURES_DIR}`, figureFiles).catch(() => 0);
    if (leftovers > 0) {
      log(`report: ${out}: removed ${plural(leftovers, "temporary file")} a killed report left`);
    }
    if (stale.some((n) => n.startsWith(`${FIGURES_DIR}/`))) {
      // Left empty, it was the earlier report's alone (a non-empty folder is not removed).
      await Deno.remove(`${out}/${FIGURES_DIR}`).catch(() => {});
    }
    lock?.close();
    log(`report: ${out}/results.md, results.csv and results.json written`);
    if (removed.length) {
      log(`report: ${out}: removed ${removed.join(", ")} (the earlier report's, not drawn now)`);
    }
    if (kept.length) {
      log(
        `report: note: ${out}: could not remove the earlier report's ${kept.join(", ")}; ` +
          "report.md does not show them",
      );
    }
    // The runs drawn, not the runs found: a method's other runs (seeds) are not in the figures.
    const drawnRuns = figures.length
      ? `${figures.length} figures of ${drawnFrom.size} run${drawnFrom.size === 1 ? "" : "s"} ` +
        `with --analysis, one per method` +
        (notDrawn.length ? `; ${notDrawn.length} more of the same methods not drawn` : "")
      : "no figures";
    log(`report: ${out}/report.md written (${drawnRuns})`);
  }
  return table;
}

/**
 * The runs with analysis data: each run folder, or each seed folder (lowest seed first) of a
 * multi-seed run, with the task and model they are on.
 */
async function analysedRuns(
  runs: readonly FoundRun[],
): Promise<{ files: RunAnalysisFiles; task: string; modelKey: string }[]> {
  const out: { files: RunAnalysisFiles; task: string; modelKey: string }[] = [];
  for (const { path, task, modelKey } of runs) {
    const own = await readRunAnalysis(path);
    if (own) {
      out.push({ files: own, task, modelKey });
      continue;
    }
    for (const seed of await seedFolderNames(path)) {
      const r = await readRunAnalysis(`${path}/${seed}`);
      if (r) out.push({ files: r, task, modelKey });
    }
  }
  return out;
}

/** A run's settings as the flags that give them (run.json's "settings"). */
export function settingsLine(s: Record<string, unknown>): string {
  const keys = [
    ["model", "model"],
    ["strategy", "strategy"],
    ["peft", "peft"],
    ["epochs", "epochs"],
    ["maxSteps", "max-steps"],
    ["batchSize", "batch-size"],
    ["gradAccum", "grad-accum"],
    ["maxLength", "max-length"],
    ["lr", "lr"],
    ["stage1Lr", "stage1-lr"],
    ["seed", "seed"],
    ["seeds", "seeds"],
    ["precision", "precision"],
  ];
  // --grad-accum 1 is the batch at once, as runs from before it: not worth a flag.
  const line = keys.filter(([k]) =>
    s[k] !== null && s[k] !== undefined && !(k === "gradAccum" && s[k] === 1)
  )
    .map(([k, flag]) => `--${flag} ${s[k]}`).join(" ");
  // A flag without a value: an f16 run and an f16-math one read alike without it.
  return s.f16Math === true ? `${line} --f16-math` : line;
}

function reportMarkdown(
  args: ReportArgs,
  table: string,
  runs: readonly { path: string; task: string; settings: Record<string, unknown> }[],
  figures: { name: string; caption: string }[],
  figureNote: string | null,
): string {
  const command = [
    "deno run -A report.ts",
    ...args.paths,
    "--out",
    args.out!,
    ...(args.overwrite ? ["--overwrite"] : []),
  ].join(" ");
  const lines = ["# Report", "", `Made by \`${command}\` from these runs:`, ""];
  for (const r of runs) {
    lines.push(`- \`${r.path}\`: \`--task ${r.task} ${settingsLine(r.settings)}\``);
  }
  lines.push("", "## Results", "", table.trimEnd());
  lines.push("", "## Figures", "");
  if (figureNote) lines.push(figureNote, "");
  else if (figures.length === 0) {
    lines.push("No run here was trained with `--analysis`, so there are no figures.");
  }
  for (const f of figures) {
    lines.push(`![${f.caption}](figures/${f.name}.png)`, "", f.caption, "");
  }
  return lines.join("\n").trimEnd() + "\n";
}

/**
 * The folders report() made for its files while it writes them: a Ctrl-C then removes them if
 * still empty (stopWithWord has removed the temporaries in them), as a failed write does.
 */
let madeFolders: string[] = [];

if (import.meta.main) {
  stopWithWord("report", (how) => {
    for (const dir of madeFolders) {
      try {
        Deno.removeSync(dir);
      } catch { /* not empty: another program's files, or the report's own */ }
    }
    return Promise.resolve(`${how}; no file was left half-written`);
  });
  await runMain("report", async (args) => {
    const parsed = parseReportArgs(args);
    const table = await report(parsed);
    await writeStdout(renderMarkdown(table).trimEnd() + "\n");
  }, REPORT_HELP);
}
