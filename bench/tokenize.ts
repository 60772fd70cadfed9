// Host-side tokenizing before the first training step: the time `tokenizeExamples` takes on a
// QNLI-sized split, with RoBERTa's byte-level BPE (GPT-2's merges, tests/fixtures) and BERT's
// WordPiece (data/tokenizers). The pairs are synthetic (seeded, GLUE QNLI's lengths: questions
// of about 10 words, sentences of about 30, one in a hundred of 100-400): the shipped data has no
// split this large, and the point is the host's rate, not the text.
//
//   deno run -A bench/tokenize.ts [--pairs 60000] [--seed 1]
//
// Prints pairs per second for each tokenizer and a SHA-256 of the token ids (to compare runs of
// two commits: the same ids, or a change to look at). No GPU is used. BENCHMARKS.md has the
// numbers.

import { parseArgs } from "node:util";
import { createHash } from "node:crypto";
import { uniformGenerator } from "../model/init.ts";
import { loadTokenizer, type TextTokenizer } from "../model/tokenizer.ts";
import { tokenizeExamples } from "../train/batches.ts";
import type { TaskExample } from "../train/task.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** Pairs of QNLI's shape from BERT's whole words, drawn Zipf-like. */
async function syntheticPairs(count: number, seed: number): Promise<TaskExample[]> {
  const vocab = (await Deno.readTextFile(`${ROOT}data/tokenizers/bert-base-uncased/vocab.txt`))
    .split("\n").filter((w) => /^[a-z]{2,}$/.test(w));
  const next = uniformGenerator(seed);
  const word = () => vocab[Math.floor(vocab.length * next() ** 2.5)];
  const text = (mean: number) => {
    const long = next() < 0.01;
    const n = long
      ? 100 + Math.floor(300 * next())
      : Math.max(3, Math.round(mean * (0.5 + next())));
    const words = Array.from({ length: n }, word);
    words[0] = words[0][0].toUpperCase() + words[0].slice(1);
    return words.join(" ") + (next() < 0.5 ? "." : ",") + (next() < 0.1 ? ' "quoted"' : "");
  };
  return Array.from({ length: count }, (_, i) => ({
    idx: i,
    inputs: [[text(30), text(10) + "?"]] as [string, string][],
    label: i % 2,
  }));
}

/** RoBERTa's vocabulary: GPT-2's encoder shifted by the four special tokens, and <mask>. */
async function robertaFolder(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "ehft-bench-roberta-" });
  const fixture = `${ROOT}tests/fixtures/tokenizers/gpt2-bpe`;
  const encoder = JSON.parse(await Deno.readTextFile(`${fixture}/encoder.json`));
  const vocab: Record<string, number> = { "<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3 };
  for (const [token, id] of Object.entries(encoder)) vocab[token] = (id as number) + 4;
  vocab["<mask>"] = Object.keys(vocab).length;
  await Deno.writeTextFile(`${dir}/vocab.json`, JSON.stringify(vocab));
  await Deno.copyFile(`${fixture}/vocab.bpe`, `${dir}/merges.txt`);
  return dir;
}

function time(tokenizer: TextTokenizer, pairs: TaskExample[]): { seconds: number; sha: string } {
  const start = performance.now();
  const split = tokenizeExamples(tokenizer, pairs, 512, "bench", "only_first");
  const seconds = (performance.now() - start) / 1000;
  const hash = createHash("sha256");
  for (const e of split.examples) {
    for (const row of e.inputs) hash.update(new Uint8Array(Uint32Array.from(row.ids).buffer));
  }
  return { seconds, sha: hash.digest("hex").slice(0, 16) };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      pairs: { type: "string", default: "60000" },
      seed: { type: "string", default: "1" },
    },
  });
  const count = Number(values.pairs), seed = Number(values.seed);
  if (!Number.isSafeInteger(count) || count < 1) throw new Error(`--pairs: ${values.pairs}`);
  const pairs = await syntheticPairs(count, seed);
  const roberta = await robertaFolder();
  try {
    const tokenizers: [string, TextTokenizer][] = [
      [
        "roberta byte-level BPE",
        await loadTokenizer(roberta, {
          vocabSize: 50265,
          maxPositions: 514,
          typeVocabSize: 1,
          padTokenId: 1,
          positionsFromPadding: true,
        }),
      ],
      [
        "bert WordPiece",
        await loadTokenizer(`${ROOT}data/tokenizers/bert-base-uncased`, {
          vocabSize: 30522,
          maxPositions: 512,
          typeVocabSize: 2,
          padTokenId: 0,
          positionsFromPadding: false,
        }),
      ],
    ];
    for (const [name, tokenizer] of tokenizers) {
      const { seconds, sha } = time(tokenizer, pairs);
      console.log(
        `${name}: ${count} pairs in ${seconds.toFixed(2)} s (${Math.round(count / seconds)} ` +
          `pairs/s), ids sha256 ${sha}`,
      );
    }
  } finally {
    await Deno.remove(roberta, { recursive: true });
  }
}
