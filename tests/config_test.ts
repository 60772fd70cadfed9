import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { ConfigError, maxSequenceLength, parseConfig, readConfig } from "../model/config.ts";

const BERT = {
  model_type: "bert",
  vocab_size: 30522,
  hidden_size: 768,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  intermediate_size: 3072,
  hidden_act: "gelu",
  hidden_dropout_prob: 0.1,
  attention_probs_dropout_prob: 0.1,
  max_position_embeddings: 512,
  type_vocab_size: 2,
  layer_norm_eps: 1e-12,
  pad_token_id: 0,
};

const ROBERTA_LARGE = {
  ...BERT,
  model_type: "roberta",
  vocab_size: 50265,
  hidden_size: 1024,
  num_hidden_layers: 24,
  num_attention_heads: 16,
  intermediate_size: 4096,
  max_position_embeddings: 514,
  type_vocab_size: 1,
  layer_norm_eps: 1e-5,
  pad_token_id: 1,
};

Deno.test("config: bert-base and roberta-large parse to the encoder's shape", () => {
  const bert = parseConfig(BERT, "bert/config.json");
  assertEquals([bert.prefix, bert.headDim, bert.positionsFromPadding], ["bert", 64, false]);
  assertEquals(maxSequenceLength(bert), 512);
  const roberta = parseConfig(ROBERTA_LARGE, "roberta/config.json");
  assertEquals([roberta.prefix, roberta.headDim, roberta.padTokenId], ["roberta", 64, 1]);
  assertEquals(roberta.positionsFromPadding, true);
  assertEquals(maxSequenceLength(roberta), 512);
  assertEquals(roberta.raw, ROBERTA_LARGE);
  // What transformers writes for a model with nothing pruned, and an encoder said to be one.
  parseConfig({ ...BERT, pruned_heads: {}, is_decoder: false }, "bert/config.json");
  // transformers' defaults where a config leaves them out (Google's converted BERT configs
  // have no layer_norm_eps): ε 1e-12, and RoBERTa's padding id 1, from which its positions count.
  const { layer_norm_eps: _, pad_token_id: __, ...bare } = ROBERTA_LARGE as Record<string, unknown>;
  const defaults = parseConfig(bare, "roberta/config.json");
  assertEquals([defaults.layerNormEps, defaults.padTokenId], [1e-12, 1]);
  const { layer_norm_eps: ___, pad_token_id: ____, ...bareBert } = BERT as Record<string, unknown>;
  const bertDefaults = parseConfig(bareBert, "bert/config.json");
  assertEquals([bertDefaults.layerNormEps, bertDefaults.padTokenId], [1e-12, 0]);
});

Deno.test("config: xlm-roberta is RoBERTa's architecture; electra may have narrow embeddings", () => {
  const xlmr = parseConfig({ ...ROBERTA_LARGE, model_type: "xlm-roberta" }, "x.json");
  assertEquals([xlmr.modelType, xlmr.prefix], ["xlm-roberta", "roberta"]);
  const electra = parseConfig({ ...BERT, model_type: "electra", embedding_size: 128 }, "e.json");
  assertEquals([electra.prefix, electra.embeddingSize, electra.hiddenSize], ["electra", 128, 768]);
  // Without embedding_size, transformers' default (128), not the hidden size.
  assertEquals(parseConfig({ ...BERT, model_type: "electra" }, "e.json").embeddingSize, 128);
});

Deno.test("config: unknown types and missing or bad fields name the file and field", () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ ...BERT, model_type: "gpt2" }, 'model_type "gpt2" is not supported'],
    [{ ...BERT, model_type: undefined }, 'has no "model_type"'],
    [{ ...BERT, hidden_size: undefined }, 'has no "hidden_size"'],
    [{ ...BERT, num_hidden_layers: 2.5 }, '"num_hidden_layers" must be an integer'],
    [{ ...BERT, num_attention_heads: 7 }, "not a multiple of num_attention_heads"],
    [{ ...BERT, hidden_act: "relu" }, 'hidden_act "relu" is not supported'],
    [{ ...BERT, hidden_dropout_prob: 1.5 }, '"hidden_dropout_prob" must be a probability'],
    [{ ...BERT, position_embedding_type: "relative_key" }, "position_embedding_type"],
    // A causal mask in transformers, none here: another model, said.
    [{ ...BERT, is_decoder: true }, "is_decoder true is not supported"],
    [{ ...BERT, add_cross_attention: true }, "add_cross_attention true is not supported"],
    // Narrower attention weights than the sizes say: named, not as a shape mismatch.
    [{ ...BERT, pruned_heads: { "0": [1] } }, 'pruned_heads {"0":[1]}: a model with pruned'],
    [{ ...BERT, pad_token_id: 40000 }, "pad_token_id 40000"],
    // Names of every object's own properties are not model types; a type is quoted on one line.
    [{ ...BERT, model_type: "toString" }, 'model_type "toString" is not supported'],
    [{ ...BERT, model_type: "constructor" }, 'model_type "constructor" is not supported'],
    [{ ...BERT, model_type: "be\nrt" }, 'model_type "be\\nrt" is not supported'],
  ];
  for (const [json, message] of cases) {
    const e = assertThrows(() => parseConfig(json, "m/config.json"), ConfigError, message);
    assertEquals(e.message.startsWith("m/config.json: "), true, e.message);
  }
  assertThrows(() => parseConfig([1], "a.json"), ConfigError, "is not a JSON object");
});

Deno.test("config: unreadable and non-JSON files are errors naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => readConfig(`${dir}/none.json`), ConfigError, "cannot read");
    await Deno.writeTextFile(`${dir}/bad.json`, "{ not json");
    await assertRejects(() => readConfig(`${dir}/bad.json`), ConfigError, "is not valid JSON");
    // V8 quotes the text around an unexpected token with its line breaks: folded into one line.
    await Deno.writeTextFile(`${dir}/lines.json`, '{\n  "a": tpue,\n  "b": 1\n}\n');
    const lines = await assertRejects(() => readConfig(`${dir}/lines.json`), ConfigError);
    assert(lines.message.startsWith(`${dir}/lines.json: is not valid JSON (Unexpected token 'p'`));
    assert(!lines.message.includes("\n") && lines.message.endsWith(")"), lines.message);
    // A byte-order mark fails on an invisible character: named instead.
    await Deno.writeTextFile(`${dir}/bom.json`, "\ufeff" + JSON.stringify(BERT));
    await assertRejects(
      () => readConfig(`${dir}/bom.json`),
      ConfigError,
      "is not valid JSON (it begins with a byte-order mark (BOM): save it as UTF-8 without one)",
    );
    await Deno.writeTextFile(`${dir}/ok.json`, JSON.stringify(BERT));
    assertEquals((await readConfig(`${dir}/ok.json`)).vocabSize, 30522);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
