// MoE on the GPU. Routing: one block per token (sigmoid, biased top-k by repeated block
// argmax, renormalise, scale). Experts: decode (up to 64 slots) reads each routed expert's
// rows with warp dot products, no host round trip; prefill runs grouped GEMMs over all
// experts with the routing sorted on the device (cuda_moe_grouped.cu). The generic path
// below (f32 weights, odd shapes) brings the ids to the host to group tokens by expert and
// runs gather -> gate/up -> SwiGLU -> down per expert; every path sums each token's slots
// in slot order, as the CPU reference does.
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/row_pipeline.cuh"
#include "kernels/cuda/warp_dot.cuh"

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

__global__ void WeightedSumKernel(const float* slot_out, const float* weights, int64_t hidden, int64_t top_k,
                                  int64_t tokens, float* y) {
  AllowDependents();
  WaitForPredecessor();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= hidden * tokens) return;
  const int64_t t = i / hidden, d = i % hidden;
  float acc = 0;
  for (int64_t j = 0; j < top_k; ++j) acc += weights[t * top_k + j] * slot_out[(t * top_k + j) * hidden + d];
  y[i] = acc;
}

// Decode path (few tokens): no host round trip. Each warp computes one FFN row of the expert
// that routing chose for its slot, reading the expert id from device memory.
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kDecodeSlots = 64;  // up to 8 tokens x top-8 take the device-only path

// Decode experts, pipelined (row_pipeline.cuh) when rows and activations allow: the slot's
// input in shared memory (8-bit blocks for q4_0 / q8_0 / K-quant rows), each warp a strided set of
// its expert's rows through a ring of row buffers (gate and up rows together). Otherwise one warp
// per row with the plain warp dot.
template <DType T>
__global__ void __launch_bounds__(kRowWarps * 32)
    ExpertGateUpRowsKernel(const float* x, const uint8_t* rounded, int64_t tokens, const int32_t* ids, int64_t top_k,
                           const uint8_t* gate, const uint8_t* up, size_t row_bytes, int64_t hidden, int64_t ffn,
                           float* act) {
  extern __shared__ __align__(16) uint8_t smem[];
  AllowDependents();
  WaitForPredecessor();  // ids, and x, come from the kernels before (dependent_launch.cuh)
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t slot_bytes = StagedSlotBytes<T>(row_bytes);
  uint8_t* ring = smem + Align16(ActivationSmem<kQ8Rows<T>>(hidden, 1)) +
                  size_t(warp) * kRowStages * 2 * slot_bytes;
  const size_t base = static_cast<size_t>(ids[slot]) * ffn * row_bytes;
  WarpRowPipeline(
      int64_t{blockIdx.x} * kRowWarps + warp, ffn, int64_t{gridDim.x} * kRowWarps,
      [&](int s, int64_t f) {
        IssueStagedRow<T>(ring + 2 * s * slot_bytes, gate + base + f * row_bytes, row_bytes, lane);
        IssueStagedRow<T>(ring + (2 * s + 1) * slot_bytes, up + base + f * row_bytes, row_bytes,
                          lane);
      },
      [&] {
        if (rounded != nullptr) {  // q4_0 / q8_0 rows: x rounded once (RoundActivations)
          CopyRoundedColumns(rounded, hidden, tokens, slot / top_k, 1, smem);
        } else {
          LoadActivations<T, kQ8Rows<T>>(x + (slot / top_k) * hidden, hidden, 1, smem);
        }
        __syncthreads();
      },
      [&](int s, int64_t f) {
        const uint8_t* g_row = StagedRow<T>(ring + 2 * s * slot_bytes, gate + base + f * row_bytes);
        const uint8_t* u_row =
            StagedRow<T>(ring + (2 * s + 1) * slot_bytes, up + base + f * row_bytes);
        const float g = WarpSum(RowDot<T, kQ8Rows<T>>(g_row, smem, hidden, 1, 0, lane));
        const float u = WarpSum(RowDot<T, kQ8Rows<T>>(u_row, smem, hidden, 1, 0, lane));
        if (lane == 0) act[slot * ffn + f] = g / (1.0f + expf(-g)) * u;
      });
}

template <DType T>
__global__ void __launch_bounds__(kRowWarps * 32)
    ExpertDownRowsKernel(const float* act, const int32_t* ids, const uint8_t* down, size_t row_bytes, int64_t hidden,
                         int64_t ffn, float* slot_out) {
  extern __shared__ __align__(16) uint8_t smem[];
  AllowDependents();
  WaitForPredecessor();  // ids and act come from the kernels before
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t slot_bytes = StagedSlotBytes<T>(row_bytes);
  uint8_t* ring =
      smem + Align16(ActivationSmem<kQ8Rows<T>>(ffn, 1)) + size_t(warp) * kRowStages * slot_bytes;
  const size_t base = static_cast<size_t>(ids[slot]) * hidden * row_bytes;
  WarpRowPipeline(
      int64_t{blockIdx.x} * kRowWarps + warp, hidden, int64_t{gridDim.x} * kRowWarps,
      [&](int s, int64_t d) {
        IssueStagedRow<T>(ring + s * slot_bytes, down + base + d * row_bytes, row_bytes, lane);
      },
      [&] {
        LoadActivations<T, kQ8Rows<T>>(act + slot * ffn, ffn, 1, smem);
        __syncthreads();
      },
      [&](int s, int64_t d) {
        const uint8_t* staged = StagedRow<T>(ring + s * slot_bytes, down + base + d * row_bytes);
        const float v = WarpSum(RowDot<T, kQ8Rows<T>>(staged, smem, ffn, 1, 0, lane));
        if (lane == 0) slot_out[slot * hidden + d] = v;
      });
}

template <DType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ExpertGateUpKernel(const float* x, const int32_t* ids, int64_t top_k, const uint8_t* gate, const uint8_t* up,
                       size_t row_bytes, int64_t hidden, int64_t ffn, float* act) {
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t f = blockIdx.x * int64_t(kWarpsPerBlock) + warp;
  if (f >= ffn) return;
  const float* xt = x + (slot / top_k) * hidden;
  const size_t offset = (ids[slot] * ffn + f) * row_bytes;
  const float g = WarpSum(WarpDotPartial<T>(gate + offset, xt, hidden, lane));
  const float u = WarpSum(WarpDotPartial<T>(up + offset, xt, hidden, lane));
  if (lane == 0) act[slot * ffn + f] = g / (1.0f + expf(-g)) * u;
}

template <DType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ExpertDownKernel(const float* act, const int32_t* ids, const uint8_t* down, size_t row_bytes, int64_t hidden,
                     int64_t ffn, float* slot_out) {
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t d = blockIdx.x * int64_t(kWarpsPerBlock) + warp;
  if (d >= hidden) return;
  const float v = WarpSum(WarpDotPartial<T>(down + (ids[slot] * hidden + d) * row_bytes, act + slot * ffn, ffn, lane));
  if (lane == 0) slot_out[slot * hidden + d] = v;
}

// Gate and up rows (one type) for every slot: act [slots][ffn] = SiLU(gate x) * (up x).
template <DType T>
void LaunchDecodeGateUp(cudaStream_t stream, const float* x, const void* x_rounded, const int32_t* ids,
                        int64_t slots, int64_t top_k, const MoeWeights& e, int64_t hidden, int64_t ffn,
                        float* act) {
  // The rounded copy is q4_0 / q8_0's 32-value blocks; K-quant rows round to q8_K themselves.
  const auto* rounded =
      T == DType::kQ4_0 || T == DType::kQ8_0 ? static_cast<const uint8_t*>(x_rounded) : nullptr;
  const unsigned ys = static_cast<unsigned>(slots);
  // Pipelining needs staged rows that fit (StagedRowsFit) and activations of whole float4s.
  const size_t smem = RowPipelineSmem(ActivationSmem<kQ8Rows<T>>(hidden, 1),
                                      StagedSlotBytes<T>(e.gate_exps.row_bytes()), 2);
  const bool rows = StagedRowsFit<T>(hidden, e.gate_exps.row_bytes(), DevPtr(e.gate_exps)) &&
                    StagedRowsFit<T>(hidden, e.up_exps.row_bytes(), DevPtr(e.up_exps)) &&
                    e.gate_exps.row_bytes() == e.up_exps.row_bytes() && hidden % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(x) % 16 == 0 && smem <= kRowSmemLimit &&
                    AllowRowSmem<ExpertGateUpRowsKernel<T>>();
  if (rows) {
    CUDA_OK(LaunchDependent(ExpertGateUpRowsKernel<T>, dim3(RowPipelineBlocks(ffn, slots, smem), ys),
                            dim3(kRowWarps * 32), smem, stream, x, rounded, slots / top_k, ids, top_k,
                            DevPtr(e.gate_exps), DevPtr(e.up_exps), e.gate_exps.row_bytes(), hidden, ffn,
                            act));
  } else {
    const dim3 grid(static_cast<unsigned>((ffn + kWarpsPerBlock - 1) / kWarpsPerBlock), ys);
    ExpertGateUpKernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(
        x, ids, top_k, DevPtr(e.gate_exps), DevPtr(e.up_exps), e.gate_exps.row_bytes(), hidden, ffn,
        act);
  }
  LAUNCH_OK();
}

// Down rows for every slot: slot_out [slots][hidden] = down act.
template <DType T>
void LaunchDecodeDown(cudaStream_t stream, const int32_t* ids, int64_t slots, const MoeWeights& e,
                      int64_t hidden, int64_t ffn, const float* act, float* slot_out) {
  const unsigned ys = static_cast<unsigned>(slots);
  const size_t smem = RowPipelineSmem(ActivationSmem<kQ8Rows<T>>(ffn, 1),
                                      StagedSlotBytes<T>(e.down_exps.row_bytes()), 1);
  const bool rows = StagedRowsFit<T>(ffn, e.down_exps.row_bytes(), DevPtr(e.down_exps)) &&
                    ffn % 4 == 0 && reinterpret_cast<uintptr_t>(act) % 16 == 0 &&
                    smem <= kRowSmemLimit && AllowRowSmem<ExpertDownRowsKernel<T>>();
  if (rows) {
    CUDA_OK(LaunchDependent(ExpertDownRowsKernel<T>, dim3(RowPipelineBlocks(hidden, slots, smem), ys),
                            dim3(kRowWarps * 32), smem, stream, act, ids, DevPtr(e.down_exps),
                            e.down_exps.row_bytes(), hidden, ffn, slot_out));
  } else {
    const dim3 grid(static_cast<unsigned>((hidden + kWarpsPerBlock - 1) / kWarpsPerBlock), ys);
    ExpertDownKernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(
        act, ids, DevPtr(e.down_exps), e.down_exps.row_bytes(), hidden, ffn, slot_out);
  }
  LAUNCH_OK();
}

// The decode kernels read each type in place; q5_0 / q5_1 have no warp dot product.
bool HasDecodeKernels(DType type) { return type != DType::kQ5_0 && type != DType::kQ5_1; }

// Calls launch(std::integral_constant<DType, T>{}) for a runtime type with decode kernels.
template <typename Launch>
void DispatchDecodeType(DType type, Launch launch) {
  switch (type) {
    case DType::kF32:
      launch(std::integral_constant<DType, DType::kF32>{});
      break;
    case DType::kF16:
      launch(std::integral_constant<DType, DType::kF16>{});
      break;
    case DType::kBF16:
      launch(std::integral_constant<DType, DType::kBF16>{});
      break;
    case DType::kQ8_0:
      launch(std::integral_constant<DType, DType::kQ8_0>{});
      break;
    case DType::kQ4_0:
      launch(std::integral_constant<DType, DType::kQ4_0>{});
      break;
    case DType::kQ4_K:
      launch(std::integral_constant<DType, DType::kQ4_K>{});
      break;
    case DType::kQ5_K:
      launch(std::integral_constant<DType, DType::kQ5_K>{});
      break;
    case DType::kQ6_K:
      launch(std::integral_constant<DType, DType::kQ6_K>{});
      break;
    default:
      CU_CHECK(false);
  }
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
  // Decode kernels: gate and up of one type, down of any (Q4_K_M files pair q4_K gate/up with
  // q6_K down in some layers).
  const bool decode_types = experts.gate_exps.dtype == experts.up_exps.dtype &&
                            HasDecodeKernels(experts.gate_exps.dtype) &&
                            HasDecodeKernels(experts.down_exps.dtype);
  // LATENTSERVE_CUDA_MOE=grouped or =host forces that path at every size where it applies
  // (op tests of the grouped path at decode sizes; before/after timings in bench-ops).
  const char* forced = std::getenv("LATENTSERVE_CUDA_MOE");
  const bool force_grouped = forced != nullptr && std::strcmp(forced, "grouped") == 0;
  const bool force_host = forced != nullptr && std::strcmp(forced, "host") == 0;
  if (force_grouped && MoeExpertsGrouped(x, experts, ids, weights, y)) return;
  if (tokens * top_k <= kDecodeSlots && decode_types && !force_host) {
    const int64_t slots = tokens * top_k;
    auto* act = static_cast<float*>(Scratch(6, static_cast<size_t>(slots * (ffn + hidden)) * 4));
    float* slot_out = act + slots * ffn;
    const auto* dev_ids = reinterpret_cast<const int32_t*>(DevPtr(ids));
    DispatchDecodeType(experts.gate_exps.dtype, [&](auto type) {
      LaunchDecodeGateUp<decltype(type)::value>(stream_, DevF32(x), RoundedFor(x, x_rounded), dev_ids, slots,
                                                top_k, experts, hidden, ffn, act);
    });
    DispatchDecodeType(experts.down_exps.dtype, [&](auto type) {
      LaunchDecodeDown<decltype(type)::value>(stream_, dev_ids, slots, experts, hidden, ffn, act,
                                              slot_out);
    });
    CUDA_OK(LaunchDependent(WeightedSumKernel, dim3(Blocks(hidden * tokens, 256)), dim3(256), 0, stream_, slot_out,
                            DevF32(weights), hidden, top_k, tokens, DevF32(y)));
    LAUNCH_OK();
    return;
  }
  // Prefill: grouped GEMMs over all experts, routing sorted on the device.
  if (!force_host && MoeExpertsGrouped(x, experts, ids, weights, y)) return;
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
  WeightedSumKernel<<<Blocks(hidden * tokens, 256), 256, 0, stream_>>>(slot_out, DevF32(weights), hidden, top_k, tokens,
                                                                        DevF32(y));
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
