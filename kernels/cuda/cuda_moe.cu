// MoE on the GPU. Routing: one warp (or block) per token (sigmoid, biased top-k, renormalise,
// scale). Experts: decode (up to 64 slots, cuda_moe_decode.cu) reads each routed expert's rows
// with warp dot products, no host round trip, and runs a shared expert as one more slot per
// token; prefill runs grouped GEMMs over all experts with the routing sorted on the device
// (cuda_moe_grouped.cu). The generic path below (f32 weights, odd shapes) brings the ids to the
// host to group tokens by expert and runs gather -> gate/up -> SwiGLU -> down per expert; every
// path sums each token's slots in slot order, as the CPU reference does.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"

namespace latentserve::kernels::cuda {
namespace {

__global__ void MoeRouteKernel(const float* logits, const float* bias, int64_t experts, int64_t top_k, bool normalize,
                               float scale, int32_t* ids, float* weights) {
  extern __shared__ float shared[];
  float* probs = shared;                 // [experts]
  float* selection = shared + experts;   // [experts], chosen ones set to -inf
  __shared__ float best_value[32];
  __shared__ int best_index[32];
  const int64_t t = blockIdx.x;
  for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
    probs[e] = 1.0f / (1.0f + expf(-logits[t * experts + e]));
    selection[e] = probs[e] + bias[e];
  }
  __syncthreads();
  __shared__ float chosen_sum;
  if (threadIdx.x == 0) chosen_sum = 0;
  for (int64_t j = 0; j < top_k; ++j) {
    float value = -INFINITY;
    int index = INT_MAX;
    for (int64_t e = threadIdx.x; e < experts; e += blockDim.x) {
      if (selection[e] > value || (selection[e] == value && e < index)) {
        value = selection[e];
        index = static_cast<int>(e);
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other_value = __shfl_xor_sync(0xffffffff, value, offset);
      const int other_index = __shfl_xor_sync(0xffffffff, index, offset);
      if (other_value > value || (other_value == value && other_index < index)) {
        value = other_value;
        index = other_index;
      }
    }
    if (threadIdx.x % 32 == 0) {
      best_value[threadIdx.x / 32] = value;
      best_index[threadIdx.x / 32] = index;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < (blockDim.x + 31) / 32; ++w) {
        if (best_value[w] > best_value[0] || (best_value[w] == best_value[0] && best_index[w] < best_index[0])) {
          best_value[0] = best_value[w];
          best_index[0] = best_index[w];
        }
      }
      const int e = best_index[0];
      ids[t * top_k + j] = e;
      weights[t * top_k + j] = probs[e];
      chosen_sum += probs[e];
      selection[e] = -INFINITY;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const float norm = normalize ? 1.0f / fmaxf(chosen_sum, 6.103515625e-5f) : 1.0f;
    for (int64_t j = 0; j < top_k; ++j) weights[t * top_k + j] *= norm * scale;
  }
}

// The same routing with one warp per token, the experts held in registers (up to 32 x kPer):
// the block version's top-k rounds each cost two block barriers and a serial pass over the
// warps' winners (11 us per decode layer in ncu). A round here: the lane's best by a scan of its
// registers, then the warp's by two redux instructions (the largest order-preserving key, then
// the lowest expert index holding it), and one shuffle for the winner's probability. Removal
// is a select per register: a store at a computed index put the array in local memory, and
// the kernel took ~9.5 us a layer (ncu, docs/benchmarks.md).
__device__ __forceinline__ unsigned OrderedKey(float v) {  // monotone in v; -0 and +0 alike
  const unsigned u = __float_as_uint(v + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kRoutePerLane = 16;  // experts <= 512
template <int kPer>
__global__ void MoeRouteWarpKernel(const float* logits, const float* bias, int64_t experts, int64_t top_k,
                                   bool normalize, float scale, int64_t tokens, int32_t* ids, float* weights) {
  AllowDependents();
  WaitForPredecessor();
  const int64_t t = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (t >= tokens) return;
  float prob[kPer], selection[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int64_t e = int64_t{i} * 32 + lane;
    prob[i] = e < experts ? 1.0f / (1.0f + expf(-logits[t * experts + e])) : 0.0f;
    selection[i] = e < experts ? prob[i] + bias[e] : -INFINITY;
  }
  float chosen_sum = 0.0f, my_weight = 0.0f;
  int my_id = 0;
  for (int64_t j = 0; j < top_k; ++j) {
    float value = -INFINITY, p = 0.0f;
    int slot = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {  // lane-local best; lower expert index wins ties
      if (selection[i] > value) {
        value = selection[i];
        slot = i;
        p = prob[i];
      }
    }
    const unsigned key = OrderedKey(value);
    const unsigned best = __reduce_max_sync(0xffffffffu, key);
    const int index = static_cast<int>(
        __reduce_min_sync(0xffffffffu, key == best ? static_cast<unsigned>(slot * 32 + lane) : 0xffffffffu));
    const int winner = index % 32;
    p = __shfl_sync(0xffffffffu, p, winner);
    chosen_sum += p;
    if (lane == j) {
      my_id = index;
      my_weight = p;
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i) selection[i] = lane == winner && i == slot ? -INFINITY : selection[i];
  }
  const float norm = normalize ? 1.0f / fmaxf(chosen_sum, 6.103515625e-5f) : 1.0f;
  if (lane < top_k) {
    ids[t * top_k + lane] = my_id;
    weights[t * top_k + lane] = my_weight * norm * scale;
  }
}

__global__ void GatherKernel(const float* x, int64_t hidden, const int32_t* tokens, int64_t count, float* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= hidden * count) return;
  out[i] = x[static_cast<int64_t>(tokens[i / hidden]) * hidden + i % hidden];
}

__global__ void SwiGluKernel(float* gate, const float* up, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void ScatterKernel(const float* rows, int64_t hidden, const int32_t* slots, int64_t count, float* slot_out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= hidden * count) return;
  slot_out[static_cast<int64_t>(slots[i / hidden]) * hidden + i % hidden] = rows[i];
}

enum class MoePath { kAuto, kGrouped, kHost };

// LATENTSERVE_CUDA_MOE=grouped or =host forces that path at every size where it applies (op
// tests of the grouped path at decode sizes; before/after timings in bench-ops).
MoePath ForcedMoePath() {
  const char* forced = std::getenv("LATENTSERVE_CUDA_MOE");
  if (forced != nullptr && std::strcmp(forced, "grouped") == 0) return MoePath::kGrouped;
  if (forced != nullptr && std::strcmp(forced, "host") == 0) return MoePath::kHost;
  return MoePath::kAuto;
}

}  // namespace

void CudaBackend::MoeRoute(const Tensor& logits, const Tensor& bias, int64_t top_k, bool normalize, float scale,
                           const Tensor& ids, const Tensor& weights) {
  const int64_t experts = logits.ne[0], tokens = logits.rows();
  CU_CHECK(bias.elements() == experts && ids.ne[0] == top_k && weights.ne[0] == top_k && top_k <= experts);
  if (tokens == 0) return;
  if (experts <= 32 * kRoutePerLane && top_k <= 32) {
    constexpr int kWarps = 4;
    CUDA_OK(LaunchDependent(experts <= 32 * 8 ? MoeRouteWarpKernel<8> : MoeRouteWarpKernel<kRoutePerLane>, dim3(static_cast<unsigned>((tokens + kWarps - 1) / kWarps)),
                            dim3(kWarps * 32), 0, stream_, DevF32(logits), DevF32(bias), experts, top_k, normalize,
                            scale, tokens, reinterpret_cast<int32_t*>(DevPtr(ids)), DevF32(weights)));
    LAUNCH_OK();
    return;
  }
  MoeRouteKernel<<<static_cast<unsigned>(tokens), 256, 2 * experts * sizeof(float), stream_>>>(
      DevF32(logits), DevF32(bias), experts, top_k, normalize, scale, reinterpret_cast<int32_t*>(DevPtr(ids)),
      DevF32(weights));
  LAUNCH_OK();
}

void CudaBackend::MoeExperts(const Tensor& x, const MoeWeights& experts, const Tensor& ids, const Tensor& weights,
                             const Tensor& y) {
  MoeExperts(x, Tensor(), experts, ids, weights, y);
}

void CudaBackend::MoeExperts(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts, const Tensor& ids,
                             const Tensor& weights, const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows();
  const int64_t ffn = experts.gate_exps.ne[1], n_experts = experts.gate_exps.ne[2], top_k = ids.ne[0];
  CU_CHECK(experts.gate_exps.ne[0] == hidden && experts.down_exps.ne[0] == ffn && experts.down_exps.ne[1] == hidden &&
           y.ne[0] == hidden && y.rows() == tokens);
  if (tokens == 0) return;
  const MoePath forced = ForcedMoePath();
  if (forced == MoePath::kGrouped && MoeExpertsGrouped(x, experts, ids, weights, y)) return;
  if (forced != MoePath::kHost && MoeExpertsDecode(x, x_rounded, experts, ids, weights, nullptr, y)) return;
  // Prefill: grouped GEMMs over all experts, routing sorted on the device.
  if (forced != MoePath::kHost && MoeExpertsGrouped(x, experts, ids, weights, y)) return;
  // Generic path (f32 weights, odd shapes): group on the host, one GEMM chain per expert.
  std::vector<int32_t> host_ids(tokens * top_k);
  Download(ids, host_ids.data(), host_ids.size() * sizeof(int32_t), 0);
  std::vector<std::vector<int32_t>> routed(n_experts);  // slots per expert
  for (int64_t slot = 0; slot < tokens * top_k; ++slot) {
    CU_CHECK(host_ids[slot] >= 0 && host_ids[slot] < n_experts);
    routed[host_ids[slot]].push_back(static_cast<int32_t>(slot));
  }
  // One index upload for the whole layer: per expert, its token ids then its slot ids.
  std::vector<int32_t> index;
  std::vector<int64_t> offsets(n_experts);
  for (int64_t e = 0; e < n_experts; ++e) {
    offsets[e] = static_cast<int64_t>(index.size());
    for (int32_t slot : routed[e]) index.push_back(static_cast<int32_t>(slot / top_k));
    index.insert(index.end(), routed[e].begin(), routed[e].end());
  }
  auto* device_index = static_cast<int32_t*>(UploadScratch(5, index.data(), index.size() * sizeof(int32_t)));
  const int64_t max_count = tokens;  // an expert appears at most once per token
  auto* work = static_cast<float*>(Scratch(6, static_cast<size_t>(max_count * (hidden * 2 + ffn * 2) + tokens * top_k * hidden) * 4));
  float* gathered = work;
  float* gate = gathered + max_count * hidden;
  float* up = gate + max_count * ffn;
  float* down = up + max_count * ffn;
  float* slot_out = down + max_count * hidden;
  const size_t gate_row = experts.gate_exps.row_bytes(), up_row = experts.up_exps.row_bytes();
  const size_t down_row = experts.down_exps.row_bytes();
  for (int64_t e = 0; e < n_experts; ++e) {
    const int64_t count = static_cast<int64_t>(routed[e].size());
    if (count == 0) continue;
    const int32_t* token_ids = device_index + offsets[e];
    const int32_t* slot_ids = token_ids + count;
    GatherKernel<<<Blocks(hidden * count, 256), 256, 0, stream_>>>(DevF32(x), hidden, token_ids, count, gathered);
    LAUNCH_OK();
    Gemm(experts.gate_exps.dtype, DevPtr(experts.gate_exps) + e * ffn * gate_row, gate_row, hidden, ffn, gathered, count, gate);
    Gemm(experts.up_exps.dtype, DevPtr(experts.up_exps) + e * ffn * up_row, up_row, hidden, ffn, gathered, count, up);
    SwiGluKernel<<<Blocks(ffn * count, 256), 256, 0, stream_>>>(gate, up, ffn * count);
    LAUNCH_OK();
    Gemm(experts.down_exps.dtype, DevPtr(experts.down_exps) + e * hidden * down_row, down_row, ffn, hidden, gate, count, down);
    ScatterKernel<<<Blocks(hidden * count, 256), 256, 0, stream_>>>(down, hidden, slot_ids, count, slot_out);
    LAUNCH_OK();
  }
  LaunchMoeWeightedSum(stream_, slot_out, DevF32(weights), hidden, top_k, tokens, nullptr, DevF32(y));
}

absl::Status CudaBackend::MoeExpertsWithShared(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                                               const Tensor& ids, const Tensor& weights, const SharedExpert& shared,
                                               const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows(), ffn = experts.gate_exps.ne[1];
  CU_CHECK(experts.gate_exps.ne[0] == hidden && experts.down_exps.ne[0] == ffn && experts.down_exps.ne[1] == hidden &&
           y.ne[0] == hidden && y.rows() == tokens);
  // Decode: the shared expert as one more slot per token; otherwise (many tokens, other types
  // or sizes, a forced path) MoeExperts and the shared expert's own ops.
  if (tokens > 0 && ForcedMoePath() == MoePath::kAuto &&
      MoeExpertsDecode(x, x_rounded, experts, ids, weights, &shared, y)) {
    return absl::OkStatus();
  }
  return Backend::MoeExpertsWithShared(x, x_rounded, experts, ids, weights, shared, y);
}

}  // namespace latentserve::kernels::cuda
