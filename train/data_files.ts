// Reading data files line by line with errors that name the file and the line.

export class DataError extends Error {
  constructor(file: string, line: number | null, problem: string) {
    super(line === null ? `${file}: ${problem}` : `${file}:${line}: ${problem}`);
    this.name = "DataError";
  }
}

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
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
