// What the two kernels of the chunked KDA prefill share (cuda_kda_chunk.cu: the prepare
// kernel and the host side; cuda_kda_chunk_state.cu: the state pass): shapes, the work
// lists, the workspace layout and the TF32 tensor-core fragments.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace latentserve::kernels::cuda::kda_chunk {

struct KdaChunkTraits {
  static constexpr int kDk = 128;        // key = value head dimension this path is built for
  static constexpr int kChunk = 64;      // tokens per chunk
  static constexpr int kThreads = 256;   // both kernels: 8 warps
  static constexpr int kColumns = 32;    // value columns per state-pass block
  static constexpr int kColumnBlocks = kDk / kColumns;
  static constexpr int kSubChunk = 16;   // rows sharing a reference point in A and B
  // A channel whose decay over a sub-chunk stays above 2^-kFactorisedLog2 factorises there:
  // its largest factor e^{G_r - G_j} is then 2^100 ~ 1e30, inside f32 (and TF32) range.
  static constexpr float kFactorisedLog2 = 100.0f;
  // Shared-memory row strides (floats). Those read as mma fragments are 4 or 8 mod 32, so
  // the 32 lanes of a fragment load hit 32 distinct banks.
  static constexpr int kRow = kDk + 4;       // kernel 1: f32 [C][Dk] tiles read as A (row-major) or B (transposed)
  static constexpr int kPairRow = kChunk + 4;  // kernel 1: f32 [C][C] A and B
  static constexpr int kColRow = kColumns + 8;  // kernel 2: f32 [C or Dk][kColumns] U' and state slices
  static constexpr int kRowH = kDk + 8;         // kernel 2: f16 [C][Dk] tiles (W, Qg, Kl), 16-byte rows
  static constexpr int kPairRowH = kChunk + 8;  // kernel 2: f16 [C][C] B
  static constexpr int kColRowH = kColumns + 8;  // kernel 2: f16 [C][kColumns] U
  // Workspace per (chunk, head), all row-major (token rows): f16 parts (in halves), then
  // e^{G_last} in f32. f16 keeps the 10-bit mantissa the TF32 products round to anyway;
  // every part is bounded (|Qg|, |B| <= 1 / sqrt(Dk), |Kl| <= 1; W and U are the chunk's
  // delta-rule response to its keys and values, of their size), far inside f16's range.
  static constexpr int kW = 0;                       // [C][Dk]  W
  static constexpr int kQg = kW + kChunk * kDk;      // [C][Dk]  e^{G} * q / sqrt(Dk)
  static constexpr int kKl = kQg + kChunk * kDk;     // [C][Dk]  e^{G_last - G} * k
  static constexpr int kB = kKl + kChunk * kDk;      // [C][C]   B (zero above the diagonal)
  static constexpr int kU = kB + kChunk * kChunk;    // [C][Dk]  U
  static constexpr int kHalves = kU + kChunk * kDk;
  static constexpr int kGlByte = kHalves * 2;        // [Dk] f32 e^{G_last}
  static constexpr int kBytes = kGlByte + kDk * 4;
  // Kernel 1 shared memory: G, k, q, v [C][kRow]; A, B [C][kPairRow]; beta [C]; per
  // sub-chunk the deep channels' list [Dk] (ints) and its warp masks [Dk / 32].
  static constexpr size_t kPrepareSmem =
      (4 * kChunk * kRow + 2 * kChunk * kPairRow + kChunk + (kChunk / kSubChunk) * (kDk + kDk / 32)) * sizeof(float);
  // Kernel 2 shared memory: the state slice [Dk][kColRow] and U' [C][kColRow] (f32), then
  // two stages (one chunk in use, the next loading) of W, Qg, Kl [C][kRowH], B [C][kPairRowH],
  // U [C][kColRowH] (f16) and e^{G_last} [Dk] (f32), in bytes.
  static constexpr int kStageW = 0, kStageQg = kStageW + kChunk * kRowH * 2, kStageKl = kStageQg + kChunk * kRowH * 2;
  static constexpr int kStageB = kStageKl + kChunk * kRowH * 2, kStageU = kStageB + kChunk * kPairRowH * 2;
  static constexpr int kStageGl = kStageU + kChunk * kColRowH * 2, kStageBytes = kStageGl + kDk * 4;
  static constexpr size_t kStateSmem = (kDk + kChunk) * kColRow * sizeof(float) + 2 * kStageBytes;
  // Workspace budget per pass: longer batches run in several passes, the state carried
  // through the sequences' state tensors. 512 MiB holds 225 chunks of 32 heads (14,400
  // tokens), so an 8192-token prefill chunk is one pass.
  static constexpr size_t kPassBytes = size_t{512} << 20;
};
using Traits = KdaChunkTraits;

struct KdaChunk {
  int64_t first_token;  // batch column of the chunk's first token
  int32_t tokens;       // 1..kChunk
  int32_t unused;
};
struct KdaRun {  // one sequence's consecutive chunks within a pass
  int32_t first_chunk;  // index into the pass's chunks
  int32_t chunks;
  float* state;  // [Dk (key), Dk (value), H]
};

constexpr float kLog2e = 1.4426950408889634f;

// ---- tensor-core fragments: mma.sync m16n8k8, TF32 in, f32 accumulators ----
// Lane l holds, with g = l / 4 and i = l % 4: A (16x8) elements (g, i), (g+8, i), (g, i+4),
// (g+8, i+4); B (8x8) elements (i, g), (i+4, g); C/D (16x8) (g, 2i), (g, 2i+1), (g+8, 2i),
// (g+8, 2i+1).
struct FragA {
  uint32_t x[4];
};
struct FragB {
  uint32_t x[2];
};

__device__ __forceinline__ uint32_t ToTf32(float value) {
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(value));
  return bits;
}

__device__ __forceinline__ void MmaTf32(float (&d)[4], const FragA& a, const FragB& b) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

// A from f16 tiles, row-major (element (r, k) at m[r * stride + k]) or transposed (at
// m[k * stride + r]); f16 values are exact in TF32, so they need no rounding.
__device__ __forceinline__ uint32_t HalfAsTf32(__half value) { return __float_as_uint(__half2float(value)); }
__device__ __forceinline__ FragA LoadA(const __half* m, int stride, int r0, int k0, int lane) {
  const __half* p = m + (r0 + lane / 4) * stride + k0 + lane % 4;
  return {{HalfAsTf32(p[0]), HalfAsTf32(p[8 * stride]), HalfAsTf32(p[4]), HalfAsTf32(p[8 * stride + 4])}};
}
__device__ __forceinline__ FragA LoadAT(const __half* m, int stride, int r0, int k0, int lane) {
  const __half* p = m + (k0 + lane % 4) * stride + r0 + lane / 4;
  return {{HalfAsTf32(p[0]), HalfAsTf32(p[8]), HalfAsTf32(p[4 * stride]), HalfAsTf32(p[4 * stride + 8])}};
}
// B at rows k0.., columns n0.. (element (k, n) at m[k * stride + n]).
__device__ __forceinline__ FragB LoadB(const float* m, int stride, int k0, int n0, int lane) {
  const float* p = m + (k0 + lane % 4) * stride + n0 + lane / 4;
  return {{ToTf32(p[0]), ToTf32(p[4 * stride])}};
}

__device__ __forceinline__ void CopyAsync16(void* smem, const void* global) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global));
}
// The same with zeros instead when `real` is false (then nothing is read from `global`).
__device__ __forceinline__ void CopyAsync16OrZero(void* smem, const void* global, bool real) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(real ? 16 : 0));
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CopyAsyncWaitAll() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Copies `rows` rows of `row_bytes` (a multiple of 16) from global to shared memory, row
// strides in bytes, 16 bytes per thread and step.
__device__ __forceinline__ void CopyRowsAsync(void* smem, int smem_stride, const void* global, int global_stride,
                                              int rows, int row_bytes, int tid) {
  const int per_row = row_bytes / 16;
  for (int i = tid; i < rows * per_row; i += Traits::kThreads) {
    const int r = i / per_row, offset = (i % per_row) * 16;
    CopyAsync16(static_cast<uint8_t*>(smem) + r * smem_stride + offset,
                static_cast<const uint8_t*>(global) + r * global_stride + offset);
  }
}

static_assert(Traits::kThreads == 2 * Traits::kDk, "solve: one column of [e^G k | v] per thread");
static_assert(Traits::kThreads / 32 * 16 == Traits::kDk, "state pass: 16 keys per warp");
static_assert(Traits::kColumns == 32 && Traits::kChunk == 64, "state pass: 4 x 4 tiles of W S per chunk");
static_assert(Traits::kChunk / Traits::kSubChunk * 64 == Traits::kThreads && Traits::kSubChunk == 16,
              "A and B: two warps per sub-chunk of 16 rows; deep pairs: 64 threads per sub-chunk");
static_assert(Traits::kStateSmem <= 227 * 1024 && Traits::kPrepareSmem <= 227 * 1024, "shared memory per block");
static_assert(Traits::kBytes % 16 == 0 && Traits::kGlByte % 16 == 0 && Traits::kStageBytes % 16 == 0 &&
                  Traits::kStageQg % 16 == 0 && Traits::kStageKl % 16 == 0 && Traits::kStageB % 16 == 0 &&
                  Traits::kStageU % 16 == 0 && Traits::kStageGl % 16 == 0 && Traits::kRowH * 2 % 16 == 0 &&
                  Traits::kPairRowH * 2 % 16 == 0 && Traits::kColRowH * 2 % 16 == 0,
              "cp.async: 16-byte aligned rows and parts");

// Kernel 1 (prepare, parallel over chunk x head) and kernel 2 (state pass, per head x value
// columns x run); each returns its launch's error.
cudaError_t LaunchPrepare(dim3 grid, cudaStream_t stream, const float* q, const float* k, const float* v,
                          const float* g, const float* beta, const KdaChunk* chunks, int64_t heads, float scale,
                          uint8_t* work);
cudaError_t LaunchState(dim3 grid, cudaStream_t stream, const KdaChunk* chunks, const KdaRun* runs,
                        const uint8_t* work, int64_t heads, float* out);

}  // namespace latentserve::kernels::cuda::kda_chunk
