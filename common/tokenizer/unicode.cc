#include "common/tokenizer/unicode.h"

#include <array>

namespace latentserve::tokenizer {
namespace {

struct CodepointRange {
  uint32_t first;
  uint32_t last;
};
#include "common/tokenizer/unicode_tables.inc"

constexpr uint32_t kMaxCodepoint = 0x10FFFF;

// White_Space code points (PropList.txt), the set llama.cpp matches with \s.
constexpr uint32_t kWhitespace[] = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680,
                                    0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
                                    0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F,
                                    0x205F, 0x3000};

// The ideograph blocks llama.cpp's kimi-k2 splitter treats as Han (unicode_cpt_is_han).
constexpr CodepointRange kHanRanges[] = {
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},   {0x20000, 0x2A6DF},
    {0x2A700, 0x2B73F}, {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2CEB0, 0x2EBEF},
    {0x2F800, 0x2FA1F},
};

// One byte per code point (1.1 MB), built once; a lookup is a single load.
const std::vector<uint8_t>& ClassTable() {
  static const std::vector<uint8_t>* table = [] {
    auto* t = new std::vector<uint8_t>(kMaxCodepoint + 1, 0);
    auto fill = [t](const CodepointRange* ranges, size_t n, uint8_t bit) {
      for (size_t i = 0; i < n; ++i) {
        for (uint32_t cp = ranges[i].first; cp <= ranges[i].last; ++cp) (*t)[cp] |= bit;
      }
    };
    fill(kLetterRanges, std::size(kLetterRanges), kClassLetter);
    fill(kNumberRanges, std::size(kNumberRanges), kClassNumber);
    fill(kHanRanges, std::size(kHanRanges), kClassHan);
    for (uint32_t cp : kWhitespace) (*t)[cp] |= kClassWhitespace;
    return t;
  }();
  return *table;
}

struct ByteMaps {
  std::array<uint32_t, 256> byte_to_cp;
  std::array<int16_t, 324> cp_to_byte;  // all images are below 256 + 68
};

const ByteMaps& GetByteMaps() {
  static const ByteMaps maps = [] {
    ByteMaps m;
    m.cp_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? b : 256 + extra++;
      m.byte_to_cp[b] = cp;
      m.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return maps;
}

}  // namespace

uint8_t ClassOf(uint32_t cp) { return cp <= kMaxCodepoint ? ClassTable()[cp] : 0; }

uint32_t DecodeUtf8Lenient(std::string_view text, size_t* offset) {
  const size_t i = *offset;
  const size_t n = text.size();
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const auto cont = [&](size_t k) { return k < n && (byte(k) & 0xC0) == 0x80; };
  const uint8_t b0 = byte(i);
  if (b0 < 0x80) {
    *offset = i + 1;
    return b0;
  }
  // Only the structure is checked (lead bits + continuation bits), as llama.cpp does.
  if ((b0 & 0xE0) == 0xC0 && cont(i + 1)) {
    *offset = i + 2;
    return ((b0 & 0x1Fu) << 6) | (byte(i + 1) & 0x3Fu);
  }
  if ((b0 & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
    *offset = i + 3;
    return ((b0 & 0x0Fu) << 12) | ((byte(i + 1) & 0x3Fu) << 6) | (byte(i + 2) & 0x3Fu);
  }
  if ((b0 & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
    *offset = i + 4;
    return ((b0 & 0x07u) << 18) | ((byte(i + 1) & 0x3Fu) << 12) | ((byte(i + 2) & 0x3Fu) << 6) |
           (byte(i + 3) & 0x3Fu);
  }
  *offset = i + 1;
  return kReplacementChar;
}

void DecodeUtf8Lenient(std::string_view text, std::vector<uint32_t>* out) {
  out->reserve(out->size() + text.size());
  size_t offset = 0;
  while (offset < text.size()) {
    const uint8_t b = static_cast<uint8_t>(text[offset]);
    if (b < 0x80) {  // fast path for ASCII
      out->push_back(b);
      ++offset;
      continue;
    }
    out->push_back(DecodeUtf8Lenient(text, &offset));
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= kMaxCodepoint) {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    AppendUtf8(kReplacementChar, out);
  }
}

uint32_t ByteToCodepoint(uint8_t byte) { return GetByteMaps().byte_to_cp[byte]; }

int CodepointToByte(uint32_t cp) {
  const auto& maps = GetByteMaps();
  return cp < maps.cp_to_byte.size() ? maps.cp_to_byte[cp] : -1;
}

}  // namespace latentserve::tokenizer
