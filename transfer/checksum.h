// Per-chunk checksums of the cache handoff.
//
// XXH64 (Collet's xxHash, 64-bit variant, seed 0): it reads 32 bytes per round with four
// independent multiply-rotate lanes, so it runs at several GB/s on one core and costs little
// next to gRPC's own copies. The packaged abseil (20220623) has no absl::crc32c, and a
// byte-at-a-time FNV-1a (~1 GB/s) would itself cap the >= 2 GB/s loopback target. A 64-bit
// hash also makes an undetected corrupted chunk far less likely than CRC32's 2^-32.
#pragma once

#include <cstdint>
#include <string_view>

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed = 0);

}  // namespace latentserve::transfer
