// MoE prefill as grouped GEMMs on the device (issue 9): no host round trip and no host sync
// inside the layer. Per call:
//   1. the routing sort (cuda_moe_routing.cu): every (token, slot) its expert-sorted row and a
//      list of 128-row M-tiles (expert, first row); at most 64 tokens on q4_0 / q8_0 experts
//      then take the tensor-core experts (cuda_moe_quant_mma.cu) instead of the steps below;
//   2. the activations cast once to 16 bits in token order (37.7 MB for 8192 tokens, about
//      the size of L2, where the repeated reads of each token row mostly land); the
//      gate+up GEMM reads each sorted row from its token's row, so no gathered copy exists;
//   3. gate+up grouped GEMM: one CTA per (M-tile, N-tile) reads its expert's stored rows
//      (q4_0 / q8_0 / f16 / bf16), dequantises a K-step into shared memory, and runs
//      mma.sync m16n8k16 with f32 accumulation. Its N-tile holds 64 gate rows and the same
//      64 up rows, so the epilogue writes silu(g) * u directly (no gate/up round trip);
//   4. down grouped GEMM (the same kernel) writing each row to its slot's output row;
//   5. the weighted sum of each token's top-k slot rows in slot order, as the CPU does.
// The 16-bit type is f16 for q4_0 / q8_0 / f16 weights (f16 holds q4_0 and f16 weights
// closer than bf16: 11 significant bits against 8; the generic cuBLAS path uses f16 too) and
// bf16 for bf16 weights.
#include <algorithm>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/moe_grouped.cuh"
#include "kernels/cuda/moe_routing.h"

namespace latentserve::kernels::cuda {
namespace {

using namespace moe;  // NOLINT: the shared pieces of this file's kernels

// Tile shapes of the grouped GEMM. C[m, n] = sum_k A[m, k] W[n, k]: A the expert-sorted
// activations [rows, K] (K contiguous), W one expert's stored rows [N, K] (K contiguous), so
// both operands feed ldmatrix without transposes. Every CTA covers 128 sorted rows (one
// M-tile of the device tile list) and 128 weight rows (gate+up: 64 gate and their 64 up).

template <int kWarpsM_, int kWarpsN_, int kMinCtasPerSm_>
struct GroupedGemmTraits {
  static constexpr int kBlockM = kTileRows;
  static constexpr int kBlockN = 128;
  static constexpr int kBlockK = 64;  // reduction elements per pipeline step (2 quant blocks)
  static constexpr int kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kMinCtasPerSm = kMinCtasPerSm_;
  static constexpr int kWarpTileM = kBlockM / kWarpsM;
  static constexpr int kWarpTileN = kBlockN / kWarpsN;
  static constexpr int kFragsM = kWarpTileM / 16;
  static constexpr int kFragsN = kWarpTileN / 8;
  static constexpr int kBlocksPerThread = 2 * kBlockN / kThreads;  // 32-element weight blocks dequantised per step
  static constexpr int kPitch = kBlockK + 8;  // shared row pitch (elements): +16 bytes keeps ldmatrix conflict-free
  static constexpr int kStages = 2;
  static constexpr size_t kSharedBytes = size_t{kStages} * (kBlockM + kBlockN) * kPitch * 2;
  static_assert(kWarpTileM == 64 && kFragsN % 4 == 0 && kBlocksPerThread >= 1, "tile shape");
};
// 8 warps of 64x32, 2 CTAs per SM (128 registers a thread): LATENTSERVE_CUDA_MOE_TILE=warps8.
using Warps8Tile = GroupedGemmTraits<2, 4, 2>;
// 4 warps of 64x64, 2 CTAs per SM: a third less shared-memory traffic per MMA (fragments
// reused across a wider warp tile), half the warps to hide latency. LATENTSERVE_CUDA_MOE_TILE=warps4.
using Warps4Tile = GroupedGemmTraits<2, 2, 2>;

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

template <typename T>
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}



// The grouped GEMM. blockIdx.x: N-tile (fastest, so the N-tiles of one M-tile run together
// and share its activations in L2, and an expert's M-tiles follow each other and share its
// weights); blockIdx.y: entry of the device tile list (CTAs past tile_count exit).
template <typename Tr, DType W, bool kSwiGlu>
__global__ void __launch_bounds__(Tr::kThreads, Tr::kMinCtasPerSm) GroupedGemmKernel(GroupedGemmParams p) {
  using T = ComputeType<W>;
  if (static_cast<int>(blockIdx.y) >= *p.tile_count) return;
  const int2 tile = p.tiles[blockIdx.y];
  const int expert = tile.x, row0 = tile.y;
  const int rows = min(Tr::kBlockM, p.first_row[expert + 1] - row0);
  const int n0 = static_cast<int>(blockIdx.x) * (kSwiGlu ? Tr::kBlockN / 2 : Tr::kBlockN);

  extern __shared__ uint4 shared_raw[];
  T* smem_a = reinterpret_cast<T*>(shared_raw);                     // [kStages][kBlockM][kPitch]
  T* smem_b = smem_a + Tr::kStages * Tr::kBlockM * Tr::kPitch;     // [kStages][kBlockN][kPitch]

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp / Tr::kWarpsN, warp_n = warp % Tr::kWarpsN;

  // This thread's weight blocks each step: block b = tid + j * kThreads is shared row b / 2,
  // elements [32 * (b % 2), +32). SwiGLU form: each warp's shared rows are its gate rows then
  // the same up rows, so a thread's accumulators hold gate and up of the same outputs.
  const uint8_t* w_rows[Tr::kBlocksPerThread];  // null past the expert's n rows
#pragma unroll
  for (int j = 0; j < Tr::kBlocksPerThread; ++j) {
    w_rows[j] = WeightRow<kSwiGlu, Tr::kWarpTileN>(p, expert, n0, (tid + j * Tr::kThreads) / 2);
  }
  // Element offset in A of each row of the tile (-1 past its rows), kept in shared memory
  // rather than registers, which the accumulators need.
  __shared__ int a_row_offset[Tr::kBlockM];
  for (int r = tid; r < Tr::kBlockM; r += Tr::kThreads) a_row_offset[r] = ActivationOffset(p, row0, rows, r);
  __syncthreads();
  // This thread's A chunks each step: 16 bytes at column a_col of rows a_row0 + i * kRowStride.
  constexpr int kChunksPerRow = Tr::kBlockK / 8;
  constexpr int kChunks = Tr::kBlockM * kChunksPerRow / Tr::kThreads;
  constexpr int kRowStride = Tr::kThreads / kChunksPerRow;
  const int a_row0 = tid / kChunksPerRow, a_col = (tid % kChunksPerRow) * 8;
  const T* a = static_cast<const T*>(p.a);

  auto load_a = [&](int step, int stage) {  // cp.async, zero-filled past the tile's rows or K
    T* dst = smem_a + stage * Tr::kBlockM * Tr::kPitch + a_row0 * Tr::kPitch + a_col;
    const int kk = step * Tr::kBlockK + a_col;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int offset = a_row_offset[a_row0 + i * kRowStride];
      const bool valid = offset >= 0 && kk < p.k;
      CpAsync16(dst + i * kRowStride * Tr::kPitch, valid ? a + offset + kk : a, valid);
    }
  };
  RawBlock<W> raw[Tr::kBlocksPerThread];
  auto load_b = [&](int step) {
#pragma unroll
    for (int j = 0; j < Tr::kBlocksPerThread; ++j) {
      const int kk = step * Tr::kBlockK + 32 * (tid % 2);
      if (w_rows[j] != nullptr && kk < p.k) raw[j].Load(w_rows[j] + (kk / 32) * BlockBytes(W));
    }
  };
  auto store_b = [&](int step, int stage) {
#pragma unroll
    for (int j = 0; j < Tr::kBlocksPerThread; ++j) {
      const int kk = step * Tr::kBlockK + 32 * (tid % 2);
      uint32_t packed[16];
      if (w_rows[j] != nullptr && kk < p.k) {
        raw[j].Dequant(packed);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) packed[i] = 0;
      }
      const int b_row = (tid + j * Tr::kThreads) / 2;
      uint4* dst = reinterpret_cast<uint4*>(smem_b + stage * Tr::kBlockN * Tr::kPitch + b_row * Tr::kPitch + 32 * (tid % 2));
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
    }
  };

  float acc[Tr::kFragsM][Tr::kFragsN][4];
#pragma unroll
  for (int mi = 0; mi < Tr::kFragsM; ++mi)
#pragma unroll
    for (int ni = 0; ni < Tr::kFragsN; ++ni)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.0f;

  // Rows of this warp's 64 that hold tokens; fragments wholly past them are skipped (the
  // last tile of an expert is partial: at 8192 tokens over 256 experts about a fifth of
  // the rows of a full-tile schedule would be padding).
  const int warp_rows = rows - warp_m * Tr::kWarpTileM;
  auto compute = [&](int stage, auto full) {
    constexpr bool kFull = decltype(full)::value;
    const T* a_tile = smem_a + stage * Tr::kBlockM * Tr::kPitch + (warp_m * Tr::kWarpTileM) * Tr::kPitch;
    const T* b_tile = smem_b + stage * Tr::kBlockN * Tr::kPitch + (warp_n * Tr::kWarpTileN) * Tr::kPitch;
#pragma unroll
    for (int ks = 0; ks < Tr::kBlockK / 16; ++ks) {
      uint32_t a_frag[Tr::kFragsM][4];
      uint32_t b_frag[Tr::kFragsN / 2][4];
#pragma unroll
      for (int mi = 0; mi < Tr::kFragsM; ++mi) {
        if (kFull || mi * 16 < warp_rows) {
          LdMatrixX4(a_frag[mi], a_tile + (mi * 16 + lane % 16) * Tr::kPitch + ks * 16 + (lane / 16) * 8);
        }
      }
#pragma unroll
      for (int nj = 0; nj < Tr::kFragsN / 2; ++nj) {  // two n8 fragments per ldmatrix: {b0, b1} of 2nj, of 2nj+1
        LdMatrixX4(b_frag[nj], b_tile + (nj * 16 + (lane / 16) * 8 + lane % 8) * Tr::kPitch + ks * 16 + ((lane / 8) % 2) * 8);
      }
#pragma unroll
      for (int mi = 0; mi < Tr::kFragsM; ++mi) {
        if (kFull || mi * 16 < warp_rows) {
#pragma unroll
          for (int ni = 0; ni < Tr::kFragsN; ++ni) {
            Mma16816<T>(acc[mi][ni], a_frag[mi], b_frag[ni / 2][(ni % 2) * 2], b_frag[ni / 2][(ni % 2) * 2 + 1]);
          }
        }
      }
    }
  };

  // Two stages, one barrier per step: the barrier at the top of step s publishes stage s
  // (cp.async of A, dequantised W) and retires every warp's reads of the other stage, which
  // step s then refills for s + 1 while the tensor cores work on stage s.
  const int steps = (p.k + Tr::kBlockK - 1) / Tr::kBlockK;
  load_a(0, 0);
  CpAsyncCommit();
  load_b(0);
  store_b(0, 0);
  for (int step = 0; step < steps; ++step) {
    CpAsyncWaitAll();
    __syncthreads();
    const int stage = step % 2;
    const bool next = step + 1 < steps;
    if (next) {
      load_a(step + 1, stage ^ 1);
      CpAsyncCommit();
      load_b(step + 1);
    }
    if (warp_rows >= Tr::kWarpTileM) {
      compute(stage, std::true_type{});
    } else if (warp_rows > 0) {
      compute(stage, std::false_type{});
    }
    if (next) store_b(step + 1, stage ^ 1);
  }

  // Epilogue. Fragment element c of (mi, ni): row mi*16 + lane/4 (+8 for c >= 2), column
  // ni*8 + 2*(lane%4) + (c%2) of the warp tile.
#pragma unroll
  for (int mi = 0; mi < Tr::kFragsM; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp_m * Tr::kWarpTileM + mi * 16 + lane / 4 + 8 * half;
      if (r >= rows) continue;
      if constexpr (kSwiGlu) {
        T* out = static_cast<T*>(p.out) + static_cast<size_t>(row0 + r) * p.n;
#pragma unroll
        for (int ni = 0; ni < Tr::kFragsN / 2; ++ni) {
          const int f = n0 + warp_n * (Tr::kWarpTileN / 2) + ni * 8 + 2 * (lane % 4);
          if (f >= p.n) continue;
          const float g0 = acc[mi][ni][2 * half], g1 = acc[mi][ni][2 * half + 1];
          const float u0 = acc[mi][ni + Tr::kFragsN / 2][2 * half], u1 = acc[mi][ni + Tr::kFragsN / 2][2 * half + 1];
          *reinterpret_cast<uint32_t*>(out + f) = Pack2<T>(g0 / (1.0f + expf(-g0)) * u0, g1 / (1.0f + expf(-g1)) * u1);
        }
      } else {
        float* out = static_cast<float*>(p.out) + static_cast<size_t>(p.row_slot[row0 + r]) * p.n;
#pragma unroll
        for (int ni = 0; ni < Tr::kFragsN; ++ni) {
          const int col = n0 + warp_n * Tr::kWarpTileN + ni * 8 + 2 * (lane % 4);
          if (col >= p.n) continue;
          *reinterpret_cast<float2*>(out + col) = make_float2(acc[mi][ni][2 * half], acc[mi][ni][2 * half + 1]);
        }
      }
    }
  }
}

template <typename T>
__global__ void CastKernel(const float4* x, int64_t quads, uint2* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= quads) return;
  const float4 v = x[i];
  out[i] = make_uint2(Pack2<T>(v.x, v.y), Pack2<T>(v.z, v.w));
}

template <typename Tr, DType W, bool kSwiGlu>
void LaunchGroupedGemm(const GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
  static const bool configured = [] {
    CUDA_OK(cudaFuncSetAttribute(GroupedGemmKernel<Tr, W, kSwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Tr::kSharedBytes)));
    return true;
  }();
  (void)configured;
  const int tile_n = kSwiGlu ? Tr::kBlockN / 2 : Tr::kBlockN;
  const dim3 grid(static_cast<unsigned>((p.n + tile_n - 1) / tile_n), static_cast<unsigned>(max_tiles));
  GroupedGemmKernel<Tr, W, kSwiGlu><<<grid, Tr::kThreads, Tr::kSharedBytes, stream>>>(p);
  LAUNCH_OK();
}

template <typename Tr, bool kSwiGlu>
void LaunchGroupedGemm(DType w, const GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
  switch (w) {
    case DType::kQ4_0: LaunchGroupedGemm<Tr, DType::kQ4_0, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kQ8_0: LaunchGroupedGemm<Tr, DType::kQ8_0, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kF16: LaunchGroupedGemm<Tr, DType::kF16, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kBF16: LaunchGroupedGemm<Tr, DType::kBF16, kSwiGlu>(p, max_tiles, stream); break;
    default: CU_CHECK(false);
  }
}

enum class GroupedKernel { kWarps8, kWarps4, kWgmma, kPredequant };

// The wgmma kernel, or from 512 rows an expert on average the weights dequantised ahead of a
// wgmma GEMM (cuda_moe_predequant.cu; H200, 16,384 tokens x 8 of 256 experts: 6.49 ms, 41.7%
// of bf16, against 8.19; 8,192 tokens 4.61 ms both). LATENTSERVE_CUDA_MOE_TILE forces one.
GroupedKernel ChosenKernel(int64_t slots, int64_t n_experts) {
  const std::string forced = std::getenv("LATENTSERVE_CUDA_MOE_TILE") ? std::getenv("LATENTSERVE_CUDA_MOE_TILE") : "";
  if (forced == "warps8") return GroupedKernel::kWarps8;
  if (forced == "warps4") return GroupedKernel::kWarps4;
  if (forced == "predequant") return GroupedKernel::kPredequant;
  if (forced == "wgmma") return GroupedKernel::kWgmma;
  return slots >= 512 * n_experts ? GroupedKernel::kPredequant : GroupedKernel::kWgmma;
}

template <bool kSwiGlu>
void LaunchGroupedGemm(GroupedKernel kernel, DType w, const GroupedGemmParams& p, int max_tiles,
                       const PredequantWork& predequant, cudaStream_t stream) {
  switch (kernel) {
    case GroupedKernel::kWarps8: LaunchGroupedGemm<Warps8Tile, kSwiGlu>(w, p, max_tiles, stream); break;
    case GroupedKernel::kWarps4: LaunchGroupedGemm<Warps4Tile, kSwiGlu>(w, p, max_tiles, stream); break;
    case GroupedKernel::kWgmma: LaunchGroupedGemmWgmma(kSwiGlu, w, p, max_tiles, stream); break;
    case GroupedKernel::kPredequant: LaunchGroupedGemmPredequant(kSwiGlu, w, p, predequant, stream); break;
  }
}

bool GroupedType(DType t) { return t == DType::kQ4_0 || t == DType::kQ8_0 || t == DType::kF16 || t == DType::kBF16; }

}  // namespace

bool CudaBackend::MoeExpertsGrouped(const Tensor& x, const MoeWeights& experts, const Tensor& ids,
                                    const Tensor& weights, const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows();
  const int64_t ffn = experts.gate_exps.ne[1], n_experts = experts.gate_exps.ne[2], top_k = ids.ne[0];
  const DType gate_type = experts.gate_exps.dtype, down_type = experts.down_exps.dtype;
  // f32 weights keep the generic (exact f32) path; the 16-bit type of both GEMMs must agree
  // because the SwiGLU output feeds the down GEMM directly.
  if (gate_type != experts.up_exps.dtype || !GroupedType(gate_type) || !GroupedType(down_type) ||
      (gate_type == DType::kBF16) != (down_type == DType::kBF16) || hidden % 32 != 0 || ffn % 32 != 0) {
    return false;
  }
  const int64_t slots = tokens * top_k;
  const int64_t max_tiles = MoeTileListBound(slots, n_experts);
  // Element offsets into the activations are 32-bit in the kernel.
  if (slots >= (int64_t{1} << 31) / std::max(hidden, ffn) || max_tiles > 65535) return false;

  const MoeRouting routing = SortSlotsByExpert(ids, tokens, n_experts);

  // A batched decode step (at most 64 tokens): the tensor-core experts (cuda_moe_quant_mma.cu).
  if (MoeExpertsQuantMma(x, experts, routing, weights, y)) return true;

  // Activations (slot 6): the 16-bit inputs [tokens, hidden], the SwiGLU output in sorted
  // rows [slots, ffn], the f32 expert outputs in slot order [slots, hidden].
  const size_t x16_bytes = AlignUp256(tokens * hidden * 2), act_bytes = AlignUp256(slots * ffn * 2);
  auto* work = static_cast<uint8_t*>(Scratch(6, x16_bytes + act_bytes + slots * hidden * 4));
  void* x16 = work;
  void* act = work + x16_bytes;
  auto* slot_out = reinterpret_cast<float*>(work + x16_bytes + act_bytes);

  GroupedKernel kernel = ChosenKernel(slots, n_experts);
  // Predequant's 16-bit weights (slot 17, 2.25 GiB for the model); wgmma where they do not fit.
  const size_t workspace = PredequantWorkspaceBytes(gate_type, down_type, n_experts, hidden, ffn);
  if (kernel == GroupedKernel::kPredequant && !ScratchFits(17, workspace)) kernel = GroupedKernel::kWgmma;
  const size_t predequant_bytes = kernel == GroupedKernel::kPredequant ? workspace : 0;
  const PredequantWork predequant{predequant_bytes > 0 ? Scratch(17, predequant_bytes) : nullptr, predequant_bytes,
                                  routing.first_tile, n_experts, max_tiles, slots};
  const int64_t quads = tokens * hidden / 4;
  const auto* x4 = reinterpret_cast<const float4*>(DevF32(x));
  if (gate_type == DType::kBF16) {
    CastKernel<__nv_bfloat16><<<Blocks(quads, 256), 256, 0, stream_>>>(x4, quads, static_cast<uint2*>(x16));
  } else {
    CastKernel<__half><<<Blocks(quads, 256), 256, 0, stream_>>>(x4, quads, static_cast<uint2*>(x16));
  }
  LAUNCH_OK();

  GroupedGemmParams gate_up{};
  gate_up.a = x16;
  gate_up.a_by_token = true;
  gate_up.top_k = static_cast<int>(top_k);
  gate_up.w0 = DevPtr(experts.gate_exps);
  gate_up.w1 = DevPtr(experts.up_exps);
  gate_up.w_row_bytes = experts.gate_exps.row_bytes();
  gate_up.w_expert_bytes = gate_up.w_row_bytes * ffn;
  gate_up.k = static_cast<int>(hidden);
  gate_up.n = static_cast<int>(ffn);
  gate_up.tiles = routing.tiles;
  gate_up.tile_count = routing.tile_count;
  gate_up.first_row = routing.first_row;
  gate_up.row_slot = routing.row_slot;
  gate_up.out = act;
  LaunchGroupedGemm<true>(kernel, gate_type, gate_up, static_cast<int>(max_tiles), predequant, stream_);

  GroupedGemmParams down = gate_up;
  down.a = act;
  down.a_by_token = false;
  down.w0 = DevPtr(experts.down_exps);
  down.w1 = nullptr;
  down.w_row_bytes = experts.down_exps.row_bytes();
  down.w_expert_bytes = down.w_row_bytes * hidden;
  down.k = static_cast<int>(ffn);
  down.n = static_cast<int>(hidden);
  down.out = slot_out;
  LaunchGroupedGemm<false>(kernel, down_type, down, static_cast<int>(max_tiles), predequant, stream_);

  WeightedSlotSum(slot_out, weights, y);
  return true;
}

}  // namespace latentserve::kernels::cuda
