// Pre-tokenizers split text into words before BPE; merges never cross a word boundary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace latentserve::tokenizer {

// The kimi-k2 split, as llama.cpp implements it (unicode_regex_split_custom_kimi_k2). Appends
// the length, in code points, of each consecutive word of cps[0, n) to `word_lengths`.
//
// Kimi's tokenizer.json describes it with this regex:
//   [\p{Han}]+
//   | [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
// llama.cpp does not run that regex; it runs a hand-written scanner that differs from it, and we
// follow the scanner, not the regex (so no regex engine, PCRE2 included, reproduces it):
// - a word's letters are \p{L} minus Han only: combining marks (\p{M}) are NOT part of words,
//   so "e\u0301" splits after "e" and the mark starts a punctuation-like run (or becomes the
//   optional leading character of the next word);
// - upper/lower case plays no role (the two letter alternatives collapse into "any letters");
// - the contraction suffix is matched right after the letters as in the regex;
// - \s+(?!\S) gives back one whitespace character only when more text follows in the same
//   fragment, which is what the regex does too.
void SplitKimiK2(const uint32_t* cps, size_t n, std::vector<uint32_t>* word_lengths);

}  // namespace latentserve::tokenizer
