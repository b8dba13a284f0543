// Per-chunk checksums of the cache handoff: XXH64 (xxHash's 64-bit variant, seed 0) from the
// packaged libxxhash (Debian libxxhash-dev). It reads 32 bytes per round with four independent
// lanes, so it runs at several GB/s on one core and costs little next to gRPC's own copies; a
// 64-bit hash also makes an undetected corrupted chunk far less likely than CRC32's 2^-32.
//
// Xxh64Hasher computes the same value over bytes that arrive in pieces (gRPC slices), so a
// chunk can be verified without first gathering it into one buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

struct XXH64_state_s;

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed = 0);

class Xxh64Hasher {
 public:
  explicit Xxh64Hasher(uint64_t seed = 0);
  ~Xxh64Hasher();
  Xxh64Hasher(Xxh64Hasher&&) noexcept;
  Xxh64Hasher& operator=(Xxh64Hasher&&) noexcept;
  void Update(std::string_view bytes);
  // The hash of everything passed to Update so far (the hasher may keep going).
  uint64_t Digest() const;

 private:
  struct FreeState {
    void operator()(XXH64_state_s* state) const;
  };
  std::unique_ptr<XXH64_state_s, FreeState> state_;
};

}  // namespace latentserve::transfer
