// The grouped MoE GEMM on Hopper's warpgroup MMA (wgmma, sm_90a; this file is built for that
// target alone, see CMakeLists.txt). Same tile list, parameters and outputs as the mma.sync
// kernel of cuda_moe_grouped.cu: a CTA of 2 warpgroups covers 128 sorted rows x 128 weight
// rows; per 64-element K-step the activations arrive by cp.async and the weight blocks are
// dequantised by every thread, both into 128-byte-swizzled shared tiles that wgmma reads
// through descriptors (m64n128k16, f32 accumulation, one warpgroup per 64 rows). The step's
// MMAs run asynchronously while the threads dequantise the next step's weights.
// Opt-in (LATENTSERVE_CUDA_MOE_TILE=wgmma) until measured on the device.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/moe_grouped.cuh"

namespace latentserve::kernels::cuda::moe {
namespace {

struct WgmmaTile {
  static constexpr int kBlockM = kTileRows;  // 2 warpgroups x 64 rows
  static constexpr int kBlockN = 128;        // one m64n128k16 per warpgroup and k16
  static constexpr int kBlockK = 64;         // 128 bytes of 16-bit values: one swizzle row
  static constexpr int kThreads = 256;
  static constexpr int kStages = 2;
  static constexpr int kTileBytes = kBlockM * kBlockK * 2;  // A or B tile of one stage (16 KB)
  static constexpr size_t kSharedBytes = kStages * 2 * kTileBytes + 1024;  // + 1024-byte alignment of swizzle atoms
  static_assert(kBlockM == 128 && kBlockN == 128 && kThreads == 2 * kBlockN, "one weight block per thread and step");
};

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows, 128-byte
// swizzle (the chunk index XOR the row within its 8-row atom): the layout wgmma reads.
__device__ __forceinline__ int Swizzled(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ uint64_t Descriptor(const void* smem) {
  const uint64_t address = static_cast<uint64_t>(__cvta_generic_to_shared(smem));
  return ((address & 0x3ffff) >> 4) | (uint64_t{16 >> 4} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaWaitAll() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Generic-proxy writes to shared memory (stores, cp.async) before async-proxy reads (wgmma).
__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous MMAs.
__device__ __forceinline__ void PinAccumulators(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[64x128] += A[64x16] B[16x128]; A, B K-major in shared memory. d[4i + c]: row warp*16 +
// lane/4 (+8 for c >= 2), column 8i + 2*(lane%4) + c%2.
template <typename T>
__device__ __forceinline__ void Wgmma64x128x16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(1));
  }
}

template <DType W, bool kSwiGlu>
__global__ void __launch_bounds__(WgmmaTile::kThreads, 2) WgmmaGroupedGemmKernel(GroupedGemmParams p) {
  using T = ComputeType<W>;
  using Tr = WgmmaTile;
  if (static_cast<int>(blockIdx.y) >= *p.tile_count) return;
  const int2 tile = p.tiles[blockIdx.y];
  const int expert = tile.x, row0 = tile.y;
  const int rows = min(Tr::kBlockM, p.first_row[expert + 1] - row0);
  const int n0 = static_cast<int>(blockIdx.x) * (kSwiGlu ? Tr::kBlockN / 2 : Tr::kBlockN);

  extern __shared__ uint8_t shared_raw[];
  // [kStages] x (A tile, B tile), each [128 rows][128 bytes] swizzled, 1024-byte aligned.
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(shared_raw) + 1023) & ~uintptr_t{1023});
  auto tile_a = [&](int stage) { return smem + stage * 2 * Tr::kTileBytes; };
  auto tile_b = [&](int stage) { return smem + stage * 2 * Tr::kTileBytes + Tr::kTileBytes; };

  const int tid = threadIdx.x, warpgroup = tid / 128;
  __shared__ int a_row_offset[Tr::kBlockM];
  for (int r = tid; r < Tr::kBlockM; r += Tr::kThreads) a_row_offset[r] = ActivationOffset(p, row0, rows, r);
  __syncthreads();

  // A: rows tid/8 + 32i, chunk tid%8. B: one 32-element block, row tid/2, chunks 4*(tid%2)..+3.
  // SwiGLU form: B rows 0..63 are gate outputs n0.., rows 64..127 the same up outputs.
  const int a_chunk = tid % 8, b_row = tid / 2, b_half = tid % 2;
  const uint8_t* w_row = WeightRow<kSwiGlu, Tr::kBlockN>(p, expert, n0, b_row);
  const T* a = static_cast<const T*>(p.a);
  auto load_a = [&](int step, int stage) {
    const int kk = step * Tr::kBlockK + a_chunk * 8;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = tid / 8 + 32 * i;
      const int offset = a_row_offset[r];
      const bool valid = offset >= 0 && kk < p.k;
      CpAsync16(tile_a(stage) + Swizzled(r, a_chunk), valid ? a + offset + kk : a, valid);
    }
  };
  RawBlock<W> raw;
  auto load_b = [&](int step) {
    const int kk = step * Tr::kBlockK + 32 * b_half;
    if (w_row != nullptr && kk < p.k) raw.Load(w_row + (kk / 32) * BlockBytes(W));
  };
  auto store_b = [&](int step, int stage) {
    const int kk = step * Tr::kBlockK + 32 * b_half;
    uint32_t packed[16];
    if (w_row != nullptr && kk < p.k) {
      raw.Dequant(packed);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) packed[i] = 0;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      *reinterpret_cast<uint4*>(tile_b(stage) + Swizzled(b_row, 4 * b_half + i)) =
          make_uint4(packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]);
    }
  };

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  // One barrier per step: it publishes stage s (cp.async landed, dequantised stores fenced
  // for the async proxy) and follows every warpgroup's wait on its step s-1 MMAs, so step s
  // may refill the other stage while its own MMAs run.
  const int steps = (p.k + Tr::kBlockK - 1) / Tr::kBlockK;
  load_a(0, 0);
  CpAsyncCommit();
  load_b(0);
  store_b(0, 0);
  for (int step = 0; step < steps; ++step) {
    CpAsyncWaitAll();
    FenceProxyAsync();
    __syncthreads();
    const int stage = step % 2;
    const bool next = step + 1 < steps;
    if (next) {
      load_a(step + 1, stage ^ 1);
      CpAsyncCommit();
      load_b(step + 1);
    }
    // Both warpgroups always issue (a branch around wgmma makes ptxas serialise them, C7518),
    // so on tiles of <= 64 rows warpgroup 1 multiplies zero rows.
    WgmmaFence();
    PinAccumulators(acc);
    const uint64_t desc_a = Descriptor(tile_a(stage) + warpgroup * 64 * 128), desc_b = Descriptor(tile_b(stage));
#pragma unroll
    for (int ks = 0; ks < Tr::kBlockK / 16; ++ks) Wgmma64x128x16<T>(acc, desc_a + 2 * ks, desc_b + 2 * ks);  // +32 bytes
    WgmmaCommit();
    if (next) store_b(step + 1, stage ^ 1);
    WgmmaWaitAll();
    PinAccumulators(acc);
  }

  const int lane = tid % 32, warp_in_group = (tid % 128) / 32;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warpgroup * 64 + warp_in_group * 16 + lane / 4 + 8 * half;
    if (r >= rows) continue;
    if constexpr (kSwiGlu) {
      T* out = static_cast<T*>(p.out) + static_cast<size_t>(row0 + r) * p.n;
#pragma unroll
      for (int i = 0; i < 8; ++i) {  // columns 8i..: gate in acc[4i..], up in acc[4(i + 8)..]
        const int f = n0 + 8 * i + 2 * (lane % 4);
        if (f >= p.n) continue;
        const float g0 = acc[4 * i + 2 * half], g1 = acc[4 * i + 2 * half + 1];
        const float u0 = acc[4 * (i + 8) + 2 * half], u1 = acc[4 * (i + 8) + 2 * half + 1];
        *reinterpret_cast<uint32_t*>(out + f) = Pack2<T>(g0 / (1.0f + expf(-g0)) * u0, g1 / (1.0f + expf(-g1)) * u1);
      }
    } else {
      float* out = static_cast<float*>(p.out) + static_cast<size_t>(p.row_slot[row0 + r]) * p.n;
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int col = n0 + 8 * i + 2 * (lane % 4);
        if (col >= p.n) continue;
        *reinterpret_cast<float2*>(out + col) = make_float2(acc[4 * i + 2 * half], acc[4 * i + 2 * half + 1]);
      }
    }
  }
}

template <DType W, bool kSwiGlu>
void Launch(const GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
  static const bool configured = [] {
    CUDA_OK(cudaFuncSetAttribute(WgmmaGroupedGemmKernel<W, kSwiGlu>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(WgmmaTile::kSharedBytes)));
    return true;
  }();
  (void)configured;
  const int tile_n = kSwiGlu ? WgmmaTile::kBlockN / 2 : WgmmaTile::kBlockN;
  const dim3 grid(static_cast<unsigned>((p.n + tile_n - 1) / tile_n), static_cast<unsigned>(max_tiles));
  WgmmaGroupedGemmKernel<W, kSwiGlu><<<grid, WgmmaTile::kThreads, WgmmaTile::kSharedBytes, stream>>>(p);
  LAUNCH_OK();
}

template <bool kSwiGlu>
void Launch(DType w, const GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
  switch (w) {
    case DType::kQ4_0: Launch<DType::kQ4_0, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kQ8_0: Launch<DType::kQ8_0, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kF16: Launch<DType::kF16, kSwiGlu>(p, max_tiles, stream); break;
    case DType::kBF16: Launch<DType::kBF16, kSwiGlu>(p, max_tiles, stream); break;
    default: CU_CHECK(false);
  }
}

}  // namespace

void LaunchGroupedGemmWgmma(bool swiglu, DType w, const GroupedGemmParams& p, int max_tiles, cudaStream_t stream) {
  if (swiglu) {
    Launch<true>(w, p, max_tiles, stream);
  } else {
    Launch<false>(w, p, max_tiles, stream);
  }
}

}  // namespace latentserve::kernels::cuda::moe
