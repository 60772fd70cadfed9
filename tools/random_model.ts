// A randomly initialised BERT of any shape, written as a Hugging Face checkpoint folder
// (config.json, vocab.txt, model.safetensors): what the runs without downloadable weights train,
// and the "randomly initialised" baseline of a pretrained model of the same shape.
//
//   deno run -A tools/random_model.ts --out DIR --vocab VOCAB.txt [--layers 2 --hidden 128 \
//     --heads 2 --intermediate 512 --max-positions 512 --seed 0] [--overwrite]
//
// Initialisation as BertPreTrainedModel._init_weights: weights N(0, 0.02) (Box-Muller over a
// seeded generator, so a seed gives the same file), LayerNorm weights 1, biases 0.
//
// The vocabulary is read as Hugging Face's load_vocab reads it: one token a line, the id being
// the line number, "\r\n" and "\r" line breaks as "\n" (Python's universal newlines), a blank
// line a token of its own (so the ids after it do not move); vocab_size is the number of lines
// and pad_token_id the id of [PAD] (a vocabulary without one is refused). vocab.txt is written
// with the same lines, "\n"-separated. --out must be new or empty; --overwrite replaces a folder
// holding only these three files. The folder is built as a temporary sibling, loaded back, and
// renamed into place (tools/folder_write.ts's writeFolder): a failure leaves --out as it was.

import { writeSafetensors } from "../model/safetensors.ts";
import { initialEncoderValues, normalGenerator } from "../model/init.ts";
import { parseConfig } from "../model/config.ts";
import { openModel } from "../model/load.ts";
import { convertWordPiece, parseVocabTxt, vocabLines } from "../model/tokenizer_convert.ts";
import { checkOutFolder, writeFolder } from "./folder_write.ts";
import { runTool } from "./cli.ts";
import { FlagError, parseFlags } from "../train/flags.ts";
import { readUtf8File, Utf8Error } from "../model/utf8.ts";

const FLAGS = {
  out: { type: "string" },
  vocab: { type: "string" },
  layers: { type: "string", default: "2" },
  hidden: { type: "string", default: "128" },
  heads: { type: "string", default: "2" },
  intermediate: { type: "string", default: "512" },
  "max-positions": { type: "string", default: "512" },
  seed: { type: "string", default: "0" },
  overwrite: { type: "boolean" },
} as const;

/** The files random_model writes (all that --overwrite lets --out hold). */
export const FILES = ["config.json", "vocab.txt", "model.safetensors"];

function positive(name: string, v: string): number {
  // Seeds are u32: a larger one would give the same model as a smaller.
  const [min, max] = name === "seed" ? [0, 2 ** 32 - 1] : [1, Number.MAX_SAFE_INTEGER];
  if (!/^[0-9]+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new FlagError(
      name === "seed"
        ? `--seed: expected an integer from 0 to ${max}, got "${v}"`
        : `--${name}: expected a positive integer, got "${v}"`,
    );
  }
  return Number(v);
}

const USAGE = "usage: deno run -A tools/random_model.ts --out DIR --vocab VOCAB.txt [flags]; " +
  "--help lists them";

async function main(args: string[]): Promise<void> {
  const f = parseFlags(FLAGS, args);
  if (!f.out) throw new FlagError(`--out is required (${USAGE})`);
  if (!f.vocab) throw new FlagError(`--vocab is required (a WordPiece vocab.txt; ${USAGE})`);
  const n = (k: Exclude<keyof typeof FLAGS, "overwrite">) => positive(k, f[k] as string);
  const hidden = n("hidden"), heads = n("heads");
  if (hidden % heads !== 0) {
    throw new FlagError(`--hidden ${hidden} is not a multiple of --heads ${heads}`);
  }
  const sizes = {
    layers: n("layers"),
    intermediate: n("intermediate"),
    positions: n("max-positions"),
    seed: n("seed"),
  };
  await checkOutFolder(f.out, f.overwrite ?? false, FILES);
  let text: string;
  try {
    text = await readUtf8File(f.vocab);
  } catch (e) {
    // The file's problem, not the command's (exit status 1).
    if (e instanceof Utf8Error) throw new Error(`--vocab ${f.vocab}: ${e.message}`);
    throw new Error(`--vocab ${f.vocab}: cannot read (${(e as Error).message})`);
  }
  // The tokenizer this folder will load with (its special tokens are there), and the ids.
  convertWordPiece(text, { source: f.vocab });
  const vocab = vocabLines(text);
  const pad = parseVocabTxt(text, f.vocab).get("[PAD]");
  if (pad === undefined) {
    throw new Error(`${f.vocab}: has no [PAD] token (config.json's pad_token_id)`);
  }
  const raw = {
    architectures: ["BertModel"],
    model_type: "bert",
    vocab_size: vocab.length,
    hidden_size: hidden,
    num_hidden_layers: sizes.layers,
    num_attention_heads: heads,
    intermediate_size: sizes.intermediate,
    hidden_act: "gelu",
    hidden_dropout_prob: 0.1,
    attention_probs_dropout_prob: 0.1,
    max_position_embeddings: sizes.positions,
    type_vocab_size: 2,
    initializer_range: 0.02,
    layer_norm_eps: 1e-12,
    pad_token_id: pad,
  };
  const config = parseConfig(raw, "tools/random_model.ts");
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, { shape, data }] of initialEncoderValues(config, normalGenerator(sizes.seed))) {
    tensors[`bert.${name}`] = { dtype: "F32", shape, data };
  }
  await writeFolder(f.out, async (dir) => {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(raw, null, 2) + "\n");
    await Deno.writeTextFile(`${dir}/vocab.txt`, vocab.join("\n") + "\n");
    await writeSafetensors(`${dir}/model.safetensors`, tensors, { format: "pt" });
    (await openModel(dir)).weights.close();
  });
  console.error(`random_model: wrote ${f.out} (${Object.keys(tensors).length} tensors)`);
}

if (import.meta.main) await runTool("random_model", import.meta.url, main);
