// pretrain.ts from the command line: from scratch on a plain-text corpus (pruned vocabulary,
// tokenizer.json and vocab.txt beside the weights), continuing a checkpoint (domain-adaptive:
// its own vocabulary and shape, and a model that fine-tunes afterwards), --resume refusing other
// flags or another corpus, leaving a finished run as it is and finishing one stopped before
// result.json, one-line errors for a run folder in use (naming what it holds) and an empty
// corpus, the note for BoolQ/QNLI text not in the data cache, and tools/ship_model.ts.

import { assert, assertEquals } from "./assert.ts";
import { openModel } from "../model/load.ts";
import { mlmHeadNames } from "../model/mlm_head.ts";
import { openSafetensors } from "../model/safetensors.ts";
import {
  copyTree,
  exists,
  readTree,
  rewriteSafetensors,
  sameBytes,
  VOCAB,
  writeTinyBert,
} from "./train_fixture.ts";
import { FLAGS, HELP } from "../pretrain.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** The WebGPU adapter's maxStorageBufferBindingSize, read by a Deno of its own. */
async function bindingLimit(): Promise<number> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      "const a = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' }); " +
      "console.log(a.limits.maxStorageBufferBindingSize);",
    ],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "null",
  }).output();
  const limit = Number(new TextDecoder().decode(out.stdout).trim());
  if (!(limit > 0)) throw new Error("could not read the adapter's maxStorageBufferBindingSize");
  return limit;
}

/** pretrain.ts with `args` (and --no-autotune), its stderr piped. */
function pretrainCommand(
  args: string[],
  quiet: boolean,
  env: Record<string, string>,
  denoFlags: string[],
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      ...denoFlags,
      `${ROOT}pretrain.ts`,
      ...(quiet ? ["--quiet"] : []),
      "--no-autotune",
      ...args,
    ],
    env: { XDG_RUNTIME_DIR: "/tmp", ...env },
    stdout: "piped",
    stderr: "piped",
  });
}

async function pretrain(
  args: string[],
  quiet = true,
  env: Record<string, string> = {},
  denoFlags: string[] = [],
) {
  const out = await pretrainCommand(args, quiet, env, denoFlags).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

/** pretrain.ts started with `args`, and its whole stderr once it ends (to stop it midway). */
function spawnPretrain(args: string[]): { child: Deno.ChildProcess; stderr: Promise<string> } {
  const child = pretrainCommand(args, false, { NO_COLOR: "1" }, []).spawn();
  child.stdout.cancel();
  return { child, stderr: new Response(child.stderr).text() };
}

/**
 * Writes `dir`/main.ts, pretrain.ts's main after `patch` (the test's hook, with `Pretrainer` and
 * `sigterm()` in scope: a SIGTERM sent, and waited for until the run has taken it), and returns
 * what runs it with some arguments: its exit code and stderr.
 */
async function sigtermScript(
  dir: string,
  patch: string,
): Promise<(...args: string[]) => Promise<{ code: number; stderr: string }>> {
  const url = (path: string) => JSON.stringify(new URL(path, import.meta.url).href);
  const script = `${dir}/main.ts`;
  await Deno.writeTextFile(
    script,
    `import { HELP, main } from ${url("../pretrain.ts")};
import { runMain } from ${url("../train/flags.ts")};
import { Pretrainer } from ${url("../train/pretrain.ts")};
import { stopRequested } from ${url("../train/run_faults.ts")};
async function sigterm() {
  Deno.kill(Deno.pid, "SIGTERM");
  while (!stopRequested()) await new Promise((r) => setTimeout(r, 1));
}
${patch}
await runMain("pretrain", main, HELP, { flagsOnly: true });
`,
  );
  return async (...args: string[]) => {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, ...args],
      env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
    return { code: r.code, stderr: new TextDecoder().decode(r.stderr).trim() };
  };
}

/** The training state of `out`/checkpoint.safetensors (its metadata alone). */
async function checkpointState(out: string): Promise<Record<string, number | boolean>> {
  const reader = await openSafetensors(`${out}/checkpoint.safetensors`);
  reader.close();
  return JSON.parse(reader.metadata.ehft_training_state);
}

/** A new 1-layer model of `dir`/corpus.txt's text, on the bert-base-uncased vocabulary pruned. */
function tinyFromScratch(dir: string): string[] {
  return [
    ...["--corpus", `${dir}/corpus.txt`],
    ...["--vocab", `${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`],
    ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
    ...["--max-positions", "16"],
  ];
}

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

/**
 * A pretrain.json's settings holding every key a run records (one missing is a damaged file),
 * with `edit` over them: batch 4, a 1-layer model of hidden 128, `dir`/corpus.txt.
 */
function recordedSettings(dir: string, edit: Record<string, unknown> = {}) {
  return {
    model: null,
    corpus: `${dir}/corpus.txt`,
    task_text: "none",
    min_count: 1,
    shape: { layers: 1, hidden: 128, heads: 2, intermediate: 512, max_positions: 128 },
    steps: 10,
    batch_size: 4,
    max_length: 16,
    lr: 1e-4,
    warmup_ratio: 0.1,
    weight_decay: 0.01,
    seed: 0,
    held_out: 0.1,
    eval_sequences: 0,
    masking: "15% of the non-special tokens; 80% [MASK], 10% random, 10% kept",
    ...edit,
  };
}

/** A corpus of short documents in the tiny vocabulary's words, blank lines between documents. */
async function writeCorpus(path: string): Promise<void> {
  const words = VOCAB.slice(5);
  const docs: string[] = [];
  for (let d = 0; d < 30; d++) {
    const lines = [];
    for (let s = 0; s < 3; s++) {
      lines.push(
        Array.from({ length: 6 + ((d + s) % 5) }, (_, i) => words[(d * 7 + s * 3 + i) % 40]).join(
          " ",
        ) + ".",
      );
    }
    docs.push(lines.join("\n"));
  }
  await Deno.writeTextFile(path, docs.join("\n\n") + "\n");
}

const SMALL = [
  "--task-text",
  "none",
  "--steps",
  "4",
  "--batch-size",
  "4",
  "--max-length",
  "16",
  "--eval-every",
  "2",
  "--checkpoint-every",
  "2",
  "--log-every",
  "2",
  "--eval-sequences",
  "4",
  "--held-out",
  "0.1",
];

test("pretrain.ts from scratch: pruned vocabulary, outputs, --resume checks its flags", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const out = `${dir}/run`;
    const args = [
      "--out",
      out,
      "--corpus",
      `${dir}/corpus.txt`,
      "--vocab",
      `${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`,
      "--layers",
      "1",
      "--hidden",
      "16",
      "--heads",
      "2",
      "--intermediate",
      "32",
      "--max-positions",
      "16",
      ...SMALL,
    ];
    const r = await pretrain(args);
    assertEquals(r.code, 0, r.stderr);
    for (const f of ["pretrain.json", "log.jsonl", "checkpoint.safetensors", "result.json"]) {
      assert(await exists(`${out}/${f}`), f);
    }
    const model = await openModel(`${out}/model`);
    try {
      // Every character and its ## form stay, so the vocabulary is larger than the words used.
      const vocab = (await Deno.readTextFile(`${out}/model/vocab.txt`)).trim().split("\n");
      assertEquals(model.config.vocabSize, vocab.length);
      for (const token of ["the", "z", "##z", "[MASK]"]) assert(vocab.includes(token), token);
      assert(vocab.length < 30522 / 4, `${vocab.length} tokens kept`);
      for (const name of Object.values(mlmHeadNames(model.config))) {
        assert(model.weights.tensors.has(name), name);
      }
    } finally {
      model.weights.close();
    }
    const settings = JSON.parse(await Deno.readTextFile(`${out}/pretrain.json`));
    assertEquals(settings.settings.shape.layers, 1);
    const tcText = await Deno.readTextFile(`${out}/model/tokenizer_config.json`);
    const tc = JSON.parse(tcText);
    assertEquals([tc.model_max_length, tc.do_lower_case, tc.mask_token], [16, true, "[MASK]"]);

    // tools/ship_model.ts turns the run into a model folder with its card, and writes the same
    // tokenizer_config.json for a run from before pretrain.ts wrote one.
    await Deno.remove(`${out}/model/tokenizer_config.json`);
    const ship = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}tools/ship_model.ts`, "--run", out, "--out", `${dir}/shipped`],
      env: { XDG_RUNTIME_DIR: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(ship.code, 0, new TextDecoder().decode(ship.stderr));
    assertEquals(await Deno.readTextFile(`${dir}/shipped/tokenizer_config.json`), tcText);
    const card = await Deno.readTextFile(`${dir}/shipped/README.md`);
    for (const line of ["| layers | 1 |", "| steps | 4 |", "| hidden size | 16 |"]) {
      assert(card.includes(line), line);
    }
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"]) {
      assert(await exists(`${dir}/shipped/${f}`), f);
    }
    assertEquals(settings.corpus.sources, [`${dir}/corpus.txt`]);

    const again = await pretrain(args);
    assertEquals(again.code, 2);
    assert(again.stderr.includes(`--out ${out} is not empty`), again.stderr);
    const other = await pretrain([...args, "--lr", "1e-3", "--resume"]);
    assertEquals(other.code, 2);
    assert(
      other.stderr.includes(
        `--resume: ${out} was started with other settings (lr: 0.0005 in pretrain.json, ` +
          `0.001 now)`,
      ),
      other.stderr,
    );
    assertEquals(other.stderr.trim().split("\n").length, 1, other.stderr);
    // --out alone: a typed shape flag against the recorded --max-length (16) is refused as
    // another shape, not as a --max-length the user never typed.
    const shape = await pretrain(["--out", out, "--resume", "--max-positions", "8"]);
    assertEquals(shape.code, 2);
    assertEquals(
      shape.stderr.trim(),
      `pretrain: --resume: ${out} was started with other settings (shape.max_positions: 16 in ` +
        "pretrain.json, 8 now)",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Every file under `dir` with its bytes and modification time. */
async function snapshot(dir: string): Promise<Map<string, [Uint8Array, number]>> {
  const out = new Map<string, [Uint8Array, number]>();
  for (const [name, bytes] of await readTree(dir)) {
    out.set(name, [bytes, (await Deno.stat(`${dir}/${name}`)).mtime!.getTime()]);
  }
  return out;
}

async function assertUnchanged(
  dir: string,
  before: Map<string, [Uint8Array, number]>,
  what: string,
): Promise<void> {
  const now = await snapshot(dir);
  assertEquals([...now.keys()].sort(), [...before.keys()].sort(), `${what}: the files`);
  for (const [name, [bytes, mtime]] of before) {
    const [b, m] = now.get(name)!;
    assert(sameBytes(b, bytes) && m === mtime, `${what}: ${name} was rewritten`);
  }
}

test("pretrain.ts --resume: finished runs are kept, other flags or text refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const corpus = `${dir}/corpus.txt`;
    await writeCorpus(corpus);
    const vocab = `${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`;
    const out = `${dir}/run`;
    const args = [
      ...["--out", out, "--corpus", corpus, "--vocab", vocab, "--layers", "1", "--hidden", "16"],
      ...["--heads", "2", "--intermediate", "32", "--max-positions", "16", ...SMALL],
    ];
    const r = await pretrain(args);
    assertEquals(r.code, 0, r.stderr);
    const done = await snapshot(out);
    const result = JSON.parse(await Deno.readTextFile(`${out}/result.json`));
    assert(result.held_out !== null && result.tokens > 0, JSON.stringify(result));
    assertEquals(result.tokens_this_run, result.tokens);

    // A finished run: --resume says so and changes nothing (it once wrote a result.json of nulls).
    const finished = await pretrain([...args, "--resume"], false);
    assertEquals(finished.code, 0, finished.stderr);
    assert(
      finished.stderr.includes(`${out}: the run is finished; nothing to do`),
      finished.stderr,
    );
    await assertUnchanged(out, done, "a finished run's --resume");
    // Without --resume the finished run's folder is refused, naming all it holds (it once named
    // model alone, the first entry read).
    const busy = await pretrain(args);
    assertEquals(busy.code, 2, busy.stderr);
    assertEquals(
      busy.stderr.trim(),
      `pretrain: --out ${out} is not empty (it holds checkpoint.safetensors, log.jsonl, model/, ` +
        "pretrain.json, result.json); choose a new folder or --resume",
    );
    // Another pretrain.ts in the folder (here: this process's lock on it): --resume is refused
    // before it reads or writes anything.
    const other = await Deno.open(out, { read: true });
    try {
      assert(await other.tryLock(true), "the test could not lock the folder");
      const locked = await pretrain([...args, "--resume"]);
      assertEquals([locked.code, locked.stderr.trim()], [
        1,
        `pretrain: --out ${out} is in use: another pretrain.ts is running in it (wait for it to ` +
        `end, or choose another --out)`,
      ]);
    } finally {
      other.close();
    }
    await assertUnchanged(out, done, "a locked folder's --resume");

    // Other flags, other text in the corpus: one line naming what differs, and nothing written.
    const text = await Deno.readTextFile(corpus);
    const docs = text.trim().split("\n\n");
    const flagged = `pretrain: --resume: ${out} was started with other settings (`;
    const texted = `pretrain: --resume: ${out} was started on other text: the corpus and task ` +
      `text read now differ (`;
    const cases: [string[], string | null, string][] = [
      [["--log-every", "1"], null, `${flagged}log_every: 2 in pretrain.json, 1 now`],
      [["--eval-every", "1"], null, `${flagged}eval_every: 2 in pretrain.json, 1 now`],
      [["--checkpoint-every", "1"], null, `${flagged}checkpoint_every: 2 in pretrain.json, 1 now`],
      [["--model-dtype", "f16"], null, `${flagged}model_dtype: "f32" in pretrain.json, "f16" now`],
      // Another seed also holds out other documents: the flag is named, not the text.
      [["--seed", "1"], null, `${flagged}seed: 0 in pretrain.json, 1 now`],
      // Every flag that differs, on one line.
      [
        ["--log-every", "1", "--seed", "1"],
        null,
        `${flagged}seed: 0 in pretrain.json, 1 now; log_every: 2 in pretrain.json, 1 now)`,
      ],
      // Other task text typed: named as the flag, before any text is read (it was exit status
      // 1, naming text_sha256).
      [["--task-text", "cb"], null, `${flagged}task_text: "none" in pretrain.json, "cb" now)`],
      [[], [...docs].reverse().join("\n\n") + "\n", `${texted}text_sha256: `],
      // The first document left out.
      [[], docs.slice(1).join("\n\n") + "\n", `${texted}text_sha256: `],
      // New words grow the pruned vocabulary too: still other text, not another setting.
      [[], text + "\nzebra giraffe elephant kangaroo.\n", `${texted}text_sha256: `],
      // A word replaced, the counts kept (the vocabulary grows): other text too.
      [[], text.replace(/^\S+/, "zebra"), `${texted}text_sha256: `],
    ];
    for (const [flags, changed, line] of cases) {
      if (changed !== null) await Deno.writeTextFile(corpus, changed);
      const refused = await pretrain([...args, ...flags, "--resume"]);
      await Deno.writeTextFile(corpus, text);
      // The flags refused as typed: exit status 2; the text changed since: 1.
      assertEquals(refused.code, changed === null ? 2 : 1, refused.stderr);
      assert(refused.stderr.startsWith(line), `${refused.stderr}\nexpected: ${line}`);
      assertEquals(refused.stderr.trim().split("\n").length, 1, refused.stderr);
    }
    // Another --corpus typed, of other text: the command's, naming --corpus.
    await Deno.writeTextFile(`${dir}/other.txt`, docs.slice(1).join("\n\n") + "\n");
    const corpusTyped = await pretrain([...args, "--corpus", `${dir}/other.txt`, "--resume"]);
    assertEquals(corpusTyped.code, 2, corpusTyped.stderr);
    assert(
      corpusTyped.stderr.startsWith(texted) &&
        corpusTyped.stderr.trim().endsWith(
          `; --corpus ${dir}/other.txt is not the corpus it started on (${corpus})`,
        ),
      corpusTyped.stderr,
    );
    await assertUnchanged(out, done, "a refused --resume");
    // A damaged pretrain.json (in a copy of the run): one line naming it, nothing else written.
    const damaged = `${dir}/damaged`;
    await copyTree(out, damaged);
    const settingsText = await Deno.readTextFile(`${damaged}/pretrain.json`);
    for (const bad of [settingsText.slice(0, 40), "null\n"]) {
      await Deno.writeTextFile(`${damaged}/pretrain.json`, bad);
      const before = await snapshot(damaged);
      const refused = await pretrain([...args.map((a) => a === out ? damaged : a), "--resume"]);
      assertEquals(refused.code, 1, refused.stderr);
      assert(refused.stderr.startsWith(`pretrain: ${damaged}/pretrain.json: not `), refused.stderr);
      assertEquals(refused.stderr.trim().split("\n").length, 1, refused.stderr);
      await assertUnchanged(damaged, before, "a --resume with a damaged pretrain.json");
    }
    // The same files under other names (the contents are compared, not the paths): finished.
    await Deno.copyFile(vocab, `${dir}/vocab.txt`);
    const renamed = args.map((a) =>
      a === vocab ? `${dir}/vocab.txt` : a === corpus ? `${dir}/./corpus.txt` : a
    );
    const same = await pretrain([...renamed, "--resume"], false);
    assertEquals(same.code, 0, same.stderr);
    assert(same.stderr.includes("the run is finished; nothing to do"), same.stderr);
    await assertUnchanged(out, done, "a --resume with the same files under other names");
    // model/ lost after result.json was written: not finished, and written again.
    const kept = await readTree(`${out}/model`);
    await Deno.remove(`${out}/model`, { recursive: true });
    const rebuilt = await pretrain([...args, "--resume"]);
    assertEquals(rebuilt.code, 0, rebuilt.stderr);
    for (const [name, bytes] of kept) {
      assert(sameBytes((await readTree(`${out}/model`)).get(name)!, bytes), `model/${name}`);
    }

    // Stopped after its last checkpoint, before result.json (and the model's files): --resume,
    // with --out alone (pretrain.json gives the other flags), writes them as the uninterrupted
    // run did.
    const model = await readTree(`${out}/model`);
    await Deno.remove(`${out}/result.json`);
    await Deno.remove(`${out}/model`, { recursive: true });
    const resumed = await pretrain(["--out", out, "--resume"], false);
    assertEquals(resumed.code, 0, resumed.stderr);
    assert(
      resumed.stderr.startsWith(`--resume: the settings recorded in ${out}/pretrain.json\n`),
      resumed.stderr,
    );
    assert(resumed.stderr.includes("pretrain: resumed at step 4 of 4"), resumed.stderr);
    const again = JSON.parse(await Deno.readTextFile(`${out}/result.json`));
    const { seconds_this_run: _, tokens_this_run: __, ...run } = result;
    const { seconds_this_run: _s, tokens_this_run: thisRun, ...runAgain } = again;
    assertEquals(runAgain, run, "result.json of a run stopped before it");
    assertEquals(thisRun, 0, "nothing was left to train");
    for (const [name, bytes] of model) {
      assert(sameBytes((await readTree(`${out}/model`)).get(name)!, bytes), `model/${name}`);
    }
    for (const name of ["pretrain.json", "log.jsonl", "checkpoint.safetensors"]) {
      assert(sameBytes(await Deno.readFile(`${out}/${name}`), done.get(name)![0]), name);
    }

    assert(!resumed.stderr.includes("records a start on"), resumed.stderr);

    // pretrain.json records where the run started: a resume elsewhere says so, and goes on.
    const settingsPath = `${out}/pretrain.json`;
    const recorded = JSON.parse(await Deno.readTextFile(settingsPath));
    assertEquals(recorded.environment.deno, Deno.version.deno);
    const elsewhere = structuredClone(recorded);
    elsewhere.environment.adapter.description = "Another GPU";
    await Deno.writeTextFile(settingsPath, JSON.stringify(elsewhere, null, 2) + "\n");
    await Deno.remove(`${out}/result.json`);
    const moved = await pretrain([...args, "--resume"]);
    assertEquals(moved.code, 0, moved.stderr);
    assert(
      moved.stderr.includes(`--resume: ${settingsPath} records a start on Another GPU, Deno `),
      moved.stderr,
    );
    assertEquals(JSON.parse(await Deno.readTextFile(`${out}/result.json`)).held_out, run.held_out);

    // A run whose pretrain.json predates the fingerprints, the flags and the environment recorded
    // since resumes.
    delete recorded.environment;
    for (const key of ["vocab", "eval_every", "checkpoint_every", "log_every", "model_dtype"]) {
      delete recorded.settings[key];
    }
    const fingerprints = ["text_sha256", "train_sha256", "held_out_sha256", "tokenizer_sha256"];
    for (const key of [...fingerprints, "warmup_steps"]) delete recorded.settings[key];
    // ...unless its warmup, the float64 product's floor then, would now be another: 0.29 · 100
    // steps gave 28 warmup steps, 29 now (refused before anything is read or written).
    const rounded = structuredClone(recorded);
    Object.assign(rounded.settings, { steps: 100, warmup_ratio: 0.29 });
    await Deno.writeTextFile(settingsPath, JSON.stringify(rounded, null, 2) + "\n");
    const refused = await pretrain([
      ...args,
      "--steps",
      "100",
      "--warmup-ratio",
      "0.29",
      "--resume",
    ]);
    assertEquals([refused.code, refused.stderr.trim()], [
      1,
      `pretrain: --resume: ${out} was started when --warmup-ratio 0.29 gave its 100 steps 28 ` +
      `warmup steps (a rounding error); it now gives 29, so the resumed run would be neither ` +
      `(start it again in another --out)`,
    ]);
    const older = JSON.stringify(recorded, null, 2) + "\n";
    await Deno.writeTextFile(settingsPath, older);
    await Deno.remove(`${out}/result.json`);
    const old = await pretrain([...args, "--resume"]);
    assertEquals(old.code, 0, old.stderr);
    assert(!old.stderr.includes("records a start on"), old.stderr);
    assertEquals(JSON.parse(await Deno.readTextFile(`${out}/result.json`)).held_out, run.held_out);
    assertEquals(await Deno.readTextFile(settingsPath), older, "pretrain.json is not rewritten");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts --help names every flag, with the default the parser uses", () => {
  for (const [name, spec] of Object.entries(FLAGS)) {
    const at = HELP.indexOf(`--${name}`);
    assert(at >= 0, `--${name}`);
    const def = (spec as { default?: string }).default;
    if (def === undefined) continue;
    // The flag's entry runs to the next line that starts a flag; the shape flags share one.
    const next = HELP.indexOf("\n  --", at);
    const entry = HELP.slice(at, next < 0 ? undefined : next);
    assert(
      new RegExp(`\\(default [^)]*\\b${def.replace(".", "\\.")}\\b`).test(entry),
      `--${name}: ${entry}`,
    );
  }
  return Promise.resolve();
});

test("pretrain.ts checks every flag, --out and --resume before reading or writing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // The corpus does not exist: each error must come first, as one line.
    const args = ["--corpus", `${dir}/missing.txt`, ...SMALL];
    await Deno.mkdir(`${dir}/used`);
    await Deno.writeTextFile(`${dir}/used/notes.txt`, "mine\n");
    // Written out of order: the message lists them sorted, folders with a "/", six then "…".
    for (const name of ["h.txt", "b.txt", "g.txt", "a.txt", "f.txt", "c.txt", "e.txt"]) {
      await Deno.mkdir(`${dir}/full`, { recursive: true });
      await Deno.writeTextFile(`${dir}/full/${name}`, "");
    }
    await Deno.mkdir(`${dir}/full/d`);
    for (
      const [name, settings] of [
        ["edited", { weight_decay: 20 }],
        ["edited-lr", { lr: true }],
        ["edited-heads", { heads: 3 }],
      ] as const
    ) {
      await Deno.mkdir(`${dir}/${name}`);
      await Deno.writeTextFile(
        `${dir}/${name}/pretrain.json`,
        JSON.stringify({ settings: recordedSettings(dir, settings), corpus: {} }),
      );
    }
    const cases: [string[], string][] = [
      [["--out", `${dir}/used`], `--out ${dir}/used is not empty (it holds notes.txt)`],
      [
        ["--out", `${dir}/full`],
        `--out ${dir}/full is not empty (it holds a.txt, b.txt, c.txt, d/, e.txt, f.txt, …); ` +
        "choose a new folder or --resume",
      ],
      [["--out", `${dir}/new`, "--resume"], `--resume: ${dir}/new/pretrain.json does not exist`],
      // pretrain.json's settings give the flags not typed: one no flag takes names the file.
      [
        ["--out", `${dir}/edited`, "--resume"],
        `${dir}/edited/pretrain.json: --weight-decay: expected a number ≥ 0 and ≤ 10, got "20"`,
      ],
      [
        ["--out", `${dir}/edited-heads`, "--resume"],
        `${dir}/edited-heads/pretrain.json: --hidden 128 is not a multiple of --heads 3`,
      ],
      [
        ["--out", `${dir}/edited-lr`, "--resume"],
        `${dir}/edited-lr/pretrain.json: settings.lr is true, not a value of --lr`,
      ],
      [
        ["--out", `${dir}/used/notes.txt`],
        `--out ${dir}/used/notes.txt is a file, not a folder: give a folder for the run`,
      ],
      [
        ["--out", `${dir}/used/notes.txt/run`],
        `--out ${dir}/used/notes.txt/run: ${dir}/used/notes.txt is a file, not a folder`,
      ],
      [["--out", `${dir}/new`, "--hidden", "15", "--heads", "2"], "--hidden 15 is not a multiple"],
      [["--out", `${dir}/new`, "--lr", "2"], "--lr"],
      // train.ts refuses a learning rate of 0 as well: it would train nothing.
      [["--out", `${dir}/new`, "--lr", "0"], '--lr: expected a number > 0 and ≤ 1, got "0"'],
      [
        ["--out", `${dir}/new`, "--log-every", "0"],
        '--log-every: expected an integer ≥ 1, got "0"',
      ],
      [["--out", `${dir}/new`, "--eval-every", "0"], "--eval-every: expected an integer ≥ 1"],
      [["--out", `${dir}/new`, "--grad-accum", "0"], "--grad-accum: expected an integer ≥ 1"],
      [
        ["--out", `${dir}/new`, "--grad-accum", "5"],
        "--grad-accum 5 is more than --batch-size 4: a part holds at least one sequence",
      ],
      [["--out", `${dir}/new`, "--checkpoint-every", "0"], "--checkpoint-every: expected"],
      [["--out", `${dir}/new`, "--intermediate", "0"], "--intermediate: expected"],
      // 2^32 would seed as 0 does (the seeds are 32-bit), as in train.ts.
      [
        ["--out", `${dir}/new`, "--seed", "4294967296"],
        '--seed: expected an integer in [0, 4294967295], got "4294967296"',
      ],
      [["--out", `${dir}/new`, "--retune"], "--retune and --no-autotune: choose one"],
      [["--out", `${dir}/new`, "--task-text", "rte,nope"], '--task-text: unknown task "nope"'],
      [
        ["--out", `${dir}/new`, "--max-length", "20", "--max-positions", "16"],
        "--max-length 20 is more than the 16 positions of --max-positions",
      ],
      [
        ["--out", `${dir}/new`, "--model", `${dir}/base`, "--max-length", "40"],
        `--max-length 40 is more than the 33 positions of --model ${dir}/base`,
      ],
      [
        ["--out", `${dir}/new`, "--model", `${dir}/base`, "--layers=4"],
        `--layers: --model ${dir}/base brings its own shape and vocabulary`,
      ],
      // A shape of billions of weights is refused before it is built (it filled the memory).
      [
        ["--out", `${dir}/new`, "--layers", "100000"],
        "--layers 100000, --hidden 128, --intermediate 512 and --max-positions 128 make " +
        "1.98e+10 weights (besides the vocabulary's), more than pretrain.ts builds",
      ],
    ];
    await writeTinyBert(`${dir}/base`, false);
    for (const [flags, message] of cases) {
      const r = await pretrain([...args, ...flags]);
      // Exit status 2 for the command refused as typed, 1 for what an edited pretrain.json says.
      assertEquals(r.code, message.startsWith(`${dir}/`) ? 1 : 2, r.stderr);
      assert(r.stderr.includes(message), r.stderr);
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    assertEquals(await Deno.readTextFile(`${dir}/used/notes.txt`), "mine\n");
    assert(!(await exists(`${dir}/new`)), "a refused run creates no folder");

    // With a corpus that reads, a late check used to leave pretrain.json behind, so the
    // corrected command was refused as "--out ... is not empty".
    await writeCorpus(`${dir}/corpus.txt`);
    const late = await pretrain([
      ...["--out", `${dir}/late`, "--corpus", `${dir}/corpus.txt`, ...SMALL],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16", "--log-every", "0"],
    ]);
    assertEquals(late.code, 2, late.stderr);
    assert(late.stderr.includes("--log-every: expected an integer ≥ 1"), late.stderr);
    assert(!(await exists(`${dir}/late`)), "a refused run creates no folder");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts --model continues a checkpoint on its own vocabulary", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    await writeTinyBert(`${dir}/base`, false);
    const tokenizerConfig = '{"do_lower_case": true, "model_max_length": 33}\n';
    await Deno.writeTextFile(`${dir}/base/tokenizer_config.json`, tokenizerConfig);
    const out = `${dir}/run`;
    const r = await pretrain([
      "--out",
      out,
      "--model",
      `${dir}/base`,
      "--corpus",
      `${dir}/corpus.txt`,
      ...SMALL,
      // 0 is all the held-out sequences (it once turned the held-out evaluation off).
      "--eval-sequences",
      "0",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const model = await openModel(`${out}/model`);
    model.weights.close();
    assertEquals(model.config.vocabSize, VOCAB.length);
    assertEquals(model.config.numLayers, 2);
    // The checkpoint's own tokenizer settings go with it.
    assertEquals(await Deno.readTextFile(`${out}/model/tokenizer_config.json`), tokenizerConfig);
    const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert(log.some((l) => l.held_out_loss !== undefined), JSON.stringify(log));
    const result = JSON.parse(await Deno.readTextFile(`${out}/result.json`));
    assert(result.held_out !== null, JSON.stringify(result));
    assert(log.every((l) => l.loss === undefined || Number.isFinite(l.loss)), JSON.stringify(log));
    // --resume from another checkpoint (one of the same shape and vocabulary) is refused; the
    // same one by another spelling of its path is the same.
    const common = ["--out", out, "--corpus", `${dir}/corpus.txt`, ...SMALL, "--eval-sequences"];
    await writeTinyBert(`${dir}/other`, false);
    await Deno.writeTextFile(`${dir}/other/tokenizer_config.json`, tokenizerConfig);
    const other = await pretrain([...common, "0", "--model", `${dir}/other`, "--resume"]);
    assertEquals(other.code, 2, other.stderr);
    assert(other.stderr.includes(`(model: "${dir}/base" in pretrain.json, "${dir}/other" now)`));
    const same = await pretrain([...common, "0", "--model", `${dir}/./base/`, "--resume"], false);
    assertEquals(same.code, 0, same.stderr);
    assert(same.stderr.includes("the run is finished; nothing to do"), same.stderr);
    // --out alone: pretrain.json gives the model, and the model its shape (no shape flags).
    const alone = await pretrain(["--out", out, "--resume"], false);
    assertEquals(alone.code, 0, alone.stderr);
    assert(alone.stderr.includes("the run is finished; nothing to do"), alone.stderr);
    // The --model folder's weights changed in place (same shape): refused, naming it (it went on
    // from the new weights, a run of neither).
    const baseWeights = await Deno.readFile(`${dir}/base/model.safetensors`);
    await Deno.copyFile(`${dir}/other/model.safetensors`, `${dir}/base/model.safetensors`);
    await rewriteSafetensors(`${dir}/base/model.safetensors`, (_, tensors) => {
      const [name, t] = [...tensors].find(([n]) => n.endsWith("LayerNorm.bias"))!;
      const data = Float32Array.from(t.data as Float32Array);
      data[0] += 0.5;
      tensors.set(name, { ...t, data });
    });
    const changed = await pretrain(["--out", out, "--resume"]);
    assertEquals([changed.code, changed.stderr.trim().split("\n").at(-1)], [
      1,
      `pretrain: --resume: ${out} was started from --model ${dir}/base, whose files changed ` +
      "since (model_sha256 in pretrain.json): put them back, or start the run again in a new --out",
    ]);
    await Deno.writeFile(`${dir}/base/model.safetensors`, baseWeights);
    // A NaN in the checkpoint's MLM head (read apart from the encoder): refused, naming it.
    const damaged = `${dir}/damaged`;
    await copyTree(`${out}/model`, damaged);
    let head = "";
    await rewriteSafetensors(`${damaged}/model.safetensors`, (_, tensors) => {
      head = [...tensors.keys()].find((n) => n.startsWith("cls.predictions.transform."))!;
      (tensors.get(head)!.data as Float32Array)[1] = NaN;
    });
    const refused = await pretrain([
      ...["--out", `${dir}/from-damaged`, "--model", damaged, "--corpus", `${dir}/corpus.txt`],
      ...SMALL,
    ]);
    assertEquals(refused.code, 1, refused.stderr);
    assert(
      refused.stderr.startsWith(
        `pretrain: ${damaged}/model.safetensors: tensor "${head}" holds NaN (element 1 of `,
      ),
      refused.stderr,
    );
    // The --model folder replaced by a model of another shape: the folder's change, named so (it
    // read "pretrain.json has a value no flag gave (a damaged file?)").
    await Deno.remove(`${dir}/base`, { recursive: true });
    await Deno.writeTextFile(`${dir}/tiny-vocab.txt`, VOCAB.join("\n") + "\n");
    const made = await new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", `${ROOT}tools/random_model.ts`, "--out", `${dir}/base`],
        ...["--vocab", `${dir}/tiny-vocab.txt`, "--layers", "1", "--hidden", "24", "--heads", "3"],
        ...["--intermediate", "37", "--max-positions", "33"],
      ],
      env: { NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(made.code, 0, new TextDecoder().decode(made.stderr));
    const moved = await pretrain(["--out", out, "--resume"]);
    assertEquals(moved.code, 1, moved.stderr);
    assert(
      moved.stderr.includes("(shape.layers: 2 in pretrain.json, 1 now)") &&
        moved.stderr.trim().endsWith(`: --model ${dir}/base is not the model the run started from`),
      moved.stderr,
    );
    // Another --model typed (of another shape): the command's, named as typed (it blamed base).
    await copyTree(`${dir}/base`, `${dir}/one`);
    const typed = await pretrain(["--out", out, "--resume", "--model", `${dir}/one`]);
    assertEquals([typed.code, typed.stderr.trim().split("\n").at(-1)], [
      2,
      `pretrain: --resume: ${out} was started with other settings (model: "${dir}/base" in ` +
      `pretrain.json, "${dir}/one" now)`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: one-line errors for no corpus, an unknown task, a corpus under one batch", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const none = await pretrain(["--out", `${dir}/a`, "--corpus", "none", "--task-text", "none"]);
    assertEquals(none.code, 2);
    assertEquals(
      none.stderr.trim(),
      "pretrain: --corpus none and --task-text none: nothing to pretrain on",
    );
    const task = await pretrain(["--out", `${dir}/b`, "--corpus", "none", "--task-text", "rtee"]);
    assertEquals(task.code, 2);
    assert(task.stderr.includes('--task-text: unknown task "rtee"'), task.stderr);
    await writeCorpus(`${dir}/corpus.txt`);
    // Text with nothing to mask (NUL bytes: unknown tokens alone): said so, not blamed on
    // --batch-size (exit status 2).
    await Deno.writeTextFile(`${dir}/nul.txt`, "\0\0\0 \0\0\n\n".repeat(200));
    const nul = await pretrain([
      ...["--out", `${dir}/n`, "--corpus", `${dir}/nul.txt`, "--task-text", "none"],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16", "--batch-size", "2"],
    ]);
    assertEquals([nul.code, nul.stderr.trim()], [
      1,
      `pretrain: the corpus and task text (${dir}/nul.txt) pack into no training sequence: ` +
      "their tokens are all special or unknown ones (nothing to mask)",
    ]);
    // A --vocab without one of BERT's special tokens: named, with the file, before the corpus
    // is read (it was "pad_token_id must be an integer ≥ 0, got -1").
    for (const token of ["[PAD]", "[MASK]"]) {
      await Deno.writeTextFile(
        `${dir}/no-token.txt`,
        VOCAB.filter((t) => t !== token).join("\n") + "\n",
      );
      const lacking = await pretrain([
        ...["--out", `${dir}/v`, "--corpus", `${dir}/corpus.txt`, "--task-text", "none"],
        ...["--vocab", `${dir}/no-token.txt`, "--layers", "1", "--hidden", "16", "--heads", "2"],
        ...["--intermediate", "32", "--max-positions", "16"],
      ]);
      assertEquals([lacking.code, lacking.stderr.trim()], [
        1,
        `pretrain: --vocab ${dir}/no-token.txt: has no ${token} token (pretraining needs it)`,
      ]);
    }
    const small = await pretrain([
      ...["--out", `${dir}/c`, "--corpus", `${dir}/corpus.txt`, ...SMALL],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16", "--batch-size", "500"],
    ]);
    assertEquals(small.code, 2);
    assert(small.stderr.includes("fewer than one batch (--batch-size 500)"), small.stderr);
    assertEquals(small.stderr.trim().split("\n").length, 1, small.stderr);
    // --max-length untyped: its default, or the positions when fewer (it was refused as "128 is
    // more than the 16 positions" though never typed).
    const short = await pretrain([
      ...["--out", `${dir}/p16`, "--corpus", `${dir}/corpus.txt`, "--task-text", "none"],
      ...["--steps", "1", "--batch-size", "2", "--eval-every", "1", "--log-every", "1"],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16"],
    ]);
    assertEquals(short.code, 0, short.stderr);
    const p16 = JSON.parse(await Deno.readTextFile(`${dir}/p16/pretrain.json`));
    assertEquals(p16.settings.max_length, 16);
    // Its vocabulary recorded otherwise (no --vocab given): the shipped one is named.
    p16.settings.tokenizer_sha256 = "0".repeat(64);
    await Deno.writeTextFile(`${dir}/p16/pretrain.json`, JSON.stringify(p16));
    await Deno.remove(`${dir}/p16/result.json`);
    const shipped = await pretrain([
      ...["--out", `${dir}/p16`, "--corpus", `${dir}/corpus.txt`, "--task-text", "none"],
      ...["--steps", "1", "--batch-size", "2", "--eval-every", "1", "--log-every", "1"],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16", "--resume"],
    ]);
    assert(
      shipped.stderr.trim().endsWith(
        "the shipped vocabulary (or ehft's pruning) is not what it started with",
      ),
      shipped.stderr,
    );
    // The same text on another --vocab file: named as another vocabulary, not other text.
    const vocabCopy = `${dir}/bert-vocab.txt`;
    await Deno.copyFile(`${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`, vocabCopy);
    const vocabRun = [
      ...["--out", `${dir}/vr`, "--corpus", `${dir}/corpus.txt`, ...SMALL, "--vocab", vocabCopy],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16"],
    ];
    const vocabRan = await pretrain(vocabRun);
    assertEquals(vocabRan.code, 0, vocabRan.stderr);
    await Deno.remove(`${dir}/vr/result.json`);
    const vocabLines = (await Deno.readTextFile(vocabCopy)).split("\n");
    await Deno.writeTextFile(vocabCopy, vocabLines.filter((l) => l !== "was").join("\n"));
    const otherVocab = await pretrain([...vocabRun, "--resume"]);
    assertEquals(otherVocab.code, 1, otherVocab.stderr);
    assert(
      otherVocab.stderr.startsWith(`pretrain: --resume: ${dir}/vr was started with another `) &&
        otherVocab.stderr.trim().endsWith("the --vocab file is not what it started with"),
      otherVocab.stderr,
    );
    // A --vocab that is no WordPiece vocabulary: the line names the flag and the file.
    await Deno.writeTextFile(`${dir}/words.txt`, "hello\nworld\n");
    const vocab = await pretrain([
      ...["--out", `${dir}/v`, "--corpus", `${dir}/corpus.txt`, ...SMALL],
      ...["--vocab", `${dir}/words.txt`],
    ]);
    assertEquals([vocab.code, vocab.stderr.trim()], [
      1,
      `pretrain: --vocab ${dir}/words.txt: has no [UNK] token (pretraining needs it)`,
    ]);
    // A shape the adapter cannot hold fails when the GPU tensors are made, after pretrain.json:
    // what the run wrote goes, so that the corrected command finds no folder in its way. The
    // position table is made one row too long for this adapter's storage binding (lavapipe's
    // 128 MiB: 2.1 million positions of 16); an adapter whose binding would need a table too
    // large to build here (over 4 million positions) is said and passed over.
    const limit = await bindingLimit();
    const positions = Math.floor(limit / (4 * 16)) + 1;
    if (positions > 4_000_000) {
      console.log(`  (no over-large table on this adapter: its binding takes ${limit} bytes)`);
    } else {
      // With held-out text the first GPU work is the evaluation at step 0; without, step 1.
      for (const heldOut of ["0.1", "0"]) {
        const big = await pretrain([
          ...["--out", `${dir}/d`, "--corpus", `${dir}/corpus.txt`, ...SMALL],
          ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
          ...["--max-positions", String(positions), "--held-out", heldOut],
        ]);
        assertEquals(big.code, 1);
        const line = big.stderr.trim();
        assert(line.startsWith("pretrain: ") && !line.startsWith("pretrain: pretrain:"), line);
        assert(line.includes("storage binding"), line);
        assertEquals(line.split("\n").length, 1, line);
        const left = await Deno.stat(`${dir}/d`).then(() => true, () => false);
        assertEquals(left, false, `left --out (--held-out ${heldOut})`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: BoolQ/QNLI not downloaded: a note with pretrain's own remedies", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cache = `${dir}/cache`;
    // No offline variable is set: pretraining reads task data from the cache and never downloads.
    const env = { EHFT_DATA_CACHE: cache, EHFT_OFFLINE: "", HF_HUB_OFFLINE: "" };
    const none = ["--corpus", "none", "--out"];
    const r = await pretrain([...none, `${dir}/a`, "--task-text", "boolq,qnli"], false, env);
    assertEquals(r.code, 2, r.stderr);
    const remedy = (name: string, data: string, url: string) =>
      `pretrain: no ${name} text (${data} is not in the data cache ${cache}, and pretraining ` +
      `only reads task data from there, never downloading it: to include it, run ` +
      `\`deno task ${name}\` once, which downloads it there before training, or save ${url} as ` +
      `${cache}/${data}.zip; --task-text none leaves it out without this note)`;
    assertEquals(r.stderr.trim().split("\n"), [
      remedy("boolq", "BoolQ", "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/BoolQ.zip"),
      remedy("qnli", "QNLI", "https://dl.fbaipublicfiles.com/glue/data/QNLIv2.zip"),
      "pretrain: --corpus none, and --task-text boolq,qnli gave no text: nothing to pretrain on",
    ]);
    // --data is train.ts's flag, not pretrain.ts's; and nobody asked for offline mode.
    assert(!r.stderr.includes("--data") && !r.stderr.includes("offline"), r.stderr);

    // With an offline variable set, the download needs it unset. The note's --task-text (the
    // tasks that were read) is accepted and reads the same text without the note.
    const offline = { ...env, EHFT_OFFLINE: "1" };
    const big = ["--batch-size", "100000"];
    const mixed = await pretrain(
      [...none, `${dir}/b`, "--task-text", "rte,boolq", ...big],
      false,
      offline,
    );
    assertEquals(mixed.code, 2, mixed.stderr);
    const lines = mixed.stderr.trim().split("\n");
    assertEquals(lines.length, 3, mixed.stderr);
    assert(
      lines[0].startsWith("pretrain: no boolq text (BoolQ is not in the data cache"),
      lines[0],
    );
    assert(lines[0].includes("`deno task boolq` once with EHFT_OFFLINE unset, which"), lines[0]);
    assert(lines[0].endsWith("; --task-text rte leaves it out without this note)"), lines[0]);
    assert(lines[2].includes("fewer than one batch (--batch-size 100000)"), lines[2]);
    const rte = await pretrain([...none, `${dir}/c`, "--task-text", "rte", ...big], false, offline);
    assertEquals(rte.stderr.trim().split("\n"), lines.slice(1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: sequences of special tokens alone are left out (nothing to mask)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A document of [UNK]s packs into sequences with no token to mask: with batch 1 such a
    // sequence was a batch with no masked token, and the run failed there.
    await writeCorpus(`${dir}/corpus.txt`);
    const text = await Deno.readTextFile(`${dir}/corpus.txt`);
    await Deno.writeTextFile(
      `${dir}/corpus.txt`,
      `${Array(40).fill("[UNK]").join(" ")}\n\n${text}`,
    );
    const vocab = `${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`;
    const r = await pretrain([
      ...["--out", `${dir}/run`, "--corpus", `${dir}/corpus.txt`, "--vocab", vocab],
      ...["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32"],
      ...["--max-positions", "16", "--task-text", "none", "--steps", "12", "--batch-size", "1"],
      ...["--max-length", "16", "--held-out", "0", "--log-every", "12"],
    ], false);
    assertEquals(r.code, 0, r.stderr);
    assert(
      r.stderr.includes(
        "pretrain: 3 packed sequences hold only special tokens ([UNK] and the like): left out",
      ),
      r.stderr,
    );
    const stats = JSON.parse(await Deno.readTextFile(`${dir}/run/pretrain.json`)).corpus;
    assert(stats.trainSequences > 0, JSON.stringify(stats));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: a write that fails mid-run says what was kept and the command that goes on", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const out = `${dir}/run`;
    const args = ["--out", out, ...tinyFromScratch(dir), ...SMALL];
    // model/ cannot be made (as a full disk or a read-only folder would refuse it), at the end.
    const denied = await pretrain(args, true, {}, [`--deny-write=${out}/model`]);
    const stderr = denied.stderr.trim();
    assertEquals(denied.code, 1, stderr);
    assert(
      stderr.startsWith(`pretrain: Requires write access to "${out}/model"`) &&
        stderr.includes(
          `; the last checkpoint (step 4) is kept in ${out}/checkpoint.safetensors; once it can ` +
            `be written, continue with: deno run -A `,
        ) && stderr.endsWith(`pretrain.ts --out ${out} --resume`),
      stderr,
    );
    assertEquals(stderr.split("\n").length, 1, stderr);
    // The command it gives finishes the run.
    const resumed = await pretrain(["--out", out, "--resume"]);
    assertEquals(resumed.code, 0, resumed.stderr);
    assert(await exists(`${out}/result.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A stop signal, how pretrain.ts says it, and the exit status. */
const STOPS = [
  ["SIGINT", "interrupted", 130],
  ["SIGTERM", "terminated by SIGTERM", 143],
] as const;

for (const [signal, how, code] of STOPS) {
  test(`pretrain.ts: ${signal} stops with status ${code}, what was kept and how to go on`, async () => {
    // It died without a word (a scheduler's time limit sends SIGTERM).
    const dir = await Deno.makeTempDir();
    try {
      await writeCorpus(`${dir}/corpus.txt`);
      const out = `${dir}/run`;
      const { child, stderr } = spawnPretrain([
        ...["--out", out, ...tinyFromScratch(dir), "--task-text", "none"],
        ...["--max-length", "16", "--batch-size", "4"],
        ...["--steps", "100000", "--checkpoint-every", "2", "--eval-every", "1000"],
      ]);
      let ended = false;
      child.status.then(() => ended = true);
      while (!(await exists(`${out}/checkpoint.safetensors`))) {
        if (ended) throw new Error(`pretrain.ts ended first: ${await stderr}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      child.kill(signal);
      assertEquals((await child.status).code, code);
      const last = (await stderr).trim().split("\n").at(-1)!;
      assert(
        new RegExp(
          `^pretrain: ${how}; the last checkpoint \\(step \\d+\\) is kept in ` +
            `${out}/checkpoint\\.safetensors; to go on: deno run -A .*pretrain\\.ts ` +
            `--out ${out} --resume$`,
        ).test(last),
        last,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

test("pretrain.ts --grad-accum: recorded, resumed with, and not changed on --resume", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const base = [...tinyFromScratch(dir), ...SMALL];
    const out = `${dir}/run`;
    const ran = await pretrain(["--out", out, ...base, "--grad-accum", "3"]);
    assertEquals(ran.code, 0, ran.stderr);
    const saved = JSON.parse(await Deno.readTextFile(`${out}/pretrain.json`)).settings;
    assertEquals([saved.batch_size, saved.grad_accum], [4, 3]);
    const refused = await pretrain(["--out", out, "--resume", "--grad-accum", "2"]);
    assertEquals(refused.code, 2);
    assert(refused.stderr.includes("was started with other settings (grad_accum"), refused.stderr);
    // Nor back to one part (not recorded: a --grad-accum 1 run's pretrain.json has none).
    const whole = await pretrain(["--out", out, "--resume", "--grad-accum", "1"]);
    assertEquals(whole.code, 2);
    assert(whole.stderr.includes("was started with other settings (grad_accum"), whole.stderr);
    // The recorded value goes on without being typed: the run is finished, nothing to do.
    const resumed = await pretrain(["--out", out, "--resume"]);
    assertEquals(resumed.code, 0, resumed.stderr);
    // Without it, nothing is recorded (runs from before it resume as they were).
    const plain = `${dir}/plain`;
    const plainRan = await pretrain(["--out", plain, ...base]);
    assertEquals(plainRan.code, 0, plainRan.stderr);
    const none = JSON.parse(await Deno.readTextFile(`${plain}/pretrain.json`)).settings;
    assertEquals("grad_accum" in none, false);
    // ...and resumed in parts it is refused: its steps ran whole.
    const parts = await pretrain(["--out", plain, "--resume", "--grad-accum", "2"]);
    assertEquals(parts.code, 2);
    assert(parts.stderr.includes("was started with other settings (grad_accum"), parts.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts --resume: a damaged checkpoint state or log is refused, naming it, nothing written", async () => {
  // Each was resumed as it said, exit 0: a step past the end saved an untrained model as
  // finished, a step behind its stage's trained steps again, tokens "12" were added as text, a
  // missing log began again mid-run.
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const out = `${dir}/run`;
    const ran = await pretrain([
      ...["--out", out, ...tinyFromScratch(dir), "--task-text", "none"],
      ...["--max-length", "16", "--batch-size", "4", "--steps", "4", "--log-every", "3"],
      ...["--eval-every", "1000", "--held-out", "0.1", "--eval-sequences", "4"],
    ]);
    assertEquals(ran.code, 0, ran.stderr);
    // Its last checkpoint, as a run killed before it wrote its results would have left it.
    await Deno.remove(`${out}/result.json`);
    const checkpoint = `${out}/checkpoint.safetensors`;
    const log = `${out}/log.jsonl`;
    const whole = await Deno.readFile(checkpoint);
    const logText = await Deno.readTextFile(log);
    const reader = await openSafetensors(checkpoint);
    reader.close();
    const state = JSON.parse(reader.metadata.ehft_training_state);
    assertEquals([state.step, state.pending.steps], [4, []]);
    const damaged = `(the checkpoint is damaged: start the run again in a new --out)`;
    const cases: [Record<string, unknown>, string][] = [
      [{ step: 100, stageStep: 100, adamStep: 100 }, `step is 100, not a step of the run's 1-4`],
      [{ step: 2 }, "stageStep is 4, not its step (2)"],
      [{ adamStep: 100000 }, "adamStep is 100000, not its step (4)"],
      [{ pending: { ...state.pending, tokens: "12" } }, "pending is"],
      [{ pending: { ...state.pending, loss: [7] } }, "pending is"],
      [{ pending: "x" }, 'pending is "x", not the steps'],
      [{ held_out: "x" }, 'held_out is "x", not null or a held-out evaluation'],
    ];
    for (const [edit, problem] of cases) {
      await Deno.writeFile(checkpoint, whole);
      await rewriteSafetensors(checkpoint, (meta) => {
        meta.ehft_training_state = JSON.stringify({ ...state, ...edit });
      });
      const r = await pretrain(["--out", out, "--resume"]);
      const last = r.stderr.trim().split("\n").at(-1)!;
      assertEquals(r.code, 1, r.stderr);
      assert(
        last.startsWith(`pretrain: ${checkpoint}: training state ${problem}`) &&
          last.endsWith(damaged),
        last,
      );
      assertEquals(await Deno.readTextFile(log), logText, "the log was rewritten");
      assert(!(await exists(`${out}/result.json`)), "the run ended");
    }
    // Another run's checkpoint (of the same shape) copied in: its step is before the log lines
    // it would keep (it went on, splicing two histories into the log).
    await Deno.writeFile(checkpoint, whole);
    await rewriteSafetensors(checkpoint, (meta) => {
      meta.ehft_training_state = JSON.stringify({ ...state, step: 2, stageStep: 2, adamStep: 2 });
    });
    const foreign = await pretrain(["--out", out, "--resume"]);
    assertEquals(foreign.code, 1, foreign.stderr);
    assert(
      /: its step 2 is before the step of the log's line \d+ \(3\), which it keeps: it is not this run's checkpoint/
        .test(foreign.stderr),
      foreign.stderr,
    );
    assertEquals(await Deno.readTextFile(log), logText, "the log was rewritten");
    await Deno.writeFile(checkpoint, whole);
    // The log: missing, cut short, or a line damaged.
    const logCases: [string | null, string][] = [
      [null, `${log}: missing, and the checkpoint keeps its first ${state.logLines} lines`],
      [
        logText.split("\n").slice(0, 1).join("\n") + "\n",
        `${log}: fewer lines than the checkpoint's`,
      ],
      [
        '{"step":0,\n' + logText.split("\n").slice(1).join("\n"),
        `${log}: line 1 is not a JSON object`,
      ],
    ];
    for (const [text, problem] of logCases) {
      if (text === null) await Deno.remove(log);
      else await Deno.writeTextFile(log, text);
      const r = await pretrain(["--out", out, "--resume"]);
      const last = r.stderr.trim().split("\n").at(-1)!;
      assertEquals(r.code, 1, r.stderr);
      assert(last.startsWith(`pretrain: ${problem}`), last);
      assertEquals(await Deno.readTextFile(log).catch(() => null), text, "the log was changed");
    }
    // As it was, the run ends.
    await Deno.writeTextFile(log, logText);
    const resumed = await pretrain(["--out", out, "--resume"]);
    assertEquals(resumed.code, 0, resumed.stderr);
    assert(await exists(`${out}/result.json`));
    // A finished run's result.json damaged: said (it was taken as finished, whatever it held),
    // and written again once removed.
    for (const [text, why] of [["5", "its steps are not the run's 4"], ["{", "not valid JSON"]]) {
      await Deno.writeTextFile(`${out}/result.json`, text);
      const r = await pretrain(["--out", out, "--resume"]);
      assertEquals(r.code, 1, r.stderr);
      const last = r.stderr.trim().split("\n").at(-1)!;
      assert(
        last.startsWith(`pretrain: ${out}/result.json: ${why}`) &&
          last.endsWith("; remove it, and --resume writes it again from the last checkpoint"),
        last,
      );
    }
    // Without the checkpoint too, that advice would train the whole run again: not given.
    await Deno.rename(checkpoint, `${dir}/aside.safetensors`);
    const gone = await pretrain(["--out", out, "--resume"]);
    assertEquals(gone.code, 1, gone.stderr);
    assert(
      gone.stderr.trim().endsWith(
        `; its checkpoint.safetensors is gone too, so the model in ${out}/model is all there is`,
      ),
      gone.stderr,
    );
    await Deno.rename(`${dir}/aside.safetensors`, checkpoint);
    await Deno.remove(`${out}/result.json`);
    const again = await pretrain(["--out", out, "--resume"]);
    assertEquals(again.code, 0, again.stderr);
    assertEquals(JSON.parse(await Deno.readTextFile(`${out}/result.json`)).steps, 4);
    // A run killed before its first checkpoint: its resume says it starts at step 0 (it began
    // again with no word, its log rewritten).
    await Deno.remove(checkpoint);
    await Deno.remove(`${out}/result.json`);
    const fresh = await pretrain(["--out", out, "--resume"], false);
    assertEquals(fresh.code, 0, fresh.stderr);
    assert(
      fresh.stderr.includes(`pretrain: --resume: no checkpoint in ${out} yet: starting at step 0`),
      fresh.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts --resume: a typed flag against a recorded one exits 2, recorded ones alone 1, a missing one is refused", async () => {
  // Both were exit status 1 (named as pretrain.json's), though the first is the command's.
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/run`;
    await Deno.mkdir(out);
    const record = (settings: Record<string, unknown>) =>
      Deno.writeTextFile(
        `${out}/pretrain.json`,
        JSON.stringify({ settings: recordedSettings(dir, settings), corpus: {} }),
      );
    const problem = `pretrain: ${out}/pretrain.json: --grad-accum 5 is more than --batch-size 4: ` +
      "a part holds at least one sequence";
    await record({ batch_size: 4 });
    const typed = await pretrain(["--out", out, "--resume", "--grad-accum", "5"]);
    assertEquals([typed.code, typed.stderr.trim().split("\n").at(-1)], [2, problem]);
    await record({ batch_size: 4, grad_accum: 5 });
    const edited = await pretrain(["--out", out, "--resume"]);
    assertEquals([edited.code, edited.stderr.trim().split("\n").at(-1)], [1, problem]);
    // A --model typed for a run started from scratch: the command's, named (it blamed the file).
    await record({});
    const model = `${ROOT}models/ehft-mini-en`;
    const started = await pretrain(["--out", out, "--resume", "--model", model]);
    assertEquals([started.code, started.stderr.trim().split("\n").at(-1)], [
      2,
      `pretrain: --resume: ${out} was started from scratch (model: null in pretrain.json), not ` +
      `from --model ${model}`,
    ]);
    // A value edited to null: no flag gave it, so the file's (it was 2, blaming a default).
    await record({ steps: null });
    const nulled = await pretrain(["--out", out, "--resume"]);
    assertEquals(nulled.code, 1, nulled.stderr);
    assert(
      nulled.stderr.includes(
        "(steps: null in pretrain.json, 2000 now): pretrain.json has a value",
      ) &&
        nulled.stderr.trim().endsWith("no flag gave (a damaged file?)"),
      nulled.stderr,
    );
    // A setting every run records, missing (renamed): the file's, not the default's (batch 32).
    const { batch_size: _, ...renamed } = recordedSettings(dir, { batchsize: 4 });
    await Deno.writeTextFile(
      `${out}/pretrain.json`,
      JSON.stringify({ settings: renamed, corpus: {} }),
    );
    const missing = await pretrain(["--out", out, "--resume"]);
    assertEquals([missing.code, missing.stderr.trim().split("\n").at(-1)], [
      1,
      `pretrain: ${out}/pretrain.json: settings.batch_size is missing (the file is damaged: ` +
      "every pretraining run records it)",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: a SIGTERM during an evaluating step's GPU work, not a log step, checkpoints before the evaluation", async () => {
  // The stop was checked right after the step was handed to the GPU; a signal during its GPU
  // work reached its listener only inside the evaluation, which ran first. Sent here from the
  // wait for that work.
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const run = await sigtermScript(
      dir,
      `const peek = Pretrainer.prototype.peekStats;
let calls = 0;
Pretrainer.prototype.peekStats = async function () {
  const stats = await peek.call(this);
  // The first is the training's start line's (after step 1); the second, step 2's wait.
  if (++calls === 2) await sigterm();
  return stats;
};`,
    );
    const out = `${dir}/run`;
    const stopped = await run(
      ...["--out", out, ...tinyFromScratch(dir), "--task-text", "none"],
      ...["--max-length", "16", "--batch-size", "4", "--steps", "3"],
      ...["--checkpoint-every", "1000", "--eval-every", "2", "--log-every", "3"],
      ...["--held-out", "0.1", "--eval-sequences", "4"],
    );
    assertEquals(stopped.code, 143, stopped.stderr);
    const state = await checkpointState(out);
    assertEquals([state.step, state.owed ?? false], [2, true]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: a SIGTERM in a step that ends with an evaluation checkpoints before it; resumed, it is done first", async () => {
  // The evaluation was done first: a long one could outlast a scheduler's grace period.
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    // pretrain.ts, with the SIGTERM sent (and taken) once the first step's loss is logged: after
    // that step, before its evaluation.
    const run = await sigtermScript(
      dir,
      `const write = Deno.FsFile.prototype.write;
let sent = Deno.args.includes("--resume");
Deno.FsFile.prototype.write = async function (p: Uint8Array) {
  const n = await write.call(this, p);
  // The log's first training-loss line (appended; the checkpoint is written at the stop).
  if (!sent && new TextDecoder().decode(p).startsWith('{"step":1,"loss"')) {
    sent = true;
    await sigterm();
  }
  return n;
};`,
    );
    const args = (out: string) => [
      ...["--out", out, ...tinyFromScratch(dir), "--task-text", "none"],
      ...["--max-length", "16", "--batch-size", "4"],
      ...["--steps", "3", "--checkpoint-every", "1000", "--eval-every", "2"],
      ...["--log-every", "1", "--held-out", "0.1", "--eval-sequences", "4"],
    ];
    const out = `${dir}/run`;
    // Step 1 evaluates nothing: its stop is the plain one; step 2's evaluation is owed.
    const stops: [string[], number, boolean][] = [
      [["--eval-every", "2"], 1, false],
      [["--eval-every", "1"], 1, true],
      [["--steps", "1"], 1, true], // the run's end
    ];
    for (const [flags, step, owed] of stops) {
      await Deno.remove(out, { recursive: true }).catch(() => {});
      const stopped = await run(...args(out), ...flags);
      assertEquals(stopped.code, 143, stopped.stderr);
      const state = await checkpointState(out);
      assertEquals([state.step, state.owed ?? false], [step, owed], flags.join(" "));
      const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n");
      // Step 0's evaluation, step 1's loss; the owed evaluation is not there yet.
      assertEquals(log.length, 2, log.join(" | "));
      const resumed = await run("--out", out, "--resume");
      assertEquals(resumed.code, 0, resumed.stderr);
      const whole = await pretrain([...args(`${dir}/whole`), ...flags]);
      assertEquals(whole.code, 0, whole.stderr);
      const untimed = async (path: string) =>
        (await Deno.readTextFile(path)).trim().split("\n").map((l) => {
          const { seconds: _s, ...rest } = JSON.parse(l);
          return rest;
        });
      assertEquals(await untimed(`${out}/log.jsonl`), await untimed(`${dir}/whole/log.jsonl`));
      assert(
        sameBytes(
          await Deno.readFile(`${out}/model/model.safetensors`),
          await Deno.readFile(`${dir}/whole/model/model.safetensors`),
        ),
        `${flags.join(" ")}: the model differs`,
      );
      // The checkpoint a finished run keeps too (one that still owed the evaluation was kept).
      assert(
        sameBytes(
          await Deno.readFile(`${out}/checkpoint.safetensors`),
          await Deno.readFile(`${dir}/whole/checkpoint.safetensors`),
        ),
        `${flags.join(" ")}: the checkpoint differs`,
      );
      await Deno.remove(`${dir}/whole`, { recursive: true });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("pretrain.ts: SIGTERM mid-run checkpoints that step; resumed, the run ends as an uninterrupted one", async () => {
  // It stopped at once, losing every step since the last periodic checkpoint. Stopped inside its
  // first log block (a checkpoint whose pending steps hold step 0), the resume was refused as a
  // damaged checkpoint for a while (a review found it).
  const dir = await Deno.makeTempDir();
  try {
    await writeCorpus(`${dir}/corpus.txt`);
    const out = `${dir}/run`;
    const cases: [string, string[], () => Promise<boolean>][] = [
      [
        "after its first log line",
        ["--log-every", "1", "--checkpoint-every", "1000"],
        async () =>
          (await Deno.readTextFile(`${out}/log.jsonl`).catch(() => "")).includes('"loss"'),
      ],
      [
        "inside its first log block",
        ["--log-every", "1000", "--checkpoint-every", "2"],
        () => exists(`${out}/checkpoint.safetensors`),
      ],
    ];
    for (const [name, flags, started] of cases) {
      const args = (out: string) => [
        ...["--out", out, ...tinyFromScratch(dir), "--task-text", "none"],
        ...["--max-length", "16", "--batch-size", "4"],
        ...["--steps", "300", "--eval-every", "1000", ...flags],
        ...["--held-out", "0.1", "--eval-sequences", "4"],
      ];
      const { child, stderr } = spawnPretrain(args(out));
      while (!(await started())) await new Promise((r) => setTimeout(r, 10));
      child.kill("SIGTERM");
      assertEquals((await child.status).code, 143, name);
      const last = (await stderr).trim().split("\n").at(-1)!;
      const step = Number(/the last checkpoint \(step (\d+)\)/.exec(last)?.[1]);
      assert(step > 0 && step < 300, `${name}: ${last}`);
      const resumed = await pretrain(["--out", out, "--resume"]);
      assertEquals(resumed.code, 0, `${name}: ${resumed.stderr}`);
      const whole = await pretrain(args(`${dir}/whole`));
      assertEquals(whole.code, 0, whole.stderr);
      const untimed = async (path: string) =>
        (await Deno.readTextFile(path)).trim().split("\n").map((l) => {
          const { seconds: _s, ...rest } = JSON.parse(l);
          return rest;
        });
      assertEquals(
        await untimed(`${out}/log.jsonl`),
        await untimed(`${dir}/whole/log.jsonl`),
        name,
      );
      assert(
        sameBytes(
          await Deno.readFile(`${out}/model/model.safetensors`),
          await Deno.readFile(`${dir}/whole/model/model.safetensors`),
        ),
        `${name}: the model differs`,
      );
      await Deno.remove(out, { recursive: true });
      await Deno.remove(`${dir}/whole`, { recursive: true });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
