// The byte-level BPE tokenizer on arbitrary bytes, over a small vocabulary built once
// (256 byte tokens, merges, control / user-defined specials, BOS/EOS).
// Invariants checked on every input:
//  - every id Encode returns is inside the vocabulary and Decode accepts it;
//  - for valid UTF-8 (strict: no surrogates, no overlongs), Decode(Encode(text)) == text, with
//    and without parse_special;
//  - StreamingDecoder's pieces plus Flush() equal Decode() byte for byte;
//  - the input read as little-endian int32 ids: Decode fails exactly when an id is out of range.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "common/tokenizer/detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/unicode.h"

namespace {

using latentserve::tokenizer::AppendUtf8;
using latentserve::tokenizer::ByteToCodepoint;
using latentserve::tokenizer::StreamingDecoder;
using latentserve::tokenizer::Tokenizer;
using latentserve::tokenizer::VocabData;

std::string ToAlphabet(std::string_view bytes) {
  std::string out;
  for (char c : bytes) AppendUtf8(ByteToCodepoint(static_cast<uint8_t>(c)), &out);
  return out;
}

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
  merge("l", "l");
  merge("h", "e");
  merge("he", "ll");
  merge("hell", "o");
  merge(" ", "w");
  merge(" w", "o");
  merge(" wo", "r");
  merge("l", "d");
  merge(" wor", "ld");
  merge("\xE4\xB8", "\xAD");  // a merge whose left side is not a token yet
  merge("\xE4", "\xB8");
  merge("\n", "\n");
  merge("1", "2");
  merge("12", "3");
  merge(" ", " ");
  auto special = [&](const std::string& text, int type) {
    v.tokens.push_back(text);
    v.token_types.push_back(type);
  };
  special("[BOS]", 3);
  special("[EOS]", 3);
  special("<|im_end|>", 3);
  special("<|im_user|>", 3);
  special("<|im_middle|>", 3);
  special("<tool>", 4);        // user-defined: split out even without parse_special
  special("<|im_end|>x", 1);   // normal token whose text contains a special
  special("[EOT]", 1);         // promoted to control by name
  special("[UNK]", 2);
  v.bos_id = 256 + 15;
  v.eos_id = 256 + 16;
  return v;
}

const Tokenizer& SharedTokenizer() {
  static const Tokenizer* tokenizer = [] {
    auto t = Tokenizer::FromVocab(SmallVocab());
    if (!t.ok()) std::abort();
    return new Tokenizer(std::move(t).value());
  }();
  return *tokenizer;
}

// Strict UTF-8: what the lenient decoder passes through unchanged.
bool IsStrictUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t b = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp;
    if (b < 0x80) { ++i; continue; }
    if ((b & 0xE0) == 0xC0) { n = 2; cp = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { n = 3; cp = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { n = 4; cp = b & 0x07; }
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const uint8_t c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

void CheckIds(const Tokenizer& t, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= t.vocab_size()) std::abort();
  }
}

void CheckStreaming(const Tokenizer& t, const std::vector<int32_t>& ids, bool render_special) {
  auto whole = t.Decode(ids, render_special);
  if (!whole.ok()) std::abort();
  StreamingDecoder decoder(t, render_special);
  std::string streamed;
  for (int32_t id : ids) {
    auto piece = decoder.Push(id);
    if (!piece.ok()) std::abort();
    streamed += *piece;
  }
  streamed += decoder.Flush();
  if (streamed != *whole) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return 0;  // long inputs only slow the search; BPE is per word
  const Tokenizer& t = SharedTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const bool strict = IsStrictUtf8(text);

  for (bool parse_special : {false, true}) {
    const std::vector<int32_t> ids = t.Encode(text, parse_special, /*add_special=*/parse_special);
    CheckIds(t, ids);
    auto decoded = t.Decode(ids);
    if (!decoded.ok()) std::abort();
    if (strict) {
      std::string expected(text);
      if (parse_special && t.add_bos()) expected = t.Piece(t.bos_id()) + expected;
      if (*decoded != expected) std::abort();
    }
    CheckStreaming(t, ids, /*render_special=*/parse_special);
  }

  // The bytes as raw ids, as a client's token list would arrive.
  std::vector<int32_t> raw_ids(size / 4);
  if (!raw_ids.empty()) std::memcpy(raw_ids.data(), data, raw_ids.size() * 4);
  bool in_range = true;
  for (int32_t id : raw_ids) in_range = in_range && id >= 0 && id < t.vocab_size();
  if (t.Decode(raw_ids).ok() != in_range) std::abort();
  if (in_range) CheckStreaming(t, raw_ids, /*render_special=*/false);
  return 0;
}
