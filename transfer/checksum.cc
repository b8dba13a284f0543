#include "transfer/checksum.h"

#include <cstring>

namespace latentserve::transfer {
namespace {

constexpr uint64_t kPrime1 = 11400714785074694791ULL;
constexpr uint64_t kPrime2 = 14029467366897019727ULL;
constexpr uint64_t kPrime3 = 1609587929392839161ULL;
constexpr uint64_t kPrime4 = 9650029242287828579ULL;
constexpr uint64_t kPrime5 = 2870177450012600261ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;  // little-endian hosts only (x86-64, aarch64)
}
inline uint32_t Read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kPrime2;
  acc = Rotl(acc, 31);
  return acc * kPrime1;
}
inline uint64_t MergeRound(uint64_t acc, uint64_t val) {
  acc ^= Round(0, val);
  return acc * kPrime1 + kPrime4;
}

// Consumes whole 32-byte stripes of [p, p + n); returns the bytes consumed.
inline size_t Stripes(uint64_t v[4], const unsigned char* p, size_t n) {
  uint64_t v1 = v[0], v2 = v[1], v3 = v[2], v4 = v[3];
  const size_t whole = n & ~size_t{31};
  for (size_t i = 0; i < whole; i += 32) {
    v1 = Round(v1, Read64(p + i));
    v2 = Round(v2, Read64(p + i + 8));
    v3 = Round(v3, Read64(p + i + 16));
    v4 = Round(v4, Read64(p + i + 24));
  }
  v[0] = v1, v[1] = v2, v[2] = v3, v[3] = v4;
  return whole;
}

// The tail (< 32 bytes) and the avalanche, given the accumulator after the stripes.
inline uint64_t Finalize(uint64_t h, const unsigned char* p, const unsigned char* end) {
  for (; p + 8 <= end; p += 8) h = Rotl(h ^ Round(0, Read64(p)), 27) * kPrime1 + kPrime4;
  if (p + 4 <= end) {
    h = Rotl(h ^ (static_cast<uint64_t>(Read32(p)) * kPrime1), 23) * kPrime2 + kPrime3;
    p += 4;
  }
  for (; p < end; ++p) h = Rotl(h ^ (*p * kPrime5), 11) * kPrime1;
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

inline uint64_t Converge(const uint64_t v[4]) {
  uint64_t h = Rotl(v[0], 1) + Rotl(v[1], 7) + Rotl(v[2], 12) + Rotl(v[3], 18);
  h = MergeRound(h, v[0]);
  h = MergeRound(h, v[1]);
  h = MergeRound(h, v[2]);
  h = MergeRound(h, v[3]);
  return h;
}

}  // namespace

uint64_t Xxh64(std::string_view bytes, uint64_t seed) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  uint64_t h;
  size_t done = 0;
  if (n >= 32) {
    uint64_t v[4] = {seed + kPrime1 + kPrime2, seed + kPrime2, seed, seed - kPrime1};
    done = Stripes(v, p, n);
    h = Converge(v);
  } else {
    h = seed + kPrime5;
  }
  h += static_cast<uint64_t>(n);
  return Finalize(h, p + done, p + n);
}

Xxh64Hasher::Xxh64Hasher(uint64_t seed)
    : seed_(seed), v_{seed + kPrime1 + kPrime2, seed + kPrime2, seed, seed - kPrime1} {}

void Xxh64Hasher::Update(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size();
  total_ += n;
  if (buffered_ > 0) {
    const size_t take = n < 32 - buffered_ ? n : 32 - buffered_;
    std::memcpy(buffer_ + buffered_, p, take);
    buffered_ += take;
    p += take;
    n -= take;
    if (buffered_ < 32) return;
    Stripes(v_, buffer_, 32);
    buffered_ = 0;
  }
  const size_t done = Stripes(v_, p, n);
  buffered_ = n - done;
  if (buffered_ > 0) std::memcpy(buffer_, p + done, buffered_);
}

uint64_t Xxh64Hasher::Digest() const {
  uint64_t h = total_ >= 32 ? Converge(v_) : seed_ + kPrime5;
  h += total_;
  return Finalize(h, buffer_, buffer_ + buffered_);
}

}  // namespace latentserve::transfer
