// KDA prefill in the chunked (WY) form on the GPU: the same function as the token recurrence
// in cuda_kda.cu and as kernels/cpu/kda.cc, computed 64 tokens at a time.
//
// Per head, a chunk of C tokens starting from state S0 ([key c][value j]), with
// G_t = sum_{s<=t} g_s per key channel (so every e^{G_t - G_j}, j <= t, is <= 1):
//   A_tj = k_t . (e^{G_t - G_j} * k_j)  (j < t),   B_tj = q_t . (e^{G_t - G_j} * k_j) / sqrt(Dk)  (j <= t)
//   (I + diag(beta) A) X = diag(beta) Y   solved by forward substitution for
//     W = X(Y = e^{G} * k)  and  U = X(Y = v)                              [C x Dk] each
//   U' = U - W S0                        (the chunk's true delta-rule updates u_t)
//   O  = (e^{G} * q / sqrt(Dk)) S0 + B U'
//   S1 = e^{G_last} * S0 + (e^{G_last - G} * k)^T U'
// Kernel 1 (prepare) is parallel over (chunk, head) and writes W, U, the decayed queries and
// keys, B (f16) and e^{G_last} (f32) to a workspace. Kernel 2 (state pass) walks the chunks
// of each sequence in order, one block per (head, 32 value columns), the state slice in
// registers and shared memory, the next chunk's tiles loading while the current one computes.
// Both move more bytes than they compute on (an 8192-token layer of 32 heads reads 0.5 GB of
// q, k, v, g and passes 0.3 GB of workspace), hence the f16 workspace.
//
// Products run on the tensor cores as mma.sync m16n8k8 TF32 (operands rounded to 10-bit
// mantissas, f32 accumulation); the state, the gates' sums and the forward substitution stay
// f32. A and B factorise per 16-row sub-chunk relative to its first row r, as
// (k_t e^{G_t - G_r}) . (k_j e^{G_r - G_j}): both factors are <= 1 for earlier sub-chunks, and
// within the sub-chunk bounded by its decay; a channel decaying past 2^-100 inside a
// sub-chunk (gates below about -4.6 per token: e^-69 over 15 steps) takes e^{G_t - G_j}
// there one exponent per pair, so no gate can overflow anything.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"

namespace latentserve::kernels::cuda {
namespace {

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

// Kernel 1: one block per (chunk, head).
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkPrepareKernel(const float* q, const float* k,
                                                                         const float* v, const float* g,
                                                                         const float* beta, const KdaChunk* chunks,
                                                                         int64_t heads, float scale, uint8_t* work) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, RS = Traits::kRow, PS = Traits::kPairRow;
  constexpr int L = Traits::kSubChunk, kSubChunks = C / L, kMaskWords = Dk / 32;
  extern __shared__ float4 prepare_smem[];
  float* gs = reinterpret_cast<float*>(prepare_smem);  // [C][RS] G, log2 units
  float* ks = gs + C * RS;      // [C][RS] k
  float* qs = ks + C * RS;      // [C][RS] q
  float* vs = qs + C * RS;      // [C][RS] v
  float* as = vs + C * RS;      // [C][PS] A, strictly lower part valid
  float* bs = as + C * PS;      // [C][PS] B, lower part valid
  float* betas = bs + C * PS;   // [C]
  int* deep = reinterpret_cast<int*>(betas + C);  // [kSubChunks][Dk] deep channels of each sub-chunk
  unsigned* deep_masks = reinterpret_cast<unsigned*>(deep + kSubChunks * Dk);  // [kSubChunks][kMaskWords]
  const KdaChunk chunk = chunks[blockIdx.x];
  const int64_t h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int fg = lane / 4, fi = lane % 4;  // fragment row group and index
  uint8_t* chunk_work = work + (static_cast<int64_t>(blockIdx.x) * heads + h) * Traits::kBytes;
  __half* ws = reinterpret_cast<__half*>(chunk_work);
  const int64_t row0 = (chunk.first_token * heads + h) * Dk;  // token t of this head at row0 + t * heads * Dk
  const int64_t token_stride = heads * Dk;

  // Tokens past the chunk's end are zero (g = 0 keeps G flat), so they add nothing anywhere.
  for (int i = tid; i < C * Dk / 4; i += Traits::kThreads) {
    const int t = i / (Dk / 4), c = (i % (Dk / 4)) * 4;
    const bool real = t < chunk.tokens;
    const int64_t at = real ? row0 + t * token_stride + c : row0;
    CopyAsync16OrZero(ks + t * RS + c, k + at, real);
    CopyAsync16OrZero(qs + t * RS + c, q + at, real);
    CopyAsync16OrZero(gs + t * RS + c, g + at, real);
    CopyAsync16OrZero(vs + t * RS + c, v + at, real);
  }
  CopyAsyncCommit();
  if (tid < C) betas[tid] = tid < chunk.tokens ? beta[(chunk.first_token + tid) * heads + h] : 0.0f;
  CopyAsyncWaitAll();
  __syncthreads();

  // One thread per channel: the cumulative gate, and whether each sub-chunk decays too far
  // for its factorised products (then its pairs take one exponent each, below).
  bool deep_in[kSubChunks] = {};
  if (tid < Dk) {
    float run = 0;
    for (int t = 0; t < C; ++t) {
      run += gs[t * RS + tid] * kLog2e;
      gs[t * RS + tid] = run;
    }
#pragma unroll
    for (int s = 0; s < kSubChunks; ++s) {
      deep_in[s] = gs[s * L * RS + tid] - gs[(s * L + L - 1) * RS + tid] > Traits::kFactorisedLog2;
    }
  }
#pragma unroll
  for (int s = 0; s < kSubChunks; ++s) {
    const unsigned ballot = __ballot_sync(0xffffffffu, deep_in[s]);
    if (tid < Dk && lane == 0) deep_masks[s * kMaskWords + warp] = ballot;
  }
  __syncthreads();
  unsigned any_deep = 0;
  for (int w = 0; w < kSubChunks * kMaskWords; ++w) any_deep |= deep_masks[w];
#pragma unroll
  for (int s = 0; s < kSubChunks; ++s) {
    if (tid < Dk && deep_in[s]) {
      int before = __popc(deep_masks[s * kMaskWords + warp] & ((1u << lane) - 1));
      for (int w = 0; w < warp; ++w) before += __popc(deep_masks[s * kMaskWords + w]);
      deep[s * Dk + before] = tid;
    }
  }

  // A and B on the tensor cores, only the 16x8 tiles that touch the lower triangle; warp w
  // takes rows 16 (w / 2).. (sub-chunk m) and every other column tile. Relative to the
  // sub-chunk's first row r: A_tj = sum_c (k_t e^{G_t - G_r}) (k_j e^{G_r - G_j}); the row
  // factor is <= 1, and so is the column factor for earlier sub-chunks (j < r). Within the
  // sub-chunk (j >= r) the column factor is <= 2^kFactorisedLog2 except on deep channels,
  // which are left out here.
  {
    const int m = warp / 2, first_nt = warp % 2, tiles = m + 1;  // column tiles first_nt, +2, .. <= 2 m + 1
    const int r = m * L;
    const unsigned* sub_deep = deep_masks + m * kMaskWords;
    float acc_a[4][4] = {}, acc_b[4][4] = {};
#pragma unroll 2
    for (int k0 = 0; k0 < Dk; k0 += 8) {
      const int c_lo = k0 + fi, c_hi = c_lo + 4;
      const float ref_lo = gs[r * RS + c_lo], ref_hi = gs[r * RS + c_hi];
      const int t_lo = r + fg, t_hi = t_lo + 8;
      const float f00 = exp2f(gs[t_lo * RS + c_lo] - ref_lo), f10 = exp2f(gs[t_hi * RS + c_lo] - ref_lo);
      const float f01 = exp2f(gs[t_lo * RS + c_hi] - ref_hi), f11 = exp2f(gs[t_hi * RS + c_hi] - ref_hi);
      const FragA fk = {{ToTf32(ks[t_lo * RS + c_lo] * f00), ToTf32(ks[t_hi * RS + c_lo] * f10),
                         ToTf32(ks[t_lo * RS + c_hi] * f01), ToTf32(ks[t_hi * RS + c_hi] * f11)}};
      const FragA fq = {{ToTf32(qs[t_lo * RS + c_lo] * f00), ToTf32(qs[t_hi * RS + c_lo] * f10),
                         ToTf32(qs[t_lo * RS + c_hi] * f01), ToTf32(qs[t_hi * RS + c_hi] * f11)}};
      const bool deep_lo = (sub_deep[c_lo / 32] >> (c_lo % 32)) & 1u, deep_hi = (sub_deep[c_hi / 32] >> (c_hi % 32)) & 1u;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (i < tiles) {
          const int nt = first_nt + 2 * i, j = 8 * nt + fg;
          const bool diagonal = j >= r;
          const float b_lo = diagonal && deep_lo ? 0.0f : ks[j * RS + c_lo] * exp2f(ref_lo - gs[j * RS + c_lo]);
          const float b_hi = diagonal && deep_hi ? 0.0f : ks[j * RS + c_hi] * exp2f(ref_hi - gs[j * RS + c_hi]);
          const FragB fb = {{ToTf32(b_lo), ToTf32(b_hi)}};
          MmaTf32(acc_a[i], fk, fb);
          MmaTf32(acc_b[i], fq, fb);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (i < tiles) {
        const int row = r + fg, col = 8 * (first_nt + 2 * i) + 2 * fi;
        as[row * PS + col] = acc_a[i][0];
        as[row * PS + col + 1] = acc_a[i][1];
        as[(row + 8) * PS + col] = acc_a[i][2];
        as[(row + 8) * PS + col + 1] = acc_a[i][3];
        bs[row * PS + col] = acc_b[i][0] * scale;
        bs[row * PS + col + 1] = acc_b[i][1] * scale;
        bs[(row + 8) * PS + col] = acc_b[i][2] * scale;
        bs[(row + 8) * PS + col + 1] = acc_b[i][3] * scale;
      }
    }
  }
  __syncthreads();

  // Deep channels of a sub-chunk (gates below about -4.6 per token): its own pairs, one
  // exponent per pair and channel. Threads: 64 per sub-chunk, a row and 4 columns each.
  if (any_deep != 0) {
    const int s = tid / 64, t = s * L + (tid % 64) / 4, j0 = s * L + 4 * (tid % 4);
    int deep_count = 0;
    for (int w = 0; w < kMaskWords; ++w) deep_count += __popc(deep_masks[s * kMaskWords + w]);
    float sum_a[4] = {}, sum_b[4] = {};
    for (int d = 0; d < deep_count; ++d) {
      const int c = deep[s * Dk + d];
      const float gt = gs[t * RS + c], kt = ks[t * RS + c], qt = qs[t * RS + c];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = j0 + e;
        const float decayed = exp2f(j <= t ? gt - gs[j * RS + c] : -INFINITY) * ks[j * RS + c];
        sum_a[e] = fmaf(kt, decayed, sum_a[e]);
        sum_b[e] = fmaf(qt, decayed, sum_b[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      as[t * PS + j0 + e] += sum_a[e];
      bs[t * PS + j0 + e] += sum_b[e] * scale;
    }
    __syncthreads();
  }

  // Workspace: B (masked), decayed queries and keys, e^{G_last} (every exponent <= 0).
  for (int i = tid; i < C * C; i += Traits::kThreads) {
    const int t = i / C, s = i % C;
    ws[Traits::kB + i] = __float2half_rn(s <= t ? bs[t * PS + s] : 0.0f);
  }
  const float* glast = gs + (C - 1) * RS;  // flat past the chunk's end
  for (int i = tid; i < C * Dk; i += Traits::kThreads) {
    const int t = i / Dk, c = i % Dk;
    const float here = gs[t * RS + c];
    ws[Traits::kQg + i] = __float2half_rn(exp2f(here) * qs[t * RS + c] * scale);
    ws[Traits::kKl + i] = __float2half_rn(exp2f(glast[c] - here) * ks[t * RS + c]);
  }
  if (tid < Dk) reinterpret_cast<float*>(chunk_work + Traits::kGlByte)[tid] = exp2f(glast[tid]);

  // Forward substitution, one column of [e^G * k | v] per thread: columns are independent.
  // Four partial sums per row keep the dependent chain short.
  const int col = tid;
  const bool key_side = col < Dk;
  __half* x_out = ws + (key_side ? Traits::kW + col : Traits::kU + col - Dk);
  float x[C];
#pragma unroll
  for (int t = 0; t < C; ++t) {
    const float y = key_side ? exp2f(gs[t * RS + col]) * ks[t * RS + col] : vs[t * RS + col - Dk];
    const float* a_row = as + t * PS;
    float part[4] = {};
#pragma unroll
    for (int j4 = 0; j4 < t; j4 += 4) {
      const float4 a4 = *reinterpret_cast<const float4*>(a_row + j4);
      part[0] = fmaf(a4.x, x[j4], part[0]);
      if (j4 + 1 < t) part[1] = fmaf(a4.y, x[j4 + 1], part[1]);
      if (j4 + 2 < t) part[2] = fmaf(a4.z, x[j4 + 2], part[2]);
      if (j4 + 3 < t) part[3] = fmaf(a4.w, x[j4 + 3], part[3]);
    }
    x[t] = betas[t] * (y - ((part[0] + part[1]) + (part[2] + part[3])));
    x_out[t * Dk] = __float2half_rn(x[t]);
  }
}

// Kernel 2: one block per (head, kColumns value columns, run); walks the run's chunks in order.
// Warp w keeps state rows (keys) 16 w.. 16 w + 15 of the slice in registers as mma
// accumulators; shared memory holds a copy for the products that read the whole state.
// Chunk i + 1's tiles load (cp.async) into the other stage while chunk i computes.
__global__ void __launch_bounds__(Traits::kThreads) KdaChunkStateKernel(const KdaChunk* chunks, const KdaRun* runs,
                                                                       const uint8_t* work, int64_t heads, float* out) {
  constexpr int C = Traits::kChunk, Dk = Traits::kDk, J = Traits::kColumns, CS = Traits::kColRow;
  constexpr int RH = Traits::kRowH, PH = Traits::kPairRowH, UH = Traits::kColRowH;
  extern __shared__ float4 state_smem[];
  float* ss = reinterpret_cast<float*>(state_smem);  // [Dk][CS] state slice S[c][j]
  float* us = ss + Dk * CS;                           // [C][CS] U' of the current chunk
  uint8_t* stages = reinterpret_cast<uint8_t*>(us + C * CS);
  const KdaRun run = runs[blockIdx.y];
  const int64_t h = blockIdx.x / Traits::kColumnBlocks;
  const int column0 = (blockIdx.x % Traits::kColumnBlocks) * J;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int fg = lane / 4, fi = lane % 4;  // fragment row group and index
  float* state = run.state + h * Dk * Dk + static_cast<int64_t>(column0) * Dk;  // S[v][k], v = column0 + j
  auto load_stage = [&](int index) {
    const uint8_t* src = work + (static_cast<int64_t>(run.first_chunk + index) * heads + h) * Traits::kBytes;
    uint8_t* stage = stages + (index % 2) * Traits::kStageBytes;
    CopyRowsAsync(stage + Traits::kStageW, RH * 2, src + Traits::kW * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageQg, RH * 2, src + Traits::kQg * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageKl, RH * 2, src + Traits::kKl * 2, Dk * 2, C, Dk * 2, tid);
    CopyRowsAsync(stage + Traits::kStageB, PH * 2, src + Traits::kB * 2, C * 2, C, C * 2, tid);
    CopyRowsAsync(stage + Traits::kStageU, UH * 2, src + (Traits::kU + column0) * 2, Dk * 2, C, J * 2, tid);
    CopyRowsAsync(stage + Traits::kStageGl, Dk * 4, src + Traits::kGlByte, Dk * 4, 1, Dk * 4, tid);
    CopyAsyncCommit();
  };
  load_stage(0);

  // The state slice: warp w's rows as accumulators (4 column tiles of 8), and in ss.
  float s_acc[4][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 16 * warp + fg + (e >= 2 ? 8 : 0), j = 8 * nt + 2 * fi + (e & 1);
      s_acc[nt][e] = state[j * Dk + c];
      ss[c * CS + j] = s_acc[nt][e];
    }
  }

  // Products W S and Qg S: warp w takes row tile w % 4 and column tiles 2 (w / 4), +1.
  const int pm = warp % 4, pn = 2 * (warp / 4);
  for (int index = 0; index < run.chunks; ++index) {
    const KdaChunk chunk = chunks[run.first_chunk + index];
    const uint8_t* stage = stages + (index % 2) * Traits::kStageBytes;
    const __half* wm = reinterpret_cast<const __half*>(stage + Traits::kStageW);
    const __half* qg = reinterpret_cast<const __half*>(stage + Traits::kStageQg);
    const __half* kl = reinterpret_cast<const __half*>(stage + Traits::kStageKl);
    const __half* bm = reinterpret_cast<const __half*>(stage + Traits::kStageB);
    const __half* um = reinterpret_cast<const __half*>(stage + Traits::kStageU);
    const float* gl = reinterpret_cast<const float*>(stage + Traits::kStageGl);
    CopyAsyncWaitAll();
    __syncthreads();  // this chunk's stage and the state copy are visible; the other stage is free
    if (index + 1 < run.chunks) load_stage(index + 1);

    float p[2][4] = {}, o[2][4] = {};
#pragma unroll 4
    for (int k0 = 0; k0 < Dk; k0 += 8) {
      const FragA fw = LoadA(wm, RH, 16 * pm, k0, lane);
      const FragA fq = LoadA(qg, RH, 16 * pm, k0, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const FragB fs = LoadB(ss, CS, k0, 8 * (pn + n), lane);
        MmaTf32(p[n], fw, fs);
        MmaTf32(o[n], fq, fs);
      }
    }
    // U' = U - W S.
#pragma unroll
    for (int n = 0; n < 2; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = 16 * pm + fg + (e >= 2 ? 8 : 0), j = 8 * (pn + n) + 2 * fi + (e & 1);
        us[r * CS + j] = __half2float(um[r * UH + j]) - p[n][e];
      }
    }
    __syncthreads();  // U' complete; the state copy is no longer read

    // O = Qg S0 + B U': B is zero above its diagonal, so k stops after the row tile.
    for (int k0 = 0; k0 < 16 * (pm + 1); k0 += 8) {
      const FragA fb = LoadA(bm, PH, 16 * pm, k0, lane);
#pragma unroll
      for (int n = 0; n < 2; ++n) MmaTf32(o[n], fb, LoadB(us, CS, k0, 8 * (pn + n), lane));
    }
#pragma unroll
    for (int n = 0; n < 2; ++n) {
      const int j = column0 + 8 * (pn + n) + 2 * fi;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = 16 * pm + fg + 8 * half;
        if (t < chunk.tokens) {
          float* dst = out + ((chunk.first_token + t) * heads + h) * Dk + j;
          dst[0] = o[n][2 * half];
          dst[1] = o[n][2 * half + 1];
        }
      }
    }

    // S1 = e^{G_last} S0 + Kl^T U' on this warp's 16 keys.
    const float decay_lo = gl[16 * warp + fg], decay_hi = gl[16 * warp + fg + 8];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s_acc[nt][0] *= decay_lo;
      s_acc[nt][1] *= decay_lo;
      s_acc[nt][2] *= decay_hi;
      s_acc[nt][3] *= decay_hi;
    }
#pragma unroll
    for (int k0 = 0; k0 < C; k0 += 8) {
      const FragA fk = LoadAT(kl, RH, 16 * warp, k0, lane);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) MmaTf32(s_acc[nt], fk, LoadB(us, CS, k0, 8 * nt, lane));
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const int c = 16 * warp + fg, j = 8 * nt + 2 * fi;
      ss[c * CS + j] = s_acc[nt][0];
      ss[c * CS + j + 1] = s_acc[nt][1];
      ss[(c + 8) * CS + j] = s_acc[nt][2];
      ss[(c + 8) * CS + j + 1] = s_acc[nt][3];
    }
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = 16 * warp + fg + (e >= 2 ? 8 : 0), j = 8 * nt + 2 * fi + (e & 1);
      state[j * Dk + c] = s_acc[nt][e];
    }
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

}  // namespace

bool CudaBackend::KdaChunkedAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                                      const Tensor& beta, absl::Span<const SeqSlice> seqs,
                                      absl::Span<const KdaStateView> states, const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  if (dk != Traits::kDk) return false;
  // The kernels copy 16-byte pieces of q, k, v and g (views at odd offsets take the recurrence).
  for (const Tensor* t : {&q, &k, &v, &g}) {
    if (reinterpret_cast<uintptr_t>(DevPtr(*t)) % 16 != 0) return false;
  }
  // Chunks of every sequence, split into passes whose workspace fits the budget.
  const size_t chunk_bytes = static_cast<size_t>(heads) * Traits::kBytes;
  const int64_t pass_chunks = std::max<int64_t>(1, static_cast<int64_t>(Traits::kPassBytes / chunk_bytes));
  struct Pass {
    std::vector<KdaChunk> chunks;
    std::vector<KdaRun> runs;
  };
  std::vector<Pass> passes(1);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t t0 = 0; t0 < seqs[s].token_count; t0 += Traits::kChunk) {
      if (static_cast<int64_t>(passes.back().chunks.size()) == pass_chunks) passes.emplace_back();
      Pass& pass = passes.back();
      if (t0 == 0 || pass.chunks.empty()) {
        pass.runs.push_back({static_cast<int32_t>(pass.chunks.size()), 0, DevF32(states[s].recurrent)});
      }
      const int64_t tokens = std::min<int64_t>(Traits::kChunk, seqs[s].token_count - t0);
      pass.chunks.push_back({seqs[s].first_token + t0, static_cast<int32_t>(tokens), 0});
      ++pass.runs.back().chunks;
    }
  }
  if (passes.front().chunks.empty()) return true;
  // One upload for every pass: chunks then runs, pass after pass.
  std::vector<uint8_t> host;
  std::vector<size_t> chunk_at, run_at;
  for (const Pass& pass : passes) {
    chunk_at.push_back(host.size());
    host.resize(host.size() + pass.chunks.size() * sizeof(KdaChunk));
    std::memcpy(host.data() + chunk_at.back(), pass.chunks.data(), pass.chunks.size() * sizeof(KdaChunk));
    run_at.push_back(host.size());
    host.resize(host.size() + pass.runs.size() * sizeof(KdaRun));
    std::memcpy(host.data() + run_at.back(), pass.runs.data(), pass.runs.size() * sizeof(KdaRun));
  }
  auto* device = static_cast<uint8_t*>(UploadScratch(3, host.data(), host.size()));
  size_t most_chunks = 0;
  for (const Pass& pass : passes) most_chunks = std::max(most_chunks, pass.chunks.size());
  auto* work = static_cast<uint8_t*>(Scratch(kKdaWorkspaceSlot, most_chunks * chunk_bytes));

  static bool configured = false;
  if (!configured) {
    CUDA_OK(cudaFuncSetAttribute(KdaChunkPrepareKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Traits::kPrepareSmem)));
    CUDA_OK(cudaFuncSetAttribute(KdaChunkStateKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(Traits::kStateSmem)));
    configured = true;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (size_t i = 0; i < passes.size(); ++i) {
    const auto* chunks = reinterpret_cast<const KdaChunk*>(device + chunk_at[i]);
    const auto* runs = reinterpret_cast<const KdaRun*>(device + run_at[i]);
    const dim3 prepare_grid(static_cast<unsigned>(passes[i].chunks.size()), static_cast<unsigned>(heads));
    KdaChunkPrepareKernel<<<prepare_grid, Traits::kThreads, Traits::kPrepareSmem, stream_>>>(
        DevF32(q), DevF32(k), DevF32(v), DevF32(g), DevF32(beta), chunks, heads, scale, work);
    LAUNCH_OK();
    const dim3 state_grid(static_cast<unsigned>(heads * Traits::kColumnBlocks), static_cast<unsigned>(passes[i].runs.size()));
    KdaChunkStateKernel<<<state_grid, Traits::kThreads, Traits::kStateSmem, stream_>>>(chunks, runs, work, heads,
                                                                                      DevF32(out));
    LAUNCH_OK();
  }
  return true;
}

}  // namespace latentserve::kernels::cuda
