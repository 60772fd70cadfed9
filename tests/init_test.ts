// Seeded initial weights (model/init.ts, and the MLM head's in model/mlm_head.ts): Hugging Face's
// _init_weights, including the zeroed padding_idx rows, and a checked initializer_range.

import { ConfigError, type ModelConfig, parseConfig } from "../model/config.ts";
import { initialEncoderValues, normalGenerator } from "../model/init.ts";
import { initialMlmHeadValues } from "../model/mlm_head.ts";
import { assert, assertEquals, assertThrows } from "./assert.ts";

const FILE = "tiny/config.json";

function config(fields: Record<string, unknown> = {}): ModelConfig {
  return parseConfig({
    model_type: "bert",
    vocab_size: 11,
    hidden_size: 4,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    intermediate_size: 8,
    max_position_embeddings: 9,
    ...fields,
  }, FILE);
}

function row(data: Float32Array, width: number, r: number): number[] {
  return [...data.subarray(r * width, (r + 1) * width)];
}

Deno.test("init: initializer_range must be a finite number > 0 (a one-line ConfigError)", () => {
  const normal = normalGenerator(0);
  for (const bad of ["abc", "0.02", -1, 0, Infinity, NaN, true, [0.02]]) {
    const c = config();
    c.raw.initializer_range = bad;
    const got = typeof bad === "number" ? String(bad) : JSON.stringify(bad);
    for (
      const [what, init] of [
        ["encoder", (file?: string) => initialEncoderValues(c, normal, file)],
        ["MLM head", (file?: string) => initialMlmHeadValues(c, normal, file)],
      ] as const
    ) {
      const e = assertThrows(() => init(FILE), ConfigError);
      assertEquals(
        e.message,
        `${FILE}: "initializer_range" must be a finite number > 0, got ${got}`,
        `${what}, ${got}`,
      );
      assert(!e.message.includes("\n"));
      // Without a file name, the config is still named.
      assertThrows(() => init(), ConfigError, 'config.json: "initializer_range"');
    }
  }
  // Absent means transformers' default 0.02; a valid value is used as the standard deviation.
  const c = config();
  delete c.raw.initializer_range;
  const dflt = initialEncoderValues(c, normalGenerator(5)).get(
    "encoder.layer.0.output.dense.weight",
  )!;
  c.raw.initializer_range = 0.5;
  const wide = initialEncoderValues(c, normalGenerator(5)).get(
    "encoder.layer.0.output.dense.weight",
  )!;
  for (let i = 0; i < dflt.data.length; i++) {
    assert(Math.abs(wide.data[i] - 25 * dflt.data[i]) <= 1e-6 * Math.abs(wide.data[i]), `${i}`);
  }
  assert(initialMlmHeadValues(c, normalGenerator(1)).denseWeight.every(Number.isFinite));
});

Deno.test("init: the padding_idx rows are zero, as in transformers' _init_weights", () => {
  const cases: [string, ModelConfig, number, boolean][] = [
    ["bert", config({ pad_token_id: 3 }), 3, false],
    ["roberta", config({ model_type: "roberta", pad_token_id: 1 }), 1, true],
    ["xlm-roberta", config({ model_type: "xlm-roberta", pad_token_id: 2 }), 2, true],
    ["electra", config({ model_type: "electra", embedding_size: 6, pad_token_id: 0 }), 0, false],
  ];
  for (const [type, c, pad, positionPadding] of cases) {
    const values = initialEncoderValues(c, normalGenerator(7));
    const word = values.get("embeddings.word_embeddings.weight")!;
    const position = values.get("embeddings.position_embeddings.weight")!;
    const tokenType = values.get("embeddings.token_type_embeddings.weight")!;
    const width = c.embeddingSize;
    assertEquals(word.shape, [c.vocabSize, width]);
    const zero = new Array(width).fill(0);
    for (let r = 0; r < c.vocabSize; r++) {
      if (r === pad) assertEquals(row(word.data, width, r), zero, `${type}: word row ${r}`);
      else assert(row(word.data, width, r).every((v) => v !== 0), `${type}: word row ${r}`);
    }
    // RoBERTa's position table has padding_idx = pad_token_id; BERT's and ELECTRA's have none.
    for (let r = 0; r < c.maxPositions; r++) {
      const values = row(position.data, width, r);
      if (positionPadding && r === pad) assertEquals(values, zero, `${type}: position row ${r}`);
      else assert(values.every((v) => v !== 0), `${type}: position row ${r}`);
    }
    assert(tokenType.data.every((v) => v !== 0), `${type}: token type embeddings`);

    // Every value is drawn as before (a padding row is drawn, then zeroed): the same stream.
    const normal = normalGenerator(7);
    for (const [name, { data }] of values) {
      if (name.includes("LayerNorm") || name.endsWith(".bias")) continue;
      for (let i = 0; i < data.length; i++) {
        const drawn = Math.fround(0.02 * normal());
        const padded = (name === "embeddings.word_embeddings.weight" ||
          (positionPadding && name === "embeddings.position_embeddings.weight")) &&
          Math.floor(i / width) === pad;
        assertEquals(data[i], padded ? 0 : drawn, `${type}: ${name}[${i}]`);
      }
    }
  }
});
