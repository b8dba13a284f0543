#include "common/tokenizer/pretokenizer.h"

#include "common/tokenizer/unicode.h"

namespace latentserve::tokenizer {
namespace {

// A letter that can be part of a non-Han word.
inline bool IsWordLetter(uint8_t cls) { return (cls & (kClassLetter | kClassHan)) == kClassLetter; }
inline bool IsOther(uint8_t cls) {
  return (cls & (kClassLetter | kClassNumber | kClassWhitespace)) == 0;
}
inline uint32_t AsciiLower(uint32_t cp) { return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp; }

}  // namespace

void SplitKimiK2(const uint32_t* cps, size_t n, std::vector<uint32_t>* word_lengths) {
  // Class of position i; positions past the end have no class at all (llama.cpp's
  // OUT_OF_RANGE), which differs from "other": an in-range code point is never class-less.
  auto cls = [&](size_t i) -> uint8_t { return ClassOf(cps[i]); };
  size_t word_start = 0;
  auto emit = [&](size_t end) {
    if (end > word_start) word_lengths->push_back(static_cast<uint32_t>(end - word_start));
    word_start = end;
  };

  size_t pos = 0;
  while (pos < n) {
    const uint32_t cp = cps[pos];
    const uint8_t c = cls(pos);

    // [\p{Han}]+
    if (c & kClassHan) {
      while (pos < n && (cls(pos) & kClassHan)) ++pos;
      emit(pos);
      continue;
    }

    // [^\r\n\p{L}\p{N}]? letters+ contraction?
    const bool can_lead = cp != '\r' && cp != '\n' && !(c & (kClassLetter | kClassNumber));
    if (IsWordLetter(c) || (can_lead && pos + 1 < n && IsWordLetter(cls(pos + 1)))) {
      if (can_lead) ++pos;
      while (pos < n && IsWordLetter(cls(pos))) ++pos;
      if (pos + 1 < n && cps[pos] == '\'') {
        const uint32_t a = AsciiLower(cps[pos + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') {
          pos += 2;
        } else if (pos + 2 < n) {
          const uint32_t b = AsciiLower(cps[pos + 2]);
          if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) pos += 3;
        }
      }
      emit(pos);
      continue;
    }

    // \p{N}{1,3}
    if (c & kClassNumber) {
      size_t run = 0;
      while (pos < n && (cls(pos) & kClassNumber)) {
        ++pos;
        if (++run == 3) {
          emit(pos);
          run = 0;
        }
      }
      emit(pos);
      continue;
    }

    // ' '?[^\s\p{L}\p{N}]+[\r\n]*
    const bool space_then_other = cp == ' ' && pos + 1 < n && IsOther(cls(pos + 1));
    if (IsOther(c) || space_then_other) {
      if (cp == ' ') ++pos;
      while (pos < n && IsOther(cls(pos))) ++pos;
      while (pos < n && (cps[pos] == '\r' || cps[pos] == '\n')) ++pos;
      emit(pos);
      continue;
    }

    // Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
    size_t ws_end = pos;
    size_t after_last_newline = 0;
    while (ws_end < n && (cls(ws_end) & kClassWhitespace)) {
      if (cps[ws_end] == '\r' || cps[ws_end] == '\n') after_last_newline = ws_end + 1;
      ++ws_end;
    }
    if (after_last_newline > 0) {
      pos = after_last_newline;
    } else if (ws_end - pos > 1 && ws_end < n) {
      pos = ws_end - 1;
    } else if (ws_end > pos) {
      pos = ws_end;
    } else {
      ++pos;  // unreachable for in-range input; kept so the loop always advances
    }
    emit(pos);
  }
}

}  // namespace latentserve::tokenizer
