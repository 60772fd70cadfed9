// The tokenizer against known ids of real vocabularies (tests/fixtures/tokenizers, see its
// NOTICE.md): BERT-Base Uncased's WordPiece vocab.txt and GPT-2's byte-level BPE, both through
// the converter, plus truncation, padding, positions, spans and the errors that must come before
// any GPU work.

// The library itself, to cross-check our encoding (same full specifier as model/tokenizer.ts).
import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import {
  type EncodedBatch,
  loadTokenizer,
  placeSpan,
  TextTokenizer,
  TokenizerError,
  type TokenizerModelInfo,
  truncatedLengths,
  TruncationError,
} from "../model/tokenizer.ts";
import {
  convertByteLevelBpe,
  convertTokenizerDir,
  convertWordPiece,
  parseMerges,
  parseVocabJson,
  parseVocabTxt,
  TokenizerConvertError,
  type TokenizerJson,
  vocabLooksCased,
} from "../model/tokenizer_convert.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "./assert.ts";
import { readConfig } from "../model/config.ts";
import { readJsonFile } from "../model/atomic_write.ts";

const FIXTURES = new URL("./fixtures/tokenizers/", import.meta.url);
const BERT_VOCAB = Deno.readTextFileSync(
  new URL("../data/tokenizers/bert-base-uncased/vocab.txt", import.meta.url),
);
const GPT2_ENCODER = Deno.readTextFileSync(new URL("gpt2-bpe/encoder.json", FIXTURES));
const GPT2_MERGES = Deno.readTextFileSync(new URL("gpt2-bpe/vocab.bpe", FIXTURES));

/** bert-base-uncased's config.json sizes. */
const BERT_MODEL: TokenizerModelInfo = {
  vocabSize: 30522,
  typeVocabSize: 2,
  maxPositions: 512,
  padTokenId: 0,
  positionsFromPadding: false,
};

let bertJson: TokenizerJson | undefined;
let bert: TextTokenizer | undefined;
function bertTokenizer(): TextTokenizer {
  bertJson ??= convertWordPiece(BERT_VOCAB, { source: "bert-base-uncased/vocab.txt" });
  bert ??= TextTokenizer.fromJson(bertJson, BERT_MODEL, { source: "bert-base-uncased" });
  return bert;
}

// GPT-2's ids are GPT-2's, not RoBERTa's: RoBERTa's vocab.json has the same tokens in fairseq's
// order, which we do not have. So the tests build SYNTHETIC RoBERTa-style vocabularies from
// GPT-2's: "shifted" puts <s> <pad> </s> <unk> at 0..3 as RoBERTa does (pad 1, so positions
// start at 2) and moves every GPT-2 token up by 4, <mask> last (50261); "appended" keeps GPT-2's
// ids and puts the five special tokens after them (50257..50261), to check GPT-2's own ids.
const SHIFT = 4;
function syntheticVocab(layout: "shifted" | "appended"): Map<string, number> {
  const gpt2 = parseVocabJson(GPT2_ENCODER, "encoder.json");
  const vocab = new Map<string, number>();
  if (layout === "shifted") {
    ["<s>", "<pad>", "</s>", "<unk>"].forEach((t, i) => vocab.set(t, i));
    for (const [t, id] of gpt2) vocab.set(t, id + SHIFT);
    vocab.set("<mask>", gpt2.size + SHIFT);
  } else {
    for (const [t, id] of gpt2) vocab.set(t, id);
    ["<s>", "<pad>", "</s>", "<unk>", "<mask>"].forEach((t, i) => vocab.set(t, gpt2.size + i));
  }
  return vocab;
}

/** roberta-large's sizes, with the synthetic vocabulary's size. */
const ROBERTA_MODEL: TokenizerModelInfo = {
  vocabSize: 50257 + 5,
  typeVocabSize: 1,
  maxPositions: 514,
  padTokenId: 1,
  positionsFromPadding: true,
};

let robertaJson: TokenizerJson | undefined;
let roberta: TextTokenizer | undefined;
function robertaTokenizer(): TextTokenizer {
  robertaJson ??= convertByteLevelBpe(syntheticVocab("shifted"), GPT2_MERGES, {
    source: "synthetic-roberta/vocab.json",
  });
  roberta ??= TextTokenizer.fromJson(robertaJson, ROBERTA_MODEL, { source: "synthetic-roberta" });
  return roberta;
}

function bertJsonLoaded(): TokenizerJson {
  bertTokenizer();
  return bertJson!;
}

function robertaJsonLoaded(): TokenizerJson {
  robertaTokenizer();
  return robertaJson!;
}

/** Row r of a [B, S] array, trimmed to `length` when given. */
function row(a: ArrayLike<number>, enc: EncodedBatch, r: number, length = enc.seqLen): number[] {
  return Array.from(a).slice(r * enc.seqLen, r * enc.seqLen + length);
}

const FOX = "The quick brown fox jumps over the lazy dog.";

// ---------------------------------------------------------------------------------------------
// Converter

Deno.test("convertWordPiece writes what transformers' BertConverter writes", () => {
  const json = convertWordPiece(BERT_VOCAB);
  assertEquals(json.normalizer, {
    type: "BertNormalizer",
    clean_text: true,
    handle_chinese_chars: true,
    strip_accents: null,
    lowercase: true,
  });
  assertEquals(json.pre_tokenizer, { type: "BertPreTokenizer" });
  assertEquals(json.decoder, { type: "WordPiece", prefix: "##", cleanup: true });
  const { vocab, ...model } = json.model;
  assertEquals(model, {
    type: "WordPiece",
    unk_token: "[UNK]",
    continuing_subword_prefix: "##",
    max_input_chars_per_word: 100,
  });
  assertEquals(Object.keys(vocab as object).length, 30522);
  assertEquals(
    json.added_tokens.map((t) => [t.id, t.content, t.special, t.normalized]),
    [
      [0, "[PAD]", true, false],
      [100, "[UNK]", true, false],
      [101, "[CLS]", true, false],
      [102, "[SEP]", true, false],
      [103, "[MASK]", true, false],
    ],
  );
  const pp = json.post_processor as Record<string, unknown>;
  assertEquals(pp.type, "TemplateProcessing");
  assertEquals(pp.pair, [
    { SpecialToken: { id: "[CLS]", type_id: 0 } },
    { Sequence: { id: "A", type_id: 0 } },
    { SpecialToken: { id: "[SEP]", type_id: 0 } },
    { Sequence: { id: "B", type_id: 1 } },
    { SpecialToken: { id: "[SEP]", type_id: 1 } },
  ]);
  assertEquals(pp.special_tokens, {
    "[CLS]": { id: "[CLS]", ids: [101], tokens: ["[CLS]"] },
    "[SEP]": { id: "[SEP]", ids: [102], tokens: ["[SEP]"] },
  });
  // do_lower_case false and a cased vocabulary both turn lowercasing off.
  assertEquals(
    (convertWordPiece(BERT_VOCAB, { doLowerCase: false }).normalizer as { lowercase: boolean })
      .lowercase,
    false,
  );
  assert(!vocabLooksCased(parseVocabTxt(BERT_VOCAB).keys()), "bert-base-uncased looks cased");
  const cased = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the"];
  for (let i = 0; i < 10; i++) cased.push(`Word${i}`);
  assert(vocabLooksCased(cased), "a vocabulary of capitalised words looks uncased");
  // Without do_lower_case, the vocabulary decides: a cased one is not lowercased.
  const lowercase = (vocab: string) =>
    (convertWordPiece(vocab).normalizer as { lowercase: boolean }).lowercase;
  assertEquals([lowercase(cased.join("\n") + "\n"), lowercase(BERT_VOCAB)], [false, true]);
});

Deno.test("parseVocabTxt: line numbers are ids, any line break, no empty last token", () => {
  assertEquals([...parseVocabTxt("a\nb c\r\nd\re\n").entries()], [
    ["a", 0],
    ["b c", 1],
    ["d", 2],
    ["e", 3],
  ]);
  assertEquals([...parseVocabTxt("a\nb").entries()], [["a", 0], ["b", 1]]);
  assertEquals(parseVocabTxt(BERT_VOCAB).get("[SEP]"), 102);
  assertThrows(() => parseVocabTxt(""), TokenizerConvertError, "is empty");
  assertThrows(
    () => parseVocabTxt("\ufeff[PAD]\n[UNK]\n", "m/vocab.txt"),
    TokenizerConvertError,
    "m/vocab.txt: begins with a byte-order mark (BOM): save it as UTF-8 without one",
  );
});

Deno.test("convertByteLevelBpe writes what transformers' RobertaConverter writes", () => {
  const json = convertByteLevelBpe(syntheticVocab("shifted"), GPT2_MERGES);
  assertEquals(json.normalizer, null);
  assertEquals(json.pre_tokenizer, {
    type: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: true,
    use_regex: true,
  });
  assertEquals(json.post_processor, {
    type: "RobertaProcessing",
    sep: ["</s>", 2],
    cls: ["<s>", 0],
    trim_offsets: true,
    add_prefix_space: false,
  });
  assertEquals(json.decoder, {
    type: "ByteLevel",
    add_prefix_space: true,
    trim_offsets: true,
    use_regex: true,
  });
  const { vocab: _vocab, merges, ...model } = json.model;
  assertEquals(model, {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: "",
    end_of_word_suffix: "",
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
  });
  const m = merges as [string, string][];
  assertEquals(m.length, 50000);
  assertEquals(m[0], ["Ġ", "t"]); // the first merge of vocab.bpe after "#version: 0.2"
  assertEquals(
    json.added_tokens.map((t) => [t.id, t.content, t.lstrip]),
    [[0, "<s>", false], [1, "<pad>", false], [2, "</s>", false], [3, "<unk>", false], [
      50261,
      "<mask>",
      true,
    ]],
  );
  // GPT-2's own vocabulary has no RoBERTa special tokens: a clear error, not a guess.
  assertThrows(
    () => convertByteLevelBpe(GPT2_ENCODER, GPT2_MERGES, { source: "gpt2/vocab.json" }),
    TokenizerConvertError,
    'gpt2/vocab.json: has no cls token "<s>"',
  );
  assertThrows(
    () => convertByteLevelBpe(syntheticVocab("shifted"), "#version: 0.2\nĠ t\nzz qq\n"),
    TokenizerConvertError,
    "merge 2",
  );
  assertEquals(parseMerges("#version: 0.2\na b\n\nab c\n"), [["a", "b"], ["ab", "c"]]);
  assertThrows(() => parseMerges("a b c\n"), TokenizerConvertError, "line 1");
  assertEquals(parseMerges("\ufeff#version: 0.2\na b\n"), [["a", "b"]]);
  assertThrows(() => parseMerges("\ufeffa b\n"), TokenizerConvertError, "(BOM)");
});

// ---------------------------------------------------------------------------------------------
// BERT (WordPiece)

Deno.test("bert-base-uncased: known ids for known sentences", () => {
  const t = bertTokenizer();
  const one = (text: string) => {
    const enc = t.encodeBatch([text]);
    return row(enc.inputIds, enc, 0, enc.lengths[0]);
  };
  assertEquals(one("Hello, world!"), [101, 7592, 1010, 2088, 999, 102]);
  assertEquals(one(FOX), [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]);
  // Lowercasing and accent stripping: all of these are "hello".
  for (const s of ["Héllo", "HELLO", "hèllö"]) assertEquals(t.encodeText(s), [7592], s);
  // Clean text: NUL is dropped, tabs are spaces.
  assertEquals(t.tokenize("Hello\u0000 world\t!"), ["hello", "world", "!"]);
  // CJK ideographs become single-character words.
  assertEquals(t.tokenize("中国"), ["中", "国"]);
  assertEquals(t.encodeText("中国"), [1746, 1799]);
  // A word over 100 characters is [UNK]; a long known-piece word splits into ## pieces.
  assertEquals(t.encodeText("a".repeat(101)), [100]);
  const pieces = t.tokenize("supercalifragilisticexpialidocious");
  assert(pieces.length > 1 && !pieces[0].startsWith("##"), `pieces ${pieces}`);
  assert(pieces.slice(1).every((p) => p.startsWith("##")), `pieces ${pieces}`);
  assertEquals(
    t.decode(t.encodeText("supercalifragilisticexpialidocious")),
    "supercalifragilisticexpialidocious",
  );
  // Special tokens written in the text are matched as special tokens, as in HF.
  assertEquals(t.encodeText("[MASK] hi"), [103, 7632]);
  assertEquals(t.numSpecialTokens(false), 2);
  assertEquals(t.numSpecialTokens(true), 3);
});

Deno.test("bert: pairs are [CLS] A [SEP] B [SEP] with type ids 0…0 1…1", () => {
  const t = bertTokenizer();
  const enc = t.encodeBatch([["Hello, world!", FOX]]);
  const a = [7592, 1010, 2088, 999];
  const b = [1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012];
  assertEquals(enc.seqLen, 3 + a.length + b.length);
  assertEquals(row(enc.inputIds, enc, 0), [101, ...a, 102, ...b, 102]);
  assertEquals(row(enc.typeIds, enc, 0), [
    ...Array(a.length + 2).fill(0),
    ...Array(b.length + 1).fill(1),
  ]);
  assertEquals(enc.first[0], { start: 1, end: 1 + a.length });
  assertEquals(enc.second[0], { start: a.length + 2, end: a.length + 2 + b.length });
});

Deno.test("bert: pads to the longest row, positions 0..S-1, masks padding", () => {
  const t = bertTokenizer();
  const enc = t.encodeBatch(["Hello, world!", "hi", ["a b", "c"]]);
  assertEquals(enc.batch, 3);
  assertEquals(enc.seqLen, 6);
  assertEquals(enc.lengths, [6, 3, 6]);
  // deno-fmt-ignore
  assertEquals(Array.from(enc.inputIds), [
    101, 7592, 1010, 2088, 999, 102,
    101, 7632, 102, 0, 0, 0,
    101, 1037, 1038, 102, 1039, 102,
  ]);
  assertEquals(Array.from(enc.typeIds), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
  assertEquals(Array.from(enc.attentionMask), [
    1,
    1,
    1,
    1,
    1,
    1,
    1,
    1,
    1,
    0,
    0,
    0,
    1,
    1,
    1,
    1,
    1,
    1,
  ]);
  for (let r = 0; r < 3; r++) assertEquals(row(enc.positionIds, enc, r), [0, 1, 2, 3, 4, 5]);
  assertEquals(enc.second, [null, null, { start: 4, end: 5 }]);
  // Malformed input: an error naming the tokenizer, not a crash inside tokenizers.js.
  assertThrows(() => t.encodeBatch([]), TokenizerError, "bert-base-uncased: the batch is empty");
  assertThrows(
    () => t.encodeBatch(["ok", ["a"] as unknown as [string, string]]),
    TokenizerError,
    "example 1 is neither a text nor a pair",
  );
  // A model with one token type gets zeros even for pairs.
  const one = TextTokenizer.fromJson(bertJsonLoaded(), { ...BERT_MODEL, typeVocabSize: 1 });
  assertEquals(Array.from(one.encodeBatch([["a b", "c"]]).typeIds), [0, 0, 0, 0, 0, 0]);
});

Deno.test("encodeBatch agrees with tokenizers.js's own encode when nothing is truncated", () => {
  const inputs: [string, string | null][] = [
    ["Hello, world!", null],
    [FOX, "Héllo there, 中国 [MASK]!"],
    ["I can't believe it's 2024...", " leading space"],
  ];
  const pairs: [TokenizerJson, TextTokenizer][] = [
    [bertJsonLoaded(), bertTokenizer()],
    [robertaJsonLoaded(), robertaTokenizer()],
  ];
  for (const [json, tok] of pairs) {
    const lib = new Tokenizer(json, {});
    for (const [a, b] of inputs) {
      const want = lib.encode(a, { text_pair: b, return_token_type_ids: true });
      const enc = tok.encodeBatch([b === null ? a : [a, b]]);
      assertEquals(row(enc.inputIds, enc, 0), want.ids, `${a} / ${b}`);
      if (tok.model.typeVocabSize > 1) assertEquals(row(enc.typeIds, enc, 0), want.token_type_ids);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// Truncation

Deno.test("truncatedLengths is HF tokenizers' truncate_encodings (its own unit-test table)", () => {
  // tokenizers/src/utils/truncation.rs, truncate_encodings_longest_first: max_length 7 and
  // sequences of 0 (empty), 2 (short), 4 (medium), 8 (long) tokens.
  const table: [number, number, number, number][] = [
    [0, 0, 0, 0],
    [0, 2, 0, 2],
    [0, 4, 0, 4],
    [0, 8, 0, 7],
    [2, 0, 2, 0],
    [2, 2, 2, 2],
    [2, 4, 2, 4],
    [2, 8, 2, 5],
    [4, 0, 4, 0],
    [4, 2, 4, 2],
    [4, 4, 3, 4],
    [4, 8, 3, 4],
    [8, 0, 7, 0],
    [8, 2, 5, 2],
    [8, 4, 4, 3],
    [8, 8, 3, 4],
  ];
  for (const [n1, n2, k1, k2] of table) {
    assertEquals(truncatedLengths(n1, n2, 7, "longest_first"), [k1, k2], `${n1}, ${n2}`);
  }
  // truncate_encodings_empty: max_length 0 empties both.
  assertEquals(truncatedLengths(0, 2, 0, "longest_first"), [0, 0]);
  assertEquals(truncatedLengths(8, 8, 0, "only_first"), [0, 0]);
  // A single text is cut to the budget.
  assertEquals(truncatedLengths(10, null, 4, "longest_first"), [4, 0]);
  assertEquals(truncatedLengths(10, null, 4, "only_first"), [4, 0]);
  // only_first: the first text loses the whole surplus, or it is an error.
  assertEquals(truncatedLengths(6, 4, 7, "only_first"), [3, 4]);
  assertEquals(truncatedLengths(6, 4, 10, "only_first"), [6, 4]);
  assertThrows(() => truncatedLengths(3, 4, 4, "only_first"), TruncationError, "only_first");
  assertThrows(() => truncatedLengths(3, 4, 6, "do_not_truncate"), TruncationError, "exceed");
});

Deno.test("bert: only_first and longest_first at several max lengths", () => {
  const t = bertTokenizer();
  // A = "a b c d e f" = [1037..1042] (6 tokens), B = "g h i j" = [1043..1046] (4 tokens); the
  // pair has 3 special tokens, so it needs 13.
  const pair: [string, string] = ["a b c d e f", "g h i j"];
  const A = [1037, 1038, 1039, 1040, 1041, 1042];
  const B = [1043, 1044, 1045, 1046];
  const expect = (a: number, b: number) => [101, ...A.slice(0, a), 102, ...B.slice(0, b), 102];
  const ids = (maxLength: number, truncation: "only_first" | "longest_first") => {
    const enc = t.encodeBatch([pair], { maxLength, truncation });
    assertEquals(enc.removed[0], [
      6 - enc.first[0].end + enc.first[0].start,
      4 - (enc.second[0]!.end - enc.second[0]!.start),
    ]);
    return row(enc.inputIds, enc, 0);
  };
  // Hand-computed: budget = maxLength − 3.
  assertEquals(ids(13, "only_first"), expect(6, 4));
  assertEquals(ids(100, "longest_first"), expect(6, 4));
  assertEquals(ids(12, "only_first"), expect(5, 4));
  assertEquals(ids(10, "only_first"), expect(3, 4)); // surplus 3 from A
  assertEquals(ids(8, "only_first"), expect(1, 4)); // surplus 5 from A, one token left
  assertEquals(ids(12, "longest_first"), expect(5, 4)); // budget 9: A keeps max(4, 9−4) = 5
  assertEquals(ids(11, "longest_first"), expect(4, 4)); // budget 8: A keeps max(4, 4) = 4
  assertEquals(ids(10, "longest_first"), expect(4, 3)); // budget 7: 4 + 4 > 7, so 4 / 3 (longer A gets the odd one)
  assertEquals(ids(6, "longest_first"), expect(2, 1)); // budget 3: 1 / 2, longer A keeps 2
  assertEquals(ids(3, "longest_first"), expect(0, 0)); // budget 0: both emptied, as HF
  // only_first cannot fit when B alone (plus one token of A) exceeds the budget: HF errors too.
  const e = assertThrows(
    () => t.encodeBatch(["hi", pair], { maxLength: 7, truncation: "only_first" }),
    TokenizerError,
    "bert-base-uncased: example 1",
  );
  assert(e.message.includes("only_first"), e.message);
  // With a fallback, that row alone is cut longest-first (budget 4: A 2, B 2) and reported.
  const fell = t.encodeBatch(["hi", pair], {
    maxLength: 7,
    truncation: "only_first",
    fallback: "longest_first",
  });
  assertEquals(fell.fellBack, [1]);
  assertEquals(fell.removed[1], [4, 2]);
  assertEquals(t.encodeBatch([pair], { maxLength: 13, truncation: "only_first" }).fellBack, []);
  // Fewer than the special tokens: an error, not an empty row.
  assertThrows(() => t.encodeBatch([pair], { maxLength: 2 }), TokenizerError, "special tokens");
  // do_not_truncate rejects what does not fit.
  assertThrows(
    () => t.encodeBatch([pair], { maxLength: 12, truncation: "do_not_truncate" }),
    TokenizerError,
    "exceed",
  );
  // A single text.
  const single = t.encodeBatch(["a b c d e f"], { maxLength: 4, truncation: "only_first" });
  assertEquals(row(single.inputIds, single, 0), [101, 1037, 1038, 102]);
});

Deno.test("maxLength is clamped to the model's position table (BERT 512, RoBERTa 514 − 2)", () => {
  const words = Array(600).fill("hi").join(" ");
  const b = bertTokenizer().encodeBatch([words], { maxLength: 100000 });
  assertEquals(b.seqLen, 512);
  assertEquals(row(b.inputIds, b, 0).at(-1), 102);
  assertEquals(b.removed[0], [600 - 510, 0]);
  const r = robertaTokenizer();
  assertEquals(r.maxLength, 512);
  const enc = r.encodeBatch([[words, words]], { truncation: "longest_first" });
  assertEquals(enc.seqLen, 512);
  // Positions stop at padding_idx + 512 = 513, the last row of the 514-position table.
  assertEquals(Math.max(...enc.positionIds), 513);
});

// ---------------------------------------------------------------------------------------------
// RoBERTa-style byte-level BPE (synthetic special-token mapping, see syntheticVocab)

Deno.test("gpt2 byte-level BPE: GPT-2's known ids", () => {
  const json = convertByteLevelBpe(syntheticVocab("appended"), GPT2_MERGES);
  const t = TextTokenizer.fromJson(json, {
    ...ROBERTA_MODEL,
    padTokenId: 50258,
    maxPositions: 50259 + 64,
  });
  assertEquals(t.encodeText("Hello world"), [15496, 995]);
  assertEquals(t.encodeText(" Hello world"), [18435, 995]);
  assertEquals(t.encodeText(FOX), [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]);
  // The shifted layout moves every GPT-2 id up by 4.
  const r = robertaTokenizer();
  assertEquals(r.encodeText("Hello world"), [15496 + SHIFT, 995 + SHIFT]);
  assertEquals(r.tokenize(" Hello world"), ["ĠHello", "Ġworld"]);
  // The library's BPE reads our word cache (half the tokenizing time on a large split; if the
  // library moved its cache, this says so), and a word read twice gives the same pieces.
  assert(r.bpeWordCache && t.bpeWordCache, "the BPE word cache is not installed");
  assertEquals(
    r.encodeText("Hello world Hello world"),
    [15496, 995, 18435, 995].map((i) => i + SHIFT),
  );
  assert(!bertTokenizer().bpeWordCache, "WordPiece has no word cache to replace");
});

Deno.test("roberta: <s> A </s></s> B </s>, zero type ids, positions from padding_idx + 1", () => {
  const t = robertaTokenizer();
  assertEquals(t.numSpecialTokens(false), 2);
  assertEquals(t.numSpecialTokens(true), 4);
  const hello = [15496 + SHIFT, 995 + SHIFT];
  const enc = t.encodeBatch([["Hello world", "Hello world"], "Hello world"]);
  assertEquals(enc.seqLen, 8);
  // deno-fmt-ignore
  assertEquals(Array.from(enc.inputIds), [
    0, ...hello, 2, 2, ...hello, 2,
    0, ...hello, 2, 1, 1, 1, 1,
  ]);
  // type_vocab_size 1: all zeros (the post-processor's 0/1 would overflow the table).
  assertEquals(Array.from(enc.typeIds), Array(16).fill(0));
  // Positions: padding_idx 1, tokens from 2, padding stays at 1.
  assertEquals(Array.from(enc.positionIds), [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5, 1, 1, 1, 1]);
  assertEquals(Array.from(enc.attentionMask), [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
  assertEquals(enc.first, [{ start: 1, end: 3 }, { start: 1, end: 3 }]);
  assertEquals(enc.second, [{ start: 5, end: 7 }, null]);
  // With two token types the post-processor's types come through: 0 for <s> A </s>, 1 after.
  const two = TextTokenizer.fromJson(robertaJsonLoaded(), { ...ROBERTA_MODEL, typeVocabSize: 2 });
  const e2 = two.encodeBatch([["Hello world", "Hello world"]]);
  assertEquals(Array.from(e2.typeIds), [0, 0, 0, 0, 1, 1, 1, 1]);
});

Deno.test("converted tokenizers round-trip through decode and through tokenizer.json text", () => {
  const r = robertaTokenizer();
  for (
    const s of ["Hello world", " Hello world", FOX, "héllo 🤗 naïve — “quotes”\nnew line  two"]
  ) {
    assertEquals(r.decode(r.encodeText(s)), s);
  }
  // Special tokens are skipped unless asked for.
  const enc = r.encodeBatch(["Hello world"]);
  assertEquals(r.decode(row(enc.inputIds, enc, 0)), "Hello world");
  assertEquals(
    r.decode(row(enc.inputIds, enc, 0), { skipSpecialTokens: false }),
    "<s>Hello world</s>",
  );
  const b = bertTokenizer();
  assertEquals(b.decode(b.encodeText("Héllo, WORLD! unaffable")), "hello, world! unaffable");
  // The JSON as text (what a tokenizer.json file holds) loads to the same tokenizer.
  const again = TextTokenizer.fromJson(JSON.stringify(bertJsonLoaded()), BERT_MODEL);
  assertEquals(again.encodeText(FOX), b.encodeText(FOX));
});

Deno.test("loadTokenizer: tokenizer.json, else vocab.txt, else vocab.json + merges.txt", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_test_" });
  try {
    // vocab.txt only, then with tokenizer_config.json saying the model is cased.
    await Deno.mkdir(`${dir}/bert`);
    await Deno.writeTextFile(`${dir}/bert/vocab.txt`, BERT_VOCAB);
    const fromVocab = await loadTokenizer(`${dir}/bert`, BERT_MODEL);
    assertEquals(fromVocab.encodeText("Hello"), [7592]);
    assert(fromVocab.source.includes("converted"), fromVocab.source);
    await Deno.writeTextFile(`${dir}/bert/tokenizer_config.json`, '{"do_lower_case": false}');
    const cased = await loadTokenizer(`${dir}/bert`, BERT_MODEL);
    assertEquals(cased.encodeText("Hello"), [100]); // "H" is not in the uncased vocabulary
    // A setting of another type was ignored (transformers reads "false" as true): refused.
    for (
      const [config, problem] of [
        ['{"do_lower_case": "false"}', 'do_lower_case is "false", not true or false'],
        ['{"strip_accents": 0}', "strip_accents is 0, not true or false"],
        ['{"mask_token": 5}', 'mask_token is 5, not a token (text, or {"content": text})'],
        ['{"unk_token": {"content": 5}}', 'unk_token is {"content":5}, not a token'],
      ]
    ) {
      await Deno.writeTextFile(`${dir}/bert/tokenizer_config.json`, config);
      await assertRejects(
        () => loadTokenizer(`${dir}/bert`, BERT_MODEL),
        TokenizerConvertError,
        `${dir}/bert/tokenizer_config.json: ${problem}`,
      );
    }
    const special = '{"strip_accents": null, "mask_token": {"content": "[MASK]", "lstrip": true}}';
    await Deno.writeTextFile(`${dir}/bert/tokenizer_config.json`, special);
    assertEquals((await loadTokenizer(`${dir}/bert`, BERT_MODEL)).encodeText("Hello"), [7592]);
    // tokenizer.json wins over vocab.txt.
    await Deno.writeTextFile(`${dir}/bert/tokenizer.json`, JSON.stringify(bertJsonLoaded()));
    const fromJson = await loadTokenizer(`${dir}/bert`, BERT_MODEL);
    assertEquals(fromJson.source, `${dir}/bert/tokenizer.json`);
    // vocab.json + merges.txt.
    await Deno.mkdir(`${dir}/roberta`);
    await Deno.writeTextFile(
      `${dir}/roberta/vocab.json`,
      JSON.stringify(Object.fromEntries(syntheticVocab("shifted"))),
    );
    await Deno.writeTextFile(`${dir}/roberta/merges.txt`, GPT2_MERGES);
    const converted = await convertTokenizerDir(`${dir}/roberta`);
    assertEquals(converted.pre_tokenizer, robertaJsonLoaded().pre_tokenizer);
    const rob = await loadTokenizer(`${dir}/roberta`, ROBERTA_MODEL);
    assertEquals(rob.encodeText("Hello world"), [15496 + SHIFT, 995 + SHIFT]);
    // Added tokens of a slow tokenizer's folder (added_tokens.json; tokenizer_config.json's
    // added_tokens_decoder, whose flags win): one token each, as transformers keeps them (they
    // were split, "<e1>" as "<", "e", "##1", ">"); special_tokens_map.json names special tokens.
    await Deno.mkdir(`${dir}/added`);
    await Deno.writeTextFile(`${dir}/added/vocab.txt`, BERT_VOCAB);
    await Deno.writeTextFile(`${dir}/added/added_tokens.json`, '{"<e1>": 30522, "<e2>": 30523}');
    const grown = { ...BERT_MODEL, vocabSize: 30524 };
    const added = await loadTokenizer(`${dir}/added`, grown);
    const ids = added.encodeText("hello <e1> world <e2>");
    assertEquals(ids, [7592, 30522, 2088, 30523]);
    await Deno.writeTextFile(
      `${dir}/added/tokenizer_config.json`,
      JSON.stringify({
        added_tokens_decoder: { "30522": { content: "<e1>", special: true, normalized: false } },
      }),
    );
    assertEquals((await loadTokenizer(`${dir}/added`, grown)).encodeText("<e1>"), [30522]);
    // An id the vocabulary gives another token: refused, naming both.
    await Deno.writeTextFile(`${dir}/added/added_tokens.json`, '{"<e1>": 7592}');
    await Deno.remove(`${dir}/added/tokenizer_config.json`);
    await assertRejects(
      () => loadTokenizer(`${dir}/added`, grown),
      TokenizerConvertError,
      `added token "<e1>" has id 7592, which the vocabulary gives "hello"`,
    );
    // An unknown token named only in special_tokens_map.json.
    await Deno.remove(`${dir}/added/added_tokens.json`);
    await Deno.writeTextFile(
      `${dir}/added/vocab.txt`,
      BERT_VOCAB.replace("[UNK]\n", "<unk>\n"),
    );
    await assertRejects(
      () => loadTokenizer(`${dir}/added`, grown),
      TokenizerConvertError,
      'has no unknown token "[UNK]"',
    );
    await Deno.writeTextFile(`${dir}/added/special_tokens_map.json`, '{"unk_token": "<unk>"}');
    assertEquals(
      (await loadTokenizer(`${dir}/added`, grown)).encodeText("hello"),
      [7592],
    );
    // Nothing to load.
    await Deno.mkdir(`${dir}/empty`);
    await assertRejects(
      () => loadTokenizer(`${dir}/empty`, BERT_MODEL),
      TokenizerConvertError,
      "has no tokenizer.json, vocab.txt, or vocab.json + merges.txt",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("model files that are not UTF-8 are refused, naming the file and the line", async () => {
  // Read as Deno.readTextFile reads them, a bad byte became U+FFFD: a vocab.txt token was lost
  // (hello → hell ##o) and every text that had it tokenized otherwise, without a word.
  const dir = await Deno.makeTempDir({ prefix: "tokenizer_utf8_" });
  try {
    const bad = (text: string, line: number) => {
      const bytes = new TextEncoder().encode(text);
      let start = 0;
      for (let l = 1; l < line; l++) start = bytes.indexOf(0x0a, start) + 1;
      bytes[start + 1] = 0xff; // the line's second byte
      return bytes;
    };
    const said = (path: string, line: number) =>
      `${path}: line ${line}: not valid UTF-8: byte 0xFF at byte 2 of the line (save the file ` +
      "as UTF-8)";
    await Deno.mkdir(`${dir}/bert`);
    const hello = BERT_VOCAB.split("\n").indexOf("hello") + 1;
    await Deno.writeFile(`${dir}/bert/vocab.txt`, bad(BERT_VOCAB, hello));
    await assertRejects(
      () => loadTokenizer(`${dir}/bert`, BERT_MODEL),
      TokenizerConvertError,
      said(`${dir}/bert/vocab.txt`, hello),
    );
    // A byte-order mark is UTF-8, and still refused by name (the strict decoder kept it).
    await Deno.writeTextFile(`${dir}/bert/vocab.txt`, "\ufeff" + BERT_VOCAB);
    await assertRejects(
      () => loadTokenizer(`${dir}/bert`, BERT_MODEL),
      TokenizerConvertError,
      `${dir}/bert/vocab.txt: begins with a byte-order mark (BOM)`,
    );
    const json = JSON.stringify(bertJsonLoaded(), null, 1);
    await Deno.writeFile(`${dir}/bert/tokenizer.json`, bad(json, 3));
    await assertRejects(
      () => loadTokenizer(`${dir}/bert`, BERT_MODEL),
      TokenizerError,
      said(`${dir}/bert/tokenizer.json`, 3),
    );
    await Deno.writeFile(`${dir}/config.json`, bad('{\n  "model_type": "bert"\n}\n', 2));
    await assertRejects(
      () => readConfig(`${dir}/config.json`),
      Error,
      said(`${dir}/config.json`, 2),
    );
    await Deno.writeFile(`${dir}/run.json`, bad('{"settings": "é"}', 1));
    await assertRejects(() => readJsonFile(`${dir}/run.json`), Error, said(`${dir}/run.json`, 1));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Checks against the model's tables (all on the host, before any GPU work)

Deno.test("an id beyond the model's vocabulary is an error naming the tokenizer", () => {
  const small = TextTokenizer.fromJson(bertJsonLoaded(), { ...BERT_MODEL, vocabSize: 5000 }, {
    source: "bert-base-uncased/tokenizer.json",
  });
  small.encodeBatch(["a b"]); // 1037, 1038: fine
  const e = assertThrows(
    () => small.encodeBatch(["a b", "Hello"]),
    TokenizerError,
    "bert-base-uncased/tokenizer.json: example 1 token 1 has id 7592",
  );
  assert(e.message.includes("vocab_size is 5000"), e.message);
  // Special tokens are checked when the tokenizer is built.
  assertThrows(
    () => TextTokenizer.fromJson(bertJsonLoaded(), { ...BERT_MODEL, vocabSize: 102 }),
    TokenizerError,
    "special token has id 102",
  );
});

Deno.test("a pad id that differs from the model's pad_token_id is an error", () => {
  assertThrows(
    () =>
      TextTokenizer.fromJson(bertJsonLoaded(), { ...BERT_MODEL, padTokenId: 1 }, {
        source: "bert",
      }),
    TokenizerError,
    'bert: pad token "[PAD]" has id 0 but the model\'s pad_token_id is 1',
  );
  assertThrows(
    () => TextTokenizer.fromJson(robertaJsonLoaded(), { ...ROBERTA_MODEL, padTokenId: 0 }),
    TokenizerError,
    "pad_token_id is 0",
  );
  assertThrows(
    () => TextTokenizer.fromJson(bertJsonLoaded(), BERT_MODEL, { padToken: "<nope>" }),
    TokenizerError,
    "not in the vocabulary",
  );
});

Deno.test("a type id beyond the model's type table is an error", () => {
  // A template that gives the second text type 2, with a model of two types.
  const json = structuredClone(bertJsonLoaded());
  const pp = json.post_processor as { pair: { Sequence?: { id: string; type_id: number } }[] };
  pp.pair[3].Sequence!.type_id = 2;
  const t = TextTokenizer.fromJson(json, BERT_MODEL, { source: "odd" });
  t.encodeBatch(["fine alone"]);
  assertThrows(
    () => t.encodeBatch([["a", "b"]]),
    TokenizerError,
    "odd: example 0 token 3 has type id 2 but the model's type_vocab_size is 2",
  );
});

// ---------------------------------------------------------------------------------------------
// Character spans → token spans (WiC)

Deno.test("tokenSpan maps character spans to token ranges; placeSpan puts them in a row", () => {
  const t = bertTokenizer();
  const s1 = "The bank of the river.";
  const s2 = "He robbed the supercalifragilisticexpialidocious bank.";
  assertEquals(t.tokenSpan(s1, 4, 8), { start: 1, end: 2 }); // "bank"
  const longWord = s2.indexOf("super");
  const n = t.tokenize("supercalifragilisticexpialidocious").length;
  assertEquals(t.tokenSpan(s2, longWord, longWord + 34), { start: 3, end: 3 + n });
  assertEquals(t.tokenSpan(s2, s2.indexOf("bank"), s2.indexOf("bank") + 4), {
    start: 3 + n,
    end: 4 + n,
  });
  // Surrounding whitespace in the span is ignored; a span inside a word takes the whole token.
  assertEquals(t.tokenSpan(s1, 3, 9), { start: 1, end: 2 });
  assertEquals(t.tokenSpan("I was running home", 6, 9), { start: 2, end: 3 });
  assertThrows(() => t.tokenSpan(s1, 3, 4), TokenizerError, "holds no token");
  assertThrows(() => t.tokenSpan(s1, 5, 50), TokenizerError, "not inside");

  const enc = t.encodeBatch([[s1, s2]]);
  assertEquals(placeSpan(enc, 0, 0, t.tokenSpan(s1, 4, 8)), { start: 2, end: 3 });
  const bank2 = placeSpan(enc, 0, 1, { start: 3 + n, end: 4 + n });
  assertEquals(row(enc.inputIds, enc, 0)[bank2.start], 2924); // "bank"
  // A span that truncation cut off is an error, not a wrong index.
  const cut = t.encodeBatch([[s1, s2]], { maxLength: 22, truncation: "only_first" }); // keeps 3 of s1
  assertThrows(() => placeSpan(cut, 0, 0, { start: 4, end: 5 }), TokenizerError, "kept");

  // Byte-level BPE: the space belongs to the word's token ("Ġbank").
  const r = robertaTokenizer();
  assertEquals(r.tokenSpan(s1, 4, 8), { start: 1, end: 2 });
  assertEquals(r.tokenize(s1)[1], "Ġbank");
  // A double space leaves a lone "Ġ" token before the word: not part of the span.
  assertEquals(r.tokenize("a  cat"), ["a", "Ġ", "Ġcat"]);
  assertEquals(r.tokenSpan("a  cat", 3, 6), { start: 2, end: 3 });
  const renc = r.encodeBatch([[s1, "a  cat"]]);
  assertEquals(placeSpan(renc, 0, 1, r.tokenSpan("a  cat", 3, 6)), { start: 11, end: 12 });
  assertEquals(row(renc.inputIds, renc, 0)[11], r.tokenToId("Ġcat"));
});

/** A small XLM-R-style Unigram tokenizer.json (Metaspace, <s> A </s></s> B </s>). */
function unigramJson(): TokenizerJson {
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const metaspace = { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<s>"), special(1, "<pad>"), special(2, "</s>"), special(3, "<unk>")],
    normalizer: null,
    pre_tokenizer: metaspace,
    post_processor: { type: "RobertaProcessing", sep: ["</s>", 2], cls: ["<s>", 0] },
    decoder: metaspace,
    model: {
      type: "Unigram",
      unk_id: 3,
      vocab: [["<s>", 0], ["<pad>", 0], ["</s>", 0], ["<unk>", 0], ["▁hello", -1], ["▁world", -2]]
        .concat([["▁", -3], ["h", -4], ["e", -4], ["l", -4], ["o", -4]]),
    },
  } as unknown as TokenizerJson;
}

Deno.test("tokenizer.json: fields that contradict its vocabulary or have the wrong type are refused", () => {
  // Each was taken as it was, and changed the ids of texts ("Hello extra" at most) silently.
  // deno-lint-ignore no-explicit-any
  type Json = Record<string, any>; // edited freely, as a hand edit would
  const base = () => structuredClone(bertJsonLoaded()) as unknown as Json;
  const loads = (json: unknown) =>
    TextTokenizer.fromJson(json, BERT_MODEL, { source: "x/tokenizer.json" });
  assertEquals(loads(base()).encodeText("Hello"), [7592]);
  const refused = (edit: (j: Json) => void, problem: string) => {
    const json = base();
    edit(json);
    const e = assertThrows(() => loads(json), TokenizerError);
    assertEquals(e.message, `x/tokenizer.json: ${problem}`);
  };
  const pad = (j: Json) =>
    j.added_tokens.findIndex((t: { content: string }) => t.content === "[PAD]");
  refused(
    (j) => j.added_tokens[pad(j)].content = "x",
    `its added_tokens[${pad(base())}] "x" has id 0, but its model's vocab gives it id 1060`,
  );
  refused((j) => {
    const unk = j.added_tokens.find((t: { content: string }) => t.content === "[UNK]");
    unk.id = 0;
  }, 'its added_tokens[1] "[UNK]" has id 0, as added_tokens[0] has');
  refused((j) => {
    j.added_tokens.push({ id: 7592, content: "howdy", special: false });
  }, `its added_tokens[5] "howdy" has id 7592, which its model's vocab gives "hello"`);
  refused(
    (j) => j.model.max_input_chars_per_word = -1,
    "its WordPiece model's max_input_chars_per_word is number -1, not an integer ≥ 1",
  );
  refused(
    (j) => j.model.continuing_subword_prefix = null,
    "its WordPiece model's continuing_subword_prefix is null, not text",
  );
  refused(
    (j) => j.model.unk_token = "[NOPE]",
    `its WordPiece model's unk_token "[NOPE]" is not in its vocab`,
  );
  refused(
    (j) => j.normalizer.lowercase = 0,
    "its normalizer's lowercase is number 0, not true or false",
  );
  refused(
    (j) =>
      j.normalizer = { type: "Sequence", normalizers: [{ ...j.normalizer, strip_accents: "no" }] },
    'its normalizer.normalizers[0]\'s strip_accents is string "no", not true, false or null',
  );
});

Deno.test("tokenizer.json: a model type or vocabulary it cannot run is one line naming the file", () => {
  const model: TokenizerModelInfo = { ...ROBERTA_MODEL, vocabSize: 11, maxPositions: 66 };
  // Unigram (XLM-R's tokenizers) runs.
  const uni = TextTokenizer.fromJson(unigramJson(), model, { source: "xlmr/tokenizer.json" });
  assertEquals(uni.tokenize("hello world"), ["▁hello", "▁world"]);
  const enc = uni.encodeBatch([["hello world", "hello"]]);
  assertEquals(row(enc.inputIds, enc, 0), [0, 4, 5, 2, 2, 4, 2]);
  assertEquals(uni.largestId(), { id: 10, token: "o" });

  const refused = (json: unknown, problem: string) => {
    const e = assertThrows(
      () => TextTokenizer.fromJson(json, model, { source: "x/tokenizer.json" }),
      TokenizerError,
    );
    assertEquals(e.message, `x/tokenizer.json: ${problem}`);
  };
  const withModel = (m: Record<string, unknown>) => ({ ...unigramJson(), model: m });
  const unigram = unigramJson().model as unknown as Record<string, unknown>;
  const wordPiece = bertJsonLoaded().model as unknown as Record<string, unknown>;
  refused(
    withModel({ type: "WordLevel", vocab: { "<pad>": 1 }, unk_token: "<unk>" }),
    'model type "WordLevel" is not supported (supported: WordPiece, BPE, Unigram)',
  );
  refused(
    withModel({ ...unigram, type: 7 }),
    "model type 7 is not supported (supported: WordPiece, BPE, Unigram)",
  );
  // A Unigram type over another model's vocabulary, or vocabulary entries that are not pairs.
  refused(
    withModel({ ...wordPiece, type: "Unigram" }),
    "its Unigram model's vocab is an object: expected a list of [piece, score] pairs",
  );
  refused(
    withModel({ ...unigram, vocab: [["<s>", 0], 20] }),
    "its Unigram model's vocab[1] is 20, not a [piece, score] pair",
  );
  refused(
    withModel({ ...unigram, vocab: [["<s>", 0], ["a"]] }),
    `its Unigram model's vocab[1] is ["a"], not a [piece, score] pair`,
  );
  refused(
    withModel({ ...unigram, vocab: [] }),
    "its Unigram model's vocab is an empty list: expected a list of [piece, score] pairs",
  );
  refused(
    withModel({ ...unigram, unk_id: 11 }),
    "its Unigram model's unk_id 11 is not an index of its vocab (0-10)",
  );
  refused(
    withModel({ ...wordPiece, vocab: unigram.vocab }),
    "its WordPiece model's vocab is a list: expected an object of token → id (a list is a " +
      "Unigram vocabulary)",
  );
  refused(
    withModel({ type: "BPE", merges: [] }),
    "its BPE model's vocab is missing: expected an object of token → id",
  );
  // Ids tokenizers.js takes and misuses only once a text holds the token: refused on loading.
  const bert = bertJsonLoaded() as unknown as Record<string, unknown>;
  const bertModel = BERT_MODEL;
  const bertRefused = (json: unknown, problem: string) => {
    const e = assertThrows(
      () => TextTokenizer.fromJson(json, bertModel, { source: "x/tokenizer.json" }),
      TokenizerError,
    );
    assertEquals(e.message, `x/tokenizer.json: ${problem}`);
  };
  const vocab = wordPiece.vocab as Record<string, number>;
  const cls = Object.keys(vocab).find((t) => vocab[t] === vocab["[CLS]"])!;
  for (const [id, shown] of [[-3, "number -3"], [1.5, "number 1.5"], ["x\ny", 'string "x\\ny"']]) {
    bertRefused(
      { ...bert, model: { ...wordPiece, vocab: { ...vocab, zz: id } } },
      `its WordPiece model's vocab: token "zz" has id ${shown}, not an integer ≥ 0`,
    );
  }
  bertRefused(
    { ...bert, model: { ...wordPiece, vocab: { ...vocab, zz: vocab["[CLS]"] } } },
    `its WordPiece model's vocab: tokens "${cls}" and "zz" share id ${vocab["[CLS]"]}`,
  );
  // Pieces of a template and added tokens of another shape: named, before tokenizers.js reads
  // them (their TypeErrors named no file).
  const template = bert.post_processor as Record<string, unknown[]>;
  bertRefused(
    { ...bert, post_processor: { ...template, single: [...template.single.slice(0, 2), 5] } },
    "its post_processor's single[2] is 5, not a SpecialToken or Sequence piece with a type_id",
  );
  bertRefused(
    { ...bert, post_processor: { ...template, pair: undefined } },
    "its post_processor's pair template is missing, not a list of pieces",
  );
  bertRefused(
    { ...bert, post_processor: { ...template, single: [{ Sequence: { id: "C", type_id: 0 } }] } },
    `its post_processor's single[0] is {"Sequence":{"id":"C","type_id":0}}, not a ` +
      "SpecialToken or Sequence piece with a type_id",
  );
  // BertProcessing gives its tokens' ids itself (Hugging Face inserts those): malformed, or not
  // the vocabulary's, refused.
  const sep = vocab["[SEP]"], clsId = vocab["[CLS]"];
  const processing = { type: "BertProcessing", sep: ["[SEP]", sep], cls: ["[CLS]", clsId] };
  const processed = TextTokenizer.fromJson({ ...bert, post_processor: processing }, bertModel);
  // As the template's: [CLS] a [SEP] b [SEP], type ids 0 then 1.
  const pair = processed.encodeBatch([["a", "b"]]);
  const templated = TextTokenizer.fromJson(bert, bertModel).encodeBatch([["a", "b"]]);
  assertEquals(Array.from(pair.inputIds), Array.from(templated.inputIds));
  assertEquals(Array.from(pair.typeIds), Array.from(templated.typeIds));
  assertEquals(pair.inputIds[0], clsId);
  bertRefused(
    { ...bert, post_processor: { ...processing, sep: "[SEP]" } },
    `its post_processor's sep is "[SEP]", not a [token, id] pair`,
  );
  bertRefused(
    { ...bert, post_processor: { ...processing, cls: ["[CLS]", sep] } },
    `its post_processor's cls is ["[CLS]",${sep}], but the vocabulary gives "[CLS]" the id ` +
      `${clsId}: the ids would not be Hugging Face's`,
  );
  bertRefused(
    { ...bert, post_processor: { ...processing, sep: ["</s>", sep] } },
    `its post_processor's sep is ["</s>",${sep}], but "</s>" is not in the vocabulary: the ids ` +
      "would not be Hugging Face's",
  );
  // TemplateProcessing's special_tokens likewise: each one a piece uses inserts exactly the
  // vocabulary's id of its name; one no piece uses is never inserted.
  const special = template.special_tokens as unknown as Record<string, { ids: number[] }>;
  const withSpecial = (entries: Record<string, unknown>) => ({
    ...bert,
    post_processor: { ...template, special_tokens: { ...special, ...entries } },
  });
  for (const ids of [[7], [clsId, sep]]) {
    bertRefused(
      withSpecial({ "[CLS]": { id: "[CLS]", ids, tokens: ids.map(() => "[CLS]") } }),
      `its post_processor's special_tokens["[CLS]"] has ids ${JSON.stringify(ids)}, but the ` +
        `vocabulary gives "[CLS]" the id ${clsId}: the ids would not be Hugging Face's`,
    );
  }
  TextTokenizer.fromJson(
    withSpecial({ "[MASK]": { id: "[MASK]", ids: [5], tokens: ["x"] } }),
    bertModel,
  );
  bertRefused(
    { ...bert, added_tokens: [{ id: 0, content: "[PAD]" }, { id: -1, content: "a" }] },
    `its added_tokens[1] is {"id":-1,"content":"a"}, not an {"id": integer ≥ 0, "content": ` +
      "string} entry",
  );
  bertRefused({ ...bert, added_tokens: 5 }, "its added_tokens is number 5, not a list");
  // What still fails inside tokenizers.js (a special token the template does not define):
  // its error, named, on one line.
  const undefinedToken = {
    ...template,
    single: [{ SpecialToken: { id: "[NOPE]", type_id: 0 } }, ...template.single.slice(1)],
  };
  const e = assertThrows(
    () =>
      TextTokenizer.fromJson({ ...bert, post_processor: undefinedToken }, bertModel, {
        source: "x/tokenizer.json",
      }),
    TokenizerError,
  );
  assert(e.message.startsWith("x/tokenizer.json: "), e.message);
  assert(!e.message.includes("\n"), e.message);
});
