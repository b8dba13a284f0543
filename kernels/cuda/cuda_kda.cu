// KDA gated delta rule on the GPU: one block per (head, sequence), one thread per value
// column; the head's state S (Dk x Dk f32) lives in shared memory, stored k-major
// (s[k * Dk + v]) so a warp's accesses fall in distinct banks.
// Prefill (chunk_tokens > 0) takes the chunked form in cuda_kda_chunk.cu for sequences of at
// least kKdaChunkedMinTokens new tokens where it is built for the head size; decode, shorter
// sequences and other head sizes run the recurrence here (the same function).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"

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

// Faster form of the same recurrence: value columns evolve independently, so a block takes 32
// columns of one head and 4 threads split each column's Dk keys; the state lives in registers
// (kPerThread values per thread) and each token costs two 4-lane shuffle reductions. The 4
// threads of a column take its keys in interleaved runs of kVec (thread p: keys kVec (p + 4 j)
// ...), so a warp's state loads and stores are whole 64-byte runs per column (float4s): with
// contiguous 32-key slices per thread each access touched 32 lines and a decode step's state
// traffic cost ~15 us per KDA layer (ncu).
constexpr int kColumns = 32, kParts = 4;

template <int kPerThread>
__global__ void __launch_bounds__(kColumns * kParts) KdaColumnsKernel(
    const float* q, const float* k, const float* v, const float* g, const float* beta, const KdaSeq* seqs,
    int64_t heads, float scale, float* out) {
  AllowDependents();
  constexpr int dk = kPerThread * kParts;
  __shared__ float kqd[3][dk];  // key, query, decay of the current token
  const int64_t h = blockIdx.x / ((dk + kColumns - 1) / kColumns);
  const int group = blockIdx.x % ((dk + kColumns - 1) / kColumns);
  const KdaSeq seq = seqs[blockIdx.y];
  const int tid = threadIdx.x, part = tid % kParts;
  const int column = group * kColumns + tid / kParts;
  const bool active = column < dk;
  float* state = seq.state + h * dk * dk;
  constexpr int kVec = kPerThread % 4 == 0 ? 4 : 1;
  // Key of this thread's i-th state value.
  auto key = [part](int i) { return kVec * (part + kParts * (i / kVec)) + i % kVec; };
  float s[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; i += kVec) {
    if constexpr (kVec == 4) {
      const float4 v4 = active ? *reinterpret_cast<const float4*>(state + column * dk + key(i)) : make_float4(0, 0, 0, 0);
      s[i] = v4.x, s[i + 1] = v4.y, s[i + 2] = v4.z, s[i + 3] = v4.w;
    } else {
      s[i] = active ? state[column * dk + key(i)] : 0.0f;
    }
  }
  // Launched dependent: the state (this layer's, last written by an earlier step) and the
  // sequences (uploaded by a copy, which no kernel overtakes) are read above while the kernels
  // before finish; q, k, v, g and beta come from them.
  WaitForPredecessor();
  for (int64_t t = 0; t < seq.token_count; ++t) {
    const int64_t base = ((seq.first_token + t) * heads + h) * dk;
    __syncthreads();
    for (int i = tid; i < dk; i += kColumns * kParts) {
      kqd[0][i] = k[base + i];
      kqd[1][i] = q[base + i];
      kqd[2][i] = expf(g[base + i]);
    }
    __syncthreads();
    float kv = 0;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      s[i] *= kqd[2][key(i)];
      kv += s[i] * kqd[0][key(i)];
    }
    kv += __shfl_xor_sync(0xffffffff, kv, 1);
    kv += __shfl_xor_sync(0xffffffff, kv, 2);
    const float u = active ? beta[(seq.first_token + t) * heads + h] * (v[base + column] - kv) : 0.0f;
    float o = 0;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      s[i] += kqd[0][key(i)] * u;
      o += s[i] * kqd[1][key(i)];
    }
    o += __shfl_xor_sync(0xffffffff, o, 1);
    o += __shfl_xor_sync(0xffffffff, o, 2);
    if (active && part == 0) out[base + column] = o * scale;
  }
  if (active) {
#pragma unroll
    for (int i = 0; i < kPerThread; i += kVec) {
      if constexpr (kVec == 4) {
        *reinterpret_cast<float4*>(state + column * dk + key(i)) = make_float4(s[i], s[i + 1], s[i + 2], s[i + 3]);
      } else {
        state[column * dk + key(i)] = s[i];
      }
    }
  }
}

}  // namespace

void CudaBackend::KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                               absl::Span<const SeqSlice> seqs, absl::Span<const KdaStateView> states,
                               int64_t chunk_tokens, const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  CU_CHECK(seqs.size() == states.size() && beta.ne[0] == heads && dk <= 1024);
  if (seqs.empty()) return;
  // Prefill: sequences with enough new tokens take the chunked form; the rest (decode steps
  // batched with a prefill) stay here, where a few tokens cost less than a chunk's fixed work.
  std::vector<SeqSlice> recurrent_seqs;
  std::vector<KdaStateView> recurrent_states;
  // LATENTSERVE_KDA_FORM=recurrent keeps prefill on the recurrence (before/after measurements).
  const char* forced = std::getenv("LATENTSERVE_KDA_FORM");
  if (chunk_tokens > 0 && !(forced != nullptr && std::strcmp(forced, "recurrent") == 0)) {
    std::vector<SeqSlice> chunked_seqs;
    std::vector<KdaStateView> chunked_states;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const bool chunked = seqs[i].token_count >= kKdaChunkedMinTokens;
      (chunked ? chunked_seqs : recurrent_seqs).push_back(seqs[i]);
      (chunked ? chunked_states : recurrent_states).push_back(states[i]);
    }
    if (!chunked_seqs.empty() && KdaChunkedAttention(q, k, v, g, beta, chunked_seqs, chunked_states, out)) {
      if (recurrent_seqs.empty()) return;
      seqs = recurrent_seqs;
      states = recurrent_states;
    }
  }
  std::vector<KdaSeq> host;
  for (size_t i = 0; i < seqs.size(); ++i) host.push_back({seqs[i].first_token, seqs[i].token_count, DevF32(states[i].recurrent)});
  auto* device_seqs = static_cast<KdaSeq*>(UploadScratch(3, host.data(), host.size() * sizeof(KdaSeq)));
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  const unsigned groups = static_cast<unsigned>((dk + kColumns - 1) / kColumns);
  const dim3 columns_grid(static_cast<unsigned>(heads) * groups, static_cast<unsigned>(seqs.size()));
#define LS_KDA_COLUMNS(PER)                                                                                    \
  CUDA_OK(LaunchDependent(KdaColumnsKernel<PER>, columns_grid, dim3(kColumns * kParts), 0, stream_, DevF32(q),      \
                          DevF32(k), DevF32(v), DevF32(g), DevF32(beta), device_seqs, heads, scale, DevF32(out)))
  switch (dk) {
    case 16: LS_KDA_COLUMNS(4); return;
    case 32: LS_KDA_COLUMNS(8); return;
    case 64: LS_KDA_COLUMNS(16); return;
    case 128: LS_KDA_COLUMNS(32); return;
    default: break;  // other head sizes: the shared-memory kernel below
  }
#undef LS_KDA_COLUMNS
  const size_t smem = static_cast<size_t>(dk * dk + 3 * dk) * sizeof(float);
  static size_t configured = 0;
  if (smem > 48 * 1024 && smem > configured) {
    CUDA_OK(cudaFuncSetAttribute(KdaRecurrentKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    configured = smem;
  }
  dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(seqs.size()));
  KdaRecurrentKernel<<<grid, static_cast<unsigned>(dk), smem, stream_>>>(DevF32(q), DevF32(k), DevF32(v), DevF32(g),
                                                                         DevF32(beta), device_seqs, dk, heads, scale,
                                                                         DevF32(out));
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
