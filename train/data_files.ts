// Reading data files line by line with errors that name the file and the line.
//
// Every problem with a data file is a DataError of one line: `<file>:<line>: <problem>` (1-based
// line numbers, counting blank lines and a header), or `<file>: <problem>` when no line is to
// blame (an empty file, a missing split). What the readers accept and refuse:
//
// - the file is decoded as strict UTF-8: a byte that is not UTF-8 is an error naming its line
//   (a Latin-1 or UTF-16 file would otherwise be read as replacement characters); a UTF-8
//   byte-order mark at the start is dropped, and `\r\n` line ends are accepted;
// - blank lines are skipped; a file of 0 bytes, of blank lines only, or (TSV) of a header only is
//   an error: "has no examples (the file is empty)", "... (only blank lines)", "has no examples
//   after its header (line 1)";
// - JSONL: one JSON object per line; invalid JSON, or a value that is not an object, names the
//   line; a required field that is missing, or of the wrong type, names the line and the field;
// - TSV: fields split on tabs only; a line with another count of fields names the line;
// - lines of any length (a 5 MB premise is valid) are read in linear time; values quoted in an
//   error are cut to a few dozen characters;
// - a split's file missing from a data folder is a MissingDataError naming the file, the split
//   and what the folder holds, with the task's download hint when it has one;
// - an empty or blank text is read as it is (CoLA's reader refuses an empty sentence); the
//   splits' users note such examples in one line (train/batches.ts `emptyTextNote`);
// - a missing label is not an error here (test splits have none): training refuses an example
//   without one, naming its file and line (`TaskExample.source`, train/batches.ts).
//
// Which labels, fields and values each task accepts is the task file's business (tasks/*.ts).

import { isJsonObject } from "../model/atomic_write.ts";
import { errorText } from "../model/error_text.ts";
import { utf8Problem } from "../model/utf8.ts";

/** The SHA-256 of `data` (a text as UTF-8) in hex: the fingerprint of data as read. */
export async function sha256Hex(data: Uint8Array<ArrayBuffer> | string): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A problem with a data file, one line: `<file>:<line>: <problem>`, or `<file>: <problem>`. */
export class DataError extends Error {
  /** `line` is 1-based; null when no line is to blame (an empty file, a missing split). */
  constructor(file: string, line: number | null, problem: string) {
    const text = oneLine(problem);
    super(line === null ? `${file}: ${text}` : `${file}:${line}: ${text}`);
    this.name = "DataError";
  }
}

/** A data file that is not there (a split missing from the data folder, or the --data path). */
export class MissingDataError extends DataError {
  /** The message is `<file>: <problem>`. */
  constructor(file: string, problem: string) {
    super(file, null, problem);
    this.name = "MissingDataError";
  }
}

/**
 * `text` on one line: line breaks and other control characters escaped, and the invisible format
 * characters too (a byte-order mark inside a file, zero-width spaces), which a message would
 * show as nothing: `no column "Quality" (its header has Quality, …)`.
 */
function oneLine(text: string): string {
  return text.replace(
    // deno-lint-ignore no-control-regex
    /[\u0000-\u001f\u007f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]/g,
    (c) => {
      if (c === "\n") return "\\n";
      if (c === "\r") return "\\r";
      if (c === "\t") return "\\t";
      return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
    },
  );
}

/** A value as an error message quotes it: JSON, cut to `max` characters. */
export function quote(value: unknown, max = 40): string {
  let text: string;
  try {
    text = value === undefined ? "undefined" : JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text;
}

/** Where the first invalid UTF-8 byte of `bytes` is, as a DataError naming its line. */
function utf8Error(path: string, bytes: Uint8Array): DataError {
  const where = utf8Problem(bytes) ?? { line: 1, problem: "not valid UTF-8" };
  return new DataError(path, where.line, where.problem);
}

/**
 * A data file's text: strict UTF-8, a leading byte-order mark dropped. A DataError when it
 * cannot be read (a MissingDataError when it is not there), is empty, or is not UTF-8.
 */
async function readText(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new MissingDataError(path, "cannot read: no such file");
    }
    throw new DataError(path, null, `cannot read: ${errorText(e)}`);
  }
  if (bytes.length === 0) throw new DataError(path, null, "has no examples (the file is empty)");
  const archive = archiveKind(bytes);
  if (archive !== null) throw new DataError(path, null, `is ${archive}`);
  let text: string;
  try {
    // ignoreBOM false (the default): a UTF-8 byte-order mark is dropped, not part of line 1.
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw utf8Error(path, bytes);
  }
  // Line ends of a classic Mac (Excel for Mac's CSV/TSV export): CR alone. Read as lines, not as
  // one line of every example.
  if (!text.includes("\n") && text.includes("\r")) text = text.replaceAll("\r", "\n");
  // A byte-order mark at a line's start (files joined with cat, a file saved twice with one) is
  // no part of its text.
  return text.replace(/(^|\n)\ufeff+/g, "$1");
}

/**
 * What a data file given in the task's text format is instead, by its first (and for Parquet its
 * last) bytes, and what to do: null for anything else.
 */
function archiveKind(bytes: Uint8Array): string | null {
  const at = (offset: number, ...magic: number[]) =>
    offset >= 0 && magic.every((b, i) => bytes[offset + i] === b);
  if (at(0, 0x50, 0x4b, 0x03, 0x04) || at(0, 0x50, 0x4b, 0x05, 0x06)) {
    return "a zip archive, not a text file: unpack it and pass its folder";
  }
  if (at(0, 0x1f, 0x8b)) return "gzip-compressed, not a text file: gunzip it";
  // "PAR1" at both ends: a text file may begin with those four letters.
  const par1 = [0x50, 0x41, 0x52, 0x31];
  if (bytes.length >= 12 && at(0, ...par1) && at(bytes.length - 4, ...par1)) {
    return "a Parquet file, not a text file: write it out as the task's JSON Lines or TSV";
  }
  return null;
}

/**
 * A JSON.parse error's message for line `raw`, with the column in the line rather than V8's
 * position, and a hint when the line ends before its object does (an object over several lines).
 */
function jsonProblem(e: unknown, raw: string): string {
  let column: number | null = null;
  // V8 adds "(line L column C)" of its own, which would contradict the file's line number.
  const after = /after JSON at position/.test(errorText(e));
  let message = errorText(e).replace(
    / (?:in|after) JSON at position (\d+)(?: \(line \d+ column \d+\))?/,
    (_, p) => {
      column = Number(p) + 1;
      return ` at column ${column}`;
    },
  );
  if (message.length > 160) message = `${message.slice(0, 160)}…`;
  const atEnd = /end of JSON input/.test(message) ||
    (column !== null && column > raw.trimEnd().length);
  if (raw.trimStart().startsWith("[")) {
    message += "; a JSON array: JSONL holds one object a line, not an array of them";
  } else if (after) {
    message += "; more after the line's first value: JSONL holds one object a line";
  } else if (atEnd && raw.trimStart().startsWith("{")) {
    message += "; JSONL needs each object on one line";
  }
  return `not valid JSON (${message})`;
}

function kindOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return `a ${typeof value}`;
}

/** The JSON objects of a JSONL file, each with its 1-based line number. Blank lines are skipped. */
export async function readJsonl(
  path: string,
): Promise<{ line: number; value: Record<string, unknown> }[]> {
  const text = await readText(path);
  const rows: { line: number; value: Record<string, unknown> }[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = i + 1;
    if (raw.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      throw new DataError(path, line, jsonProblem(e, raw));
    }
    if (!isJsonObject(value)) {
      throw new DataError(path, line, `expected a JSON object, not ${kindOf(value)}`);
    }
    rows.push({ line, value: value as Record<string, unknown> });
  });
  if (rows.length === 0) throw new DataError(path, null, "has no examples (only blank lines)");
  return rows;
}

/** "a.jsonl, b.jsonl and 3 more", or "nothing": what a folder holds, for error messages. */
async function folderListing(dir: string): Promise<string> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) names.push(e.isDirectory ? `${e.name}/` : e.name);
  } catch {
    return "cannot be listed";
  }
  if (names.length === 0) return "is empty";
  names.sort();
  const shown = names.slice(0, 8).join(", ");
  return `holds ${shown}${names.length > 8 ? ` and ${names.length - 8} more` : ""}`;
}

/**
 * A data file: `path` itself if it is a file, else `<path>/<split>.<extension>`. A
 * MissingDataError when `path` does not exist, or when the folder has no such file: it names the
 * split, the folder and what the folder holds, and ends with `hint` (e.g. how the task downloads
 * its data) when given.
 */
export async function splitFile(
  path: string,
  split: string,
  extension: string,
  hint?: string,
): Promise<string> {
  const tail = hint ? `; ${hint}` : "";
  let isDirectory: boolean;
  try {
    isDirectory = (await Deno.stat(path)).isDirectory;
  } catch {
    throw new MissingDataError(path, `no such file or folder${tail}`);
  }
  if (!isDirectory) return path;
  const file = `${path}/${split}.${extension}`;
  try {
    await Deno.stat(file);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) return file; // readText says what is wrong.
    throw new MissingDataError(
      file,
      `cannot read: no such file (the ${split} split; the folder ${await folderListing(path)})` +
        tail,
    );
  }
  return file;
}

/** A required string field of a JSON row, or an error naming file, line and field. */
export function stringField(
  file: string,
  line: number,
  row: Record<string, unknown>,
  field: string,
): string {
  const v = row[field];
  if (v === undefined) throw new DataError(file, line, `field "${field}" is missing`);
  if (typeof v !== "string") {
    throw new DataError(file, line, `field "${field}" is not a string (it is ${quote(v)})`);
  }
  return v;
}

/** A required non-negative integer field of a JSON row, or an error naming file, line and field. */
export function integerField(
  file: string,
  line: number,
  row: Record<string, unknown>,
  field: string,
): number {
  const v = row[field];
  if (v === undefined) throw new DataError(file, line, `field "${field}" is missing`);
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new DataError(
      file,
      line,
      `field "${field}" is not a non-negative integer (it is ${quote(v)})`,
    );
  }
  return v;
}

/** The `idx` field if present (a non-negative integer), else `fallback`. */
export function indexField(
  file: string,
  line: number,
  row: Record<string, unknown>,
  fallback: number,
): number {
  return row.idx === undefined ? fallback : integerField(file, line, row, "idx");
}

/** One row of a TSV file: its fields and its 1-based line number. */
export interface TsvRow {
  /** The row's 1-based line in the file. */
  line: number;
  /** Its fields, split on tabs only. */
  fields: string[];
}

/** A TSV file's header (null when it has none) and its rows. */
export interface TsvTable {
  /** The file read. */
  file: string;
  /** The header's column names; null when the file has no header. */
  header: string[] | null;
  /** The header's 1-based line (1 unless blank lines come first); null without a header. */
  headerLine: number | null;
  /** Every non-blank row after the header. */
  rows: TsvRow[];
}

/** A header's column names as errors list them (cut when very long). */
function headerText(header: string[]): string {
  const text = header.join(", ");
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/**
 * Reads a tab-separated file as GLUE writes them: fields split on tabs only (a quote is text,
 * never quoting: GLUE's sentences hold unbalanced quotes), a UTF-8 byte-order mark dropped (MRPC's
 * train and dev files begin with one), `\r\n` line ends accepted, blank lines skipped.
 *
 * `header`: whether the first line is a header, or a test on its fields (CoLA's test file has a
 * header, its train and dev files do not). Every row must have as many fields as the header, or
 * when there is none, `columns` (default: the first row's count); a row that does not is an
 * error naming the file and line, as is a file without rows.
 */
export async function readTsv(
  path: string,
  options: { header: boolean | ((fields: string[]) => boolean); columns?: number },
): Promise<TsvTable> {
  const text = await readText(path);
  let header: string[] | null = null;
  let headerLine = 0;
  let columns = options.columns;
  const rows: TsvRow[] = [];
  let first = true;
  text.split("\n").forEach((raw, i) => {
    const line = i + 1;
    const content = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (content.trim() === "") return;
    const fields = content.split("\t");
    if (first) {
      first = false;
      const isHeader = typeof options.header === "function"
        ? options.header(fields)
        : options.header;
      if (isHeader) {
        // A stray space after a column's name ("score ") made its column absent.
        header = fields.map((f) => f.trim());
        headerLine = line;
        columns = fields.length;
        return;
      }
      columns ??= fields.length;
    }
    if (fields.length !== columns) {
      throw new DataError(
        path,
        line,
        `${fields.length} tab-separated fields, expected ${columns}` +
          (header ? ` (${headerText(header)})` : ""),
      );
    }
    rows.push({ line, fields });
  });
  if (rows.length === 0) {
    throw new DataError(
      path,
      null,
      header
        ? `has no examples after its header (line ${headerLine})`
        : "has no examples (only blank lines)",
    );
  }
  return { file: path, header, headerLine: header ? headerLine : null, rows };
}

/** The index of a named column of a TSV header, or an error naming the file and its header line. */
export function tsvColumn(table: TsvTable, name: string): number {
  const i = table.header?.indexOf(name) ?? -1;
  if (i < 0) {
    const has = table.header ? `its header has ${headerText(table.header)}` : "it has no header";
    throw new DataError(table.file, table.headerLine, `no column "${name}" (${has})`);
  }
  return i;
}

/**
 * A label id from a data file's label value, tolerant of how copies write it: a label name
 * ("entailment"), a JSON boolean or "true"/"false"/"True"/"False" string for tasks whose names
 * are "false" and "true", or an integer id (3 or "3") within `labels`. null, undefined and -1
 * (test splits; Hugging Face's "no label", unless a label is named "-1") give null; anything else
 * is an error naming the file and line.
 */
export function labelId(
  file: string,
  line: number,
  value: unknown,
  labels: readonly string[],
): number | null {
  if (value === undefined || value === null) return null;
  let id = -1;
  if (typeof value === "string") {
    id = labels.indexOf(value);
    if (id < 0) {
      const lower = value.trim().toLowerCase();
      id = labels.findIndex((l) => l.toLowerCase() === lower);
    }
    if (id < 0 && /^\d+$/.test(value.trim())) {
      const n = Number(value.trim());
      if (n < labels.length) id = n;
    }
  } else if (typeof value === "boolean") {
    id = labels.indexOf(String(value));
  } else if (typeof value === "number" && Number.isInteger(value) && value >= 0) {
    if (value < labels.length) id = value;
  } else if (typeof value === "number") {
    // A negative number is no id; a label may be named so (a sentiment task's -1).
    id = labels.indexOf(String(value));
  }
  // -1 is Hugging Face datasets' "no label" (their test splits' exports), unless a label is
  // named so (a sentiment task's "-1").
  if (id < 0 && (value === -1 || value === "-1")) return null;
  if (id < 0) {
    throw new DataError(
      file,
      line,
      `label ${quote(value)} is not one of ${labels.join(", ")}` +
        ` (or an id 0-${labels.length - 1})`,
    );
  }
  return id;
}

/** A non-negative integer field of a TSV row (e.g. GLUE's `index`), or an error naming the line. */
export function tsvIndex(file: string, line: number, value: string, name: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new DataError(file, line, `field "${name}" is ${quote(value)}, not an index`);
  }
  return n;
}
