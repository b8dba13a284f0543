// Element-wise device math shared by a fused kernel and the separate kernels it replaces, so
// that both compile the same expression and agree bitwise (GatedRmsNorm against Sigmoid +
// RmsNorm + Mul, KdaGateAndBeta against KdaGate + Sigmoid, the one-pass short convolution
// against the conv and tail kernels).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace latentserve::kernels::cuda {

__device__ __forceinline__ float SigmoidOf(float x) { return 1.0f / (1.0f + expf(-x)); }

// One channel of KdaGate: a * softplus(f + dt_bias), softplus(x) = x past 20.
__device__ __forceinline__ float KdaDecayOf(float f, float dt_bias, float a) {
  const float x = f + dt_bias;
  const float softplus = x > 20.0f ? x : log1pf(expf(x));
  return a * softplus;
}

// One output of ShortConvSilu: silu(sum_j w[j] * window(j)), taps in order (window(taps - 1) is
// the current token).
template <typename Window>
__device__ __forceinline__ float ConvSiluOf(const float* w, int64_t taps, Window window) {
  float acc = 0;
  for (int64_t j = 0; j < taps; ++j) acc += w[j] * window(j);
  return acc / (1.0f + expf(-acc));
}

}  // namespace latentserve::kernels::cuda
