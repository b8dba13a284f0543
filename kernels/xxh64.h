// XXH64 (xxHash's 64-bit variant, Yann Collet's specification) written once for the host and
// the device: the CPU backend hashes rows with it and the CUDA kernel (cuda_row_hash.cu) runs
// the same functions, four threads per row (one per accumulator lane). Values equal libxxhash's
// XXH64 (tests/kernels/row_hash_test.cc checks that). Inputs are read little endian, as on every
// host and GPU we build for.
//
// XXH64 of n >= 32 bytes: four lanes v[0..3], lane j takes bytes [32 s + 8 j, +8) of every
// whole 32-byte stripe s; then the lanes merge, the length is added and the n % 32 tail bytes
// and an avalanche finish the hash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LS_XXH_FN __host__ __device__ __forceinline__
#else
#define LS_XXH_FN inline
#endif

namespace latentserve::kernels::xxh64 {

inline constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
inline constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
inline constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
inline constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
inline constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;
inline constexpr size_t kStripeBytes = 32;

LS_XXH_FN uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Any alignment.
LS_XXH_FN uint64_t Read64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}
LS_XXH_FN uint32_t Read32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

// Lane j's start for seed 0... or any seed.
LS_XXH_FN uint64_t LaneInit(int lane, uint64_t seed = 0) {
  switch (lane) {
    case 0: return seed + kP1 + kP2;
    case 1: return seed + kP2;
    case 2: return seed;
    default: return seed - kP1;
  }
}

LS_XXH_FN uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = Rotl(acc, 31);
  return acc * kP1;
}

LS_XXH_FN uint64_t MergeRound(uint64_t acc, uint64_t lane) {
  acc ^= Round(0, lane);
  return acc * kP1 + kP4;
}

// The four lanes after every whole stripe of an input of >= 32 bytes, merged.
LS_XXH_FN uint64_t MergeLanes(uint64_t v0, uint64_t v1, uint64_t v2, uint64_t v3) {
  uint64_t h = Rotl(v0, 1) + Rotl(v1, 7) + Rotl(v2, 12) + Rotl(v3, 18);
  h = MergeRound(h, v0);
  h = MergeRound(h, v1);
  h = MergeRound(h, v2);
  return MergeRound(h, v3);
}

// Adds the total length, folds in the `tail_bytes` (< 32) bytes after the last whole stripe,
// and avalanches. `h` is MergeLanes(...) for inputs of >= 32 bytes, seed + kP5 for shorter.
LS_XXH_FN uint64_t Finish(uint64_t h, uint64_t total_bytes, const uint8_t* tail, size_t tail_bytes) {
  h += total_bytes;
  while (tail_bytes >= 8) {
    h ^= Round(0, Read64(tail));
    h = Rotl(h, 27) * kP1 + kP4;
    tail += 8;
    tail_bytes -= 8;
  }
  if (tail_bytes >= 4) {
    h ^= static_cast<uint64_t>(Read32(tail)) * kP1;
    h = Rotl(h, 23) * kP2 + kP3;
    tail += 4;
    tail_bytes -= 4;
  }
  while (tail_bytes > 0) {
    h ^= static_cast<uint64_t>(*tail) * kP5;
    h = Rotl(h, 11) * kP1;
    tail++;
    tail_bytes--;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

// The whole hash in one thread (the CPU backend's row hash).
LS_XXH_FN uint64_t Hash(const uint8_t* data, size_t bytes, uint64_t seed = 0) {
  const size_t stripes = bytes / kStripeBytes;
  uint64_t h = seed + kP5;
  if (stripes > 0) {
    uint64_t v0 = LaneInit(0, seed), v1 = LaneInit(1, seed), v2 = LaneInit(2, seed), v3 = LaneInit(3, seed);
    for (size_t s = 0; s < stripes; ++s) {
      const uint8_t* p = data + s * kStripeBytes;
      v0 = Round(v0, Read64(p));
      v1 = Round(v1, Read64(p + 8));
      v2 = Round(v2, Read64(p + 16));
      v3 = Round(v3, Read64(p + 24));
    }
    h = MergeLanes(v0, v1, v2, v3);
  }
  return Finish(h, bytes, data + stripes * kStripeBytes, bytes - stripes * kStripeBytes);
}

}  // namespace latentserve::kernels::xxh64

#undef LS_XXH_FN
