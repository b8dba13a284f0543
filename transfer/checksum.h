// Per-chunk checksums of the cache handoff.
//
// XXH64 (Collet's xxHash, 64-bit variant, seed 0): it reads 32 bytes per round with four
// independent multiply-rotate lanes, so it runs at several GB/s on one core and costs little
// next to gRPC's own copies. The packaged abseil (20220623) has no absl::crc32c, and a
// byte-at-a-time FNV-1a (~1 GB/s) would itself cap the >= 2 GB/s loopback target. A 64-bit
// hash also makes an undetected corrupted chunk far less likely than CRC32's 2^-32.
//
// Xxh64Hasher computes the same value over bytes that arrive in pieces (gRPC slices), so a
// chunk can be verified without first gathering it into one buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed = 0);

class Xxh64Hasher {
 public:
  explicit Xxh64Hasher(uint64_t seed = 0);
  void Update(std::string_view bytes);
  // The hash of everything passed to Update so far (the hasher may keep going).
  uint64_t Digest() const;

 private:
  uint64_t seed_;
  uint64_t v_[4];
  uint64_t total_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

}  // namespace latentserve::transfer
