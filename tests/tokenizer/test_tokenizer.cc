#include <algorithm>
#include <climits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/tokenizer/chat_format.h"
#include "common/tokenizer/detokenizer.h"
#include "common/tokenizer/hf_regex.h"
#include "common/tokenizer/pretokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"
#include "gtest/gtest.h"

namespace latentserve::tokenizer {
namespace {

// Byte string -> the GPT-2 byte alphabet used in vocabulary files.
std::string ToAlphabet(const std::string& bytes) {
  std::string out;
  for (char c : bytes) AppendUtf8(ByteToCodepoint(static_cast<uint8_t>(c)), &out);
  return out;
}

// Words as strings, from our kimi-k2 split of valid UTF-8 text.
std::vector<std::string> Split(const std::string& text) {
  std::vector<uint32_t> cps;
  DecodeUtf8Lenient(text, &cps);
  std::vector<uint32_t> lengths;
  SplitKimiK2(cps.data(), cps.size(), &lengths);
  std::vector<std::string> words;
  size_t i = 0;
  for (uint32_t len : lengths) {
    std::string w;
    for (uint32_t k = 0; k < len; ++k) AppendUtf8(cps[i + k], &w);
    i += len;
    words.push_back(w);
  }
  return words;
}

using Words = std::vector<std::string>;

TEST(PreTokenizer, EnglishAndContractions) {
  EXPECT_EQ(Split("Hello world"), (Words{"Hello", " world"}));
  EXPECT_EQ(Split("I'm here, they'RE"), (Words{"I'm", " here", ",", " they'RE"}));
  EXPECT_EQ(Split("don't"), (Words{"don't"}));
  EXPECT_EQ(Split("x'll y've"), (Words{"x'll", " y've"}));
  EXPECT_EQ(Split("it'x"), (Words{"it", "'x"}));
}

TEST(PreTokenizer, NumbersInGroupsOfThree) {
  EXPECT_EQ(Split("1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(Split("a 12"), (Words{"a", " ", "12"}));
}

TEST(PreTokenizer, WhitespaceRules) {
  EXPECT_EQ(Split("a  b"), (Words{"a", " ", " b"}));          // \s+(?!\S) gives one back
  EXPECT_EQ(Split("a   "), (Words{"a", "   "}));              // trailing run stays whole
  EXPECT_EQ(Split("a \r\n\tb"), (Words{"a", " \r\n", "\tb"}));  // \s*[\r\n]+, then \t leads
  EXPECT_EQ(Split("x!!\n\ny"), (Words{"x", "!!\n\n", "y"}));
  EXPECT_EQ(Split(" !a"), (Words{" !", "a"}));
}

TEST(PreTokenizer, HanIsItsOwnWord) {
  EXPECT_EQ(Split("我们abc中文"), (Words{"我们", "abc", "中文"}));
  EXPECT_EQ(Split("hi 中文"), (Words{"hi", " ", "中文"}));  // the space does not join Han
  EXPECT_EQ(Split("日本語とカタカナ"), (Words{"日本語", "とカタカナ"}));  // kana are not Han
}

TEST(PreTokenizer, CombiningMarksAreNotLetters) {
  // llama.cpp's scanner (unlike the tokenizer.json regex) leaves \p{M} out of words.
  EXPECT_EQ(Split("cafe\xCC\x81 x"), (Words{"cafe", "\xCC\x81", " x"}));
  EXPECT_EQ(Split("e\xCC\x81t"), (Words{"e", "\xCC\x81t"}));
}

TEST(PreTokenizer, DivergesFromHfRegexOnlyWhereDocumented) {
  auto regex = HfKimiRegex::Create();
  ASSERT_TRUE(regex.ok()) << regex.status();
  // Plain text: identical splits.
  for (const std::string text : {"Hello, world! It's 2024.\n\n  def f(x):\n\treturn x*2  ",
                                 "我们的 模型 abc 123456"}) {
    auto hf = regex->Split(text);
    ASSERT_TRUE(hf.ok());
    EXPECT_EQ(*hf, Split(text)) << text;
  }
  // Combining marks: the regex keeps them inside the word, llama.cpp does not.
  auto hf = regex->Split("cafe\xCC\x81");
  ASSERT_TRUE(hf.ok());
  EXPECT_EQ(*hf, (Words{"cafe\xCC\x81"}));
  EXPECT_NE(*hf, Split("cafe\xCC\x81"));
}

TEST(Unicode, LenientDecodingMatchesLlamaCpp) {
  std::vector<uint32_t> cps;
  DecodeUtf8Lenient(std::string("a\xFF\xE4\xB8" "b\xC0\x80\xED\xA0\x80", 10), &cps);
  // 0xFF -> FFFD; truncated E4 B8 -> two FFFD (one per byte); overlong C0 80 -> U+0000;
  // surrogate ED A0 80 -> U+D800 (kept).
  EXPECT_EQ(cps, (std::vector<uint32_t>{'a', 0xFFFD, 0xFFFD, 0xFFFD, 'b', 0, 0xD800}));
}

TEST(Unicode, ByteAlphabet) {
  EXPECT_EQ(ByteToCodepoint('A'), 'A');
  EXPECT_EQ(ByteToCodepoint(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(ByteToCodepoint('\n'), 0x10Au);  // 'Ċ'
  for (int b = 0; b < 256; ++b) EXPECT_EQ(CodepointToByte(ByteToCodepoint(b)), b);
}

// A small vocabulary: 256 byte tokens, a few merges, and special tokens.
VocabData SmallVocab() {
  VocabData v;
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(ToAlphabet(std::string(1, static_cast<char>(b))));
    v.token_types.push_back(1);
  }
  auto merge = [&](const std::string& a, const std::string& b) {
    v.merges.push_back(ToAlphabet(a) + " " + ToAlphabet(b));
    v.tokens.push_back(ToAlphabet(a + b));
    v.token_types.push_back(1);
  };
  merge("l", "l");        // 256
  merge("h", "e");        // 257
  merge("he", "ll");      // 258
  merge("hell", "o");     // 259
  merge(" ", "w");        // 260
  merge(" w", "o");       // 261
  merge("x", "y");        // 262
  merge("l", "d");        // 263
  merge(" wo", "r");      // 264
  merge(" wor", "ld");    // 265
  merge("\xE4\xB8", "\xAD");  // 266: 中 = E4 B8 AD, but E4 B8 is no token yet
  merge("\xE4", "\xB8");  // 267
  auto special = [&](const std::string& text, int type) {
    v.tokens.push_back(text);
    v.token_types.push_back(type);
    return static_cast<int32_t>(v.tokens.size() - 1);
  };
  special("[BOS]", 3);          // 268
  special("[EOS]", 3);          // 269
  special("<|im_end|>", 3);     // 270
  special("<|im_user|>", 3);    // 271
  special("<|im_middle|>", 3);  // 272
  special("<tool>", 4);         // 273, user-defined: split out even without parse_special
  special("<|im_end|>x", 1);    // 274, normal token whose text contains a special
  special("[EOT]", 1);          // 275, llama.cpp promotes it to control by name
  v.bos_id = 268;
  v.eos_id = 269;
  return v;
}

Tokenizer SmallTokenizer() {
  auto t = Tokenizer::FromVocab(SmallVocab());
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(t).value();
}

TEST(Tokenizer, MergesByRank) {
  Tokenizer t = SmallTokenizer();
  EXPECT_EQ(t.Encode("hello world", false), (std::vector<int32_t>{259, 265}));
  // 中 merges E4+B8 (rank 11) first, then (E4B8)+AD (rank 10).
  EXPECT_EQ(t.Encode("\xE4\xB8\xAD", false), (std::vector<int32_t>{266}));
  EXPECT_EQ(*t.Decode({259, 265}), "hello world");
}

TEST(Tokenizer, SpecialTokens) {
  Tokenizer t = SmallTokenizer();
  const std::string text = "hello<|im_end|><tool>[EOT]";
  const auto with = t.Encode(text, true);
  EXPECT_EQ(with, (std::vector<int32_t>{259, 270, 273, 275}));
  const auto without = t.Encode(text, false);
  // Control text is plain bytes without parse_special; user-defined tokens are always split.
  ASSERT_GT(without.size(), 4u);
  EXPECT_EQ(std::count(without.begin(), without.end(), 273), 1);
  EXPECT_EQ(std::count(without.begin(), without.end(), 270), 0);
  EXPECT_EQ(*t.Decode(without), text);
  EXPECT_EQ(*t.Decode(with), text);
  EXPECT_EQ(*t.Decode(with, /*render_special=*/false), "hello<tool>");
  EXPECT_TRUE(t.IsControl(270));
  EXPECT_TRUE(t.IsControl(275));
  EXPECT_FALSE(t.IsControl(273));
  // Longest special first: "<|im_end|>x" (normal type) is not special, so it never matches.
  EXPECT_EQ(t.Encode("<|im_end|>x", true)[0], 270);
  // add_special only adds BOS when the vocabulary asks for it.
  EXPECT_EQ(t.Encode("hello", true, true), (std::vector<int32_t>{259}));
  VocabData v = SmallVocab();
  v.add_bos = true;
  auto with_bos = Tokenizer::FromVocab(v);
  ASSERT_TRUE(with_bos.ok());
  EXPECT_EQ(with_bos->Encode("hello", true, true), (std::vector<int32_t>{268, 259}));
  EXPECT_EQ(t.bos_id(), 268);
  EXPECT_EQ(t.eos_id(), 269);
  EXPECT_EQ(t.pad_id(), -1);
}

TEST(Tokenizer, InvalidUtf8BecomesReplacementCharacter) {
  Tokenizer t = SmallTokenizer();
  const auto ids = t.Encode(std::string("a\xFF", 2), false);
  EXPECT_EQ(*t.Decode(ids), "a\xEF\xBF\xBD");
  // Overlong NUL is re-encoded as a real NUL, exactly as llama.cpp does.
  EXPECT_EQ(*t.Decode(t.Encode(std::string("\xC0\x80", 2), false)), std::string(1, '\0'));
}

TEST(Tokenizer, DecodeRejectsOutOfRange) {
  Tokenizer t = SmallTokenizer();
  EXPECT_FALSE(t.Decode({t.vocab_size()}).ok());
  EXPECT_FALSE(t.Decode({-1}).ok());
}

// Straightforward BPE over byte strings: the definition the fast paths must match.
std::vector<std::string> ReferenceBpe(const std::vector<std::string>& merges_text,
                                      const std::string& word) {
  std::map<std::pair<std::string, std::string>, int> ranks;
  for (size_t i = 0; i < merges_text.size(); ++i) {
    const size_t sp = merges_text[i].find(' ');
    ranks.emplace(std::make_pair(merges_text[i].substr(0, sp), merges_text[i].substr(sp + 1)), i);
  }
  std::vector<std::string> sym;
  for (char c : word) sym.push_back(std::string(1, c));
  while (sym.size() > 1) {
    int best = -1, best_rank = INT_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = ranks.find({sym[i], sym[i + 1]});
      if (it != ranks.end() && it->second < best_rank) best_rank = it->second, best = i;
    }
    if (best < 0) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  return sym;
}

TEST(Tokenizer, ShortAndLongWordsMatchReferenceBpe) {
  // Alphabet {a, b, c}; every two-symbol string up to length 4 is a token with a random rank.
  std::mt19937 rng(42);
  VocabData v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(ToAlphabet(std::string(1, static_cast<char>(b))));
  std::vector<std::string> pieces = {"a", "b", "c"}, merges_raw;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::string> next = pieces;
    for (const auto& x : pieces) {
      for (const auto& y : pieces) {
        if (x.size() + y.size() > 6 || std::find(next.begin(), next.end(), x + y) != next.end()) continue;
        next.push_back(x + y);
        merges_raw.push_back(x + " " + y);
      }
    }
    pieces = next;
  }
  std::shuffle(merges_raw.begin(), merges_raw.end(), rng);
  std::map<std::string, bool> seen;
  for (const auto& m : merges_raw) {
    const size_t sp = m.find(' ');
    const std::string merged = m.substr(0, sp) + m.substr(sp + 1);
    v.merges.push_back(ToAlphabet(m.substr(0, sp)) + " " + ToAlphabet(m.substr(sp + 1)));
    if (!seen[merged]) v.tokens.push_back(ToAlphabet(merged)), seen[merged] = true;
  }
  auto t = Tokenizer::FromVocab(v);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int trial = 0; trial < 300; ++trial) {
    const size_t len = 1 + rng() % (trial % 2 ? 200 : 40);  // both merge paths
    std::string word;
    for (size_t i = 0; i < len; ++i) word.push_back("abc"[rng() % 3]);
    std::vector<std::string> expected_text = ReferenceBpe(merges_raw, word);
    std::vector<int32_t> expected;
    for (const auto& s : expected_text) expected.push_back(t->FindToken(ToAlphabet(s)));
    EXPECT_EQ(t->Encode(word, false), expected) << word;
  }
}

TEST(StreamingDecoder, HoldsSplitCharacters) {
  Tokenizer t = SmallTokenizer();
  // "中" = E4 B8 AD as three byte tokens, then "é" = C3 A9, then a stray continuation byte.
  StreamingDecoder d(t);
  std::string got;
  for (int32_t id : {0xE4, 0xB8}) {
    auto piece = d.Push(id);
    ASSERT_TRUE(piece.ok());
    EXPECT_EQ(*piece, "");
  }
  EXPECT_EQ(*d.Push(0xAD), "\xE4\xB8\xAD");
  EXPECT_EQ(*d.Push(0xC3), "");
  EXPECT_EQ(d.pending_bytes(), 1u);
  EXPECT_EQ(*d.Push(0xA9), "\xC3\xA9");
  EXPECT_EQ(*d.Push(0x80), "\x80");  // can never become valid: passed through
  EXPECT_EQ(*d.Push(259), "hello");
  EXPECT_EQ(*d.Push(0xF0), "");
  EXPECT_EQ(d.Flush(), "\xF0");
  EXPECT_FALSE(d.Push(100000).ok());
}

TEST(StreamingDecoder, ConcatenationEqualsDecode) {
  Tokenizer t = SmallTokenizer();
  const std::string text = "hello 中文 world é 🎉 \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9";
  const auto ids = t.Encode(text, false);
  StreamingDecoder d(t);
  std::string streamed;
  for (int32_t id : ids) {
    auto piece = d.Push(id);
    ASSERT_TRUE(piece.ok());
    EXPECT_EQ(IncompleteUtf8Suffix(*piece), 0u);
    streamed += *piece;
  }
  streamed += d.Flush();
  EXPECT_EQ(streamed, text);
}

TEST(ChatFormat, KimiTemplate) {
  const std::string s = FormatChat({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"},
                                    {"tool", "42"}, {"user", "Again"}});
  EXPECT_EQ(s,
            "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
            "<|im_user|>user<|im_middle|>Hi<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>Hello<|im_end|>"
            "<|im_system|>tool<|im_middle|>42<|im_end|>"
            "<|im_user|>user<|im_middle|>Again<|im_end|>"
            "<|im_assistant|>assistant<|im_middle|>");
  EXPECT_EQ(FormatChat({{"user", "x"}}, false), "<|im_user|>user<|im_middle|>x<|im_end|>");
  Tokenizer t = SmallTokenizer();
  const auto ids = t.Encode(FormatChat({{"user", "hello"}}, false), true);
  EXPECT_EQ(ids, (std::vector<int32_t>{271, 'u', 's', 'e', 'r', 272, 259, 270}));
}

}  // namespace
}  // namespace latentserve::tokenizer
