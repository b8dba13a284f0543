// KDA gated delta rule on the GPU: one block per (head, sequence), one thread per value
// column; the head's state S (Dk x Dk f32) lives in shared memory, stored k-major
// (s[k * Dk + v]) so a warp's accesses fall in distinct banks.
// The recurrence runs for prefill too: it computes the same function as the chunked form
// (the CPU reference checks both); a chunked GPU kernel is the next speed step.
#include <cmath>
#include <vector>

#include "kernels/cuda/cuda_backend.h"

namespace latentserve::kernels::cuda {
namespace {

struct KdaSeq {
  int64_t first_token;
  int64_t token_count;
  float* state;  // [Dk (key), Dk (value), H]: element (k, v, h) at (h * Dk + v) * Dk + k
};

__global__ void KdaRecurrentKernel(const float* q, const float* k, const float* v, const float* g, const float* beta,
                                   const KdaSeq* seqs, int64_t dk, int64_t heads, float scale, float* out) {
  extern __shared__ float shared[];
  float* s = shared;                 // [dk][dk]: s[kk * dk + j]
  float* kq = shared + dk * dk;      // k, q, decay of the current token: 3 x dk
  const int64_t h = blockIdx.x;
  const KdaSeq seq = seqs[blockIdx.y];
  const int j = threadIdx.x;  // value column
  float* state = seq.state + h * dk * dk;
  for (int64_t kk = 0; kk < dk; ++kk) s[kk * dk + j] = state[j * dk + kk];
  for (int64_t t = 0; t < seq.token_count; ++t) {
    const int64_t base = ((seq.first_token + t) * heads + h) * dk;
    __syncthreads();
    kq[j] = k[base + j];
    kq[dk + j] = q[base + j];
    kq[2 * dk + j] = expf(g[base + j]);
    __syncthreads();
    float kv = 0;
    for (int64_t kk = 0; kk < dk; ++kk) {
      const float decayed = s[kk * dk + j] * kq[2 * dk + kk];
      s[kk * dk + j] = decayed;
      kv += decayed * kq[kk];
    }
    const float u = beta[(seq.first_token + t) * heads + h] * (v[base + j] - kv);
    float o = 0;
    for (int64_t kk = 0; kk < dk; ++kk) {
      const float updated = s[kk * dk + j] + kq[kk] * u;
      s[kk * dk + j] = updated;
      o += updated * kq[dk + kk];
    }
    out[base + j] = o * scale;
  }
  __syncthreads();
  for (int64_t kk = 0; kk < dk; ++kk) state[j * dk + kk] = s[kk * dk + j];
}

}  // namespace

void CudaBackend::KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                               absl::Span<const SeqSlice> seqs, absl::Span<const KdaStateView> states,
                               int64_t chunk_tokens, const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  CU_CHECK(seqs.size() == states.size() && beta.ne[0] == heads && dk <= 1024);
  if (seqs.empty()) return;
  std::vector<KdaSeq> host;
  for (size_t i = 0; i < seqs.size(); ++i) host.push_back({seqs[i].first_token, seqs[i].token_count, DevF32(states[i].recurrent)});
  auto* device_seqs = static_cast<KdaSeq*>(UploadScratch(3, host.data(), host.size() * sizeof(KdaSeq)));
  const size_t smem = static_cast<size_t>(dk * dk + 3 * dk) * sizeof(float);
  static size_t configured = 0;
  if (smem > 48 * 1024 && smem > configured) {
    CUDA_OK(cudaFuncSetAttribute(KdaRecurrentKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    configured = smem;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(seqs.size()));
  KdaRecurrentKernel<<<grid, static_cast<unsigned>(dk), smem, stream_>>>(DevF32(q), DevF32(k), DevF32(v), DevF32(g),
                                                                         DevF32(beta), device_seqs, dk, heads, scale,
                                                                         DevF32(out));
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
