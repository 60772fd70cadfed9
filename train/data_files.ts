// Reading data files line by line with errors that name the file and the line.

export class DataError extends Error {
  constructor(file: string, line: number | null, problem: string) {
    super(line === null ? `${file}: ${problem}` : `${file}:${line}: ${problem}`);
    this.name = "DataError";
  }
}

async function readText(path: string): Promise<string> {
  try {
    const text = await Deno.readTextFile(path);
    // A UTF-8 byte-order mark (Deno keeps it) is not part of the first line.
    return text.startsWith("\uFEFF") ? text.slice(1) : text;
  } catch (e) {
    throw new DataError(path, null, `cannot read: ${(e as Error).message}`);
  }
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
      throw new DataError(path, line, `not valid JSON (${(e as Error).message})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new DataError(path, line, "expected a JSON object");
    }
    rows.push({ line, value: value as Record<string, unknown> });
  });
  if (rows.length === 0) throw new DataError(path, null, "has no examples");
  return rows;
}

/** A data file: `path` itself if it is a file, else `<path>/<split>.<extension>`. */
export async function splitFile(path: string, split: string, extension: string): Promise<string> {
  let isDirectory: boolean;
  try {
    isDirectory = (await Deno.stat(path)).isDirectory;
  } catch {
    throw new DataError(path, null, "no such file or folder");
  }
  return isDirectory ? `${path}/${split}.${extension}` : path;
}

/** A string field of a JSON row, or an error naming file, line and field. */
export function stringField(
  file: string,
  line: number,
  row: Record<string, unknown>,
  field: string,
): string {
  const v = row[field];
  if (typeof v !== "string") throw new DataError(file, line, `field "${field}" is not a string`);
  return v;
}

/** The `idx` field if present (a non-negative integer), else `fallback`. */
export function indexField(
  file: string,
  line: number,
  row: Record<string, unknown>,
  fallback: number,
): number {
  const v = row.idx;
  if (v === undefined) return fallback;
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new DataError(file, line, `field "idx" is not a non-negative integer`);
  }
  return v;
}

/** One row of a TSV file: its fields and its 1-based line number. */
export interface TsvRow {
  line: number;
  fields: string[];
}

/** A TSV file's header (null when it has none) and its rows. */
export interface TsvTable {
  file: string;
  header: string[] | null;
  rows: TsvRow[];
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
        header = fields;
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
          (header ? ` (${(header as string[]).join(", ")})` : ""),
      );
    }
    rows.push({ line, fields });
  });
  if (rows.length === 0) throw new DataError(path, null, "has no examples");
  return { file: path, header, rows };
}

/** The index of a named column of a TSV header, or an error naming the file and its header line. */
export function tsvColumn(table: TsvTable, name: string): number {
  const i = table.header?.indexOf(name) ?? -1;
  if (i < 0) {
    const has = table.header ? `its header has ${table.header.join(", ")}` : "it has no header";
    throw new DataError(table.file, table.header ? 1 : null, `no column "${name}" (${has})`);
  }
  return i;
}

/**
 * A label id from a data file's label value, tolerant of how copies write it: a label name
 * ("entailment"), a JSON boolean or "true"/"false"/"True"/"False" string for tasks whose names
 * are "false" and "true", or an integer id (3 or "3") within `labels`. null and undefined (test
 * splits) give null; anything else is an error naming the file and line.
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
  }
  if (id < 0) {
    throw new DataError(
      file,
      line,
      `label ${JSON.stringify(value)} is not one of ${labels.join(", ")}` +
        ` (or an id 0-${labels.length - 1})`,
    );
  }
  return id;
}

/** A non-negative integer field of a TSV row (e.g. GLUE's `index`), or an error naming the line. */
export function tsvIndex(file: string, line: number, value: string, name: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new DataError(file, line, `field "${name}" is ${JSON.stringify(value)}, not an index`);
  }
  return n;
}
