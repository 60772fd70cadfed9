// Shrinks a WordPiece vocabulary to the tokens a pretraining corpus uses, so that a small model
// trained from scratch spends no embedding rows (and no softmax columns of the masked-LM head) on
// tokens it will never see.
//
// Why pruning with minCount 1 changes no tokenization: WordPiece is greedy longest-match. At each
// position of a word it takes the longest vocabulary entry that matches there ("##"-prefixed after
// the first piece), and a word is [UNK] only when some position reached that way has no match.
// Keep every token the full vocabulary chose for the corpus. Then at each position the full
// vocabulary's choice is still present, and no longer match can exist in the pruned vocabulary
// (it would be a longer match in the full one, which is a superset), so the same piece is chosen
// and the walk reaches the same next position. A word that was [UNK] hits the same dead end,
// since a subset cannot add a match. The normalizer and pre-tokenizer do not read the vocabulary
// beyond the special tokens, which are kept. The same argument lets minCount > 1 re-tokenize
// only the words that used a dropped token: every other word keeps its pieces.

import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import {
  convertWordPiece,
  type TokenizerJson,
  vocabLooksCased,
  type WordPieceOptions,
} from "../model/tokenizer_convert.ts";

/** Options of `pruneVocabulary`: the count threshold, tokens to keep, tokenizer settings. */
export interface PruneOptions {
  /** A token is kept when the corpus's tokenization uses it this often (default 1). */
  minCount?: number;
  /** Tokens kept whatever their count (each must be in the vocabulary). */
  keep?: string[];
  /**
   * How the text is tokenized, as for convertWordPiece (default: its defaults, casing decided on
   * the original vocabulary); the pruned tokenizer.json uses the same settings.
   */
  wordPiece?: WordPieceOptions;
}

/** What `pruneVocabulary` returns: the kept tokens, their counts and ids, and statistics. */
export interface PrunedVocabulary {
  /** The new vocabulary, in the original relative order (new id = index). */
  tokens: string[];
  /** Uses of each kept token in the corpus's final tokenization (0 for unused kept tokens). */
  counts: Map<string, number>;
  /** The original id of each new id. */
  oldIds: number[];
  /** Sizes before and after, and the corpus's token counts. */
  stats: {
    /** Ids in the original vocabulary. */
    original: number;
    /** Tokens in the new vocabulary. */
    kept: number;
    /** Tokens in the corpus's final tokenization (no special tokens added). */
    corpusTokens: number;
    /** Of which [UNK]. */
    unknown: number;
  };
  /** The tokenizer settings used, casing resolved on the original vocabulary. */
  wordPiece: WordPieceOptions;
}

/** Bad pruning options, in one line. */
export class VocabPruneError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "VocabPruneError";
  }
}

function singleCharacter(token: string): boolean {
  const body = token.startsWith("##") ? token.slice(2) : token;
  return body.length > 0 && body.length <= 2 && [...body].length === 1;
}

function tokenizerFor(tokens: readonly string[], wordPiece: WordPieceOptions): Tokenizer {
  return new Tokenizer(convertWordPiece(tokens.join("\n") + "\n", wordPiece), {});
}

/**
 * Counts the distinct ASCII-whitespace-separated chunks of the texts. Every implementation of
 * BERT's normalizer and pre-tokenizer splits words at these characters and never joins across
 * them, so tokenizing each distinct chunk once gives the tokens of the whole texts; other
 * Unicode spaces stay inside a chunk for the tokenizer itself to handle.
 */
export function countChunks(texts: Iterable<string>): Map<string, number> {
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const chunk of text.split(/[ \t\n\r]+/)) {
      if (chunk !== "") counts.set(chunk, (counts.get(chunk) ?? 0) + 1);
    }
  }
  return counts;
}

/**
 * The vocabulary kept for a corpus: the special tokens ([PAD], [UNK], [CLS], [SEP], [MASK], or
 * the names `wordPiece` gives them) and `keep`, every single-character token and its "##" form
 * (so every word whose characters the original vocabulary covers still tokenizes without
 * [UNK]), and every token the corpus's WordPiece tokenization uses at least `minCount` times.
 * With minCount > 1, dropping a token re-tokenizes the words that used it, which may push other
 * tokens under the threshold, so this repeats until nothing more is dropped; counts are those of
 * the last tokenization.
 */
export function pruneVocabulary(
  vocabTxt: string,
  texts: Iterable<string>,
  options: PruneOptions = {},
): PrunedVocabulary {
  const minCount = options.minCount ?? 1;
  if (!Number.isSafeInteger(minCount) || minCount < 1) {
    throw new VocabPruneError(`minCount must be an integer ≥ 1, got ${minCount}`);
  }
  const source = options.wordPiece?.source ?? "vocab.txt";
  // convertWordPiece validates the file and resolves repeated tokens (the last line wins).
  const full = convertWordPiece(vocabTxt, options.wordPiece);
  const vocab = full.model.vocab as Record<string, number>;
  const original = Object.values(vocab).reduce((a, b) => Math.max(a, b), -1) + 1;
  const candidates = Object.entries(vocab).sort((a, b) => a[1] - b[1]);
  const wordPiece: WordPieceOptions = {
    ...options.wordPiece,
    doLowerCase: options.wordPiece?.doLowerCase ?? !vocabLooksCased(Object.keys(vocab)),
  };

  const wp = options.wordPiece ?? {};
  const specials = [
    wp.padToken ?? "[PAD]",
    wp.unkToken ?? "[UNK]",
    wp.clsToken ?? "[CLS]",
    wp.sepToken ?? "[SEP]",
    wp.maskToken ?? "[MASK]",
  ];
  const unk = wp.unkToken ?? "[UNK]";
  for (const token of options.keep ?? []) {
    if (!(token in vocab)) {
      throw new VocabPruneError(`keep: ${JSON.stringify(token)} is not in ${source}`);
    }
  }
  const protectedTokens = new Set<string>([...specials, ...(options.keep ?? [])]);
  for (const [token] of candidates) if (singleCharacter(token)) protectedTokens.add(token);

  const chunks = [...countChunks(texts)];
  const pieces: string[][] = new Array(chunks.length);
  let tokenizer = tokenizerFor(candidates.map(([t]) => t), wordPiece);
  for (let i = 0; i < chunks.length; i++) pieces[i] = tokenizer.tokenize(chunks[i][0]);

  let kept = new Set(candidates.map(([t]) => t));
  let counts = new Map<string, number>();
  for (;;) {
    counts = new Map();
    chunks.forEach(([, n], i) => {
      for (const t of pieces[i]) counts.set(t, (counts.get(t) ?? 0) + n);
    });
    const next = new Set<string>();
    for (const t of kept) {
      if (protectedTokens.has(t) || (counts.get(t) ?? 0) >= minCount) next.add(t);
    }
    const dropped = new Set([...counts.keys()].filter((t) => !next.has(t)));
    kept = next;
    if (dropped.size === 0) break;
    tokenizer = tokenizerFor(candidates.map(([t]) => t).filter((t) => kept.has(t)), wordPiece);
    for (let i = 0; i < chunks.length; i++) {
      if (pieces[i].some((t) => dropped.has(t))) pieces[i] = tokenizer.tokenize(chunks[i][0]);
    }
  }

  const tokens: string[] = [];
  const oldIds: number[] = [];
  const keptCounts = new Map<string, number>();
  let corpusTokens = 0;
  for (const [token, id] of candidates) {
    if (!kept.has(token)) continue;
    tokens.push(token);
    oldIds.push(id);
    const n = counts.get(token) ?? 0;
    keptCounts.set(token, n);
    corpusTokens += n;
  }
  return {
    tokens,
    counts: keptCounts,
    oldIds,
    stats: {
      original,
      kept: tokens.length,
      corpusTokens,
      unknown: counts.get(unk) ?? 0,
    },
    wordPiece,
  };
}

/** The pruned vocabulary as a vocab.txt (one token per line, final line break). */
export function vocabTxt(pruned: Pick<PrunedVocabulary, "tokens">): string {
  return pruned.tokens.join("\n") + "\n";
}

/**
 * The pruned vocabulary's tokenizer.json: convertWordPiece on its vocab.txt with the settings the
 * pruning tokenized with (uncased for an uncased vocabulary), `options` overriding them.
 */
export function prunedTokenizerJson(
  pruned: Pick<PrunedVocabulary, "tokens" | "wordPiece">,
  options: WordPieceOptions = {},
): TokenizerJson {
  return convertWordPiece(vocabTxt(pruned), { ...pruned.wordPiece, ...options });
}

/**
 * The pruned vocabulary's tokenizer_config.json, as Hugging Face's BertTokenizer saves one. Without
 * it `AutoTokenizer` knows no maximum length (`truncation=True` would not cut at the model's
 * positions) and, in transformers versions whose BertTokenizer defaults to cased, would not
 * lower-case: the casing in tokenizer.json's normalizer is not what those versions read.
 */
export function prunedTokenizerConfig(
  pruned: Pick<PrunedVocabulary, "wordPiece">,
  maxPositions: number,
): Record<string, unknown> {
  const wp = pruned.wordPiece;
  const lower = wp.doLowerCase ?? true;
  return {
    tokenizer_class: "BertTokenizer",
    do_lower_case: lower,
    strip_accents: wp.stripAccents ?? null,
    tokenize_chinese_chars: wp.tokenizeChineseChars ?? true,
    model_max_length: maxPositions,
    unk_token: wp.unkToken ?? "[UNK]",
    sep_token: wp.sepToken ?? "[SEP]",
    pad_token: wp.padToken ?? "[PAD]",
    cls_token: wp.clsToken ?? "[CLS]",
    mask_token: wp.maskToken ?? "[MASK]",
    clean_up_tokenization_spaces: true,
  };
}
