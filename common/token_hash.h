// Hashes of token prefixes in page-sized blocks: a decode worker reports the blocks of the
// prefixes it holds, the router hashes a prompt the same way to find the worker holding the
// longest matching prefix. Block k's hash covers every token before the end of block k
// (chained), so equal hashes mean equal prefixes (up to 2^-64 collisions, which only cost a
// placement: the worker itself matches tokens exactly).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace latentserve {

// splitmix64's finaliser: every input bit reaches every output bit.
inline uint64_t MixTokenHash(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Chained hashes of the first `max_blocks` full blocks of `block_tokens` tokens each.
inline std::vector<uint64_t> PrefixBlockHashes(absl::Span<const int32_t> tokens, int64_t block_tokens,
                                               int64_t max_blocks) {
  std::vector<uint64_t> hashes;
  if (block_tokens <= 0) return hashes;
  uint64_t h = 0x6c6174656e74ULL;  // "latent"
  const int64_t blocks = static_cast<int64_t>(tokens.size()) / block_tokens;
  for (int64_t b = 0; b < blocks && b < max_blocks; ++b) {
    for (int64_t i = b * block_tokens; i < (b + 1) * block_tokens; ++i) {
      h = MixTokenHash(h ^ static_cast<uint32_t>(tokens[i]));
    }
    hashes.push_back(h);
  }
  return hashes;
}

}  // namespace latentserve
