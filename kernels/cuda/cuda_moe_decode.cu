// MoE experts at decode (up to kDecodeSlots routed slots): no host round trip. Each routed
// slot (token t, choice j: slot t * top_k + j) reads the rows of the expert that routing chose
// for it, its id read from device memory; with a shared expert, slot routed + t reads the shared
// expert's rows for token t (one more grid row per token instead of the shared expert's own
// gate/up GEMV, SwiGLU, down GEMV and Add: 4 kernels per MoE layer). Three kernels: gate/up
// (SiLU(gate x) * up x per slot), down (per slot), the weighted sum over each token's slots
// in slot order, then + the shared slot.
//
// Rounding: the shared slot takes the routed slots' arithmetic, so for q4_0 / q8_0 / K-quant
// rows in the pipelined kernels it rounds its gate/up input and its down input to 8-bit blocks,
// as the CPU backend's MatMul does for those rows (the CPU and this path agree to ~1e-6 NMSE).
// The separate GEMVs it replaces rounded only gate/up's input, and only given a rounded copy of
// x; down's input stayed f32. So the shared expert's output moves by that rounding against the
// separate ops on the GPU, by an estimated NMSE ~3e-5 of that output (a rounded value's error
// has variance (max|block| / 127)^2 / 12): what the CPU's integer path differs by from f32 anyway.
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/row_pipeline.cuh"
#include "kernels/cuda/warp_dot.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int64_t kDecodeSlots = 64;  // up to 8 tokens x top-8 take the device-only path

// Which rows and which token a grid row (slot) reads. Routed slots come first, then with a
// shared expert one shared slot per token.
struct DecodeSlots {
  const int32_t* ids;  // [routed] expert of each routed slot (i32 [top_k, tokens])
  int64_t top_k;
  int64_t routed;      // tokens * top_k

  __device__ bool Shared(int64_t slot) const { return slot >= routed; }
  __device__ int64_t Token(int64_t slot) const { return slot < routed ? slot / top_k : slot - routed; }
  // The slot's first weight row: expert ids[slot]'s in `experts` (`rows` rows per expert), or
  // the shared expert's `shared`. Reads ids: call after WaitForPredecessor for routed slots.
  __device__ const uint8_t* Rows(int64_t slot, const uint8_t* experts, const uint8_t* shared, int64_t rows,
                                 size_t row_bytes) const {
    // (The base and the offset selected apart: one select of the whole address took 8 more
    // registers in some of the row kernels, per ptxas.)
    return (slot < routed ? experts : shared) +
           (slot < routed ? static_cast<size_t>(ids[slot]) * static_cast<size_t>(rows) * row_bytes : 0);
  }
};

// Pipelined (row_pipeline.cuh) when rows and activations allow: the slot's input in shared
// memory (8-bit blocks for q4_0 / q8_0 / K-quant rows), each warp a strided set of its expert's
// rows through a ring of row buffers (gate and up rows together). Otherwise one warp per row
// with the plain warp dot. A shared slot's rows do not depend on routing: its CTAs start their
// rows' trip from memory before waiting for the kernels before (dependent_launch.cuh).
template <DType T>
__global__ void __launch_bounds__(kRowWarps * 32)
    ExpertGateUpRowsKernel(const float* x, const uint8_t* rounded, int64_t tokens, DecodeSlots slots,
                           const uint8_t* gate, const uint8_t* up, const uint8_t* shared_gate,
                           const uint8_t* shared_up, size_t row_bytes, int64_t hidden, int64_t ffn, float* act) {
  extern __shared__ __align__(16) uint8_t smem[];
  AllowDependents();
  const int64_t slot = blockIdx.y;
  const bool shared = slots.Shared(slot);
  if (!shared) WaitForPredecessor();  // ids, and x, come from the kernels before
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t slot_bytes = StagedSlotBytes<T>(row_bytes);
  uint8_t* ring = smem + Align16(ActivationSmem<kQ8Rows<T>>(hidden, 1)) +
                  size_t(warp) * kRowStages * 2 * slot_bytes;
  const uint8_t* gate_rows = slots.Rows(slot, gate, shared_gate, ffn, row_bytes);
  const uint8_t* up_rows = slots.Rows(slot, up, shared_up, ffn, row_bytes);
  const int64_t token = slots.Token(slot);
  WarpRowPipeline(
      int64_t{blockIdx.x} * kRowWarps + warp, ffn, int64_t{gridDim.x} * kRowWarps,
      [&](int s, int64_t f) {
        IssueStagedRow<T>(ring + 2 * s * slot_bytes, gate_rows + f * row_bytes, row_bytes, lane);
        IssueStagedRow<T>(ring + (2 * s + 1) * slot_bytes, up_rows + f * row_bytes, row_bytes, lane);
      },
      [&] {
        if (shared) WaitForPredecessor();  // x comes from the kernels before
        if (rounded != nullptr) {  // q4_0 / q8_0 rows: x rounded once (RoundActivations)
          CopyRoundedColumns(rounded, hidden, tokens, token, 1, smem);
        } else {
          LoadActivations<T, kQ8Rows<T>>(x + token * hidden, hidden, 1, smem);
        }
        __syncthreads();
      },
      [&](int s, int64_t f) {
        const uint8_t* g_row = StagedRow<T>(ring + 2 * s * slot_bytes, gate_rows + f * row_bytes);
        const uint8_t* u_row = StagedRow<T>(ring + (2 * s + 1) * slot_bytes, up_rows + f * row_bytes);
        const float g = WarpSum(RowDot<T, kQ8Rows<T>>(g_row, smem, hidden, 1, 0, lane));
        const float u = WarpSum(RowDot<T, kQ8Rows<T>>(u_row, smem, hidden, 1, 0, lane));
        if (lane == 0) act[slot * ffn + f] = g / (1.0f + expf(-g)) * u;
      });
}

template <DType T>
__global__ void __launch_bounds__(kRowWarps * 32)
    ExpertDownRowsKernel(const float* act, DecodeSlots slots, const uint8_t* down, const uint8_t* shared_down,
                         size_t row_bytes, int64_t hidden, int64_t ffn, float* slot_out) {
  extern __shared__ __align__(16) uint8_t smem[];
  AllowDependents();
  const int64_t slot = blockIdx.y;
  const bool shared = slots.Shared(slot);
  if (!shared) WaitForPredecessor();  // ids and act come from the kernels before
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t slot_bytes = StagedSlotBytes<T>(row_bytes);
  uint8_t* ring =
      smem + Align16(ActivationSmem<kQ8Rows<T>>(ffn, 1)) + size_t(warp) * kRowStages * slot_bytes;
  const uint8_t* down_rows = slots.Rows(slot, down, shared_down, hidden, row_bytes);
  WarpRowPipeline(
      int64_t{blockIdx.x} * kRowWarps + warp, hidden, int64_t{gridDim.x} * kRowWarps,
      [&](int s, int64_t d) {
        IssueStagedRow<T>(ring + s * slot_bytes, down_rows + d * row_bytes, row_bytes, lane);
      },
      [&] {
        if (shared) WaitForPredecessor();  // act comes from the kernel before
        LoadActivations<T, kQ8Rows<T>>(act + slot * ffn, ffn, 1, smem);
        __syncthreads();
      },
      [&](int s, int64_t d) {
        const uint8_t* staged = StagedRow<T>(ring + s * slot_bytes, down_rows + d * row_bytes);
        const float v = WarpSum(RowDot<T, kQ8Rows<T>>(staged, smem, ffn, 1, 0, lane));
        if (lane == 0) slot_out[slot * hidden + d] = v;
      });
}

template <DType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ExpertGateUpKernel(const float* x, DecodeSlots slots, const uint8_t* gate, const uint8_t* up,
                       const uint8_t* shared_gate, const uint8_t* shared_up, size_t row_bytes, int64_t hidden,
                       int64_t ffn, float* act) {
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t f = blockIdx.x * int64_t(kWarpsPerBlock) + warp;
  if (f >= ffn) return;
  const float* xt = x + slots.Token(slot) * hidden;
  const uint8_t* g_row = slots.Rows(slot, gate, shared_gate, ffn, row_bytes) + f * row_bytes;
  const uint8_t* u_row = slots.Rows(slot, up, shared_up, ffn, row_bytes) + f * row_bytes;
  const float g = WarpSum(WarpDotPartial<T>(g_row, xt, hidden, lane));
  const float u = WarpSum(WarpDotPartial<T>(u_row, xt, hidden, lane));
  if (lane == 0) act[slot * ffn + f] = g / (1.0f + expf(-g)) * u;
}

template <DType T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    ExpertDownKernel(const float* act, DecodeSlots slots, const uint8_t* down, const uint8_t* shared_down,
                     size_t row_bytes, int64_t hidden, int64_t ffn, float* slot_out) {
  const int64_t slot = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t d = blockIdx.x * int64_t(kWarpsPerBlock) + warp;
  if (d >= hidden) return;
  const uint8_t* row = slots.Rows(slot, down, shared_down, hidden, row_bytes) + d * row_bytes;
  const float v = WarpSum(WarpDotPartial<T>(row, act + slot * ffn, ffn, lane));
  if (lane == 0) slot_out[slot * hidden + d] = v;
}

__global__ void WeightedSumKernel(const float* slot_out, const float* weights, int64_t hidden, int64_t top_k,
                                  int64_t tokens, const float* shared_out, float* y) {
  AllowDependents();
  WaitForPredecessor();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= hidden * tokens) return;
  const int64_t t = i / hidden, d = i % hidden;
  float acc = 0;
  for (int64_t j = 0; j < top_k; ++j) acc += weights[t * top_k + j] * slot_out[(t * top_k + j) * hidden + d];
  y[i] = shared_out != nullptr ? acc + shared_out[i] : acc;  // MoeExperts, then Add
}

// The shared expert's weights beside the routed experts' (null: no shared slots).
struct SharedRows {
  const uint8_t* gate = nullptr;
  const uint8_t* up = nullptr;
  const uint8_t* down = nullptr;
};

// Gate and up rows (one type) for every slot: act [slots][ffn] = SiLU(gate x) * (up x).
template <DType T>
void LaunchDecodeGateUp(cudaStream_t stream, const float* x, const void* x_rounded, DecodeSlots slots,
                        int64_t all_slots, const MoeWeights& e, const SharedRows& shared, int64_t hidden,
                        int64_t ffn, float* act) {
  // The rounded copy is q4_0 / q8_0's 32-value blocks; K-quant rows round to q8_K themselves.
  const auto* rounded =
      T == DType::kQ4_0 || T == DType::kQ8_0 ? static_cast<const uint8_t*>(x_rounded) : nullptr;
  const size_t row_bytes = e.gate_exps.row_bytes();
  const unsigned ys = static_cast<unsigned>(all_slots);
  // Pipelining needs staged rows that fit (StagedRowsFit) and activations of whole float4s.
  const size_t smem = RowPipelineSmem(ActivationSmem<kQ8Rows<T>>(hidden, 1), StagedSlotBytes<T>(row_bytes), 2);
  const bool shared_fit = shared.gate == nullptr || (StagedRowsFit<T>(hidden, row_bytes, shared.gate) &&
                                                     StagedRowsFit<T>(hidden, row_bytes, shared.up));
  const bool rows = StagedRowsFit<T>(hidden, row_bytes, DevPtr(e.gate_exps)) &&
                    StagedRowsFit<T>(hidden, e.up_exps.row_bytes(), DevPtr(e.up_exps)) &&
                    row_bytes == e.up_exps.row_bytes() && shared_fit && hidden % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(x) % 16 == 0 && smem <= kRowSmemLimit &&
                    AllowRowSmem<ExpertGateUpRowsKernel<T>>();
  if (rows) {
    const unsigned blocks = RowPipelineBlocks(ffn, all_slots, RowPipelineCtasPerSm<ExpertGateUpRowsKernel<T>>(smem));
    CUDA_OK(LaunchDependent(ExpertGateUpRowsKernel<T>, dim3(blocks, ys),
                            dim3(kRowWarps * 32), smem, stream, x, rounded, slots.routed / slots.top_k, slots,
                            DevPtr(e.gate_exps), DevPtr(e.up_exps), shared.gate, shared.up, row_bytes, hidden,
                            ffn, act));
  } else {
    const dim3 grid(static_cast<unsigned>((ffn + kWarpsPerBlock - 1) / kWarpsPerBlock), ys);
    ExpertGateUpKernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(
        x, slots, DevPtr(e.gate_exps), DevPtr(e.up_exps), shared.gate, shared.up, row_bytes, hidden, ffn, act);
  }
  LAUNCH_OK();
}

// Down rows for every slot: slot_out [slots][hidden] = down act.
template <DType T>
void LaunchDecodeDown(cudaStream_t stream, DecodeSlots slots, int64_t all_slots, const MoeWeights& e,
                      const SharedRows& shared, int64_t hidden, int64_t ffn, const float* act, float* slot_out) {
  const size_t row_bytes = e.down_exps.row_bytes();
  const unsigned ys = static_cast<unsigned>(all_slots);
  const size_t smem = RowPipelineSmem(ActivationSmem<kQ8Rows<T>>(ffn, 1), StagedSlotBytes<T>(row_bytes), 1);
  const bool rows = StagedRowsFit<T>(ffn, row_bytes, DevPtr(e.down_exps)) &&
                    (shared.down == nullptr || StagedRowsFit<T>(ffn, row_bytes, shared.down)) && ffn % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(act) % 16 == 0 && smem <= kRowSmemLimit &&
                    AllowRowSmem<ExpertDownRowsKernel<T>>();
  if (rows) {
    const unsigned blocks = RowPipelineBlocks(hidden, all_slots, RowPipelineCtasPerSm<ExpertDownRowsKernel<T>>(smem));
    CUDA_OK(LaunchDependent(ExpertDownRowsKernel<T>, dim3(blocks, ys),
                            dim3(kRowWarps * 32), smem, stream, act, slots, DevPtr(e.down_exps), shared.down,
                            row_bytes, hidden, ffn, slot_out));
  } else {
    const dim3 grid(static_cast<unsigned>((hidden + kWarpsPerBlock - 1) / kWarpsPerBlock), ys);
    ExpertDownKernel<T><<<grid, kWarpsPerBlock * 32, 0, stream>>>(act, slots, DevPtr(e.down_exps), shared.down,
                                                                  row_bytes, hidden, ffn, slot_out);
  }
  LAUNCH_OK();
}

// The decode kernels read each type in place; q5_0 / q5_1 have no warp dot product.
bool HasDecodeKernels(DType type) { return type != DType::kQ5_0 && type != DType::kQ5_1; }

// Calls launch(std::integral_constant<DType, T>{}) for a runtime type with decode kernels.
template <typename Launch>
void DispatchDecodeType(DType type, Launch launch) {
  switch (type) {
    case DType::kF32: return launch(std::integral_constant<DType, DType::kF32>{});
    case DType::kF16: return launch(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16: return launch(std::integral_constant<DType, DType::kBF16>{});
    case DType::kQ8_0: return launch(std::integral_constant<DType, DType::kQ8_0>{});
    case DType::kQ4_0: return launch(std::integral_constant<DType, DType::kQ4_0>{});
    case DType::kQ4_K: return launch(std::integral_constant<DType, DType::kQ4_K>{});
    case DType::kQ5_K: return launch(std::integral_constant<DType, DType::kQ5_K>{});
    case DType::kQ6_K: return launch(std::integral_constant<DType, DType::kQ6_K>{});
    default:
      CU_CHECK(false);
  }
}

// Whether the shared expert can run as the routed experts' extra slots: the same types and
// row lengths, Fs == F (one act row length), 2-d.
bool SharedFitsSlots(const SharedExpert& s, const MoeWeights& e, int64_t hidden, int64_t ffn) {
  return s.gate.dtype == e.gate_exps.dtype && s.up.dtype == e.up_exps.dtype && s.down.dtype == e.down_exps.dtype &&
         s.gate.ne == Shape{hidden, ffn, 1, 1} && s.up.ne == Shape{hidden, ffn, 1, 1} &&
         s.down.ne == Shape{ffn, hidden, 1, 1};
}

}  // namespace

void LaunchMoeWeightedSum(cudaStream_t stream, const float* slot_out, const float* weights, int64_t hidden,
                          int64_t top_k, int64_t tokens, const float* shared_out, float* y) {
  CUDA_OK(LaunchDependent(WeightedSumKernel, dim3(Blocks(hidden * tokens, 256)), dim3(256), 0, stream, slot_out,
                          weights, hidden, top_k, tokens, shared_out, y));
  LAUNCH_OK();
}

bool CudaBackend::MoeExpertsDecode(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                                   const Tensor& ids, const Tensor& weights, const SharedExpert* shared,
                                   const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows();
  const int64_t ffn = experts.gate_exps.ne[1], top_k = ids.ne[0];
  // Gate and up of one type, down of any (Q4_K_M files pair q4_K gate/up with q6_K down in
  // some layers).
  const bool decode_types = experts.gate_exps.dtype == experts.up_exps.dtype &&
                            HasDecodeKernels(experts.gate_exps.dtype) &&
                            HasDecodeKernels(experts.down_exps.dtype);
  if (tokens <= 0 || top_k <= 0 || tokens > kDecodeSlots || top_k > kDecodeSlots ||
      tokens * top_k > kDecodeSlots || !decode_types) {
    return false;
  }
  if (shared != nullptr && !SharedFitsSlots(*shared, experts, hidden, ffn)) return false;
  const int64_t routed = tokens * top_k, all_slots = routed + (shared != nullptr ? tokens : 0);
  // act [all_slots][ffn] then slot_out [all_slots][hidden], f32.
  size_t row_floats = 0, floats = 0, bytes = 0;
  CU_CHECK(!__builtin_add_overflow(static_cast<size_t>(ffn), static_cast<size_t>(hidden), &row_floats) &&
           !__builtin_mul_overflow(row_floats, static_cast<size_t>(all_slots), &floats) &&
           !__builtin_mul_overflow(floats, sizeof(float), &bytes));
  auto* act = static_cast<float*>(Scratch(6, bytes));
  float* slot_out = act + all_slots * ffn;
  const DecodeSlots slots{reinterpret_cast<const int32_t*>(DevPtr(ids)), top_k, routed};
  SharedRows rows;
  if (shared != nullptr) rows = {DevPtr(shared->gate), DevPtr(shared->up), DevPtr(shared->down)};
  DispatchDecodeType(experts.gate_exps.dtype, [&](auto type) {
    LaunchDecodeGateUp<decltype(type)::value>(stream_, DevF32(x), RoundedFor(x, x_rounded), slots, all_slots,
                                              experts, rows, hidden, ffn, act);
  });
  DispatchDecodeType(experts.down_exps.dtype, [&](auto type) {
    LaunchDecodeDown<decltype(type)::value>(stream_, slots, all_slots, experts, rows, hidden, ffn, act, slot_out);
  });
  LaunchMoeWeightedSum(stream_, slot_out, DevF32(weights), hidden, top_k, tokens,
                       shared != nullptr ? slot_out + routed * hidden : nullptr, DevF32(y));
  return true;
}

}  // namespace latentserve::kernels::cuda
