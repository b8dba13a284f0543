// The grouped MoE GEMMs with the expert weights dequantised ahead of the GEMM
// (LATENTSERVE_CUDA_MOE_TILE=predequant; wgmma, built for sm_90a alone). Per stage (gate+up,
// then down), same tile list, parameters and outputs as the other grouped kernels:
//   1. DequantExpertsKernel writes the 16-bit rows (f16; bf16 for bf16 weights: the
//      activations' type) of the experts that received at least one row (first_row says
//      which, on the device) into a workspace, with the same per-block dequantisation as the
//      in-loop kernels (moe_grouped.cuh), so the GEMM sees the same values; f16 / bf16
//      weights are read in place;
//   2. PredequantGemmKernel: a CTA of 2 warpgroups covers 128 sorted rows x 256 weight rows
//      (gate+up: 128 gate rows and the same 128 up rows). Per 64-wide K-step both operands
//      arrive by cp.async into 128-byte-swizzled shared tiles, 4 stages: two steps load while
//      wgmma m64n256k16 runs on a third; no thread dequantises inside the loop.
// Workspace: one stage's weights of as many experts as the budget allows. The larger stage of
// the model is gate+up: 256 x 2 x 1024 x 2304 x 2 B = 2.25 GiB, within the default budget of
// 2560 MiB (LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB), so each stage runs as one pass; the down
// stage reuses the same memory. Past the budget the experts go in passes of consecutive ids,
// each a dequantisation then the GEMM over that range's tiles (expert_first_tile from the plan).
#include <algorithm>
#include <cstdlib>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/moe_grouped.cuh"

namespace latentserve::kernels::cuda::moe {
namespace {

struct PredequantTile {
  static constexpr int kBlockM = kTileRows;  // 2 warpgroups x 64 rows
  static constexpr int kBlockN = 256;        // one m64n256k16 per warpgroup and k16
  static constexpr int kBlockK = 64;         // 128 bytes of 16-bit values: one swizzle row
  static constexpr int kThreads = 256;
  static constexpr int kStages = 4;
  static constexpr int kABytes = kBlockM * kBlockK * 2;  // 16 KB
  static constexpr int kBBytes = kBlockN * kBlockK * 2;  // 32 KB
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr size_t kSharedBytes = size_t{kStages} * kStageBytes + 1024;  // + alignment of swizzle atoms
  static constexpr int kRowStride = kThreads / 8;          // rows one 16-byte chunk per thread covers
  static constexpr int kAChunks = kBlockM / kRowStride;    // 4 per thread and step
  static constexpr int kBChunks = kBlockN / kRowStride;    // 8
  static_assert(kBlockK * 2 == 128 && kStages >= 3, "one swizzle row per K-step; two steps in flight");
};

struct PredequantGemmParams {
  GroupedGemmParams g;               // activations, tile list, sorted rows, output, k, n (w0 / w1 unused)
  const uint16_t* w0;                // 16-bit gate (or down) rows of experts e_begin..: [e - e_begin][n][k]
  const uint16_t* w1;                // up rows, same layout (SwiGLU form); else null
  size_t w_expert_elems;             // n * k
  int e_begin, e_end;                // this pass's experts
  const int32_t* expert_first_tile;  // [experts + 1] first tile-list entry of each expert
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows, 128-byte
// swizzle (chunk XOR row within its 8-row atom): the layout wgmma reads.
__device__ __forceinline__ int Swizzled(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t Descriptor(const void* smem) {
  const uint64_t address = static_cast<uint64_t>(__cvta_generic_to_shared(smem));
  return ((address & 0x3ffff) >> 4) | (uint64_t{16 >> 4} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory"); }
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void WgmmaWait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory"); }
// cp.async writes (generic proxy) before wgmma's reads (async proxy) of shared memory.
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous MMAs.
__device__ __forceinline__ void PinAccumulators(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define LS_ACC8(i)                                                                                                 \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define LS_WGMMA_64X256X16(TYPE)                                                                                    \
  asm volatile(                                                                                                     \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                                 \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " {"                                             \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                      \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                            \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                            \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                            \
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                            \
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                            \
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "                \
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"              \
      "}, %128, %129, p, 1, 1, 0, 0;\n}\n"                                                                          \
      : LS_ACC8(0), LS_ACC8(8), LS_ACC8(16), LS_ACC8(24), LS_ACC8(32), LS_ACC8(40), LS_ACC8(48), LS_ACC8(56),       \
        LS_ACC8(64), LS_ACC8(72), LS_ACC8(80), LS_ACC8(88), LS_ACC8(96), LS_ACC8(104), LS_ACC8(112), LS_ACC8(120) \
      : "l"(desc_a), "l"(desc_b), "r"(1))

// d[64x256] += A[64x16] B[16x256]; A, B K-major in shared memory. d[4i + c]: row warp*16 +
// lane/4 (+8 for c >= 2), column 8i + 2*(lane%4) + c%2.
template <typename T>
__device__ __forceinline__ void Wgmma64x256x16(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    LS_WGMMA_64X256X16("f16");
  } else {
    LS_WGMMA_64X256X16("bf16");
  }
}
#undef LS_WGMMA_64X256X16
#undef LS_ACC8

// One thread per 32-element block of a stored row: the 16-bit row of the expert's slot in
// the workspace. blockIdx.y: expert - e_begin; blockIdx.z: gate (0) or up (1) weights.
template <DType W>
__global__ void DequantExpertsKernel(const uint8_t* w0, const uint8_t* w1, size_t w_row_bytes, int n, int k,
                                     int e_begin, const int32_t* first_row, uint16_t* out0, uint16_t* out1) {
  const int expert = e_begin + static_cast<int>(blockIdx.y);
  if (first_row[expert + 1] == first_row[expert]) return;  // no rows: its weights are not read
  const int row_blocks = k / 32;
  const int block = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (block >= n * row_blocks) return;
  const int row = block / row_blocks, kb = block % row_blocks;
  const bool second = blockIdx.z == 1;
  RawBlock<W> raw;
  raw.Load((second ? w1 : w0) + (static_cast<size_t>(expert) * n + row) * w_row_bytes + kb * BlockBytes(W));
  uint32_t packed[16];
  raw.Dequant(packed);
  uint16_t* out = (second ? out1 : out0) + (static_cast<size_t>(blockIdx.y) * n + row) * k + kb * 32;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    reinterpret_cast<uint4*>(out)[i] =
        make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
  }
}

// The grouped GEMM over 16-bit weights. blockIdx.x: N-tile (fastest, so the N-tiles of one
// M-tile run together and share its activations in L2, and an expert's M-tiles follow each
// other and share its weights); blockIdx.y: entry of the pass's part of the tile list.
template <typename T, bool kSwiGlu>
__global__ void __launch_bounds__(PredequantTile::kThreads, 1) PredequantGemmKernel(PredequantGemmParams q) {
  using Tr = PredequantTile;
  const GroupedGemmParams& p = q.g;
  const int tile_index = q.expert_first_tile[q.e_begin] + static_cast<int>(blockIdx.y);
  if (tile_index >= q.expert_first_tile[q.e_end]) return;
  const int2 tile = p.tiles[tile_index];
  const int expert = tile.x, row0 = tile.y;
  const int rows = min(Tr::kBlockM, p.first_row[expert + 1] - row0);
  const int n0 = static_cast<int>(blockIdx.x) * (kSwiGlu ? Tr::kBlockN / 2 : Tr::kBlockN);

  extern __shared__ uint8_t shared_raw[];
  // [kStages] x (A tile [128 rows], B tile [256 rows]), rows of 128 bytes swizzled, 1024-byte aligned.
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t{1023});
  auto tile_a = [&](int stage) { return smem + stage * Tr::kStageBytes; };
  auto tile_b = [&](int stage) { return smem + stage * Tr::kStageBytes + Tr::kABytes; };

  // Each thread loads chunk `chunk` (8 elements) of rows row_base + 32 i of both tiles.
  const int tid = threadIdx.x, warpgroup = tid / 128, chunk = tid % 8, row_base = tid / 8;
  int a_offset[Tr::kAChunks];  // element offset of the row in A, -1 past the tile's rows
#pragma unroll
  for (int i = 0; i < Tr::kAChunks; ++i) a_offset[i] = ActivationOffset(p, row0, rows, row_base + Tr::kRowStride * i);
  // B row b: SwiGLU form, the gate output n0 + b for b < 128, the up output n0 + b - 128 after
  // (chunks i < 4 gate, i >= 4 up); else the output n0 + b.
  constexpr int kOutputsPerSide = kSwiGlu ? Tr::kBChunks / 2 : Tr::kBChunks;
  const size_t b_first = (expert - q.e_begin) * q.w_expert_elems + static_cast<size_t>(n0 + row_base) * p.k;
  const uint16_t* b_gate = q.w0 + b_first;
  const uint16_t* b_up = kSwiGlu ? q.w1 + b_first : b_gate;
  uint32_t b_valid = 0;  // bit i: chunk i's row is one of the expert's n rows
#pragma unroll
  for (int i = 0; i < Tr::kBChunks; ++i) {
    if (n0 + row_base + Tr::kRowStride * (i % kOutputsPerSide) < p.n) b_valid |= 1u << i;
  }
  const T* a = static_cast<const T*>(p.a);
  auto load = [&](int step, int stage) {
    const int kk = step * Tr::kBlockK + chunk * 8;
    const bool k_valid = kk < p.k;
#pragma unroll
    for (int i = 0; i < Tr::kAChunks; ++i) {
      const bool valid = k_valid && a_offset[i] >= 0;
      const T* src = valid ? a + a_offset[i] + kk : a;
      CpAsync16(tile_a(stage) + Swizzled(row_base + Tr::kRowStride * i, chunk), src, valid);
    }
#pragma unroll
    for (int i = 0; i < Tr::kBChunks; ++i) {
      const bool valid = k_valid && ((b_valid >> i) & 1u) != 0;
      const uint16_t* src = (i < kOutputsPerSide ? b_gate : b_up) +
                            static_cast<size_t>(Tr::kRowStride * (i % kOutputsPerSide)) * p.k + kk;
      CpAsync16(tile_b(stage) + Swizzled(row_base + Tr::kRowStride * i, chunk), valid ? src : q.w0, valid);
    }
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;

  // Step s loads into stage s % kStages, kStages - 2 steps ahead (one commit group per step,
  // empty past the end). The barrier at the top of step s publishes stage s and follows every
  // warpgroup's wait for its step s - 2 MMAs (wait_group 1 after issuing s - 1), so step s
  // refills that stage while the MMAs of s - 1 and s run.
  constexpr int kAhead = Tr::kStages - 2;
  const int steps = (p.k + Tr::kBlockK - 1) / Tr::kBlockK;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < steps) load(s, s);
    CpAsyncCommit();
  }
  for (int step = 0; step < steps; ++step) {
    CpAsyncWait<kAhead - 1>();
    FenceProxyAsync();
    __syncthreads();
    const int ahead = step + kAhead;
    if (ahead < steps) load(ahead, ahead % Tr::kStages);
    CpAsyncCommit();
    // Both warpgroups always issue (a branch around wgmma makes ptxas serialise them), so on
    // tiles of <= 64 rows warpgroup 1 multiplies zero rows.
    const int stage = step % Tr::kStages;
    WgmmaFence();
    PinAccumulators(acc);
    const uint64_t desc_a = Descriptor(tile_a(stage) + warpgroup * 64 * 128), desc_b = Descriptor(tile_b(stage));
#pragma unroll
    for (int ks = 0; ks < Tr::kBlockK / 16; ++ks) Wgmma64x256x16<T>(acc, desc_a + 2 * ks, desc_b + 2 * ks);  // +32 bytes
    WgmmaCommit();
    WgmmaWait<1>();
    PinAccumulators(acc);
  }
  WgmmaWait<0>();
  PinAccumulators(acc);

  const int lane = tid % 32, warp_in_group = (tid % 128) / 32;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warpgroup * 64 + warp_in_group * 16 + lane / 4 + 8 * half;
    if (r >= rows) continue;
    if constexpr (kSwiGlu) {
      T* out = static_cast<T*>(p.out) + static_cast<size_t>(row0 + r) * p.n;
#pragma unroll
      for (int i = 0; i < 16; ++i) {  // columns 8i..: gate in acc[4i..], up in acc[4(i + 16)..]
        const int f = n0 + 8 * i + 2 * (lane % 4);
        if (f >= p.n) continue;
        const float g0 = acc[4 * i + 2 * half], g1 = acc[4 * i + 2 * half + 1];
        const float u0 = acc[4 * (i + 16) + 2 * half], u1 = acc[4 * (i + 16) + 2 * half + 1];
        *reinterpret_cast<uint32_t*>(out + f) = Pack2<T>(g0 / (1.0f + expf(-g0)) * u0, g1 / (1.0f + expf(-g1)) * u1);
      }
    } else {
      float* out = static_cast<float*>(p.out) + static_cast<size_t>(p.row_slot[row0 + r]) * p.n;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int col = n0 + 8 * i + 2 * (lane % 4);
        if (col >= p.n) continue;
        *reinterpret_cast<float2*>(out + col) = make_float2(acc[4 * i + 2 * half], acc[4 * i + 2 * half + 1]);
      }
    }
  }
}

bool InPlace(DType w) { return w == DType::kF16 || w == DType::kBF16; }

size_t ExpertBytes(bool swiglu, int64_t n, int64_t k) { return (swiglu ? 2 : 1) * static_cast<size_t>(n * k) * 2; }

// LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB (default 2560): the workspace budget.
size_t Budget() {
  const char* value = std::getenv("LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB");
  const long mib = value != nullptr ? std::strtol(value, nullptr, 10) : 0;
  return static_cast<size_t>(mib > 0 ? mib : 2560) << 20;
}

// Experts per pass of a stage given the workspace (at least one).
int64_t PassExperts(size_t workspace_bytes, size_t expert_bytes, int64_t experts) {
  return std::clamp<int64_t>(static_cast<int64_t>(workspace_bytes / expert_bytes), 1, experts);
}

template <typename Kernel>
void AllowShared(Kernel kernel) {
  CUDA_OK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(PredequantTile::kSharedBytes)));
}

template <typename T, bool kSwiGlu>
void LaunchGemm(const PredequantGemmParams& q, int64_t pass_tiles, cudaStream_t stream) {
  static const bool configured = (AllowShared(PredequantGemmKernel<T, kSwiGlu>), true);
  (void)configured;
  const int tile_n = kSwiGlu ? PredequantTile::kBlockN / 2 : PredequantTile::kBlockN;
  const dim3 grid(static_cast<unsigned>((q.g.n + tile_n - 1) / tile_n), static_cast<unsigned>(pass_tiles));
  PredequantGemmKernel<T, kSwiGlu><<<grid, PredequantTile::kThreads, PredequantTile::kSharedBytes, stream>>>(q);
  LAUNCH_OK();
}

template <DType W>
void LaunchDequant(const GroupedGemmParams& p, bool swiglu, int e_begin, int pass_experts, uint16_t* out0,
                   uint16_t* out1, cudaStream_t stream) {
  const int64_t row_blocks = int64_t{p.n} * (p.k / 32);
  const dim3 grid(static_cast<unsigned>((row_blocks + 255) / 256), static_cast<unsigned>(pass_experts), swiglu ? 2 : 1);
  DequantExpertsKernel<W><<<grid, 256, 0, stream>>>(p.w0, p.w1, p.w_row_bytes, p.n, p.k, e_begin, p.first_row, out0,
                                                    out1);
  LAUNCH_OK();
}

}  // namespace

size_t PredequantWorkspaceBytes(DType gate, DType down, int64_t experts, int64_t hidden, int64_t ffn) {
  const size_t budget = Budget();
  size_t bytes = 0;
  if (!InPlace(gate)) {
    const size_t expert = ExpertBytes(true, ffn, hidden);
    bytes = std::max(bytes, PassExperts(budget, expert, experts) * expert);
  }
  if (!InPlace(down)) {
    const size_t expert = ExpertBytes(false, hidden, ffn);
    bytes = std::max(bytes, PassExperts(budget, expert, experts) * expert);
  }
  return bytes;
}

void LaunchGroupedGemmPredequant(bool swiglu, DType w, const GroupedGemmParams& p, const PredequantWork& work,
                                 cudaStream_t stream) {
  const bool in_place = InPlace(w);
  CU_CHECK(w == DType::kQ4_0 || w == DType::kQ8_0 || in_place);
  CU_CHECK(!in_place || p.w_row_bytes == static_cast<size_t>(p.k) * 2);
  const size_t expert_bytes = ExpertBytes(swiglu, p.n, p.k);
  CU_CHECK(in_place || work.workspace_bytes >= expert_bytes);
  const int64_t group = in_place ? work.experts : PassExperts(work.workspace_bytes, expert_bytes, work.experts);
  for (int64_t e_begin = 0; e_begin < work.experts; e_begin += group) {
    const int64_t e_end = std::min<int64_t>(work.experts, e_begin + group);
    PredequantGemmParams q{};
    q.g = p;
    q.w_expert_elems = static_cast<size_t>(p.n) * p.k;
    q.e_begin = static_cast<int>(e_begin);
    q.e_end = static_cast<int>(e_end);
    q.expert_first_tile = work.expert_first_tile;
    if (in_place) {
      q.w0 = reinterpret_cast<const uint16_t*>(p.w0);
      q.w1 = swiglu ? reinterpret_cast<const uint16_t*>(p.w1) : nullptr;
    } else {
      auto* out0 = static_cast<uint16_t*>(work.workspace);
      uint16_t* out1 = swiglu ? out0 + group * q.w_expert_elems : nullptr;  // the up rows after the gate rows
      if (w == DType::kQ4_0) {
        LaunchDequant<DType::kQ4_0>(p, swiglu, q.e_begin, q.e_end - q.e_begin, out0, out1, stream);
      } else {
        LaunchDequant<DType::kQ8_0>(p, swiglu, q.e_begin, q.e_end - q.e_begin, out0, out1, stream);
      }
      q.w0 = out0;
      q.w1 = out1;
    }
    // Tiles of the pass: every expert's tiles but its last are full.
    const int64_t pass_tiles = std::min<int64_t>(work.max_tiles, work.slots / kTileRows + (e_end - e_begin));
    const bool bf16 = w == DType::kBF16;
    if (swiglu) {
      bf16 ? LaunchGemm<__nv_bfloat16, true>(q, pass_tiles, stream) : LaunchGemm<__half, true>(q, pass_tiles, stream);
    } else {
      bf16 ? LaunchGemm<__nv_bfloat16, false>(q, pass_tiles, stream) : LaunchGemm<__half, false>(q, pass_tiles, stream);
    }
  }
}

}  // namespace latentserve::kernels::cuda::moe
