// KDA's per-channel ops: the decay gate (alone, or with the mixing logits' sigmoid in the same
// launch) and the causal short convolution with its carried tail. A decode step runs these
// once per KDA layer (20 of the model's 27 layers), where each launch saved is ~2.5 us of a
// ~660-kernel step (issue 10), so the decode forms are one kernel each: KdaGateAndBeta
// instead of KdaGate + Sigmoid, and one pass per (channel, sequence) that reads the old tail,
// writes the outputs and the new tail, for all short sequences of a call at once, instead of
// a conv and a tail kernel per sequence.
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/elementwise.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void KdaGateKernel(const float* f, const float* bias, const float* a, int64_t width, int64_t head_dim,
                              float* g, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t c = i % width;
  g[i] = KdaDecayOf(f[i], bias[c], a[c / head_dim]);
}

// KdaGateKernel over g's g_count elements and SigmoidKernel over beta's, in one grid: thread
// i < g_count takes g[i], the next beta_count threads beta[i - g_count].
__global__ void KdaGateBetaKernel(const float* f, const float* bias, const float* a, int64_t width, int64_t head_dim,
                                  float* g, int64_t g_count, const float* beta_logits, float* beta,
                                  int64_t beta_count) {
  AllowDependents();
  WaitForPredecessor();  // launched dependent: f and the logits come from the GEMVs before
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < g_count) {
    const int64_t c = i % width;
    g[i] = KdaDecayOf(f[i], bias[c], a[c / head_dim]);
  } else if (i - g_count < beta_count) {
    beta[i - g_count] = SigmoidOf(beta_logits[i - g_count]);
  }
}

// One thread per (channel, token): reads its window from the carried tail and the new inputs.
__global__ void ShortConvKernel(const float* x, const float* w, const float* tail, int64_t channels, int64_t taps,
                                int64_t first, int64_t count, float* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= channels * count) return;
  const int64_t t = i / channels, c = i % channels;
  y[(first + t) * channels + c] = ConvSiluOf(w + c * taps, taps, [&](int64_t j) {
    const int64_t src = t + j - (taps - 1);  // < 0: from the tail
    return src >= 0 ? x[(first + src) * channels + c] : tail[c * (taps - 1) + (taps - 1 + src)];
  });
}

// New tail = the last taps-1 values of [old tail, x]; run after ShortConvKernel.
__global__ void ShortConvTailKernel(const float* x, float* tail, int64_t channels, int64_t taps, int64_t first,
                                    int64_t count) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  float* prev = tail + c * (taps - 1);
  float window[8];  // taps - 1 <= 8
  for (int64_t j = 0; j < taps - 1; ++j) {
    const int64_t src = count - (taps - 1) + j;  // index into x's new tokens
    window[j] = src >= 0 ? x[(first + src) * channels + c] : prev[j + count];
  }
  for (int64_t j = 0; j < taps - 1; ++j) prev[j] = window[j];
}

// The one-pass form: sequences of at most kStepMaxTokens new tokens, kStepTaps taps (the
// model's d_conv), up to kStepSeqs of them per launch (their list travels in the kernel's
// parameters: no upload, nothing to record but the launch).
constexpr int kStepTaps = 4;
constexpr int64_t kStepMaxTokens = 8;  // a thread walks its sequence's tokens in order
constexpr int kStepSeqs = 32;

struct ConvStepSeq {
  float* tail;  // [channels][taps - 1] of this sequence (the `which` part of its conv state)
  int64_t first_token;
  int64_t token_count;
};
struct ConvStepBatch {
  ConvStepSeq seqs[kStepSeqs];
};

// Thread (channel c, sequence blockIdx.y): the old tail into registers, each new token through
// the window in token order (the conv and silu of ShortConvKernel), then the window's last
// kTaps - 1 values back as the new tail. A channel's tail is read and written by its thread
// alone, so reading it before overwriting it needs no ordering between threads.
template <int kTaps>
__global__ void __launch_bounds__(kThreads) ShortConvStepKernel(const float* x, const float* w,
                                                                const __grid_constant__ ConvStepBatch batch,
                                                                int64_t channels, float* y) {
  AllowDependents();
  WaitForPredecessor();  // launched dependent: x comes from the GEMV before
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  const ConvStepSeq& seq = batch.seqs[blockIdx.y];
  float* tail = seq.tail + c * (kTaps - 1);
  float taps[kTaps], window[kTaps];  // window: [tail (oldest first), current token]
#pragma unroll
  for (int j = 0; j < kTaps; ++j) taps[j] = w[c * kTaps + j];
#pragma unroll
  for (int j = 0; j < kTaps - 1; ++j) window[j] = tail[j];
  for (int64_t t = 0; t < seq.token_count; ++t) {
    const int64_t at = (seq.first_token + t) * channels + c;
    window[kTaps - 1] = x[at];
    y[at] = ConvSiluOf(taps, kTaps, [&](int64_t j) { return window[j]; });
#pragma unroll
    for (int j = 0; j < kTaps - 1; ++j) window[j] = window[j + 1];
  }
#pragma unroll
  for (int j = 0; j < kTaps - 1; ++j) tail[j] = window[j];
}

}  // namespace

void CudaBackend::KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim, const Tensor& g) {
  CU_CHECK(dt_bias.elements() == f.ne[0] && a.elements() * head_dim == f.ne[0]);
  KdaGateKernel<<<Blocks(f.elements(), kThreads), kThreads, 0, stream_>>>(DevF32(f), DevF32(dt_bias), DevF32(a), f.ne[0],
                                                                          head_dim, DevF32(g), f.elements());
  LAUNCH_OK();
}

void CudaBackend::KdaGateAndBeta(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
                                 const Tensor& g, const Tensor& beta_logits, const Tensor& beta) {
  CU_CHECK(dt_bias.elements() == f.ne[0] && a.elements() * head_dim == f.ne[0] && f.elements() == g.elements() &&
           beta_logits.elements() == beta.elements());
  const int64_t total = f.elements() + beta.elements();
  if (total == 0) return;
  CUDA_OK(LaunchDependent(KdaGateBetaKernel, dim3(Blocks(total, kThreads)), dim3(kThreads), 0, stream_, DevF32(f),
                          DevF32(dt_bias), DevF32(a), f.ne[0], head_dim, DevF32(g), f.elements(),
                          DevF32(beta_logits), DevF32(beta), beta.elements()));
}

void CudaBackend::ShortConvSilu(const Tensor& x, const Tensor& weight, int which, absl::Span<const SeqSlice> seqs,
                                absl::Span<const KdaStateView> states, const Tensor& y) {
  const int64_t channels = x.ne[0], taps = weight.ne[0];
  CU_CHECK(weight.dtype == DType::kF32 && weight.rows() == channels && seqs.size() == states.size() && taps <= 9);
  // LATENTSERVE_SHORT_CONV=split: every sequence through the conv and tail kernels (the
  // before/after of one binary; the op tests compare the two forms bitwise).
  const char* forced = std::getenv("LATENTSERVE_SHORT_CONV");
  const bool one_pass = taps == kStepTaps && !(forced != nullptr && std::strcmp(forced, "split") == 0);
  ConvStepBatch batch = {};
  unsigned batched = 0;
  const auto launch_batch = [&] {
    if (batched == 0) return;
    CUDA_OK(LaunchDependent(ShortConvStepKernel<kStepTaps>, dim3(Blocks(channels, kThreads), batched), dim3(kThreads),
                            0, stream_, DevF32(x), DevF32(weight), batch, channels, DevF32(y)));
    batched = 0;
  };
  for (size_t s = 0; s < seqs.size(); ++s) {
    float* tail = DevF32(states[s].conv) + which * channels * (taps - 1);
    const int64_t n = seqs[s].token_count;
    if (n == 0) continue;
    if (one_pass && n <= kStepMaxTokens) {  // sequences touch disjoint tails and columns: any order
      batch.seqs[batched++] = {tail, seqs[s].first_token, n};
      if (batched == kStepSeqs) launch_batch();
      continue;
    }
    // Many tokens: a thread per (channel, token), then the tail.
    ShortConvKernel<<<Blocks(channels * n, kThreads), kThreads, 0, stream_>>>(DevF32(x), DevF32(weight), tail, channels,
                                                                              taps, seqs[s].first_token, n, DevF32(y));
    LAUNCH_OK();
    ShortConvTailKernel<<<Blocks(channels, kThreads), kThreads, 0, stream_>>>(DevF32(x), tail, channels, taps,
                                                                              seqs[s].first_token, n);
    LAUNCH_OK();
  }
  launch_batch();
}

}  // namespace latentserve::kernels::cuda
