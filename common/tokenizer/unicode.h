// Unicode helpers for the byte-level BPE tokenizer: lenient UTF-8 decoding, the code point
// classes the kimi-k2 pre-tokenizer needs, and GPT-2's byte <-> printable code point map.
//
// Everything here reproduces llama.cpp's behaviour (src/unicode.cpp), including its quirks,
// because token ids must match it exactly:
// - Decoding never fails. A byte that cannot start a well-formed sequence (stray continuation
//   byte, 0xF8..0xFF lead, truncated sequence) becomes one U+FFFD and decoding resumes at the
//   next byte. Overlong forms and surrogates are NOT rejected: C0 80 decodes to U+0000 and
//   ED A0 80 to U+D800, exactly like llama.cpp.
// - Letters and numbers follow Unicode 15.1 (llama.cpp's table), not the newest Unicode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace latentserve::tokenizer {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Class bits of one code point, as the kimi-k2 pre-tokenizer sees them.
enum CodepointClass : uint8_t {
  kClassLetter = 1 << 0,      // \p{L}
  kClassNumber = 1 << 1,      // \p{N}
  kClassWhitespace = 1 << 2,  // \s as llama.cpp defines it (Unicode White_Space)
  kClassHan = 1 << 3,         // CJK ideographs (the ranges llama.cpp calls \p{Han})
};

// Class bits of `cp`; 0 for code points beyond U+10FFFF.
uint8_t ClassOf(uint32_t cp);

// Decodes the next code point at text[*offset] and advances *offset (see the header comment).
uint32_t DecodeUtf8Lenient(std::string_view text, size_t* offset);

// Decodes all of `text`, appending its code points to `out`.
void DecodeUtf8Lenient(std::string_view text, std::vector<uint32_t>* out);

// Appends the UTF-8 encoding of `cp`. Code points above U+10FFFF (which lenient decoding can
// produce from F5..F7 leads) are written as U+FFFD; llama.cpp throws on them instead.
void AppendUtf8(uint32_t cp, std::string* out);

// Length of the UTF-8 sequence announced by lead byte `b` (1 for continuation/invalid bytes).
inline size_t Utf8SequenceLength(uint8_t b) {
  if (b < 0xC0) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF8) return 4;
  return 1;
}

// GPT-2's reversible byte -> printable code point map (bytes that are printable Latin-1 map to
// themselves, the other 68 to U+0100 + n in byte order).
uint32_t ByteToCodepoint(uint8_t byte);
// Inverse map; returns -1 when `cp` is not the image of any byte.
int CodepointToByte(uint32_t cp);

}  // namespace latentserve::tokenizer
