// Converts the vocabulary files of checkpoints that ship no `tokenizer.json` into one, the same
// JSON that Hugging Face's `transformers` writes when it converts the slow tokenizer
// (convert_slow_tokenizer.py: BertConverter for a WordPiece `vocab.txt`, RobertaConverter for a
// byte-level BPE `vocab.json` + `merges.txt`), so that both kinds load through one path.

import { isJsonObject } from "./atomic_write.ts";
import { jsonErrorText } from "./error_text.ts";
import { readUtf8File, Utf8Error } from "./utf8.ts";

/** A problem with a tokenizer's files; the message names the file. */
export class TokenizerConvertError extends Error {
  /** The message is `<source>: <problem>`. */
  constructor(source: string, problem: string) {
    super(`${source}: ${problem}`);
    this.name = "TokenizerConvertError";
  }
}

/** One entry of `tokenizer.json`'s `added_tokens`. */
export interface AddedTokenJson {
  /** The token's id in the vocabulary. */
  id: number;
  /** The token's text. */
  content: string;
  /** Match only as a whole word. */
  single_word: boolean;
  /** Absorb the whitespace to its left when matching. */
  lstrip: boolean;
  /** Absorb the whitespace to its right when matching. */
  rstrip: boolean;
  /** Match against the normalized text rather than the raw text. */
  normalized: boolean;
  /** A special token (skipped when decoding with skip_special_tokens). */
  special: boolean;
}

/** The subset of the `tokenizer.json` schema the converters write. */
export interface TokenizerJson {
  /** The schema version ("1.0"). */
  version: string;
  /** null: the converters set none (TextTokenizer truncates). */
  truncation: null;
  /** null: the converters set none (TextTokenizer pads). */
  padding: null;
  /** The special tokens, in id order. */
  added_tokens: AddedTokenJson[];
  /** The normalizer (BertNormalizer), or null (byte-level BPE has none). */
  normalizer: Record<string, unknown> | null;
  /** The pre-tokenizer. */
  pre_tokenizer: Record<string, unknown> | null;
  /** The post-processor that adds the special tokens around a text or a pair. */
  post_processor: Record<string, unknown> | null;
  /** The decoder. */
  decoder: Record<string, unknown> | null;
  /** The model (WordPiece or BPE) with its vocabulary. */
  model: Record<string, unknown>;
}

/** Options of `convertWordPiece`: normalisation and the special tokens' texts. */
export interface WordPieceOptions {
  /** Names the vocabulary in errors. */
  source?: string;
  /**
   * Lowercase (and, unless `stripAccents` is false, strip accents). Default: true unless the
   * vocabulary holds an uppercase letter outside its bracketed special tokens (a cased model);
   * BertTokenizer's own default is true, and cased checkpoints say `do_lower_case: false` in a
   * tokenizer_config.json that `convertTokenizerDir` reads.
   */
  doLowerCase?: boolean;
  /** null (the default) follows `doLowerCase`, as BertNormalizer does. */
  stripAccents?: boolean | null;
  /** Put spaces around CJK ideographs so each is its own word. Default true. */
  tokenizeChineseChars?: boolean;
  /** Default `[UNK]`; must be in the vocabulary. */
  unkToken?: string;
  /** Default `[CLS]`; must be in the vocabulary. */
  clsToken?: string;
  /** Default `[SEP]`; must be in the vocabulary. */
  sepToken?: string;
  /** Default `[PAD]`; special only if the vocabulary has it. */
  padToken?: string;
  /** Default `[MASK]`; special only if the vocabulary has it. */
  maskToken?: string;
}

/**
 * Options of `convertByteLevelBpe`: prefix space and the special tokens' texts, each of which
 * must be in the vocabulary.
 */
export interface ByteLevelBpeOptions {
  /** Names the files in errors. */
  source?: string;
  /** Default false (RobertaTokenizer's default). */
  addPrefixSpace?: boolean;
  /** `<s>` */
  clsToken?: string;
  /** `</s>` */
  sepToken?: string;
  /** `<unk>` */
  unkToken?: string;
  /** `<pad>` */
  padToken?: string;
  /** `<mask>` */
  maskToken?: string;
}

function addedToken(id: number, content: string, lstrip = false): AddedTokenJson {
  // Special tokens are matched on the raw text (normalized false), as transformers sets them.
  return {
    id,
    content,
    single_word: false,
    lstrip,
    rstrip: false,
    normalized: false,
    special: true,
  };
}

/**
 * A vocab.txt's tokens by id, as transformers' load_vocab reads it (`readlines()` in text mode,
 * then `rstrip("\n")`): lines split at "\n", "\r\n" or "\r", blank lines kept as tokens, no
 * token after a final line break.
 */
export function vocabLines(text: string): string[] {
  const lines = text.split(/\r\n|\n|\r/);
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

/**
 * Reads a WordPiece `vocab.txt`: one token per line as vocabLines reads them (only the line break
 * stripped: a token may hold spaces), the id being the line number (0-based); as transformers'
 * load_vocab, a repeated token keeps its last line's id.
 */
export function parseVocabTxt(text: string, source = "vocab.txt"): Map<string, number> {
  refuseByteOrderMark(text, source);
  const lines = vocabLines(text);
  if (lines.length === 0) throw new TokenizerConvertError(source, "is empty");
  const vocab = new Map<string, number>();
  lines.forEach((token, id) => vocab.set(token, id));
  return vocab;
}

/**
 * A byte-order mark would become part of the first token (transformers reads a vocab.txt so too,
 * and then misses "[PAD]"): named, rather than the token it hides.
 */
function refuseByteOrderMark(text: string, source: string): void {
  if (text.charCodeAt(0) === 0xfeff) {
    throw new TokenizerConvertError(
      source,
      "begins with a byte-order mark (BOM): save it as UTF-8 without one",
    );
  }
}

function requireToken(
  vocab: Map<string, number>,
  token: string,
  role: string,
  source: string,
): number {
  const id = vocab.get(token);
  if (id === undefined) {
    throw new TokenizerConvertError(source, `has no ${role} token ${JSON.stringify(token)}`);
  }
  return id;
}

/**
 * True when the vocabulary is cased: at least 10 tokens outside [brackets] change under
 * lowercasing (an uncased vocabulary has none, bar the odd symbol such as "ℝ" that is an
 * uppercase letter without a lowercase form; a cased one has thousands).
 */
export function vocabLooksCased(vocab: Iterable<string>): boolean {
  let changed = 0;
  for (const token of vocab) {
    if (token.startsWith("[") && token.endsWith("]")) continue;
    if (token.toLowerCase() !== token && ++changed >= 10) return true;
  }
  return false;
}

/**
 * The `tokenizer.json` that transformers' BertConverter makes from a `vocab.txt`: BertNormalizer
 * (clean text, CJK handling, lowercase / accents per `doLowerCase` and `stripAccents`),
 * BertPreTokenizer, WordPiece (`##` continuation, words over 100 characters become [UNK]),
 * TemplateProcessing "[CLS] $A [SEP]" / "[CLS] $A [SEP] $B:1 [SEP]:1", WordPiece decoder.
 */
export function convertWordPiece(vocabTxt: string, options: WordPieceOptions = {}): TokenizerJson {
  const source = options.source ?? "vocab.txt";
  const vocab = parseVocabTxt(vocabTxt, source);
  const unk = options.unkToken ?? "[UNK]";
  const cls = options.clsToken ?? "[CLS]";
  const sep = options.sepToken ?? "[SEP]";
  const unkId = requireToken(vocab, unk, "unknown", source);
  const clsId = requireToken(vocab, cls, "classifier", source);
  const sepId = requireToken(vocab, sep, "separator", source);
  const added = new Map<number, AddedTokenJson>();
  for (const [token, id] of [[unk, unkId], [cls, clsId], [sep, sepId]] as const) {
    added.set(id, addedToken(id, token));
  }
  // Pad and mask are optional (a vocabulary without them simply has no such special token).
  for (const token of [options.padToken ?? "[PAD]", options.maskToken ?? "[MASK]"]) {
    const id = vocab.get(token);
    if (id !== undefined) added.set(id, addedToken(id, token));
  }
  const lowercase = options.doLowerCase ?? !vocabLooksCased(vocab.keys());
  const specialToken = (token: string, id: number) => ({ id: token, ids: [id], tokens: [token] });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [...added.values()].sort((a, b) => a.id - b.id),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: options.tokenizeChineseChars ?? true,
      strip_accents: options.stripAccents ?? null,
      lowercase,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: cls, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: sep, type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: cls, type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: sep, type_id: 0 } },
        { Sequence: { id: "B", type_id: 1 } },
        { SpecialToken: { id: sep, type_id: 1 } },
      ],
      special_tokens: { [cls]: specialToken(cls, clsId), [sep]: specialToken(sep, sepId) },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: unk,
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(vocab),
    },
  };
}

/** Parses a `vocab.json` (token → id) and checks that every id is a distinct integer ≥ 0. */
export function parseVocabJson(text: string, source = "vocab.json"): Map<string, number> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TokenizerConvertError(source, `is not valid JSON (${jsonErrorText(e, text)})`);
  }
  if (!isJsonObject(json)) {
    throw new TokenizerConvertError(source, "is not a JSON object of token → id");
  }
  const vocab = new Map<string, number>();
  const seen = new Map<number, string>();
  for (const [token, id] of Object.entries(json)) {
    if (typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
      throw new TokenizerConvertError(
        source,
        `token ${JSON.stringify(token)} has id ${JSON.stringify(id)}, not an integer ≥ 0`,
      );
    }
    const other = seen.get(id);
    if (other !== undefined) {
      throw new TokenizerConvertError(
        source,
        `tokens ${JSON.stringify(other)} and ${JSON.stringify(token)} share id ${id}`,
      );
    }
    seen.set(id, token);
    vocab.set(token, id);
  }
  if (vocab.size === 0) throw new TokenizerConvertError(source, "is empty");
  return vocab;
}

/**
 * Parses a BPE `merges.txt`: an optional first line "#version: …", then one merge per line, two
 * tokens separated by whitespace, in priority order. Empty lines (the one after the final line
 * break) are skipped; any other line without exactly two tokens is an error.
 */
export function parseMerges(text: string, source = "merges.txt"): [string, string][] {
  // transformers drops a merges.txt's first line unread: a mark before "#version" goes with it.
  if (text.startsWith("\ufeff#version")) text = text.slice(1);
  refuseByteOrderMark(text, source);
  const lines = text.split(/\r\n|\n|\r/);
  const merges: [string, string][] = [];
  lines.forEach((line, i) => {
    if (i === 0 && line.startsWith("#version")) return;
    if (line === "") return;
    const parts = line.split(/\s+/).filter((p) => p !== "");
    if (parts.length !== 2) {
      throw new TokenizerConvertError(
        source,
        `line ${i + 1} is not a merge of two tokens: ${JSON.stringify(line)}`,
      );
    }
    merges.push([parts[0], parts[1]]);
  });
  return merges;
}

/**
 * The `tokenizer.json` that transformers' RobertaConverter makes from `vocab.json` and
 * `merges.txt`: no normalizer, ByteLevel pre-tokenizer (add_prefix_space false, trim_offsets),
 * BPE without unknown token, RobertaProcessing "<s> A </s>" / "<s> A </s></s> B </s>", ByteLevel
 * decoder; <s>, <pad>, </s>, <unk> and <mask> (which strips the space before it) are special
 * tokens with their ids from the vocabulary, and each must be there.
 */
export function convertByteLevelBpe(
  vocabJson: string | Map<string, number>,
  mergesTxt: string,
  options: ByteLevelBpeOptions = {},
): TokenizerJson {
  const source = options.source ?? "vocab.json";
  const vocab = typeof vocabJson === "string" ? parseVocabJson(vocabJson, source) : vocabJson;
  const merges = parseMerges(mergesTxt, source.replace(/vocab\.json$/, "merges.txt"));
  for (const [i, [a, b]] of merges.entries()) {
    if (!vocab.has(a) || !vocab.has(b) || !vocab.has(a + b)) {
      throw new TokenizerConvertError(
        source,
        `merge ${i + 1} ("${a} ${b}") uses a token missing from the vocabulary`,
      );
    }
  }
  const cls = options.clsToken ?? "<s>";
  const pad = options.padToken ?? "<pad>";
  const sep = options.sepToken ?? "</s>";
  const unk = options.unkToken ?? "<unk>";
  const mask = options.maskToken ?? "<mask>";
  const added = new Map<number, AddedTokenJson>();
  for (const [token, role] of [[cls, "cls"], [pad, "pad"], [sep, "sep"], [unk, "unk"]]) {
    const id = requireToken(vocab, token, role, source);
    added.set(id, addedToken(id, token));
  }
  const maskId = requireToken(vocab, mask, "mask", source);
  added.set(maskId, addedToken(maskId, mask, true));
  const addPrefixSpace = options.addPrefixSpace ?? false;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [...added.values()].sort((a, b) => a.id - b.id),
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: addPrefixSpace,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: "RobertaProcessing",
      sep: [sep, vocab.get(sep)],
      cls: [cls, vocab.get(cls)],
      trim_offsets: true,
      add_prefix_space: addPrefixSpace,
    },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: "",
      end_of_word_suffix: "",
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await readUtf8File(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    if (e instanceof Utf8Error) throw new TokenizerConvertError(path, e.message);
    throw new TokenizerConvertError(path, `cannot read: ${(e as Error).message}`);
  }
}

/**
 * A special token's text from tokenizer_config.json (a string or an AddedToken object; absent or
 * null: the default); another value is refused naming the key (it was ignored, where transformers
 * reads what it says).
 */
function configToken(
  config: Record<string, unknown>,
  key: string,
  path: string,
): string | undefined {
  const v = config[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (isJsonObject(v) && typeof v.content === "string") return v.content;
  throw new TokenizerConvertError(
    path,
    `${key} is ${JSON.stringify(v).slice(0, 40)}, not a token (text, or {"content": text})`,
  );
}

/** The JSON object in the file at `path`, or {} when there is none; a one-line error otherwise. */
async function readJsonObjectIfExists(path: string): Promise<Record<string, unknown>> {
  const text = await readIfExists(path);
  if (text === null) return {};
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TokenizerConvertError(path, `is not valid JSON (${jsonErrorText(e, text)})`);
  }
  if (!isJsonObject(json)) throw new TokenizerConvertError(path, "is not a JSON object");
  return json;
}

/**
 * `json` with the added tokens a slow tokenizer's folder declares: `added_tokens.json` ({text:
 * id}, as transformers' slow tokenizers save them) and tokenizer_config.json's
 * `added_tokens_decoder` ({id: {content, lstrip, rstrip, single_word, normalized, special}},
 * transformers ≥ 4.34, whose flags win). transformers keeps each as one token; without them
 * `<e1>` was split into `<`, `e`, `##1`, `>`. An id the vocabulary gives another token is refused.
 */
async function withAddedTokens(
  json: TokenizerJson,
  dir: string,
  config: Record<string, unknown>,
  source: string,
): Promise<TokenizerJson> {
  const extra = new Map<number, AddedTokenJson>();
  // Not special: matched on the normalized text, as transformers adds them.
  const plain = (id: number, content: string): AddedTokenJson => ({
    ...addedToken(id, content),
    normalized: true,
    special: false,
  });
  const addedPath = `${dir}/added_tokens.json`;
  for (const [content, id] of Object.entries(await readJsonObjectIfExists(addedPath))) {
    if (!Number.isSafeInteger(id) || (id as number) < 0) {
      throw new TokenizerConvertError(
        addedPath,
        `"${content}" has id ${JSON.stringify(id)?.slice(0, 40)}, not a token id`,
      );
    }
    extra.set(id as number, plain(id as number, content));
  }
  const decoder = config.added_tokens_decoder;
  const configPath = `${dir}/tokenizer_config.json`;
  if (decoder !== undefined && decoder !== null) {
    if (!isJsonObject(decoder)) {
      throw new TokenizerConvertError(configPath, "added_tokens_decoder is not a JSON object");
    }
    for (const [key, v] of Object.entries(decoder)) {
      const id = Number(key);
      if (
        !Number.isSafeInteger(id) || id < 0 || !isJsonObject(v) || typeof v.content !== "string"
      ) {
        throw new TokenizerConvertError(
          configPath,
          `added_tokens_decoder's entry ${JSON.stringify(key)} is not {"content": text, ...} ` +
            "under a token id",
        );
      }
      const flag = (k: string, fallback: boolean) =>
        typeof v[k] === "boolean" ? v[k] as boolean : fallback;
      const special = flag("special", false);
      extra.set(id, {
        id,
        content: v.content,
        single_word: flag("single_word", false),
        lstrip: flag("lstrip", false),
        rstrip: flag("rstrip", false),
        normalized: flag("normalized", !special),
        special,
      });
    }
  }
  if (extra.size === 0) return json;
  const vocab = json.model.vocab as Record<string, number>;
  const byId = new Map<number, string>();
  for (const [token, id] of Object.entries(vocab)) byId.set(id, token);
  const merged = new Map(json.added_tokens.map((t) => [t.id, t]));
  for (const [id, t] of extra) {
    const held = byId.get(id);
    if (held !== undefined && held !== t.content) {
      throw new TokenizerConvertError(
        source,
        `added token ${JSON.stringify(t.content)} has id ${id}, which the vocabulary gives ` +
          JSON.stringify(held),
      );
    }
    merged.set(id, t);
  }
  return { ...json, added_tokens: [...merged.values()].sort((a, b) => a.id - b.id) };
}

/** Reads `dir/tokenizer_config.json` as an object, or {} when there is none. */
export function readTokenizerConfig(dir: string): Promise<Record<string, unknown>> {
  return readJsonObjectIfExists(`${dir}/tokenizer_config.json`);
}

/**
 * Converts a checkpoint directory's `vocab.txt` (WordPiece) or `vocab.json` + `merges.txt`
 * (byte-level BPE) into a `tokenizer.json` object, taking casing, accent, CJK, prefix-space and
 * special-token settings from `tokenizer_config.json` when present (options override it).
 */
export async function convertTokenizerDir(
  dir: string,
  options: WordPieceOptions & ByteLevelBpeOptions = {},
): Promise<TokenizerJson> {
  const config = await readTokenizerConfig(dir);
  const configPath = `${dir}/tokenizer_config.json`;
  // A switch of another type was ignored (transformers reads "true" as true, 0 as false): refused.
  const bool = (key: string): boolean | undefined => {
    const v = config[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v === "boolean") return v;
    throw new TokenizerConvertError(
      configPath,
      `${key} is ${JSON.stringify(v).slice(0, 40)}, not true or false`,
    );
  };
  // special_tokens_map.json (what transformers' save_pretrained also writes) names them where
  // tokenizer_config.json does not.
  const mapPath = `${dir}/special_tokens_map.json`;
  const specialMap = await readJsonObjectIfExists(mapPath);
  const token = (key: string) =>
    configToken(config, key, configPath) ?? configToken(specialMap, key, mapPath);
  const tokens = {
    unkToken: options.unkToken ?? token("unk_token"),
    clsToken: options.clsToken ?? token("cls_token"),
    sepToken: options.sepToken ?? token("sep_token"),
    padToken: options.padToken ?? token("pad_token"),
    maskToken: options.maskToken ?? token("mask_token"),
  };
  const vocabTxtPath = `${dir}/vocab.txt`;
  const vocabTxt = await readIfExists(vocabTxtPath);
  if (vocabTxt !== null) {
    const json = convertWordPiece(vocabTxt, {
      ...tokens,
      source: options.source ?? vocabTxtPath,
      doLowerCase: options.doLowerCase ?? bool("do_lower_case"),
      stripAccents: options.stripAccents ?? bool("strip_accents") ?? null,
      tokenizeChineseChars: options.tokenizeChineseChars ?? bool("tokenize_chinese_chars"),
    });
    return await withAddedTokens(json, dir, config, options.source ?? vocabTxtPath);
  }
  const vocabJsonPath = `${dir}/vocab.json`;
  const vocabJson = await readIfExists(vocabJsonPath);
  const mergesPath = `${dir}/merges.txt`;
  const merges = await readIfExists(mergesPath);
  if (vocabJson !== null && merges !== null) {
    const json = convertByteLevelBpe(vocabJson, merges, {
      ...tokens,
      source: options.source ?? vocabJsonPath,
      addPrefixSpace: options.addPrefixSpace ?? bool("add_prefix_space"),
    });
    return await withAddedTokens(json, dir, config, options.source ?? vocabJsonPath);
  }
  throw new TokenizerConvertError(
    dir,
    vocabJson !== null
      ? "has vocab.json but no merges.txt"
      : "has no tokenizer.json, vocab.txt, or vocab.json + merges.txt",
  );
}
