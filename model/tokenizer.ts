// Text → the padded [B, S] host arrays the encoder's embedding reads, with Hugging Face's
// semantics: the model's own `tokenizer.json` run by tokenizers.js (a pure-JS port of HF
// `tokenizers`), single sentences and pairs, truncation to max_length as HF `tokenizers` does it
// (tokenizers.js does none), right padding to the longest row of the batch, and position ids as
// the model numbers them. Every id is checked against the model's tables here, on the host,
// because an out-of-range id on the GPU reads another row (or NaN) instead of failing.

// A full npm specifier, not an import map entry: the library is imported by URL with no config.
import { isJsonObject } from "./atomic_write.ts";
import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { maxSequenceLength, type ModelConfig, positionIds as modelPositionIds } from "./config.ts";
import { convertTokenizerDir, readTokenizerConfig } from "./tokenizer_convert.ts";
import { errorText, jsonErrorText } from "./error_text.ts";
import { readUtf8File, Utf8Error } from "./utf8.ts";

/** What the tokenizer needs from the model's config (a ModelConfig will do). */
export type TokenizerModelInfo = Pick<
  ModelConfig,
  "vocabSize" | "typeVocabSize" | "maxPositions" | "padTokenId" | "positionsFromPadding"
>;

/** A tokenizer that does not fit the model, or input it cannot encode; names the tokenizer. */
export class TokenizerError extends Error {
  /** The message is `<source>: <problem>`. */
  constructor(source: string, problem: string) {
    super(`${source}: ${problem}`);
    this.name = "TokenizerError";
  }
}

/**
 * HF `tokenizers`' strategies (TruncationStrategy): `only_first` cuts the end of the first
 * sequence, `longest_first` shares the budget (see `truncatedLengths`), `do_not_truncate`
 * rejects an input that does not fit.
 */
export type Truncation = "only_first" | "longest_first" | "do_not_truncate";

/** A single text, or a pair encoded as one sequence (A then B). */
export type TextInput = string | readonly [string, string];

/** A token index range [start, end). */
export interface Span {
  /** First token index. */
  start: number;
  /** One past the last token index. */
  end: number;
}

/** Options of `TextTokenizer.encodeBatch`: row length and truncation. */
export interface EncodeOptions {
  /**
   * Tokens per row, special tokens included. Default and upper bound: the longest sequence the
   * model's position table allows (`maxSequenceLength`); a larger value is clamped to it.
   */
  maxLength?: number;
  /** Default "longest_first" (HF's default for `truncation=True`). */
  truncation?: Truncation;
  /**
   * With "only_first": the strategy for a pair whose first text cannot absorb the cut alone
   * (the second is too long by itself). Default: none, an error, as HF's tokenizers do.
   */
  fallback?: "longest_first";
}

/** A batch ready for upload: row-major [batch, seqLen] arrays, rows padded on the right. */
export interface EncodedBatch {
  /** Rows (one per input). */
  batch: number;
  /** The longest row of the batch (not maxLength). */
  seqLen: number;
  /** Word ids (u32 for the embedding kernel); padding is the model's pad_token_id. */
  inputIds: Uint32Array;
  /** Token type ids (u32): 0 for padding, and for every token when type_vocab_size is 1. */
  typeIds: Uint32Array;
  /** Position ids (u32): BERT 0..S−1; RoBERTa padding_idx + 1 + i, padding at padding_idx. */
  positionIds: Uint32Array;
  /** 1 for tokens, 0 for padding (f32, as the attention kernel reads it). */
  attentionMask: Float32Array;
  /** Tokens per row before padding, special tokens included. */
  lengths: number[];
  /** Where each row's first text's tokens (after truncation) lie in the row. */
  first: Span[];
  /** Likewise for the second text of a pair; null for a single text. */
  second: (Span | null)[];
  /** Tokens truncation removed from each row's [first, second] text. */
  removed: [number, number][];
  /** Rows cut by `fallback` because "only_first" could not fit them. */
  fellBack: number[];
}

/** Thrown by `truncatedLengths` when the strategy cannot fit the budget. */
export class TruncationError extends Error {
  /** Takes the message as it is. */
  constructor(message: string) {
    super(message);
    this.name = "TruncationError";
  }
}

/**
 * The lengths HF `tokenizers` (utils/truncation.rs, truncate_encodings) keeps of a first
 * sequence of n1 tokens and an optional second of n2 when at most `budget` tokens (max_length
 * minus the special tokens the post-processor adds) may remain, cutting from the right:
 * - nothing is cut when n1 + n2 ≤ budget; a budget of 0 empties both, whatever the strategy;
 * - only_first: the first loses the surplus; if it has no more than the surplus, error;
 * - longest_first, single text: cut to the budget;
 * - longest_first, pair: with s ≤ l the shorter and longer lengths, the longer keeps
 *   max(s, budget − s) and the shorter stays whole; if that still exceeds the budget (the
 *   shorter is over half of it), both are cut, the shorter to ⌊budget/2⌋ and the longer to
 *   ⌊budget/2⌋ + budget mod 2. Equal lengths count the second as the longer, so it keeps the
 *   odd token. (This is the closed form HF adopted; the slow tokenizers' one-token-at-a-time
 *   loop can differ by one token between the two sides.)
 */
export function truncatedLengths(
  n1: number,
  n2: number | null,
  budget: number,
  strategy: Truncation,
): [number, number] {
  const second = n2 ?? 0;
  if (budget === 0) return [0, 0];
  const total = n1 + second;
  if (total <= budget) return [n1, second];
  const surplus = total - budget;
  if (strategy === "do_not_truncate") {
    throw new TruncationError(
      `${total} tokens exceed the limit of ${budget} (truncation "do_not_truncate")`,
    );
  }
  if (strategy === "only_first") {
    if (n1 <= surplus) {
      throw new TruncationError(
        `truncation "only_first" cannot fit: the first text has ${n1} tokens, ` +
          `the second ${second}, and at most ${budget} may remain`,
      );
    }
    return [n1 - surplus, second];
  }
  if (n2 === null) return [budget, 0];
  let short = Math.min(n1, n2);
  let long = Math.max(n1, n2);
  long = short > budget ? short : Math.max(short, budget - short);
  if (short + long > budget) {
    short = Math.floor(budget / 2);
    long = short + (budget % 2);
  }
  return n1 > n2 ? [long, short] : [short, long];
}

function checkModelInfo(source: string, model: TokenizerModelInfo): void {
  for (const key of ["vocabSize", "typeVocabSize", "maxPositions"] as const) {
    const v = model[key];
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new TokenizerError(source, `model ${key} must be an integer ≥ 1, got ${v}`);
    }
  }
  if (!Number.isSafeInteger(model.padTokenId) || model.padTokenId < 0) {
    throw new TokenizerError(source, `model padTokenId must be an integer ≥ 0`);
  }
  if (maxSequenceLength(model) < 1) {
    throw new TokenizerError(
      source,
      `the model's ${model.maxPositions} positions leave no room after padding_idx ` +
        `${model.padTokenId}`,
    );
  }
}

// Marker tokens fed to the post-processor once, to learn where it puts A and B.
const MARK_A = "\u{F0000}A";
const MARK_B = "\u{F0000}B";

interface Layout {
  /** Special tokens added around a single text / a pair. */
  singleAdded: number;
  pairAdded: number;
  /** Index of the first token of A (single and pair), and of B counted without A's tokens. */
  singleA: number;
  pairA: number;
  pairB: number;
}

/** Options of `loadTokenizer` (and the TextTokenizer factories): error name, config, pad token. */
export interface TokenizerOptions {
  /** Names the tokenizer in errors (default: the file, or "tokenizer.json"). */
  source?: string;
  /** tokenizer_config.json's object, handed to tokenizers.js (default {}). */
  config?: Record<string, unknown>;
  /**
   * The padding token's text. Default: tokenizer_config.json's pad_token, else tokenizer.json's
   * padding.pad_token, else "[PAD]" or "<pad>" if the vocabulary has it.
   */
  padToken?: string;
}

/** Words a BPE tokenizer keeps the merges of (`useWordCache`): tens of MB at most. */
const WORD_CACHE = 200_000;

/**
 * A plain map of words to their BPE pieces, emptied when full: what the tokenizers library's
 * BPE model reads through its `cache.get` / `cache.put`.
 */
class WordCache<V> {
  #words = new Map<string, V>();
  constructor(readonly capacity: number) {}
  get(word: string): V | undefined {
    return this.#words.get(word);
  }
  put(word: string, pieces: V): void {
    if (this.#words.size >= this.capacity) this.#words.clear();
    this.#words.set(word, pieces);
  }
  clear(): void {
    this.#words.clear();
  }
}

/**
 * The tokenizers library's BPE model keeps the pieces of its last 10,000 words in an LRU whose
 * bookkeeping (a delete and a set on every hit) costs about what it saves: on a QNLI-sized split
 * (100k pairs, more distinct words than that) half of RoBERTa's tokenizing time went into the LRU
 * and its misses. A larger plain map gives the same pieces (a word's are a function of the word)
 * in half the time. Models without a cache (WordPiece) are left as they are.
 */
function useWordCache(tok: Tokenizer): boolean {
  const model = (tok as unknown as { model?: { cache?: { get?: unknown; put?: unknown } } }).model;
  if (typeof model?.cache?.get !== "function" || typeof model.cache.put !== "function") {
    return false;
  }
  model.cache = new WordCache(WORD_CACHE);
  return true;
}

/**
 * A model's tokenizer bound to the model's table sizes. Build with `fromJson`, `fromFile` or
 * `loadTokenizer`; construction checks that the pad token is the model's pad_token_id and that
 * the special tokens fit the vocabulary table.
 */
export class TextTokenizer {
  /** Names the tokenizer in errors. */
  readonly source: string;
  /** The model's table sizes and pad id the tokenizer was bound to. */
  readonly model: Readonly<TokenizerModelInfo>;
  /** The longest row the model allows (its position table), special tokens included. */
  readonly maxLength: number;
  /** The pad id (equal to the model's pad_token_id). */
  readonly padTokenId: number;
  /** Whether the library's BPE model reads this toolkit's word cache (`useWordCache`). */
  readonly bpeWordCache: boolean;
  readonly #tok: Tokenizer;
  readonly #layout: Layout;
  readonly #unkId: number | undefined;

  private constructor(
    tok: Tokenizer,
    model: TokenizerModelInfo,
    source: string,
    padToken: string | undefined,
  ) {
    checkModelInfo(source, model);
    this.#tok = tok;
    this.source = source;
    this.model = { ...model };
    this.maxLength = maxSequenceLength(model);
    this.#unkId = tok.model?.unk_token_id;
    this.bpeWordCache = useWordCache(tok);
    this.#layout = this.#probeLayout();

    const padId = padToken === undefined ? undefined : tok.token_to_id(padToken);
    if (padToken !== undefined && padId === undefined) {
      throw new TokenizerError(
        source,
        `the pad token ${JSON.stringify(padToken)} is not in the vocabulary`,
      );
    }
    if (padId === undefined) {
      throw new TokenizerError(
        source,
        `has no pad token ([PAD] or <pad>; name it with the padToken option)`,
      );
    }
    if (padId !== model.padTokenId) {
      throw new TokenizerError(
        source,
        `pad token ${JSON.stringify(padToken)} has id ${padId} but the model's pad_token_id is ` +
          `${model.padTokenId}: the tokenizer does not belong to this model`,
      );
    }
    this.padTokenId = padId;
    // The special tokens the post-processor adds must be in the vocabulary (not quietly the
    // unknown token) and have rows in the model's table.
    for (const pair of [null, []]) {
      for (const token of this.#rawPostProcess([], pair).tokens) {
        const id = tok.token_to_id(token);
        if (id === undefined) {
          throw new TokenizerError(
            source,
            `its post-processor adds the special token ${JSON.stringify(token)}, which is not ` +
              `in its vocabulary`,
          );
        }
        this.#checkVocabId(id, "special token");
      }
    }
  }

  /** From a parsed (or textual) `tokenizer.json`. */
  static fromJson(
    json: unknown,
    model: TokenizerModelInfo,
    options: TokenizerOptions = {},
  ): TextTokenizer {
    const source = options.source ?? "tokenizer.json";
    let obj = json;
    if (typeof json === "string") {
      try {
        obj = JSON.parse(json);
      } catch (e) {
        throw new TokenizerError(source, `is not valid JSON (${jsonErrorText(e, json)})`);
      }
    }
    if (!isJsonObject(obj)) {
      throw new TokenizerError(source, "is not a tokenizer.json object");
    }
    const record = obj as Record<string, unknown>;
    // tokenizers.js requires these keys (null is allowed) and an added_tokens list.
    const full: Record<string, unknown> = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...record,
    };
    if (typeof full.model !== "object" || full.model === null) {
      throw new TokenizerError(source, 'has no "model"');
    }
    checkTokenizerModel(source, full.model as Record<string, unknown>);
    checkAddedTokens(source, full.added_tokens, full.model as Record<string, unknown>);
    checkNormalizer(source, full.normalizer, "normalizer");
    checkTemplate(source, full.post_processor);
    const config = options.config ?? {};
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(full, config);
    } catch (e) {
      throw new TokenizerError(source, `cannot be loaded: ${(e as Error).message}`);
    }
    checkProcessorIds(source, full.post_processor, (t) => tok.token_to_id(t));
    const padToken = options.padToken ?? tokenText(config.pad_token) ??
      padTokenOf(record.padding) ??
      ["[PAD]", "<pad>"].find((t) => tok.token_to_id(t) !== undefined);
    try {
      return new TextTokenizer(tok, model, source, padToken);
    } catch (e) {
      // The post-processor runs here first: a malformed template throws tokenizers.js's TypeError.
      if (e instanceof TokenizerError) throw e;
      throw new TokenizerError(
        source,
        `cannot be loaded: its post_processor fails (${errorText(e)})`,
      );
    }
  }

  /** From a `tokenizer.json` file. */
  static async fromFile(
    path: string,
    model: TokenizerModelInfo,
    options: TokenizerOptions = {},
  ): Promise<TextTokenizer> {
    let text: string;
    try {
      text = await readUtf8File(path);
    } catch (e) {
      if (e instanceof Utf8Error) throw new TokenizerError(path, e.message);
      throw new TokenizerError(path, `cannot read: ${(e as Error).message}`);
    }
    return TextTokenizer.fromJson(text, model, { ...options, source: options.source ?? path });
  }

  /** The text's tokens (no special tokens). */
  tokenize(text: string): string[] {
    return this.#tok.tokenize(text);
  }

  /** The text's token ids (no special tokens). */
  encodeText(text: string): number[] {
    return this.tokenize(text).map((t) => this.#idOf(t));
  }

  /** The id of `token` in the vocabulary, or undefined when it has none. */
  tokenToId(token: string): number | undefined {
    return this.#tok.token_to_id(token);
  }

  /** The token of `id`, or undefined when the vocabulary has no such id. */
  idToToken(id: number): string | undefined {
    return this.#tok.id_to_token(id);
  }

  /**
   * The token with the largest id the tokenizer can produce (its vocabulary and added tokens),
   * or null for an empty vocabulary: the model's embedding table needs more rows than that id.
   */
  largestId(): { id: number; token: string } | null {
    let largest: { id: number; token: string } | null = null;
    for (const [token, id] of this.#tok.model?.tokens_to_ids ?? []) {
      if (largest === null || id > largest.id) largest = { id, token };
    }
    return largest;
  }

  /**
   * Whether the post-processor puts a special token ([CLS], <s>) before the text, single or
   * pair: the classification head reads the first position.
   */
  get addsLeadingToken(): boolean {
    return this.#layout.singleA > 0 && this.#layout.pairA > 0;
  }

  /** Special tokens the post-processor adds around one text (pair false) or a pair. */
  numSpecialTokens(pair: boolean): number {
    return pair ? this.#layout.pairAdded : this.#layout.singleAdded;
  }

  /** Ids back to text (special tokens skipped unless `skipSpecialTokens` is false). */
  decode(
    ids: ArrayLike<number>,
    options: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean } = {},
  ): string {
    if (ids.length === 0) return "";
    return this.#tok.decode(Array.from(ids), {
      skip_special_tokens: options.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: options.cleanUpSpaces ?? false,
    });
  }

  /**
   * Encodes a batch of texts and pairs: per row, each text is tokenized alone, the pair cut to
   * `maxLength` minus the special tokens (as HF `tokenizers` does, see `truncatedLengths`), the
   * post-processor adds the special tokens, and rows are padded on the right to the longest.
   * Every id is checked against the model's tables: an error names the tokenizer and the row.
   */
  encodeBatch(inputs: readonly TextInput[], options: EncodeOptions = {}): EncodedBatch {
    const strategy = options.truncation ?? "longest_first";
    if (!["only_first", "longest_first", "do_not_truncate"].includes(strategy)) {
      throw new TokenizerError(this.source, `unknown truncation ${JSON.stringify(strategy)}`);
    }
    let maxLength = this.maxLength;
    if (options.maxLength !== undefined) {
      if (!Number.isSafeInteger(options.maxLength) || options.maxLength < 1) {
        throw new TokenizerError(
          this.source,
          `maxLength must be an integer ≥ 1, got ${options.maxLength}`,
        );
      }
      maxLength = Math.min(options.maxLength, this.maxLength);
    }
    if (inputs.length === 0) throw new TokenizerError(this.source, "the batch is empty");

    const rows: { ids: number[]; types: number[]; first: Span; second: Span | null }[] = [];
    const removed: [number, number][] = [];
    const fellBack: number[] = [];
    inputs.forEach((input, row) => {
      const pair = typeof input !== "string";
      if (
        pair && !(Array.isArray(input) && input.length === 2 &&
          typeof input[0] === "string" && typeof input[1] === "string")
      ) {
        throw new TokenizerError(
          this.source,
          `example ${row} is neither a text nor a pair of texts`,
        );
      }
      const added = this.numSpecialTokens(pair);
      if (maxLength < added) {
        throw new TokenizerError(
          this.source,
          `maxLength ${maxLength} leaves no room for the ${added} special tokens`,
        );
      }
      const a = this.tokenize(pair ? input[0] : input as string);
      const b = pair ? this.tokenize(input[1]) : null;
      let keep: [number, number];
      try {
        keep = truncatedLengths(a.length, b?.length ?? null, maxLength - added, strategy);
      } catch (e) {
        if (!(e instanceof TruncationError)) throw e;
        if (options.fallback && strategy === "only_first") {
          keep = truncatedLengths(a.length, b?.length ?? null, maxLength - added, options.fallback);
          fellBack.push(row);
          removed.push([a.length - keep[0], (b?.length ?? 0) - keep[1]]);
          rows.push(
            this.#postProcess(a.slice(0, keep[0]), b === null ? null : b.slice(0, keep[1])),
          );
          return;
        }
        throw new TokenizerError(
          this.source,
          `example ${row}: ${e.message} (maxLength ${maxLength}, ${added} special tokens)`,
        );
      }
      removed.push([a.length - keep[0], (b?.length ?? 0) - keep[1]]);
      rows.push(this.#postProcess(a.slice(0, keep[0]), b === null ? null : b.slice(0, keep[1])));
    });

    const batch = rows.length;
    const seqLen = Math.max(...rows.map((r) => r.ids.length));
    const inputIds = new Uint32Array(batch * seqLen).fill(this.padTokenId);
    const typeIds = new Uint32Array(batch * seqLen);
    const attentionMask = new Float32Array(batch * seqLen);
    const zeroTypes = this.model.typeVocabSize === 1;
    rows.forEach((r, b) => {
      const o = b * seqLen;
      r.ids.forEach((id, j) => {
        this.#checkVocabId(id, `example ${b} token ${j}`);
        const type = zeroTypes ? 0 : r.types[j];
        if (!Number.isSafeInteger(type) || type < 0 || type >= this.model.typeVocabSize) {
          throw new TokenizerError(
            this.source,
            `example ${b} token ${j} has type id ${type} but the model's type_vocab_size is ` +
              `${this.model.typeVocabSize}`,
          );
        }
        inputIds[o + j] = id;
        typeIds[o + j] = type;
        attentionMask[o + j] = 1;
      });
    });
    const positionIds = modelPositionIds(inputIds, batch, seqLen, this.model);
    const tooFar = positionIds.findIndex((p) => p >= this.model.maxPositions);
    if (tooFar >= 0) {
      throw new TokenizerError(
        this.source,
        `example ${Math.floor(tooFar / seqLen)} token ${tooFar % seqLen} has position ` +
          `${positionIds[tooFar]} but the model has ${this.model.maxPositions} positions`,
      );
    }
    return {
      batch,
      seqLen,
      inputIds,
      typeIds,
      positionIds,
      attentionMask,
      lengths: rows.map((r) => r.ids.length),
      first: rows.map((r) => r.first),
      second: rows.map((r) => r.second),
      removed,
      fellBack,
    };
  }

  /**
   * The tokens of `text` (as `tokenize` gives them, no special tokens) that cover the characters
   * [charStart, charEnd), e.g. a WiC target word. The indices are UTF-16 code units (JavaScript
   * string indices); offsets computed in Python count code points, which differ only after a
   * character beyond the BMP (an emoji, say). tokenizers.js gives no offsets, so this tokenizes prefixes of the text:
   * start = how many leading tokens of text[0, charStart) agree with the full text's, end = the
   * same for text[0, charEnd), plus one when that prefix ends inside a token (its tokens then
   * part from the full text's). Whitespace at either end of the span is ignored, and so are
   * tokens at the span's start that decode to whitespace only (byte-level BPE's "Ġ" before a
   * double space). On word boundaries this is exactly HF's char_to_token(charStart) to
   * char_to_token(charEnd − 1) + 1; a span that starts or ends inside a word takes every token
   * that overlaps it. Errors when the span holds no token.
   */
  tokenSpan(text: string, charStart: number, charEnd: number): Span {
    if (
      !Number.isSafeInteger(charStart) || !Number.isSafeInteger(charEnd) || charStart < 0 ||
      charEnd > text.length || charStart >= charEnd
    ) {
      throw new TokenizerError(
        this.source,
        `character span [${charStart}, ${charEnd}) is not inside a text of length ${text.length}`,
      );
    }
    const inner = text.slice(charStart, charEnd);
    const s = charStart + (inner.length - inner.trimStart().length);
    const e = charStart + inner.trimEnd().length;
    const full = this.tokenize(text);
    const agree = (prefix: string[]) => {
      let n = 0;
      while (n < prefix.length && n < full.length && prefix[n] === full[n]) n++;
      return n;
    };
    let start = agree(this.tokenize(text.slice(0, s)));
    const endPrefix = this.tokenize(text.slice(0, e));
    const endAgree = agree(endPrefix);
    const end = Math.min(full.length, endAgree + (endAgree < endPrefix.length ? 1 : 0));
    while (start < end - 1 && this.#isWhitespaceToken(full[start])) start++;
    if (s >= e || start >= end) {
      throw new TokenizerError(
        this.source,
        `character span [${charStart}, ${charEnd}) ${JSON.stringify(inner)} holds no token`,
      );
    }
    return { start, end };
  }

  #isWhitespaceToken(token: string): boolean {
    const id = this.#tok.token_to_id(token);
    if (id === undefined) return false;
    return /^\s+$/u.test(this.#tok.decode([id], { clean_up_tokenization_spaces: false }));
  }

  #idOf(token: string): number {
    const id = this.#tok.token_to_id(token) ?? this.#unkId;
    if (id === undefined) {
      throw new TokenizerError(
        this.source,
        `token ${JSON.stringify(token)} has no id and the tokenizer has no unknown token`,
      );
    }
    return id;
  }

  #checkVocabId(id: number, what: string): void {
    if (!Number.isSafeInteger(id) || id < 0 || id >= this.model.vocabSize) {
      throw new TokenizerError(
        this.source,
        `${what} has id ${id} but the model's vocab_size is ${this.model.vocabSize}: ` +
          `the tokenizer does not match the model`,
      );
    }
  }

  /** The post-processor's output (special tokens added) as ids, types and the texts' spans. */
  #postProcess(
    a: string[],
    b: string[] | null,
  ): { ids: number[]; types: number[]; first: Span; second: Span | null } {
    const { tokens, types } = this.#rawPostProcess(a, b);
    const l = this.#layout;
    const added = b === null ? l.singleAdded : l.pairAdded;
    if (tokens.length !== a.length + (b?.length ?? 0) + added) {
      throw new TokenizerError(this.source, "the post-processor's output has an unexpected length");
    }
    const aStart = b === null ? l.singleA : l.pairA;
    const bStart = l.pairB + a.length;
    return {
      ids: tokens.map((t) => this.#idOf(t)),
      types,
      first: { start: aStart, end: aStart + a.length },
      second: b === null ? null : { start: bStart, end: bStart + b.length },
    };
  }

  #rawPostProcess(a: string[], b: string[] | null): { tokens: string[]; types: number[] } {
    const pp = this.#tok.post_processor;
    const out = pp ? pp(a, b, true) : { tokens: a, tokens_pair: b ?? undefined };
    // ByteLevel and Sequence post-processors leave the pair unmerged and give no type ids:
    // then the pair follows A, and the type ids are 0 for A's part and 1 for B's, as in HF.
    if (out.token_type_ids === undefined) {
      const tokens = [...out.tokens];
      const types = new Array<number>(tokens.length).fill(0);
      if (b !== null) {
        const second = out.tokens_pair ?? b;
        tokens.push(...second);
        types.push(...new Array<number>(second.length).fill(1));
      }
      return { tokens, types };
    }
    return { tokens: out.tokens, types: out.token_type_ids };
  }

  #probeLayout(): Layout {
    const single = this.#rawPostProcess([MARK_A], null).tokens;
    const pair = this.#rawPostProcess([MARK_A], [MARK_B]).tokens;
    const singleA = single.indexOf(MARK_A);
    const pairA = pair.indexOf(MARK_A);
    const pairB = pair.indexOf(MARK_B);
    if (singleA < 0 || pairA < 0 || pairB < pairA) {
      throw new TokenizerError(
        this.source,
        "its post-processor does not keep the text(s) in order, which is not supported",
      );
    }
    return {
      singleAdded: single.length - 1,
      pairAdded: pair.length - 2,
      singleA,
      pairA,
      pairB: pairB - 1,
    };
  }
}

/**
 * The tokenizer.json model types tokenizers.js implements; another (HF's WordLevel, say) it would
 * read as a bare word list, without the model's unknown token.
 */
export const TOKENIZER_MODEL_TYPES = ["WordPiece", "BPE", "Unigram"] as const;

function kindOf(v: unknown): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "an object" : `${typeof v} ${JSON.stringify(v)}`;
}

/**
 * Checks tokenizer.json's `model` before tokenizers.js reads it, so that a type it cannot run,
 * or a vocabulary of another model type's shape, is one line naming the file rather than the
 * library's TypeError ("number 20 is not iterable"). WordPiece and BPE: `vocab` an object of
 * token → id; Unigram (XLM-R's): `vocab` a list of [piece, score] pairs and `unk_id` one of its
 * indices (or null). Without a `type`, tokenizers.js infers the model from the vocabulary.
 */
function checkTokenizerModel(source: string, model: Record<string, unknown>): void {
  const type = model.type;
  if (type === undefined) return;
  if (!(TOKENIZER_MODEL_TYPES as readonly unknown[]).includes(type)) {
    throw new TokenizerError(
      source,
      `model type ${JSON.stringify(type)} is not supported (supported: ` +
        `${TOKENIZER_MODEL_TYPES.join(", ")})`,
    );
  }
  const vocab = model.vocab;
  if (type === "Unigram") {
    if (!Array.isArray(vocab) || vocab.length === 0) {
      throw new TokenizerError(
        source,
        `its Unigram model's vocab is ${Array.isArray(vocab) ? "an empty list" : kindOf(vocab)}: ` +
          `expected a list of [piece, score] pairs`,
      );
    }
    const bad = vocab.findIndex((e) =>
      !Array.isArray(e) || e.length !== 2 || typeof e[0] !== "string" ||
      typeof e[1] !== "number" || !Number.isFinite(e[1])
    );
    if (bad >= 0) {
      const shown = JSON.stringify(vocab[bad]) ?? String(vocab[bad]);
      throw new TokenizerError(
        source,
        `its Unigram model's vocab[${bad}] is ${
          shown.length > 40 ? `${shown.slice(0, 40)}…` : shown
        }, not a [piece, score] pair`,
      );
    }
    const unk = model.unk_id;
    if (
      unk !== undefined && unk !== null &&
      !(Number.isSafeInteger(unk) && (unk as number) >= 0 && (unk as number) < vocab.length)
    ) {
      throw new TokenizerError(
        source,
        `its Unigram model's unk_id ${JSON.stringify(unk)} is not an index of its vocab ` +
          `(0-${vocab.length - 1})`,
      );
    }
    return;
  }
  if (!isJsonObject(vocab)) {
    throw new TokenizerError(
      source,
      `its ${type} model's vocab is ${kindOf(vocab)}: expected an object of token → id` +
        (Array.isArray(vocab) ? " (a list is a Unigram vocabulary)" : ""),
    );
  }
  // As a vocab.json's (parseVocabJson): an id tokenizers.js would take and misuse only once a
  // text holds the token (or, shared, a text's "a" read as [CLS]) is refused when loading.
  const seen = new Map<number, string>();
  for (const [token, id] of Object.entries(vocab)) {
    const shown = JSON.stringify(token).slice(0, 40);
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
      throw new TokenizerError(
        source,
        `its ${type} model's vocab: token ${shown} has id ${kindOf(id)}, not an integer ≥ 0`,
      );
    }
    const other = seen.get(id);
    if (other !== undefined) {
      throw new TokenizerError(
        source,
        `its ${type} model's vocab: tokens ${
          JSON.stringify(other).slice(0, 40)
        } and ${shown} share id ${id}`,
      );
    }
    seen.set(id, token);
  }
  if (type === "WordPiece") {
    // tokenizers.js takes these as they are: a max_input_chars_per_word of -1 made every word
    // [UNK], a continuing_subword_prefix of null every "##" piece; Hugging Face's refuses them.
    const max = model.max_input_chars_per_word;
    if (max !== undefined && !(Number.isSafeInteger(max) && (max as number) > 0)) {
      throw new TokenizerError(
        source,
        `its WordPiece model's max_input_chars_per_word is ${kindOf(max)}, not an integer ≥ 1`,
      );
    }
    for (const key of ["continuing_subword_prefix", "unk_token"]) {
      const v = model[key];
      if (v !== undefined && typeof v !== "string") {
        throw new TokenizerError(source, `its WordPiece model's ${key} is ${kindOf(v)}, not text`);
      }
    }
    const unk = model.unk_token;
    if (typeof unk === "string" && !Object.hasOwn(vocab, unk)) {
      throw new TokenizerError(
        source,
        `its WordPiece model's unk_token ${shortJson(unk)} is not in its vocab`,
      );
    }
  }
}

/** `what` shown briefly: a JSON value cut to 40 characters. */
function shortJson(what: unknown): string {
  const shown = JSON.stringify(what) ?? String(what);
  return shown.length > 40 ? `${shown.slice(0, 40)}…` : shown;
}

/**
 * tokenizer.json's `added_tokens`: a list of {id, content, ...}, checked before tokenizers.js
 * reads it (an entry of another shape was its TypeError: "text is not iterable"); and against
 * the model's vocabulary (a WordPiece or BPE object), whose ids tokenizers.js lets an added
 * token override: one that gives a token of the vocabulary another id, or gives a token the id
 * of another (an edited "[PAD]" → "x" made every letter x the pad id), or two added tokens one
 * id, is a tokenizer.json that contradicts itself, refused naming the entry.
 */
function checkAddedTokens(source: string, added: unknown, model: Record<string, unknown>): void {
  if (!Array.isArray(added)) {
    throw new TokenizerError(source, `its added_tokens is ${kindOf(added)}, not a list`);
  }
  const vocab = isJsonObject(model.vocab) ? model.vocab as Record<string, number> : null;
  const tokenOf = new Map<number, string>();
  if (vocab) { for (const [token, id] of Object.entries(vocab)) tokenOf.set(id, token); }
  const addedIds = new Map<number, number>();
  added.forEach((entry, i) => {
    const ok = isJsonObject(entry) && Number.isSafeInteger(entry.id) &&
      (entry.id as number) >= 0 && typeof entry.content === "string";
    if (!ok) {
      throw new TokenizerError(
        source,
        `its added_tokens[${i}] is ${shortJson(entry)}, not an {"id": integer ≥ 0, "content": ` +
          `string} entry`,
      );
    }
    const id = entry.id as number;
    const content = entry.content as string;
    const shown = `its added_tokens[${i}] ${shortJson(content)} has id ${id}`;
    const earlier = addedIds.get(id);
    if (earlier !== undefined) {
      throw new TokenizerError(source, `${shown}, as added_tokens[${earlier}] has`);
    }
    addedIds.set(id, i);
    if (!vocab) return;
    const own = Object.hasOwn(vocab, content) ? vocab[content] : undefined;
    if (own !== undefined && own !== id) {
      throw new TokenizerError(source, `${shown}, but its model's vocab gives it id ${own}`);
    }
    const other = tokenOf.get(id);
    if (own === undefined && other !== undefined) {
      throw new TokenizerError(
        source,
        `${shown}, which its model's vocab gives ${shortJson(other)}`,
      );
    }
  });
}

/** The BertNormalizer switches, each a boolean (strip_accents also null: lowercase decides). */
const BERT_NORMALIZER_SWITCHES = ["clean_text", "handle_chinese_chars", "lowercase"] as const;

/**
 * A BertNormalizer's switches (in a Sequence too) are booleans: tokenizers.js reads any value as
 * true or false (a `"lowercase": 0` left "Hello" cased, [UNK]), where Hugging Face's tokenizers
 * refuses to load the file.
 */
function checkNormalizer(source: string, normalizer: unknown, where: string): void {
  if (!isJsonObject(normalizer)) return;
  if (normalizer.type === "Sequence" && Array.isArray(normalizer.normalizers)) {
    normalizer.normalizers.forEach((n, i) =>
      checkNormalizer(source, n, `${where}.normalizers[${i}]`)
    );
    return;
  }
  if (normalizer.type !== "BertNormalizer") return;
  for (const key of BERT_NORMALIZER_SWITCHES) {
    const v = normalizer[key];
    if (v !== undefined && typeof v !== "boolean") {
      throw new TokenizerError(source, `its ${where}'s ${key} is ${kindOf(v)}, not true or false`);
    }
  }
  const strip = normalizer.strip_accents;
  if (strip !== undefined && strip !== null && typeof strip !== "boolean") {
    throw new TokenizerError(
      source,
      `its ${where}'s strip_accents is ${kindOf(strip)}, not true, false or null`,
    );
  }
}

/**
 * A TemplateProcessing post-processor's `single` and `pair` templates: lists of
 * {"SpecialToken": {"id": token, "type_id": n}} and {"Sequence": {"id": "A" or "B", "type_id":
 * n}} pieces, checked before tokenizers.js runs them (another piece was its TypeError).
 */
function checkTemplate(source: string, post: unknown): void {
  const p = post as Record<string, unknown> | null;
  if (typeof p !== "object" || p === null) return;
  if (p.type === "BertProcessing" || p.type === "RobertaProcessing") {
    for (const key of ["sep", "cls"]) {
      const pair = p[key];
      const ok = Array.isArray(pair) && pair.length === 2 && typeof pair[0] === "string" &&
        Number.isSafeInteger(pair[1]) && pair[1] >= 0;
      if (!ok) {
        throw new TokenizerError(
          source,
          `its post_processor's ${key} is ${shortJson(pair)}, not a [token, id] pair`,
        );
      }
    }
    return;
  }
  if (p.type !== "TemplateProcessing") return;
  for (const key of ["single", "pair"]) {
    const template = p[key];
    if (!Array.isArray(template)) {
      throw new TokenizerError(
        source,
        `its post_processor's ${key} template is ${kindOf(template)}, not a list of pieces`,
      );
    }
    template.forEach((piece, i) => {
      const kinds = typeof piece === "object" && piece !== null ? Object.keys(piece) : [];
      const body = kinds.length === 1
        ? (piece as Record<string, Record<string, unknown> | null>)[kinds[0]]
        : null;
      const ok = body !== null && typeof body === "object" &&
        Number.isSafeInteger(body.type_id) && (body.type_id as number) >= 0 &&
        (kinds[0] === "SpecialToken"
          ? typeof body.id === "string"
          : kinds[0] === "Sequence" && (body.id === "A" || body.id === "B"));
      if (!ok) {
        throw new TokenizerError(
          source,
          `its post_processor's ${key}[${i}] is ${shortJson(piece)}, not a SpecialToken or ` +
            `Sequence piece with a type_id`,
        );
      }
    });
  }
}

/**
 * BertProcessing, RobertaProcessing and TemplateProcessing (its special_tokens) give their
 * special tokens' ids themselves, and Hugging Face's tokenizers inserts those ids; tokenizers.js
 * looks the tokens up in the vocabulary. Where the two differ the ids would not be Hugging
 * Face's: refused, naming both.
 */
function checkProcessorIds(
  source: string,
  post: unknown,
  idOf: (token: string) => number | undefined,
): void {
  const p = post as Record<string, unknown> | null;
  if (typeof p !== "object" || p === null) return;
  if (p.type === "TemplateProcessing") {
    // Each SpecialToken piece names an entry of special_tokens, whose ids Hugging Face inserts;
    // tokenizers.js inserts the vocabulary's id of the piece's name. Entries no piece uses are
    // never inserted.
    const special = (p.special_tokens ?? {}) as Record<string, { ids?: unknown } | undefined>;
    const used = new Set<string>();
    for (const key of ["single", "pair"]) {
      for (const piece of (p[key] ?? []) as { SpecialToken?: { id?: unknown } }[]) {
        if (typeof piece?.SpecialToken?.id === "string") used.add(piece.SpecialToken.id);
      }
    }
    for (const name of used) {
      const ids = special[name]?.ids;
      // A token not in the vocabulary, or no entry: named where the layout is probed.
      const vocab = idOf(name);
      if (vocab === undefined || ids === undefined) continue;
      if (!Array.isArray(ids) || ids.length !== 1 || ids[0] !== vocab) {
        throw new TokenizerError(
          source,
          `its post_processor's special_tokens[${JSON.stringify(name)}] has ids ` +
            `${shortJson(ids)}, but the vocabulary gives ${
              JSON.stringify(name)
            } the id ${vocab}: ` +
            "the ids would not be Hugging Face's",
        );
      }
    }
    return;
  }
  if (p.type !== "BertProcessing" && p.type !== "RobertaProcessing") return;
  for (const key of ["sep", "cls"]) {
    const [token, id] = p[key] as [string, number];
    const vocab = idOf(token);
    if (vocab !== id) {
      throw new TokenizerError(
        source,
        `its post_processor's ${key} is ${JSON.stringify([token, id])}, but ` +
          (vocab === undefined
            ? `${JSON.stringify(token)} is not in the vocabulary`
            : `the vocabulary gives ${JSON.stringify(token)} the id ${vocab}`) +
          ": the ids would not be Hugging Face's",
      );
    }
  }
}

function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (
    typeof v === "object" && v !== null && typeof (v as { content?: unknown }).content === "string"
  ) {
    return (v as { content: string }).content;
  }
  return undefined;
}

function padTokenOf(padding: unknown): string | undefined {
  if (typeof padding !== "object" || padding === null) return undefined;
  const t = (padding as { pad_token?: unknown }).pad_token;
  return typeof t === "string" ? t : undefined;
}

/**
 * A span of one text's tokens (from `tokenSpan`) placed in row `row` of an encoded batch:
 * `sequence` 0 is the first text, 1 the second. Errors when truncation cut into the span.
 */
export function placeSpan(
  encoded: EncodedBatch,
  row: number,
  sequence: 0 | 1,
  span: Span,
): Span {
  const seg = sequence === 0 ? encoded.first[row] : encoded.second[row];
  if (seg === undefined || seg === null) {
    throw new TokenizerError(
      "placeSpan",
      `row ${row} has no ${sequence === 0 ? "first" : "second"} text`,
    );
  }
  if (span.start < 0 || span.end <= span.start || seg.start + span.end > seg.end) {
    throw new TokenizerError(
      "placeSpan",
      `row ${row}: tokens [${span.start}, ${span.end}) of text ${
        sequence + 1
      } are not all in the ` +
        `encoded row (it kept ${seg.end - seg.start} tokens of that text)`,
    );
  }
  return { start: seg.start + span.start, end: seg.start + span.end };
}

/**
 * The tokenizer of a checkpoint directory: its `tokenizer.json`, else one converted from
 * `vocab.txt` (WordPiece) or `vocab.json` + `merges.txt` (byte-level BPE), with
 * `tokenizer_config.json` (when present) for the settings.
 */
export async function loadTokenizer(
  dir: string,
  model: TokenizerModelInfo,
  options: TokenizerOptions = {},
): Promise<TextTokenizer> {
  const config = options.config ?? await readTokenizerConfig(dir);
  const path = `${dir}/tokenizer.json`;
  let exists = true;
  try {
    await Deno.stat(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    exists = false;
  }
  if (exists) return TextTokenizer.fromFile(path, model, { ...options, config });
  const json = await convertTokenizerDir(dir);
  return TextTokenizer.fromJson(json, model, {
    ...options,
    config,
    source: options.source ?? `${dir} (converted from its vocabulary files)`,
  });
}
