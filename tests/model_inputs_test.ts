// Model inputs that do not fit together (issue 10, "Faults and bad input"): a config that
// contradicts the tensors, a tokenizer that does not belong to the model, ids beyond the embedding
// table. `openModel` must refuse each with one line naming the file, before any GPU work — these
// tests run with WebGPU's requestAdapter replaced by a function that fails the test.

import { assert, assertEquals, assertRejects } from "./assert.ts";
import { capturingErrors, readTensors, VOCAB, writeTinyBert } from "./train_fixture.ts";
import { CheckpointError, loadBackbone } from "../model/checkpoint.ts";
import { createEncoder, encoderParameters } from "../model/encoder.ts";
import { gpuTest } from "./gpu_fixture.ts";
import { ConfigError } from "../model/config.ts";
import { openModel } from "../model/load.ts";
import { writeSafetensors } from "../model/safetensors.ts";
import { TokenizerError } from "../model/tokenizer.ts";
import { convertTokenizerDir } from "../model/tokenizer_convert.ts";

const GPT2_BPE = new URL("./fixtures/tokenizers/gpt2-bpe/", import.meta.url).pathname;

/** Runs `fn` on a fresh tiny-bert folder, with the GPU off limits. */
async function withModel(fn: (dir: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "model_inputs_" });
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  const original = gpu?.requestAdapter;
  if (gpu) {
    Object.defineProperty(gpu, "requestAdapter", {
      configurable: true,
      value: () => {
        throw new Error("a model input check asked for the GPU");
      },
    });
  }
  try {
    await writeTinyBert(`${root}/model`);
    await fn(`${root}/model`);
  } finally {
    if (gpu) delete (gpu as unknown as Record<string, unknown>).requestAdapter;
    if (gpu) assertEquals(gpu.requestAdapter, original);
    await Deno.remove(root, { recursive: true });
  }
}

async function editConfig(dir: string, edit: Record<string, unknown>): Promise<void> {
  const path = `${dir}/config.json`;
  const config = JSON.parse(await Deno.readTextFile(path));
  await Deno.writeTextFile(path, JSON.stringify({ ...config, ...edit }, null, 2));
}

/** openModel must reject with `errorClass`, one line, starting with `file` and matching `problem`. */
async function expectRefused(
  dir: string,
  // deno-lint-ignore no-explicit-any
  errorClass: new (...args: any[]) => Error,
  file: string,
  problem: RegExp,
): Promise<void> {
  const e = await assertRejects(() => openModel(dir), errorClass);
  assert(!/[\r\n]/.test(e.message), `message has a line break: ${JSON.stringify(e.message)}`);
  assert(e.message.startsWith(`${file}: `), `message does not start with ${file}: ${e.message}`);
  assert(problem.test(e.message), `message ${JSON.stringify(e.message)} does not match ${problem}`);
}

Deno.test("model inputs: the tiny-bert folder opens (the baseline the other tests break)", async () => {
  await withModel(async (dir) => {
    const model = await openModel(dir);
    assertEquals(model.config.vocabSize, 101);
    assertEquals(model.tokenizer.largestId(), { id: 100, token: VOCAB[100] });
    assertEquals(model.head, { features: 24, hidden: 2048, classes: 1 });
    model.weights.close();
  });
});

// ---------------------------------------------------------------------------------------------
// A config that contradicts the tensors: named in full, with the fields that decide the shape

const CONTRADICTIONS: [string, Record<string, unknown>, RegExp][] = [
  [
    "vocab_size vs the word-embedding rows",
    { vocab_size: 102 },
    /tensor "bert\.embeddings\.word_embeddings\.weight" has shape \[101, 24\], but \S+\/config\.json \(vocab_size 102, hidden_size 24\) needs \[102, 24\]$/,
  ],
  [
    // The tokenizer's 101 tokens would not fit either; the config is the one to blame.
    "vocab_size smaller than the word-embedding rows",
    { vocab_size: 100 },
    /tensor "bert\.embeddings\.word_embeddings\.weight" has shape \[101, 24\], but \S+\/config\.json \(vocab_size 100, hidden_size 24\) needs \[100, 24\]$/,
  ],
  [
    "hidden_size vs every tensor",
    { hidden_size: 27 },
    /tensor "bert\.embeddings\.word_embeddings\.weight" has shape \[101, 24\], but \S+\/config\.json \(vocab_size 101, hidden_size 27\) needs \[101, 27\]$/,
  ],
  [
    "max_position_embeddings vs the position table",
    { max_position_embeddings: 64 },
    /tensor "bert\.embeddings\.position_embeddings\.weight" has shape \[33, 24\], but \S+\/config\.json \(max_position_embeddings 64, hidden_size 24\) needs \[64, 24\]$/,
  ],
  [
    "type_vocab_size vs the token-type table",
    { type_vocab_size: 1 },
    /tensor "bert\.embeddings\.token_type_embeddings\.weight" has shape \[2, 24\], but \S+\/config\.json \(type_vocab_size 1, hidden_size 24\) needs \[1, 24\]$/,
  ],
  [
    "intermediate_size vs the feed-forward layers",
    { intermediate_size: 40 },
    /tensor "bert\.encoder\.layer\.0\.intermediate\.dense\.weight" has shape \[37, 24\], but \S+\/config\.json \(hidden_size 24, intermediate_size 40\) needs \[40, 24\]$/,
  ],
  [
    "num_hidden_layers larger than the layers present",
    { num_hidden_layers: 3 },
    /holds 2 encoder layers, but \S+\/config\.json has num_hidden_layers 3$/,
  ],
  [
    "num_hidden_layers smaller than the layers present",
    { num_hidden_layers: 1 },
    /holds encoder layer 1 \("bert\.encoder\.layer\.1\.[^"]+"\), but \S+\/config\.json has num_hidden_layers 1$/,
  ],
  [
    "model_type vs the tensor names",
    { model_type: "roberta", pad_token_id: 0 },
    /its tensors are named "bert\.\*", but \S+\/config\.json has model_type "roberta"/,
  ],
];

Deno.test("model inputs: a config that contradicts the tensors names both files", async (t) => {
  for (const [name, edit, problem] of CONTRADICTIONS) {
    await t.step(name, async () => {
      await withModel(async (dir) => {
        await editConfig(dir, edit);
        await expectRefused(dir, CheckpointError, `${dir}/model.safetensors`, problem);
      });
    });
  }
});

Deno.test("model inputs: TensorFlow's and Flax's layouts are said as such, not as missing tensors", async () => {
  await withModel(async (dir) => {
    const path = `${dir}/model.safetensors`;
    const tensors = await readTensors(path);
    for (const format of ["flax", "tf"]) {
      await writeSafetensors(path, tensors, { format });
      await expectRefused(
        dir,
        CheckpointError,
        path,
        new RegExp(
          `its metadata says format "${format}": .* not PyTorch's; convert it \\(transformers: ` +
            `from_pretrained with from_${format}=True, then save_pretrained\\)$`,
        ),
      );
    }
  });
});

Deno.test("model inputs: a missing or integer backbone tensor is refused at open", async () => {
  await withModel(async (dir) => {
    const path = `${dir}/model.safetensors`;
    const tensors = await readTensors(path);
    const bias = "bert.encoder.layer.1.output.dense.bias";
    const { [bias]: removed, ...without } = tensors;
    await writeSafetensors(path, without);
    await expectRefused(
      dir,
      CheckpointError,
      path,
      /missing tensor "bert\.encoder\.layer\.1\.output\.dense\.bias"$/,
    );
    const ints = Int32Array.from(removed.data as Float32Array, Math.round);
    await writeSafetensors(path, { ...without, [bias]: { ...removed, dtype: "I32", data: ints } });
    await expectRefused(
      dir,
      CheckpointError,
      path,
      /tensor "bert\.encoder\.layer\.1\.output\.dense\.bias" is I32; weights must be F32, F16, BF16 or F64$/,
    );
  });
});

Deno.test("model inputs: word embeddings kept only as the tied MLM decoder are read from it", async () => {
  // safetensors' save_model stores a shared tensor once, under the first name in sorted order:
  // "lm_head.decoder.weight" before "roberta.embeddings...", "cls." before "layoutlm.".
  const word = "bert.embeddings.word_embeddings.weight";
  for (const decoder of ["cls.predictions.decoder.weight", "lm_head.decoder.weight"]) {
    await withModel(async (dir) => {
      const path = `${dir}/model.safetensors`;
      const { [word]: table, ...rest } = await readTensors(path);
      await writeSafetensors(path, { ...rest, [decoder]: table });
      const model = await openModel(dir);
      assertEquals(model.unused, []);
      model.weights.close();
      // Untied (tie_word_embeddings false), the decoder is not the table: missing, as before.
      await editConfig(dir, { tie_word_embeddings: false });
      await expectRefused(
        dir,
        CheckpointError,
        path,
        /missing tensor "bert\.embeddings\.word_embeddings\.weight"$/,
      );
      // Unless the file's metadata says the table was stored under the decoder's name (what
      // safetensors' save_model records for each name it drops).
      await writeSafetensors(path, { ...rest, [decoder]: table }, { [word]: decoder });
      const recorded = await openModel(dir);
      assertEquals(recorded.unused, []);
      recorded.weights.close();
    });
  }
});

Deno.test("model inputs: a tensor stored once under another name is found through the file's metadata", async () => {
  await withModel(async (dir) => {
    const path = `${dir}/model.safetensors`;
    const query = "bert.encoder.layer.0.attention.self.query.weight";
    const { [query]: weight, ...rest } = await readTensors(path);
    await writeSafetensors(path, { ...rest, "shared.0": weight });
    await expectRefused(
      dir,
      CheckpointError,
      path,
      /missing tensor "bert\.encoder\.layer\.0\.attention\.self\.query\.weight"$/,
    );
    await writeSafetensors(path, { ...rest, "shared.0": weight }, { [query]: "shared.0" });
    const model = await openModel(dir);
    assertEquals(model.unused, []);
    model.weights.close();
  });
});

gpuTest(
  "model inputs: the tied decoder's values are what the encoder's word table holds",
  async (gpu) => {
    const root = await Deno.makeTempDir({ prefix: "model_inputs_tied_" });
    try {
      const word = "bert.embeddings.word_embeddings.weight";
      await writeTinyBert(`${root}/model`);
      const path = `${root}/model/model.safetensors`;
      const { [word]: table, ...rest } = await readTensors(path);
      await writeSafetensors(path, { ...rest, "cls.predictions.decoder.weight": table });
      const model = await openModel(`${root}/model`);
      try {
        const encoder = createEncoder(gpu, model.config, { maxBatch: 1, maxSeq: 4, dropout: 0 });
        await loadBackbone(model.weights, model.config, encoderParameters(encoder.params));
        assertEquals(await encoder.params.embeddings.word.download(), table.data);
      } finally {
        model.weights.close();
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  },
);

Deno.test("model inputs: tensors loading leaves out are named, with the likely reason", async (t) => {
  // A transformers sequence-classification checkpoint's classifier is not the EH-FT head: a
  // fine-tuned classifier replaced by a fresh head without a word would be a silent surprise.
  const cases: [string, string[], RegExp][] = [
    [
      "a transformers classifier",
      ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight"],
      /: 3 tensors not used \("classifier\.dense\.bias", "classifier\.dense\.weight", "classifier\.out_proj\.weight"\): a transformers classification head is not the EH-FT head \(head\.\*\), which starts fresh$/,
    ],
    [
      "a Stage-1 snapshot's LoRA tensors",
      ["lora.a", "lora.b", "lora.c", "lora.d", "lora.e"],
      /: 5 tensors not used \("lora\.a", "lora\.b", "lora\.c" and 2 more\): PEFT tensors are not loaded with a model: a run starts its PEFT method fresh$/,
    ],
    [
      "anything else",
      ["bert.encoder.layer.0.extra"],
      /: 1 tensor not used \("bert\.encoder\.layer\.0\.extra"\): they are not part of the encoder or the EH-FT head \(head\.\*\)$/,
    ],
  ];
  for (const [what, extra, note] of cases) {
    await t.step(what, async () => {
      await withModel(async (dir) => {
        const path = `${dir}/model.safetensors`;
        const tensors = await readTensors(path);
        // The MLM head and buffers are left out on purpose, and are not worth a line.
        const quiet = ["cls.predictions.bias", "bert.embeddings.position_ids"];
        for (const name of [...extra, ...quiet]) {
          tensors[name] = { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) };
        }
        await writeSafetensors(path, tensors);
        const { lines } = await capturingErrors(async () => {
          const model = await openModel(dir);
          assertEquals(model.unused, [...extra].sort());
          model.weights.close();
          const quietly = await openModel(dir, { quiet: true });
          assertEquals(quietly.unused.length, extra.length);
          quietly.weights.close();
          // Once per file and process: a --seeds run opens its model per seed.
          (await openModel(dir)).weights.close();
        });
        assertEquals(lines.length, 1, lines.join("\n"));
        assert(lines[0].startsWith(`${path}: `), lines[0]);
        assert(note.test(lines[0]), `${lines[0]} does not match ${note}`);
      });
    });
  }
});

Deno.test("model inputs: a pad_token_id beyond vocab_size is refused by the config", async () => {
  await withModel(async (dir) => {
    await editConfig(dir, { pad_token_id: 101 });
    await expectRefused(
      dir,
      ConfigError,
      `${dir}/config.json`,
      /pad_token_id 101 ≥ vocab_size 101$/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// A tokenizer that does not fit the model

/** The folder's tokenizer as a tokenizer.json object (converted from its vocab.txt). */
async function tokenizerJson(dir: string): Promise<Record<string, unknown>> {
  return structuredClone(await convertTokenizerDir(dir)) as unknown as Record<string, unknown>;
}

Deno.test("model inputs: token ids beyond the embedding table are refused at open", async (t) => {
  await t.step("an added token past vocab_size (tokenizer.json)", async () => {
    await withModel(async (dir) => {
      const json = await tokenizerJson(dir);
      (json.added_tokens as Record<string, unknown>[]).push({
        id: 101,
        content: "[NEW]",
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      });
      await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(json));
      await expectRefused(
        dir,
        TokenizerError,
        `${dir}/tokenizer.json`,
        /token "\[NEW\]" has id 101, but \S+\/config\.json has vocab_size 101: the tokenizer does not belong to this model/,
      );
    });
  });
  await t.step("a vocab.txt larger than vocab_size", async () => {
    await withModel(async (dir) => {
      const vocab = await Deno.readTextFile(`${dir}/vocab.txt`);
      await Deno.writeTextFile(`${dir}/vocab.txt`, vocab + "extra1\nextra2\n");
      await expectRefused(
        dir,
        TokenizerError,
        `${dir} (converted from its vocabulary files)`,
        /token "extra2" has id 102, but \S+\/config\.json has vocab_size 101/,
      );
    });
  });
  await t.step("a vocabulary smaller than the table is fine (padded tables)", async () => {
    await withModel(async (dir) => {
      const vocab = (await Deno.readTextFile(`${dir}/vocab.txt`)).trimEnd().split("\n");
      await Deno.writeTextFile(`${dir}/vocab.txt`, vocab.slice(0, 90).join("\n") + "\n");
      const model = await openModel(dir);
      assertEquals(model.tokenizer.largestId()?.id, 89);
      model.weights.close();
    });
  });
});

Deno.test("model inputs: a tokenizer of another model is refused at open", async (t) => {
  await t.step("RoBERTa's byte-level BPE with a BERT config", async () => {
    await withModel(async (dir) => {
      // RoBERTa's layout: <s> <pad> </s> <unk> first, <mask> last, byte-level tokens between.
      const bytes = Object.keys(JSON.parse(await Deno.readTextFile(`${GPT2_BPE}/encoder.json`)));
      const vocab = Object.fromEntries([
        ...["<s>", "<pad>", "</s>", "<unk>"].map((t, i) => [t, i]),
        ...bytes.slice(0, 96).map((t, i) => [t, i + 4]),
        ["<mask>", 100],
      ]);
      await Deno.remove(`${dir}/vocab.txt`);
      await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(vocab));
      await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\n");
      await expectRefused(
        dir,
        TokenizerError,
        `${dir} (converted from its vocabulary files)`,
        /pad token "<pad>" has id 1 but the model's pad_token_id is 0: the tokenizer does not belong to this model$/,
      );
    });
  });
  await t.step("a pad token at another id than pad_token_id", async () => {
    await withModel(async (dir) => {
      const vocab = (await Deno.readTextFile(`${dir}/vocab.txt`)).trimEnd().split("\n");
      [vocab[0], vocab[5]] = [vocab[5], vocab[0]];
      await Deno.writeTextFile(`${dir}/vocab.txt`, vocab.join("\n") + "\n");
      await expectRefused(
        dir,
        TokenizerError,
        `${dir} (converted from its vocabulary files)`,
        /pad token "\[PAD\]" has id 5 but the model's pad_token_id is 0/,
      );
    });
  });
  await t.step("a special token the post-processor adds is not in the vocabulary", async () => {
    await withModel(async (dir) => {
      const json = await tokenizerJson(dir);
      const model = json.model as { vocab: Record<string, number> };
      delete model.vocab["[SEP]"];
      json.added_tokens = (json.added_tokens as { content: string }[]).filter((t) =>
        t.content !== "[SEP]"
      );
      await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(json));
      await expectRefused(
        dir,
        TokenizerError,
        `${dir}/tokenizer.json`,
        /its post-processor adds the special token "\[SEP\]", which is not in its vocabulary$/,
      );
    });
  });
});
