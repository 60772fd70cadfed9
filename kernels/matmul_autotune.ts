// Per-adapter choice of the GEMM variant: a short timing of the candidates on representative
// shapes, one per shape class, remembered per adapter description (in memory, and optionally in
// a small JSON file) and installed into `matmul` through `setMatmulTuner`.
//
// `matmul` itself records synchronously and cannot time anything, so tuning is an explicit async
// step a program runs once after acquiring its device; until then (or for a class the tune did
// not cover) `matmul` uses its built-in heuristic. A variant changes speed only, never which
// outputs are produced, and each variant is deterministic, so a cached choice is safe to reuse.

import type { Gpu } from "./device.ts";
import { fill } from "./fill.ts";
import { matmul, MATMUL_VARIANTS, type MatmulVariant, setMatmulTuner } from "./matmul.ts";
import { Recorder } from "./recorder.ts";
import { createTensor } from "./tensor.ts";

/** A representative product: C[m,n] = op(A)·op(B) with op(A) m×k and op(B) k×n. */
export interface TuneShape {
  m: number;
  n: number;
  k: number;
  transA?: boolean;
  transB?: boolean;
}

export interface AutotuneOptions {
  /** Shapes to tune; default: the three products of a 512-row, 256→1024 linear layer. */
  shapes?: TuneShape[];
  /** Variants tried; default: the barrier-free ones (the shared-memory ones never won here). */
  candidates?: MatmulVariant[];
  /** Per-candidate time budget in milliseconds; default 60. */
  budgetMs?: number;
  /** JSON cache file (keyed by adapter description); default: none (memory only). */
  cacheFile?: string;
}

/** Choices by shape class, for one adapter. */
export type TuneTable = Record<string, MatmulVariant>;

const memory = new Map<string, TuneTable>();

function sizeClass(x: number): string {
  return x < 64 ? "s" : x < 512 ? "m" : "l";
}

/** The shape class a product belongs to: its transposes and each dimension's size class. */
export function matmulShapeClass(
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
): string {
  return `${transA ? "T" : "N"}${transB ? "T" : "N"}:${sizeClass(m)}${sizeClass(n)}${sizeClass(k)}`;
}

const DEFAULT_SHAPES: TuneShape[] = [
  { m: 512, n: 1024, k: 256, transB: true }, // forward X·Wᵀ
  { m: 512, n: 256, k: 1024 }, // dX = dY·W
  { m: 1024, n: 256, k: 512, transA: true }, // dW = dYᵀ·X
];
const DEFAULT_CANDIDATES: MatmulVariant[] = ["vec4_4x4", "vec4_8x8", "vec4_8x16", "vec4_16x8"];

function readCache(file: string): Record<string, TuneTable> {
  try {
    const parsed = JSON.parse(Deno.readTextFileSync(file));
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) return parsed;
  } catch {
    // Missing, unreadable or corrupt: tune again and overwrite.
  }
  return {};
}

function validTable(t: unknown): t is TuneTable {
  return !!t && typeof t === "object" &&
    Object.values(t).every((v) => MATMUL_VARIANTS.includes(v as MatmulVariant));
}

function install(gpu: Gpu, table: TuneTable): void {
  setMatmulTuner(
    gpu,
    (m, n, k, transA, transB) => table[matmulShapeClass(m, n, k, transA, transB)],
  );
}

/** Milliseconds per product of `variant` on `shape`, the median of a few short submits. */
async function timeVariant(
  gpu: Gpu,
  shape: TuneShape,
  variant: MatmulVariant,
  budgetMs: number,
): Promise<number> {
  const { m, n, k } = shape;
  const transA = shape.transA ?? false, transB = shape.transB ?? false;
  const a = createTensor(gpu, transA ? [k, m] : [m, k], "f32", "tuneA");
  const b = createTensor(gpu, transB ? [n, k] : [k, n], "f32", "tuneB");
  const c = createTensor(gpu, [m, n], "f32", "tuneC");
  try {
    const init = new Recorder(gpu);
    fill(init, a, 0.5);
    fill(init, b, 0.25);
    await init.submit();
    const run = async () => {
      const rec = new Recorder(gpu);
      matmul(rec, { a, b, c, m, n, k, transA, transB, variant });
      const t0 = performance.now();
      await rec.submit();
      await gpu.device.queue.onSubmittedWorkDone();
      return performance.now() - t0;
    };
    await run(); // compile and warm up
    const times: number[] = [];
    const start = performance.now();
    while (times.length < 3 || (performance.now() - start < budgetMs && times.length < 9)) {
      times.push(await run());
      if (times.length >= 1 && times[0] > budgetMs) break; // too slow to be a contender
    }
    times.sort((x, y) => x - y);
    return times[times.length >> 1];
  } finally {
    a.destroy();
    b.destroy();
    c.destroy();
  }
}

/**
 * Tunes the GEMM for this adapter (or reuses an earlier tune of the same adapter description,
 * from memory or `cacheFile`) and installs the choices into `matmul`. Returns the table.
 */
export async function autotuneMatmul(gpu: Gpu, options: AutotuneOptions = {}): Promise<TuneTable> {
  const key = gpu.description;
  const shapes = options.shapes ?? DEFAULT_SHAPES;
  const candidates = options.candidates ?? DEFAULT_CANDIDATES;
  const budgetMs = options.budgetMs ?? 60;
  const fileCache = options.cacheFile ? readCache(options.cacheFile) : {};
  const known = memory.get(key) ?? (validTable(fileCache[key]) ? fileCache[key] : undefined);
  const table: TuneTable = { ...known };
  let tuned = false;
  for (const s of shapes) {
    const cls = matmulShapeClass(s.m, s.n, s.k, s.transA ?? false, s.transB ?? false);
    if (table[cls]) continue;
    let best: MatmulVariant = candidates[0];
    let bestMs = Infinity;
    for (const v of candidates) {
      const ms = await timeVariant(gpu, s, v, budgetMs);
      if (ms < bestMs) [best, bestMs] = [v, ms];
    }
    table[cls] = best;
    tuned = true;
  }
  memory.set(key, table);
  if (tuned && options.cacheFile) {
    try {
      const all = readCache(options.cacheFile);
      all[key] = table;
      Deno.writeTextFileSync(options.cacheFile, JSON.stringify(all, null, 2) + "\n");
    } catch {
      // A cache we cannot write only costs a re-tune next time.
    }
  }
  install(gpu, table);
  return table;
}

/** The default cache file under the OS cache directory, or undefined when none is known. */
export function defaultMatmulCacheFile(): string | undefined {
  const env = (name: string) => {
    try {
      return Deno.env.get(name);
    } catch {
      return undefined;
    }
  };
  const xdg = env("XDG_CACHE_HOME");
  const home = env("HOME");
  const dir = xdg ?? (home ? `${home}/.cache` : undefined);
  if (!dir) return undefined;
  try {
    Deno.mkdirSync(`${dir}/ehft`, { recursive: true });
  } catch {
    return undefined;
  }
  return `${dir}/ehft/matmul_autotune.json`;
}
