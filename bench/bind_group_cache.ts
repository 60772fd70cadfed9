// Host-side: how many bind groups a run creates, with kernels/recorder.ts's BindGroupCache, over
// the real sequence of batch shapes of a task (no GPU: the cache is given placeholder groups).
// Each batch is padded to its longest row, and a new batch shape (rows × length) needs new bind
// groups for every launch that binds a view of that size: about 947 a step for a 24-layer encoder
// (counted on lavapipe by wrapping createBindGroup; `--per-length`), plus some 23 that every step
// shares (the optimizer's; `--shared`). Creating one costs 58 µs on lavapipe.
//
//   deno run -A bench/bind_group_cache.ts [--task mrpc] [--epochs 3] [--batch-size 32]
//     [--max-length 128] [--capacity 16384] [--per-length 947] [--shared 23] [--seed 42]
//
// Prints, for the cache as it is (least recently used dropped when full) and for one that starts
// over when full (what it did before), the bind groups created and the steps that create any.
// Training steps only: the evaluations, which share the cache, are not replayed.

import { parseArgs } from "node:util";
import { BindGroupCache } from "../kernels/recorder.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { readConfig } from "../model/config.ts";
import { DataStream, tokenizeExamples } from "../train/batches.ts";
import { taskByName } from "../tasks/all.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const { values: f } = parseArgs({
  options: {
    task: { type: "string", default: "mrpc" },
    epochs: { type: "string", default: "3" },
    "batch-size": { type: "string", default: "32" },
    "max-length": { type: "string", default: "128" },
    capacity: { type: "string", default: "16384" },
    "per-length": { type: "string", default: "947" },
    shared: { type: "string", default: "23" },
    seed: { type: "string", default: "42" },
  },
});
const task = taskByName(f.task!);
const model = `${ROOT}models/ehft-mini-en`;
const tokenizer = await loadTokenizer(model, await readConfig(`${model}/config.json`));
if (!task.dataDir) throw new Error(`${task.name}: no shipped data (this bench reads data/)`);
const data = `${ROOT}${task.dataDir}`;
const examples = await task.readExamples(data, task.trainSplit ?? "train");
const split = tokenizeExamples(
  tokenizer,
  examples,
  Number(f["max-length"]),
  task.name,
  task.truncation,
);
const B = Number(f["batch-size"]);
const steps = Math.ceil(split.examples.length / B) * Number(f.epochs);
const stream = new DataStream(split.examples.length, B, Number(f.seed), true);
// A step's views are sized by its rows × padded length: the short last batch of an epoch has
// keys of its own even at a length seen before.
const shapes = Array.from({ length: steps }, (_, s) => {
  const rows = stream.examples(s).flatMap((i) => split.examples[i].inputs);
  return `${rows.length}x${Math.max(...rows.map((x) => x.ids.length))}`;
});

/** The policy before: everything dropped when full. */
class StartOver {
  private groups = new Map<string, GPUBindGroup>();
  constructor(readonly capacity: number) {}
  get(key: string) {
    return this.groups.get(key);
  }
  set(key: string, group: GPUBindGroup) {
    if (this.groups.size >= this.capacity) this.groups.clear();
    this.groups.set(key, group);
  }
}

const capacity = Number(f.capacity), perLength = Number(f["per-length"]);
const shared = Number(f.shared);
console.log(
  `${task.name}: ${steps} steps of ${B}, ${
    new Set(shapes).size
  } batch shapes; capacity ${capacity}, ` +
    `${perLength} groups per length, ${shared} shared`,
);
for (
  const [name, cache] of [
    ["least recently used dropped", new BindGroupCache(capacity)],
    ["start over when full (before)", new StartOver(capacity)],
  ] as const
) {
  let created = 0, creating = 0;
  for (const shape of shapes) {
    const keys = [
      ...Array.from({ length: shared }, (_, k) => `shared ${k}`),
      ...Array.from({ length: perLength }, (_, k) => `${shape} ${k}`),
    ];
    // As Recorder.submit does: every group of the submit looked up first, the new ones stored.
    const missing = keys.filter((key) => cache.get(key) === undefined);
    for (const key of missing) cache.set(key, {} as GPUBindGroup);
    created += missing.length;
    if (missing.length > 0) creating++;
  }
  console.log(`${name}: ${created} bind groups created; ${creating} of ${steps} steps create some`);
}
