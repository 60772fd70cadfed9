// tools/ship_model.ts on made-up run folders (a tiny model and the records pretrain.ts writes):
// the card's "Reproduce" command is the run's settings, --out is refused when not empty unless
// --overwrite (and then only a folder of its own files), nothing is written when a check fails,
// a run with no held-out set or no vocab.txt (--model) ships, and the one-line errors; --name is
// --out's folder by default, only the card of the repository's default model (models/ehft-mini-en)
// says the task scripts train it, and --help / a mistyped flag.

import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { exists, readTree, sameBytes, VOCAB, writeTinyBert } from "./train_fixture.ts";
import { convertWordPiece } from "../model/tokenizer_convert.ts";
import { openModel } from "../model/load.ts";
import { openSafetensors, writeSafetensors } from "../model/safetensors.ts";
import { FLAGS as PRETRAIN_FLAGS } from "../pretrain.ts";
import {
  cardUse,
  modelPlace,
  onDevice,
  shipModel,
  vocabTxtFromTokenizerJson,
} from "../tools/ship_model.ts";
import { assertToolHelp, runTool } from "./tool_cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const BERT_VOCAB = `${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`;

const test = (name: string, fn: () => Promise<void>) => Deno.test({ name, fn });

/** tools/ship_model.ts of the repository at `root` (this one by default), run in `root`. */
function ship(args: string[], root = ROOT) {
  return runTool("ship_model", args, root, root);
}

/** 101 tokens of bert-base-uncased's vocabulary in its order: a pruning of it. */
async function prunedBertVocab(): Promise<string[]> {
  const full = (await Deno.readTextFile(BERT_VOCAB)).split("\n");
  return [0, 100, 101, 102, 103].map((i) => full[i]).concat(full.slice(1996, 2092));
}

interface RunOptions {
  heldOut?: number;
  steps?: number;
  dtype?: "F32" | "F16";
  vocab?: string[];
  /** Continued from this checkpoint (pretrain.ts --model): no vocab.txt, no tokenizer_config. */
  model?: string;
  tokenizerJson?: unknown;
  /** Settings that later pretrain.ts versions record (vocab, model_dtype, eval_every, ...). */
  recorded?: Record<string, unknown>;
}

/** A finished pretrain.ts run folder (records and model/) of the tiny BERT. */
async function writeRun(dir: string, o: RunOptions = {}): Promise<void> {
  const steps = o.steps ?? 4, heldOut = o.heldOut ?? 0.1;
  const vocab = o.vocab ?? await prunedBertVocab();
  await writeTinyBert(`${dir}/model`, false);
  if (o.dtype === "F16") {
    const source = await openSafetensors(`${dir}/model/model.safetensors`);
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    for (const [name, info] of source.tensors) {
      tensors[name] = { dtype: "F16", shape: info.shape, data: await source.readF32(name) };
    }
    source.close();
    await writeSafetensors(`${dir}/model/model.safetensors`, tensors, { format: "pt" });
  }
  const vocabTxt = vocab.join("\n") + "\n";
  await Deno.writeTextFile(
    `${dir}/model/tokenizer.json`,
    JSON.stringify(o.tokenizerJson ?? convertWordPiece(vocabTxt)),
  );
  if (o.model) await Deno.remove(`${dir}/model/vocab.txt`);
  else {
    await Deno.writeTextFile(`${dir}/model/vocab.txt`, vocabTxt);
    await Deno.writeTextFile(`${dir}/model/tokenizer_config.json`, '{"do_lower_case": true}\n');
  }
  const settings = {
    model: o.model ?? null,
    corpus: `${dir}/corpus.txt`,
    task_text: "none",
    min_count: o.model ? null : 2,
    shape: { layers: 2, hidden: 24, heads: 3, intermediate: 37, vocab: 101, max_positions: 33 },
    steps: 4,
    batch_size: 4,
    max_length: 16,
    lr: 0.001,
    warmup_ratio: 0.1,
    weight_decay: 0.05,
    seed: 3,
    held_out: heldOut,
    eval_sequences: 4,
    masking: "15% of tokens; 80% [MASK], 10% random, 10% kept",
    ...o.recorded,
  };
  const held = heldOut > 0 ? 5 : 0;
  const corpus = {
    sources: [`${dir}/corpus.txt`],
    documents: 30,
    sentences: 90,
    words: 700,
    tokens: 900,
    heldOutDocuments: heldOut > 0 ? 3 : 0,
    trainSequences: 40,
    heldOutSequences: held,
  };
  await Deno.writeTextFile(
    `${dir}/pretrain.json`,
    JSON.stringify({ settings, corpus, prepare_seconds: 0.5 }, null, 2) + "\n",
  );
  const log: Record<string, number>[] = [];
  const evalAt = (step: number) => {
    if (held > 0) {
      log.push({ step, held_out_loss: 4, held_out_accuracy: 0.1, held_out_tokens: 9 });
    }
  };
  evalAt(0);
  for (let step = 2; step <= steps; step += 2) {
    log.push({ step, loss: 4.5, tokens: 60, masked: 9, seconds: step });
    evalAt(step);
  }
  await Deno.writeTextFile(`${dir}/log.jsonl`, log.map((r) => JSON.stringify(r)).join("\n") + "\n");
  if (steps === 4) {
    await Deno.writeTextFile(`${dir}/result.json`, JSON.stringify({ steps, device: "test" }));
  }
}

/** The card's "Reproduce" pretrain.ts command as flag → value ("" for none). */
function reproduceFlags(card: string): Map<string, string> {
  const block = /```\n(deno task pretrain[^`]*?)\ndeno run -A tools\/ship_model\.ts/.exec(card);
  assert(block, card);
  const words = block[1].replaceAll("\\\n", " ").split(/\s+/).filter((w) => w).slice(3);
  const flags = new Map<string, string>();
  for (let i = 0; i < words.length; i++) {
    assert(words[i].startsWith("--"), `${words[i]} in ${block[1]}`);
    const name = words[i].slice(2);
    assert(name in PRETRAIN_FLAGS, `--${name} is not a pretrain.ts flag`);
    const takes = (PRETRAIN_FLAGS as Record<string, { type: string }>)[name].type === "string";
    flags.set(name, takes ? words[++i] : "");
  }
  return flags;
}

test("ship_model: the card's command is the run's settings (held-out, vocab, dtype, optimizer)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/shipped`]);
    assertEquals(r.code, 0, r.stderr);
    const card = await Deno.readTextFile(`${dir}/shipped/README.md`);
    assertEquals(
      Object.fromEntries(reproduceFlags(card)),
      {
        out: "RUN_DIR",
        corpus: `${dir}/run/corpus.txt`,
        "task-text": "none",
        "held-out": "0.1",
        vocab: "data/tokenizers/bert-base-uncased/vocab.txt",
        "min-count": "2",
        layers: "2",
        hidden: "24",
        heads: "3",
        intermediate: "37",
        "max-positions": "33",
        steps: "4",
        "batch-size": "4",
        "max-length": "16",
        seed: "3",
        lr: "0.001",
        "warmup-ratio": "0.1",
        "weight-decay": "0.05",
        "eval-sequences": "4",
        "eval-every": "2",
        "model-dtype": "f32",
      },
    );
    // A plain-text corpus: no Brown corpus anywhere in the card.
    assert(!card.includes("Brown"), card);
    assert(card.includes("Held out for evaluation: 3 corpus documents"), card);
    const model = await openModel(`${dir}/shipped`);
    model.weights.close();

    // F16 weights say f16.
    await writeRun(`${dir}/run16`, { dtype: "F16" });
    assertEquals((await ship(["--run", `${dir}/run16`, "--out", `${dir}/s16`])).code, 0);
    const flags = reproduceFlags(await Deno.readTextFile(`${dir}/s16/README.md`));
    assertEquals(flags.get("model-dtype"), "f16");

    // What a later pretrain.json records is used as it is (vocab null: the default).
    const recorded = {
      vocab: null,
      eval_every: 3,
      log_every: 2,
      checkpoint_every: 1,
      grad_accum: 2,
    };
    await writeRun(`${dir}/rec`, { recorded: { ...recorded, model_dtype: "f32" } });
    assertEquals((await ship(["--run", `${dir}/rec`, "--out", `${dir}/rec-out`])).code, 0);
    const rec = reproduceFlags(await Deno.readTextFile(`${dir}/rec-out/README.md`));
    assertEquals(
      ["vocab", "eval-every", "log-every", "checkpoint-every", "model-dtype", "grad-accum"].map((
        k,
      ) => rec.get(k)),
      ["data/tokenizers/bert-base-uncased/vocab.txt", "3", "2", "1", "f32", "2"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: --out is refused when not empty unless --overwrite, and only its own files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    const args = ["--run", `${dir}/run`, "--out", `${dir}/out`];
    // A folder with the user's own files: refused, with or without --overwrite, untouched.
    await Deno.mkdir(`${dir}/out`);
    await Deno.writeTextFile(`${dir}/out/README.md`, "my notes\n");
    await Deno.writeTextFile(`${dir}/out/notes.txt`, "mine\n");
    const refused = await ship(args);
    assertEquals(refused.code, 2);
    assertEquals(
      refused.stderr.trim(),
      `ship_model: --out ${dir}/out is not empty (it holds README.md, notes.txt): pass ` +
        `--overwrite to replace the model in it, or choose a new folder`,
    );
    const foreign = await ship([...args, "--overwrite"]);
    assertEquals(foreign.code, 2);
    assert(
      foreign.stderr.includes("holds notes.txt, which this tool does not write"),
      foreign.stderr,
    );
    assertEquals(foreign.stderr.trim().split("\n").length, 1, foreign.stderr);
    assertEquals(await Deno.readTextFile(`${dir}/out/README.md`), "my notes\n");
    assertEquals([...(await readTree(`${dir}/out`)).keys()].sort(), ["README.md", "notes.txt"]);

    // An earlier ship_model folder is replaced with --overwrite.
    await Deno.remove(`${dir}/out`, { recursive: true });
    assertEquals((await ship(args)).code, 0);
    const again = await ship(args);
    assertEquals(again.code, 2);
    assert(again.stderr.includes("is not empty"), again.stderr);
    await writeRun(`${dir}/run2`, { dtype: "F16" });
    const over = await ship(["--run", `${dir}/run2`, "--out", `${dir}/out`, "--overwrite"]);
    assertEquals(over.code, 0, over.stderr);
    assert(
      sameBytes(
        await Deno.readFile(`${dir}/out/model.safetensors`),
        await Deno.readFile(`${dir}/run2/model/model.safetensors`),
      ),
      "the new weights",
    );
    // No temporary or set-aside folder is left beside it.
    const beside = [];
    for await (const e of Deno.readDir(dir)) beside.push(e.name);
    assertEquals(beside.sort(), ["out", "run", "run2"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: a run that fails a check leaves --out as it was (too big, not WordPiece)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    assertEquals((await ship(["--run", `${dir}/run`, "--out", `${dir}/out`])).code, 0);
    const before = await readTree(`${dir}/out`);
    const unchanged = async (what: string) => {
      const after = await readTree(`${dir}/out`);
      assertEquals([...after.keys()].sort(), [...before.keys()].sort(), what);
      for (const [name, bytes] of before) {
        assert(sameBytes(after.get(name)!, bytes), `${what}: ${name}`);
      }
      for await (const e of Deno.readDir(dir)) {
        assert(!/\.(tmp|old)-/.test(e.name), `${what}: ${e.name} left behind`);
      }
    };

    // Over 24 MB in all (each file under 16 MB): refused before anything is written.
    await writeRun(`${dir}/big`, { dtype: "F16" });
    const tokenizer = await Deno.readTextFile(`${dir}/big/model/tokenizer.json`);
    await Deno.writeTextFile(`${dir}/big/model/tokenizer.json`, tokenizer.padEnd(15 * 2 ** 20));
    await Deno.writeTextFile(
      `${dir}/big/model/tokenizer_config.json`,
      '{"do_lower_case": true}'.padEnd(10 * 2 ** 20) + "\n",
    );
    const big = await ship(["--run", `${dir}/big`, "--out", `${dir}/out`, "--overwrite"]);
    assertEquals(big.code, 1);
    assert(/bytes, more than 24 MB/.test(big.stderr), big.stderr);

    await unchanged("too big");
    await Deno.remove(`${dir}/big`, { recursive: true });

    // A continued checkpoint whose tokenizer is not WordPiece: no vocab.txt can be written.
    await writeRun(`${dir}/bpe`, {
      model: "some/roberta",
      dtype: "F16",
      tokenizerJson: { model: { type: "BPE", vocab: { a: 0 }, merges: [] } },
    });
    const bpe = await ship(["--run", `${dir}/bpe`, "--out", `${dir}/out`, "--overwrite"]);
    assertEquals(bpe.code, 1);
    assert(bpe.stderr.includes("a BPE tokenizer, not WordPiece"), bpe.stderr);
    assertEquals(bpe.stderr.trim().split("\n").length, 1, bpe.stderr);
    await unchanged("not WordPiece");

    // Weights that hold a NaN (the loaders refuse them): refused, naming the tensor.
    await writeRun(`${dir}/nan`);
    const weights = `${dir}/nan/model/model.safetensors`;
    const reader = await openSafetensors(weights);
    const tensors: Parameters<typeof writeSafetensors>[1] = {};
    let poisoned = "";
    for (const [name, info] of reader.tensors) {
      const data = await reader.readF32(name);
      if (!poisoned && data.length > 3) {
        data[3] = NaN;
        poisoned = name;
      }
      tensors[name] = { dtype: "F32", shape: info.shape, data };
    }
    const metadata = reader.metadata;
    reader.close();
    await writeSafetensors(weights, tensors, metadata);
    const nan = await ship(["--run", `${dir}/nan`, "--out", `${dir}/out`, "--overwrite"]);
    assertEquals(nan.code, 1, nan.stderr);
    assert(nan.stderr.includes(`tensor "${poisoned}" holds NaN (element 3 of`), nan.stderr);
    await unchanged("NaN weights");

    // A copy that fails on the way (a full disk): said with --out, which is as it was.
    const copyFile = Deno.copyFile;
    (Deno as unknown as { copyFile: unknown }).copyFile = () =>
      Promise.reject(new Error("No space left on device (os error 28)"));
    try {
      await assertRejects(
        () => shipModel(["--run", `${dir}/run`, "--out", `${dir}/out`, "--overwrite"]),
        Error,
        `${dir}/out: not written (No space left on device (os error 28)); the earlier folder ` +
          "is as it was",
      );
    } finally {
      (Deno as unknown as { copyFile: unknown }).copyFile = copyFile;
    }
    await unchanged("a full disk");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: a --model run (no vocab.txt) ships with the vocab.txt its tokenizer.json holds", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    assertEquals((await ship(["--run", `${dir}/run`, "--out", `${dir}/out`])).code, 0);
    // Continued from a checkpoint of the tiny vocabulary (not bert-base-uncased's).
    await writeRun(`${dir}/cont`, { model: `${dir}/base`, vocab: VOCAB, dtype: "F16" });
    const r = await ship(["--run", `${dir}/cont`, "--out", `${dir}/out`, "--overwrite"]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(await Deno.readTextFile(`${dir}/out/vocab.txt`), VOCAB.join("\n") + "\n");
    const tc = JSON.parse(await Deno.readTextFile(`${dir}/out/tokenizer_config.json`));
    assertEquals([tc.do_lower_case, tc.model_max_length], [true, 33]);
    const flags = reproduceFlags(await Deno.readTextFile(`${dir}/out/README.md`));
    assertEquals(flags.get("model"), `${dir}/base`);
    for (const name of ["vocab", "min-count", "layers", "hidden", "max-positions"]) {
      assert(!flags.has(name), `--${name}: --model brings its own`);
    }
    const model = await openModel(`${dir}/out`);
    model.weights.close();
    assertEquals(model.config.vocabSize, VOCAB.length);

    // --vocab means nothing for such a run.
    const vocab = await ship(["--run", `${dir}/cont`, "--out", `${dir}/o2`, "--vocab", BERT_VOCAB]);
    assertEquals(vocab.code, 2);
    assert(vocab.stderr.includes("brings its own vocabulary; drop --vocab"), vocab.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: a finished run with no held-out set ships; an unfinished one says where it is", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`, { heldOut: 0 });
    const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/out`]);
    assertEquals(r.code, 0, r.stderr);
    const card = await Deno.readTextFile(`${dir}/out/README.md`);
    assert(card.includes("none: the run held out no documents (--held-out 0)"), card);
    const flags = reproduceFlags(card);
    assertEquals([flags.get("held-out"), flags.has("eval-every")], ["0", false]);

    await writeRun(`${dir}/half`, { steps: 2 });
    const half = await ship(["--run", `${dir}/half`, "--out", `${dir}/o2`]);
    assertEquals(half.code, 1);
    assertEquals(
      half.stderr.trim(),
      `ship_model: ${dir}/half: the run has not finished (its log reaches step 2 of 4)`,
    );
    assert(!(await exists(`${dir}/o2`)), "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: a run record of the wrong types is refused naming the file and the key", async () => {
  // They went into the card and its command as they were ("--batch-size [object Object]",
  // "WebGPU adapter: undefined"), or failed on JavaScript's words naming no file.
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    const pre = JSON.parse(await Deno.readTextFile(`${dir}/run/pretrain.json`));
    const log = await Deno.readTextFile(`${dir}/run/log.jsonl`);
    const result = await Deno.readTextFile(`${dir}/run/result.json`);
    const cases: [string, string, string][] = [
      [
        "pretrain.json",
        JSON.stringify({ ...pre, settings: { ...pre.settings, batch_size: {} } }),
        "pretrain.json: settings.batch_size is {}, not a whole number ≥ 0",
      ],
      [
        "pretrain.json",
        JSON.stringify({ ...pre, settings: { ...pre.settings, lr: "abc" } }),
        'pretrain.json: settings.lr is "abc", not a finite number',
      ],
      [
        "pretrain.json",
        JSON.stringify({ ...pre, settings: null }),
        "pretrain.json: settings is not an object",
      ],
      [
        "pretrain.json",
        JSON.stringify({ ...pre, settings: { ...pre.settings, vocab: 5 } }),
        "pretrain.json: settings.vocab is 5, not text or null",
      ],
      [
        "pretrain.json",
        JSON.stringify({ ...pre, corpus: { ...pre.corpus, sources: "a" } }),
        'pretrain.json: corpus.sources is "a", not a list of texts',
      ],
      [
        "log.jsonl",
        log.replace('"tokens":60', '"tokens":"60"'),
        'log.jsonl line 2: tokens is "60", not a whole number ≥ 0',
      ],
      ["result.json", "5", "result.json: not a JSON object"],
      [
        "result.json",
        JSON.stringify({ steps: 4 }),
        "result.json: device is missing, not text",
      ],
    ];
    for (const [file, text, problem] of cases) {
      await Deno.writeTextFile(`${dir}/run/${file}`, text);
      const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/out`]);
      assertEquals([r.code, r.stderr.trim()], [1, `ship_model: ${dir}/run/${problem}`], problem);
      assert(!(await exists(`${dir}/out`)), "something was written");
      await Deno.writeTextFile(`${dir}/run/pretrain.json`, JSON.stringify(pre));
      await Deno.writeTextFile(`${dir}/run/log.jsonl`, log);
      await Deno.writeTextFile(`${dir}/run/result.json`, result);
    }
    const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/out`]);
    assertEquals(r.code, 0, r.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("ship_model: a from-scratch run's vocabulary must come from --vocab (default bert-base-uncased's)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // The tiny vocabulary is not a pruning of bert-base-uncased's.
    await writeRun(`${dir}/run`, { vocab: VOCAB });
    const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/out`]);
    assertEquals(r.code, 1);
    assert(r.stderr.includes("name it with --vocab FILE"), r.stderr);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert(!(await exists(`${dir}/out`)), "nothing written");
    // Its own superset, in order, is.
    const full = [...VOCAB.slice(0, 50), "extra", ...VOCAB.slice(50)];
    await Deno.writeTextFile(`${dir}/full.txt`, full.join("\n") + "\n");
    const ok = await ship([
      "--run",
      `${dir}/run`,
      "--out",
      `${dir}/out`,
      "--vocab",
      `${dir}/full.txt`,
    ]);
    assertEquals(ok.code, 0, ok.stderr);
    const card = await Deno.readTextFile(`${dir}/out/README.md`);
    assertEquals(reproduceFlags(card).get("vocab"), `${dir}/full.txt`);
    assert(card.includes("101 of 102 tokens"), card);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ship_model: vocab.txt from a WordPiece tokenizer.json, or a one-line refusal", () => {
  const tj = (vocab: Record<string, number>, added: { id: number; content: string }[] = []) => ({
    model: { type: "WordPiece", vocab },
    added_tokens: added,
  });
  assertEquals(vocabTxtFromTokenizerJson(tj({ b: 1, a: 0, "": 2 }), "t.json"), "a\nb\n\n");
  assertThrows(() => vocabTxtFromTokenizerJson(tj({ a: 0, b: 2 }), "t.json"), Error, "ids 0 … 1");
  assertThrows(() => vocabTxtFromTokenizerJson(tj({ "a\rb": 0 }), "t.json"), Error, "line break");
  assertThrows(
    () => vocabTxtFromTokenizerJson(tj({ a: 0 }, [{ id: 1, content: "[X]" }]), "t.json"),
    Error,
    'added token "[X]" (id 1) is not in',
  );
});

test("ship_model: --help prints its usage (tools/README.md's) and top comment; a typo names the flag", async () => {
  const help = await ship(["--help"]);
  assertEquals(help.code, 0, help.stderr);
  await assertToolHelp("ship_model", help.stdout);
  // -h too, and nothing runs (no --run or --out needed).
  assertEquals((await ship(["-h"])).stdout, help.stdout);

  const typos: [string, string | undefined][] = [
    ["--nmae", "--name"],
    ["--layer", undefined],
    ["--overwite", "--overwrite"],
  ];
  for (const [flag, hint] of typos) {
    const r = await ship(["--run", "r", "--out", "o", flag, "x"]);
    assertEquals(r.code, 2);
    assertEquals(
      r.stderr.trim(),
      `ship_model: unknown flag ${flag}${hint ? ` (did you mean ${hint}?)` : ""}`,
    );
  }
});

test("ship_model: --name is --out's folder by default; another folder's card says to use --model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(`${dir}/run`);
    const r = await ship(["--run", `${dir}/run`, "--out", `${dir}/test-mini/`]);
    assertEquals(r.code, 0, r.stderr);
    const card = await Deno.readTextFile(`${dir}/test-mini/README.md`);
    assert(card.startsWith("# test-mini\n"), card.split("\n")[0]);
    // Not the default model: no claim that the task scripts train it, but how to name it.
    assert(!card.includes("ehft-mini-en\n\n"), card);
    assert(!/with no\s+`--model` fine-tunes it/.test(card), card);
    assert(!card.includes('section "The shipped model"'), card);
    assert(
      card.includes("Fine-tune it by naming its folder: `deno task rte --model models/test-mini`"),
    );
    assert(
      card.includes("`deno task rte --model models/test-mini --lr 2e-4 --max-length 33"),
      card,
    );
    assert(
      card.includes("\ndeno run -A tools/ship_model.ts --run RUN_DIR --out models/test-mini\n```"),
      card,
    );

    // --name titles the card; the command that ships it again gives it.
    const named = await ship(["--run", `${dir}/run`, "--out", `${dir}/o2`, "--name", "my mini"]);
    assertEquals(named.code, 0, named.stderr);
    const card2 = await Deno.readTextFile(`${dir}/o2/README.md`);
    assert(card2.startsWith("# my mini\n"), card2.split("\n")[0]);
    assert(card2.includes("--out models/o2 --name 'my mini'\n```"), card2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ship_model: the repository's default model is models/ehft-mini-en, wherever --out says it", () => {
  const place = modelPlace(`${ROOT}models/ehft-mini-en/`);
  assertEquals(place, { isDefault: true, path: "models/ehft-mini-en", folder: "ehft-mini-en" });
  assertEquals(modelPlace(`${ROOT}models/../models/ehft-mini-en`), place);
  assertEquals(modelPlace(`${ROOT}runs/p/model`), {
    isDefault: false,
    path: "runs/p/model",
    folder: "model",
  });
  const elsewhere = modelPlace("/nonexistent/ehft-mini-en");
  assertEquals(elsewhere, {
    isDefault: false,
    path: "models/ehft-mini-en",
    folder: "ehft-mini-en",
  });
  assert(!cardUse(elsewhere, 128).use.includes("with no"));
  assert(cardUse(place, 128).use.includes("with no\n`--model` fine-tunes it"));
});

test("ship_model: only the default folder's card says the task scripts train it (as the shipped card does)", async () => {
  // A copy of the repository whose tools/ are this one's: its models/ehft-mini-en is new.
  const dir = await Deno.makeTempDir();
  try {
    const root = `${dir}/repo/`;
    await Deno.mkdir(`${root}tools`, { recursive: true });
    await Deno.mkdir(`${root}models`);
    for await (const e of Deno.readDir(ROOT)) {
      if (e.name.startsWith(".") || ["tools", "models", "runs"].includes(e.name)) continue;
      await Deno.symlink(`${ROOT}${e.name}`, `${root}${e.name}`);
    }
    for await (const e of Deno.readDir(`${ROOT}tools`)) {
      if (e.name.endsWith(".ts")) {
        await Deno.copyFile(`${ROOT}tools/${e.name}`, `${root}tools/${e.name}`);
      }
    }
    // The default model's shape (the card explains it), on the tiny model's files.
    const shape = {
      layers: 2,
      hidden: 128,
      heads: 2,
      intermediate: 512,
      vocab: 101,
      max_positions: 128,
    };
    await writeRun(`${dir}/run`, { recorded: { shape } });
    for (const name of ["ehft-mini-en", "other"]) {
      const r = await ship(["--run", `${dir}/run`, "--out", `models/${name}`], root);
      assertEquals(r.code, 0, r.stderr);
    }
    const card = await Deno.readTextFile(`${root}models/ehft-mini-en/README.md`);
    const other = await Deno.readTextFile(`${root}models/other/README.md`);
    const { use, fineTuning } = cardUse({ isDefault: true, path: "models/ehft-mini-en" }, 128);
    const shapeNote = "The issue that asked for it suggested 4 layers, hidden 256";
    assert(card.startsWith("# ehft-mini-en\n"), card);
    assert(card.includes(`(\`pretrain.ts\`)${use}It is **not**`), card);
    assert(card.includes(`## Fine-tuning it\n\n${fineTuning}\n`), card);
    assert(card.includes(shapeNote), card);
    assert(card.includes("--run RUN_DIR --out models/ehft-mini-en\n```"), card);
    // The shipped card says the same, word for word.
    const shipped = await Deno.readTextFile(`${ROOT}models/ehft-mini-en/README.md`);
    assert(shipped.includes(`(\`pretrain.ts\`)${use}It is **not**`), "the shipped card's intro");
    assert(shipped.includes(`## Fine-tuning it\n\n${fineTuning}\n`), "its Fine-tuning it");
    assert(shipped.includes(shapeNote), "its shape note");
    // Any other folder's card says none of it.
    assert(other.startsWith("# other\n"), other);
    assert(
      !other.includes(use) && !other.includes(fineTuning) && !other.includes(shapeNote),
      other,
    );
    assert(other.includes("`deno task rte --model models/other`"), other);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ship_model: the card says where the run trained (a CPU for a software adapter)", () => {
  // It said "on a CPU" whatever result.json's device was.
  assertEquals(onDevice("llvmpipe (LLVM 15.0.6, 256 bits)"), "a CPU");
  assertEquals(onDevice("SwiftShader Device (Subzero)"), "a CPU");
  assertEquals(onDevice("NVIDIA H200"), "NVIDIA H200");
});
