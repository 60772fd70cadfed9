// Periodic training checkpoints: everything a killed run needs to continue to the same result,
// bit for bit, in ONE safetensors file written atomically (temporary file, sync, rename), so a
// kill at any moment leaves either the previous checkpoint or the new one.
//
// It holds the tensors that differ from what a fresh start rebuilds (the head, the PEFT method's
// tensors, and the backbone tensors trained since the last restore), AdamW's m and v of the
// current stage, and in the metadata the position (stage, step), the optimizer's step count, the
// best metrics so far and how many lines log.jsonl had. Data order and dropout masks are
// functions of (seed, step), so they need no state. An f16 run adds its loss-scale state
// (kernels/loss_scale.ts: scale, good steps, skips), so that the scale evolves after a resume
// exactly as it would have without the kill. Each tensor's SHA-256 is in the metadata too: a bit
// flipped on the disk that leaves the values finite is found on resume, naming the tensor, not
// trained on.

import { createHash } from "node:crypto";
import { isJsonObject } from "../model/atomic_write.ts";
import { Recorder } from "../kernels/recorder.ts";
import { createTensor, type Tensor } from "../kernels/tensor.ts";
import { readFinite } from "../model/checkpoint.ts";
import { jsonErrorText } from "../model/error_text.ts";
import { fileOrder, openSafetensors, writeSafetensorsStreamed } from "../model/safetensors.ts";

export const CHECKPOINT_FILE = "checkpoint.safetensors";
const STATE_KEY = "ehft_training_state";
const TENSORS_SHA256_KEY = "ehft_tensors_sha256";

/** SHA-256 (hex) of a tensor's f32 bytes. */
function tensorSha256(data: Float32Array): string {
  return createHash("sha256").update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
    .digest("hex");
}
const FORMAT_VERSION = 1;

export interface TrainingState {
  /** Index of the current stage in the strategy's stage list. */
  stage: number;
  /** Steps of the current stage done. */
  stageStep: number;
  /** Steps of the run done (all stages). */
  step: number;
  /** AdamW's step count in the current stage. */
  adamStep: number;
  /**
   * The updates of those steps (skipped f16 steps not counted: AdamW's bias correction); absent
   * in checkpoints from before it was recorded, whose runs counted every step: `adamStep`.
   */
  adamApplied?: number;
  /** Best value of each metric over the evaluations that count, null if none yet. */
  best: Record<string, number | null>;
  /** The last evaluation's metrics, or null. */
  last: Record<string, number | null> | null;
  /** Lines of log.jsonl covered by this checkpoint (later lines are dropped on resume). */
  logLines: number;
  /**
   * True when a SIGTERM stopped the run right after step `step`, before what that step ends
   * with: its evaluation, Stage 1's save, the run's end. The resumed run does them first. Absent:
   * false (a periodic checkpoint, written after them).
   */
  owed?: boolean;
  /**
   * train.ts: the fingerprint of the run's settings (train/run_folder.ts settingsFingerprint), so
   * that a resume under run.json's settings edited since is refused; absent in pretraining's
   * checkpoints and in those from before it was recorded.
   */
  settingsSha256?: string;
}

export interface CheckpointTensors {
  /** Parameters by name (backbone full names, head.*, PEFT names). */
  params: ReadonlyMap<string, Tensor>;
  /** AdamW moments by the same names. */
  moments: ReadonlyMap<string, { m: Tensor; v: Tensor }>;
  /** The loss-scale state (f32 [4]) of an f16 run; absent or null otherwise. */
  lossScale?: Tensor | null;
}

const PARAM = "param/";
const M = "adam_m/";
const V = "adam_v/";
const LOSS_SCALE = "loss_scale";

/** Bytes gathered into one staging tensor per download (a download costs a round trip). */
const GATHER_BYTES = 64 << 20;

/**
 * Downloads f32 tensors with one round trip per 64 MiB: each group is copied into one gather
 * tensor on the GPU and read back at once (a download per tensor costs ~12 ms on lavapipe).
 */
export async function downloadTensors(tensors: readonly Tensor[]): Promise<Float32Array[]> {
  const out: Float32Array[] = new Array(tensors.length);
  for (const [i, j] of gatherGroups(tensors)) {
    const group = tensors.slice(i, j);
    if (group.some((t) => t.dtype !== "f32")) throw new Error("downloadTensors: f32 tensors only");
    const gpu = group[0].gpu;
    const numel = group.reduce((a, t) => a + t.numel, 0);
    if (group.length === 1 || numel === 0) {
      for (const [k, t] of group.entries()) out[i + k] = (await t.download()) as Float32Array;
      continue;
    }
    const gather = createTensor(gpu, [numel], "f32", "checkpoint gather");
    try {
      const rec = new Recorder(gpu);
      let at = 0;
      for (const t of group) {
        if (t.numel > 0) rec.copy("checkpoint gather", t, gather.view(at * 4, [t.numel]));
        at += t.numel;
      }
      await rec.submit();
      const all = (await gather.download()) as Float32Array;
      at = 0;
      group.forEach((t, k) => {
        out[i + k] = all.slice(at, at + t.numel);
        at += t.numel;
      });
    } finally {
      gather.destroy();
    }
  }
  return out;
}

/**
 * Consecutive ranges [i, j) of `tensors` whose bytes add up to at most GATHER_BYTES (a tensor
 * larger than that alone): what downloadTensors reads back in one round trip each.
 */
function gatherGroups(tensors: readonly Tensor[]): [number, number][] {
  const groups: [number, number][] = [];
  for (let i = 0; i < tensors.length;) {
    let j = i, bytes = 0;
    while (j < tensors.length && (j === i || bytes + tensors[j].byteLength <= GATHER_BYTES)) {
      bytes += tensors[j].byteLength;
      j++;
    }
    groups.push([i, j]);
    i = j;
  }
  return groups;
}

/** Writes the checkpoint atomically. */
export async function writeTrainingCheckpoint(
  path: string,
  state: TrainingState,
  tensors: CheckpointTensors,
): Promise<void> {
  const names: string[] = [];
  const list: Tensor[] = [];
  for (const [name, t] of tensors.params) {
    names.push(PARAM + name);
    list.push(t);
  }
  for (const [name, { m, v }] of tensors.moments) {
    names.push(M + name, V + name);
    list.push(m, v);
  }
  if (tensors.lossScale) {
    names.push(LOSS_SCALE);
    list.push(tensors.lossScale);
  }
  const byName = new Map(names.map((name, k) => [name, list[k]]));
  const specs = Object.fromEntries(
    names.map((name, k) => [name, { dtype: "F32" as const, shape: [...list[k].shape] }]),
  );
  // Downloaded a gather's worth at a time in the file's order, each hashed as it is written:
  // the whole state at once was a host copy of parameters and moments (4.3 GB for
  // RoBERTa-large) beside what the run holds.
  const order = fileOrder(specs);
  const ordered = order.map((name) => byName.get(name)!);
  const groups = gatherGroups(ordered);
  const hashes = new Map<string, string>();
  let ready = new Map<string, Float32Array>();
  let next = 0;
  const data = async (name: string): Promise<Float32Array> => {
    if (!ready.has(name)) {
      const [i, j] = groups[next++];
      const got = await downloadTensors(ordered.slice(i, j));
      ready = new Map(order.slice(i, j).map((n, k) => [n, got[k]]));
    }
    const values = ready.get(name)!;
    ready.delete(name);
    hashes.set(name, tensorSha256(values));
    return values;
  };
  const metadata = (sha256: (name: string) => string) => ({
    format: "ehft-training-checkpoint",
    [STATE_KEY]: JSON.stringify({ version: FORMAT_VERSION, ...state }),
    [TENSORS_SHA256_KEY]: JSON.stringify(Object.fromEntries(names.map((n) => [n, sha256(n)]))),
  });
  await writeSafetensorsStreamed(
    path,
    specs,
    data,
    metadata(() => "0".repeat(64)),
    () => metadata((n) => hashes.get(n)!),
  );
}

export interface LoadedCheckpoint {
  state: TrainingState;
  params: Map<string, Float32Array>;
  moments: Map<string, { m: Float32Array; v: Float32Array }>;
  /** The loss-scale state of an f16 run (4 values), or null. */
  lossScale: Float32Array | null;
}

/**
 * Throws, naming the checkpoint, unless its state is a place where a run of stages of
 * `stageSteps` steps writes one: after a step (at least one of its stage done), before the run's
 * last (none is written at the end, but for a SIGTERM's stop that owes the run's end; an
 * earlier stage's last step has one), the run's step the sum.
 */
export function checkTrainingPlace(
  path: string,
  state: TrainingState,
  stageSteps: readonly number[],
): void {
  const before = stageSteps.slice(0, state.stage).reduce((a, b) => a + b, 0);
  const last = state.stage === stageSteps.length - 1;
  if (
    state.stage >= stageSteps.length || state.stageStep < 1 ||
    state.stageStep > stageSteps[state.stage] - (last && !state.owed ? 1 : 0) ||
    state.step !== before + state.stageStep
  ) {
    throw new Error(
      `${path}: its training state (stage ${state.stage}, step ${state.stageStep} of it, ` +
        `${state.step} in all) is not a place in this run (stages of ` +
        `${stageSteps.join(", ")} steps)`,
    );
  }
}

/** The per-tensor SHA-256s a checkpoint's metadata records, or null (none recorded). */
function checkpointSums(path: string, raw: string | undefined): Record<string, string> | null {
  if (raw === undefined) return null;
  let sums: unknown;
  try {
    sums = JSON.parse(raw);
  } catch {
    sums = null;
  }
  if (!isJsonObject(sums) || !Object.values(sums).every((v) => typeof v === "string")) {
    throw new Error(`${path}: its ${TENSORS_SHA256_KEY} is not a JSON object of hashes (damaged)`);
  }
  return sums as Record<string, string>;
}

/** Reads a checkpoint, or null when there is none at `path`. */
export async function readTrainingCheckpoint(path: string): Promise<LoadedCheckpoint | null> {
  try {
    await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  const reader = await openSafetensors(path);
  try {
    const raw = reader.metadata[STATE_KEY];
    if (raw === undefined) throw new Error(`${path}: not a training checkpoint (no state)`);
    let parsed: TrainingState & { version: number };
    try {
      parsed = JSON.parse(raw);
    } catch (e) {
      throw new Error(`${path}: its training state is not valid JSON (${jsonErrorText(e)})`);
    }
    if (!isJsonObject(parsed)) {
      throw new Error(`${path}: its training state is not a JSON object`);
    }
    if (parsed.version !== FORMAT_VERSION) {
      throw new Error(
        `${path}: checkpoint format ${JSON.stringify(parsed.version)?.slice(0, 40)}, expected ` +
          `${FORMAT_VERSION}`,
      );
    }
    for (const key of ["stage", "stageStep", "step", "adamStep", "logLines"] as const) {
      const v = parsed[key];
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new Error(
          `${path}: training state ${key} is ${JSON.stringify(v)?.slice(0, 40)}, not a count`,
        );
      }
    }
    const applied = parsed.adamApplied;
    if (
      applied !== undefined &&
      !(Number.isSafeInteger(applied) && (applied as number) >= 0 &&
        (applied as number) <= (parsed.adamStep as number))
    ) {
      throw new Error(
        `${path}: training state adamApplied is ${JSON.stringify(applied)?.slice(0, 40)}, not a ` +
          `count of at most adamStep (${parsed.adamStep})`,
      );
    }
    if (parsed.owed !== undefined && typeof parsed.owed !== "boolean") {
      throw new Error(
        `${path}: training state owed is ${JSON.stringify(parsed.owed)?.slice(0, 40)}, not true ` +
          "or false",
      );
    }
    for (const key of ["best", "last"] as const) {
      const v = parsed[key] as unknown;
      const ok = (key === "last" && v === null) ||
        (isJsonObject(v) &&
          Object.values(v).every((x) => x === null || Number.isFinite(x)));
      if (!ok) throw new Error(`${path}: training state ${key} is not an object of metrics`);
    }
    const { version: _version, ...state } = parsed;
    const params = new Map<string, Float32Array>();
    const ms = new Map<string, Float32Array>();
    const vs = new Map<string, Float32Array>();
    let lossScale: Float32Array | null = null;
    // Absent in checkpoints from before they were written.
    const sums = checkpointSums(path, reader.metadata[TENSORS_SHA256_KEY]);
    for (const name of reader.tensors.keys()) {
      const data = await readFinite(reader, name);
      if (sums && sums[name] !== tensorSha256(data)) {
        throw new Error(
          `${path}: tensor "${name}" is not what it was written as (its SHA-256 differs from the ` +
            `one the checkpoint records): the file is damaged`,
        );
      }
      if (name === LOSS_SCALE) lossScale = data;
      else if (name.startsWith(PARAM)) params.set(name.slice(PARAM.length), data);
      else if (name.startsWith(M)) ms.set(name.slice(M.length), data);
      else if (name.startsWith(V)) vs.set(name.slice(V.length), data);
      else throw new Error(`${path}: unexpected tensor "${name}"`);
    }
    const moments = new Map<string, { m: Float32Array; v: Float32Array }>();
    for (const [name, m] of ms) {
      const v = vs.get(name);
      if (!v) throw new Error(`${path}: "${name}" has m but no v`);
      moments.set(name, { m, v });
    }
    for (const name of vs.keys()) {
      if (!ms.has(name)) throw new Error(`${path}: "${name}" has v but no m`);
    }
    return { state, params, moments, lossScale };
  } finally {
    reader.close();
  }
}

/**
 * Throws, naming the checkpoint at `path` and the first tensor missing, unless it holds every
 * parameter in `params` and the AdamW moments (m and v) of every name in `moments`. `startAgain`
 * is the program's way to start the run again (train.ts's --overwrite).
 */
export function checkWholeCheckpoint(
  path: string,
  checkpoint: Pick<LoadedCheckpoint, "params" | "moments">,
  params: Iterable<string>,
  moments: Iterable<string>,
  startAgain = "--overwrite starts the run again",
): void {
  const missing = (name: string) => {
    throw new Error(
      `${path}: no "${name}", which the run trains (the checkpoint is not whole: ${startAgain})`,
    );
  };
  for (const name of params) if (!checkpoint.params.has(name)) missing(PARAM + name);
  for (const name of moments) if (!checkpoint.moments.has(name)) missing(M + name);
}

/** Uploads `values` into `targets` by name; every value must have a target of its size. */
export function uploadByName(
  what: string,
  values: ReadonlyMap<string, Float32Array>,
  targets: ReadonlyMap<string, Tensor>,
): void {
  for (const [name, data] of values) {
    const t = targets.get(name);
    if (!t) throw new Error(`${what}: the checkpoint has "${name}", which this run does not train`);
    if (t.numel !== data.length) {
      throw new Error(`${what}: "${name}" has ${data.length} values, the model ${t.numel}`);
    }
    t.upload(data);
  }
}
