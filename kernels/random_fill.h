// The hash behind Backend::FillRandom, shared by the CPU and CUDA implementations so both
// produce identical tensors.
#pragma once

#include <cstdint>

#ifndef LS_HOST_DEVICE
#if defined(__CUDACC__)
#define LS_HOST_DEVICE __host__ __device__
#else
#define LS_HOST_DEVICE
#endif
#endif

namespace latentserve::kernels {

LS_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) for element `index` of a tensor filled with `seed`.
LS_HOST_DEVICE inline float HashUniform(uint64_t seed, uint64_t index) {
  const uint64_t bits = SplitMix64(seed * 0x100000001B3ull ^ SplitMix64(index));
  return static_cast<float>(bits >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

}  // namespace latentserve::kernels
