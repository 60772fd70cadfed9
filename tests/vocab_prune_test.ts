// Vocabulary pruning (train/vocab_prune.ts) with bert-base-uncased's vocab.txt (the fixture) on
// the shipped task training text plus awkward strings: minCount 1 changes no tokenization, the
// per-word cache agrees with tokenizing whole texts, minCount 2 drops rare tokens yet leaves no
// word [UNK] that was not already, order and special tokens are kept.

import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { taskTrainDocuments } from "../train/corpus.ts";
import {
  prunedTokenizerJson,
  pruneVocabulary,
  VocabPruneError,
  vocabTxt,
} from "../train/vocab_prune.ts";
import { convertWordPiece } from "../model/tokenizer_convert.ts";
import { TextTokenizer } from "../model/tokenizer.ts";
import { cb } from "../tasks/cb.ts";
import { copa } from "../tasks/copa.ts";
import { rte } from "../tasks/rte.ts";
import { wic } from "../tasks/wic.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const VOCAB = Deno.readTextFileSync(
  new URL("../data/tokenizers/bert-base-uncased/vocab.txt", import.meta.url),
);
const LINES = VOCAB.split("\n").slice(0, -1);
const SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

// Spaces the chunk cache leaves to the tokenizer (no-break, ideographic), accents, CJK, a
// literal special token, control characters, a word over 100 characters, an emoji ([UNK]).
const AWKWARD = [
  "Café\u00a0déjà-vu, naïve\u3000résumé!",
  "東京は大きい city;\tx\u000by\u200bz [MASK] done[SEP]x",
  "a".repeat(101) + " supercalifragilistic 🙂 end.",
  "Don't   stop -- (now)!!  ",
];

const { documents } = await taskTrainDocuments([cb, rte, copa, wic], ROOT);
const TEXTS = [...documents.flatMap((d) => d.sentences), ...AWKWARD];

function tokenizer(vocab: string): Tokenizer {
  return new Tokenizer(convertWordPiece(vocab), {});
}

function countsOf(tok: Tokenizer, texts: readonly string[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const t of tok.tokenize(text)) counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  return counts;
}

function nonZero(counts: Map<string, number>): Map<string, number> {
  return new Map([...counts].filter(([, n]) => n > 0).sort());
}

const FULL = tokenizer(VOCAB);
const FULL_COUNTS = countsOf(FULL, TEXTS);

Deno.test("pruneVocabulary minCount 1: same tokenization, counts of the whole texts", () => {
  const pruned = pruneVocabulary(VOCAB, TEXTS);
  assertEquals(pruned.stats.original, 30522);
  assert(pruned.stats.kept < 30522 && pruned.stats.kept > 5000, `${pruned.stats.kept} kept`);
  // The per-word cache counts exactly what tokenizing each whole text does.
  assertEquals(nonZero(pruned.counts), new Map([...FULL_COUNTS].sort()));
  const total = [...FULL_COUNTS.values()].reduce((a, b) => a + b, 0);
  assertEquals(pruned.stats.corpusTokens, total);
  assertEquals(pruned.stats.unknown, FULL_COUNTS.get("[UNK]") ?? 0);
  assert(pruned.stats.unknown >= 2, "the long word and the emoji are [UNK]");

  const small = new Tokenizer(prunedTokenizerJson(pruned), {});
  for (const text of TEXTS) assertEquals(small.tokenize(text), FULL.tokenize(text), text);
  const model = {
    vocabSize: pruned.tokens.length,
    typeVocabSize: 2,
    maxPositions: 512,
    padTokenId: pruned.tokens.indexOf("[PAD]"),
    positionsFromPadding: false,
  };
  const text = TextTokenizer.fromJson(prunedTokenizerJson(pruned), model);
  const ids = text.encodeText(TEXTS[0]);
  assertEquals(
    ids.map((id) => pruned.oldIds[id]),
    FULL.tokenize(TEXTS[0]).map((t) => FULL.token_to_id(t)),
  );
});

Deno.test("pruneVocabulary: original order, old ids, specials and characters kept", () => {
  const pruned = pruneVocabulary(VOCAB, TEXTS, { keep: ["[unused7]"] });
  for (let i = 0; i < pruned.tokens.length; i++) {
    assertEquals(LINES[pruned.oldIds[i]], pruned.tokens[i]);
    if (i > 0) assert(pruned.oldIds[i] > pruned.oldIds[i - 1], "order kept");
  }
  assertEquals(pruned.tokens.slice(0, 2), ["[PAD]", "[unused7]"]);
  for (const s of SPECIALS) assert(pruned.tokens.includes(s), s);
  assert(!pruned.tokens.includes("[unused0]"), "unused slots dropped");
  for (const t of ["q", "##q", "ß", "##ß", "の"]) assert(pruned.tokens.includes(t), t);
  assertEquals(vocabTxt(pruned), pruned.tokens.join("\n") + "\n");
  assertEquals(prunedTokenizerJson(pruned).normalizer?.lowercase, true);
});

Deno.test("pruneVocabulary minCount 2: rare tokens go, words still tokenize", () => {
  const one = pruneVocabulary(VOCAB, TEXTS);
  const two = pruneVocabulary(VOCAB, TEXTS, { minCount: 2 });
  assert(two.stats.kept < one.stats.kept, `${two.stats.kept} vs ${one.stats.kept}`);
  const single = (t: string) => [...t.replace(/^##/, "")].length === 1;
  const rare = [...one.counts].filter(([t, n]) => n === 1 && !single(t) && !SPECIALS.includes(t))
    .map(([t]) => t);
  assert(rare.length > 100, `${rare.length} tokens used once`);
  for (const t of rare.slice(0, 50)) assert(!two.tokens.includes(t), t);
  for (const [t, n] of two.counts) {
    assert(n >= 2 || single(t) || SPECIALS.includes(t), `${t} kept with count ${n}`);
  }

  // The pruned tokenizer reproduces the reported counts (the iteration converged), and finds
  // no unknown word that the full vocabulary knows.
  const small = new Tokenizer(prunedTokenizerJson(two), {});
  assertEquals(nonZero(countsOf(small, TEXTS)), nonZero(two.counts));
  assertEquals(two.stats.unknown, one.stats.unknown);
  assert(two.stats.corpusTokens > one.stats.corpusTokens, "rare words split further");
  for (const text of TEXTS.slice(0, 300)) {
    assertEquals(
      small.tokenize(text).filter((t) => t === "[UNK]").length,
      FULL.tokenize(text).filter((t) => t === "[UNK]").length,
      text,
    );
  }
  const word = rare.find((t) => !t.startsWith("##") && /^[a-z]+$/.test(t))!;
  const pieces = small.tokenize(word);
  assert(pieces.length > 1 && !pieces.includes("[UNK]"), `${word} → ${pieces}`);
  assertEquals(pieces.join("").replaceAll("##", ""), word);
});

Deno.test("pruneVocabulary: one-line errors", () => {
  assertThrows(() => pruneVocabulary(VOCAB, [], { minCount: 0 }), VocabPruneError, "minCount");
  assertThrows(
    () => pruneVocabulary(VOCAB, [], { keep: ["[NOPE]"] }),
    VocabPruneError,
    '"[NOPE]" is not in vocab.txt',
  );
  const empty = pruneVocabulary(VOCAB, []);
  assertEquals(empty.stats.corpusTokens, 0);
  assert(empty.tokens.includes("##z") && !empty.tokens.includes("the"), "characters only");
});
