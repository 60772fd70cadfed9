// A randomly initialised BERT of any shape, written as a Hugging Face checkpoint folder
// (config.json, vocab.txt, model.safetensors): what the runs without downloadable weights train,
// and the "randomly initialised" baseline of a pretrained model of the same shape.
//
//   deno run -A tools/random_model.ts --out DIR --vocab VOCAB.txt [--layers 2 --hidden 128
//     --heads 2 --intermediate 512 --max-positions 512 --seed 0]
//
// Initialisation as BertPreTrainedModel._init_weights: weights N(0, 0.02) (Box-Muller over a
// seeded generator, so a seed gives the same file), LayerNorm weights 1, biases 0.

import { parseArgs } from "node:util";
import { writeSafetensors } from "../model/safetensors.ts";
import { initialEncoderValues, normalGenerator } from "../model/init.ts";
import { parseConfig } from "../model/config.ts";

const FLAGS = {
  out: { type: "string" },
  vocab: { type: "string" },
  layers: { type: "string", default: "2" },
  hidden: { type: "string", default: "128" },
  heads: { type: "string", default: "2" },
  intermediate: { type: "string", default: "512" },
  "max-positions": { type: "string", default: "512" },
  seed: { type: "string", default: "0" },
} as const;

function positive(name: string, v: string): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < (name === "seed" ? 0 : 1)) {
    throw new Error(
      `--${name}: expected a ${name === "seed" ? "non-negative" : "positive"} integer, got "${v}"`,
    );
  }
  return Number(v);
}

async function main(): Promise<void> {
  const { values: f } = parseArgs({ args: Deno.args, options: FLAGS, strict: true });
  if (!f.out) throw new Error("--out is required");
  if (!f.vocab) throw new Error("--vocab is required (a WordPiece vocab.txt)");
  const n = (k: keyof typeof FLAGS) => positive(k, f[k] as string);
  const hidden = n("hidden"), heads = n("heads");
  if (hidden % heads !== 0) {
    throw new Error(`--hidden ${hidden} is not a multiple of --heads ${heads}`);
  }
  const vocab = (await Deno.readTextFile(f.vocab)).split("\n").filter((l) => l.length > 0);
  const raw = {
    architectures: ["BertModel"],
    model_type: "bert",
    vocab_size: vocab.length,
    hidden_size: hidden,
    num_hidden_layers: n("layers"),
    num_attention_heads: heads,
    intermediate_size: n("intermediate"),
    hidden_act: "gelu",
    hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1,
    max_position_embeddings: n("max-positions"),
    type_vocab_size: 2,
    initializer_range: 0.02,
    layer_norm_eps: 1e-12,
    pad_token_id: 0,
  };
  const config = parseConfig(raw, "tools/random_model.ts");
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, { shape, data }] of initialEncoderValues(config, normalGenerator(n("seed")))) {
    tensors[`bert.${name}`] = { dtype: "F32", shape, data };
  }
  await Deno.mkdir(f.out, { recursive: true });
  await Deno.writeTextFile(`${f.out}/config.json`, JSON.stringify(raw, null, 2) + "\n");
  await Deno.writeTextFile(`${f.out}/vocab.txt`, vocab.join("\n") + "\n");
  await writeSafetensors(`${f.out}/model.safetensors`, tensors, { format: "pt" });
  console.error(`random_model: wrote ${f.out} (${Object.keys(tensors).length} tensors)`);
}

try {
  await main();
} catch (e) {
  console.error(`random_model: ${(e as Error).message}`);
  Deno.exit(1);
}
