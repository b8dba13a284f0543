// MLA prefill in the MHA form. For a chunk of n new queries over `keys` cached positions:
//  1. the cached latent rows are gathered from their pages into a dense f16 matrix [keys x L];
//  2. two f16 GEMMs expand them per head: no-position keys K [keys x H x Pn] and values,
//     transposed, Vt [H x Dv x keys], from E = the layer's k_b and v_b as one f16 matrix
//     [H (Pn + Dv) x R] (built once per layer);
//  3. one causal flash-attention kernel (cuda_mla_flash.h): a CTA per (128 queries, head)
//     walks 64-key tiles, keys = [K (Pn), the row's shared k_pe (Pr)], scores and
//     probabilities stay in registers (online softmax in base 2, queries pre-scaled by
//     scale * log2 e), f32 accumulation. Two kernels compute it: wgmma (Hopper's warpgroup
//     instructions and TMA, cuda_mla_flash_wgmma.cu, the default) and mma.sync (below, any
//     sm_80+), chosen by LATENTSERVE_MLA_KERNEL=tma|mma (tma_base: the wgmma kernel's first
//     tile loop, for comparisons); the op tests check each against the CPU.
// Per (query, key, head) this is 2 (Pn + Pr + Dv) = 640 FLOPs against the absorbed form's
// 2 (L + R) = 2,176, plus the expansion (2 R H (Pn + Dv) per key and chunk), so the MHA form
// wins from about 171 queries per chunk (MhaCheaper below).
#include <cuda_fp16.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_mla_flash.h"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/mma_sync.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kNope = kMlaNope, kRope = kMlaRope, kQk = kMlaQk, kV = kMlaV;
constexpr int kBlockQ = 128;  // queries per CTA: 8 warps x 16 rows
constexpr int kBlockK = 64;   // keys per tile
constexpr int kWarps = kBlockQ / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kQkChunks = kQk / 8;  // 16-byte chunks per key row in shared memory
constexpr int kVtChunks = kBlockK / 8;  // a tile of Vt: kV rows of 64 keys
constexpr size_t kSmemBytes = (size_t{kBlockQ} * kQk + 2 * size_t{kBlockK} * kQk + 2 * size_t{kV} * kBlockK) * 2;

// Shared-memory tiles are rows of 16-byte chunks; chunk c of row r sits at c ^ (r & 7) so the
// 8 rows an ldmatrix reads at one column land in 8 different bank groups.
__device__ __forceinline__ int Swizzle(int row, int chunk, int chunks_per_row) {
  return row * chunks_per_row + (chunk ^ (row & 7));
}



__global__ void __launch_bounds__(kThreads, 1) MlaFlashMmaKernel(const MlaFlashArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  __half* s_q = reinterpret_cast<__half*>(smem);
  __half* s_k = s_q + kBlockQ * kQk;      // 2 stages
  __half* s_v = s_k + 2 * kBlockK * kQk;  // 2 stages of Vt [kV][kBlockK]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t head = blockIdx.y;
  // Longest query tiles (the causal diagonal's far end) first, for load balance.
  const int64_t q_tiles = gridDim.x;
  const int64_t t0 = (q_tiles - 1 - blockIdx.x) * int64_t{kBlockQ};
  const int64_t k_stride = a.heads * kNope;
  const __half* vt = a.vt + head * kV * a.keys_ld;
  // Keys this tile needs: up to the last valid query's position.
  const int64_t last_query = min(t0 + kBlockQ, a.n) - 1;
  const int64_t key_end = min(a.keys, a.first_position + last_query + 1);
  const int tiles = static_cast<int>((key_end + kBlockK - 1) / kBlockK);

  // Queries: 128 rows x 24 chunks.
  for (int i = tid; i < kBlockQ * kQkChunks; i += kThreads) {
    const int r = i / kQkChunks, c = i % kQkChunks;
    const int64_t t = t0 + r;
    const bool valid = t < a.n;
    const __half* src = a.q + ((valid ? t : 0) * a.heads + head) * kQk + c * 8;
    CpAsync16(s_q + Swizzle(r, c, kQkChunks) * 8, src, valid);
  }
  auto load_tile = [&](int tile, int stage) {
    __half* k_dst = s_k + stage * kBlockK * kQk;
    __half* v_dst = s_v + stage * kV * kBlockK;
    for (int i = tid; i < kBlockK * kQkChunks; i += kThreads) {
      const int r = i / kQkChunks, c = i % kQkChunks;
      const int64_t key = int64_t{tile} * kBlockK + r;
      const bool valid = key < a.keys;
      const int64_t k = valid ? key : 0;
      const __half* src = c < kNope / 8 ? a.k + k * k_stride + head * kNope + c * 8
                                        : a.rows + k * a.rows_ld + a.rope_col + (c - kNope / 8) * 8;
      CpAsync16(k_dst + Swizzle(r, c, kQkChunks) * 8, src, valid);
    }
    // Vt rows are zero past the keys (up to keys_ld), so partial chunks load as they are.
    for (int i = tid; i < kV * kVtChunks; i += kThreads) {
      const int d = i / kVtChunks, c = i % kVtChunks;
      const int64_t key = int64_t{tile} * kBlockK + c * 8;
      const bool valid = key < a.keys_ld;
      CpAsync16(v_dst + Swizzle(d, c, kVtChunks) * 8, vt + d * a.keys_ld + (valid ? key : 0), valid);
    }
  };
  load_tile(0, 0);
  CpAsyncCommit();

  uint32_t q_frag[kQk / 16][4];
  float o[kV / 8][4];
#pragma unroll
  for (int j = 0; j < kV / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  // This thread's two query rows (lane / 4 and lane / 4 + 8 of the warp's 16) as positions.
  const int64_t row_position0 = a.first_position + t0 + warp * 16 + lane / 4;

  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1;
    if (tile + 1 < tiles) {
      load_tile(tile + 1, stage ^ 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < kQk / 16; ++kk) {
        const int r = warp * 16 + (lane & 15), c = 2 * kk + (lane >> 4);
        LdMatrixX4(q_frag[kk], s_q + Swizzle(r, c, kQkChunks) * 8);
      }
    }
    const __half* k_tile = s_k + stage * kBlockK * kQk;
    const __half* v_tile = s_v + stage * kV * kBlockK;

    // S = Q K^T: 16 rows x 64 keys per warp, as 8 n-tiles of 8 keys.
    float s[kBlockK / 8][4];
#pragma unroll
    for (int j = 0; j < kBlockK / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kQk / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kBlockK / 16; ++np) {
        uint32_t b[4];
        const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3), c = 2 * kk + ((lane >> 3) & 1);
        LdMatrixX4(b, k_tile + Swizzle(r, c, kQkChunks) * 8);
        MmaF16(s[2 * np], q_frag[kk], b[0], b[1]);
        MmaF16(s[2 * np + 1], q_frag[kk], b[2], b[3]);
      }
    }
    // Causal mask where the tile reaches past the block's first query (and past the keys).
    const int64_t key0 = int64_t{tile} * kBlockK;
    if (key0 + kBlockK - 1 > a.first_position + t0 || key0 + kBlockK > a.keys) {
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = key0 + j * 8 + 2 * (lane & 3) + (e & 1);
          const int64_t position = row_position0 + (e >> 1) * 8;
          if (key > position || key >= a.keys) s[j][e] = -INFINITY;
        }
      }
    }
    // Online softmax per row (base 2): the quad of lanes sharing a row reduces its max.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float m = row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) m = fmaxf(m, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, 2));
      // Every row sees key 0 in tile 0, so m is finite from the first tile on.
      const float correction = exp2f(row_max[half] - m);
      row_max[half] = m;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlockK / 8; ++j) {
        s[j][2 * half] = exp2f(s[j][2 * half] - m);
        s[j][2 * half + 1] = exp2f(s[j][2 * half + 1] - m);
        sum += s[j][2 * half] + s[j][2 * half + 1];
      }
      row_sum[half] = row_sum[half] * correction + sum;
#pragma unroll
      for (int j = 0; j < kV / 8; ++j) {
        o[j][2 * half] *= correction;
        o[j][2 * half + 1] *= correction;
      }
    }
    // O += P V: the score accumulators are the A fragments of P, 16 keys per k-step.
#pragma unroll
    for (int kk = 0; kk < kBlockK / 16; ++kk) {
      const uint32_t p[4] = {PackHalf2(s[2 * kk][0], s[2 * kk][1]), PackHalf2(s[2 * kk][2], s[2 * kk][3]),
                             PackHalf2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             PackHalf2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kV / 16; ++dp) {
        uint32_t b[4];  // Vt rows are the n index (value dims), keys the k index
        const int r = dp * 16 + (lane & 7) + ((lane >> 4) << 3), c = 2 * kk + ((lane >> 3) & 1);
        LdMatrixX4(b, v_tile + Swizzle(r, c, kVtChunks) * 8);
        MmaF16(o[2 * dp], p, b[0], b[1]);
        MmaF16(o[2 * dp + 1], p, b[2], b[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's load
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float l = row_sum[half];
    l += __shfl_xor_sync(0xffffffff, l, 1);
    l += __shfl_xor_sync(0xffffffff, l, 2);
    const float inv = 1.0f / l;
    const int64_t t = t0 + warp * 16 + lane / 4 + half * 8;
    if (t >= a.n) continue;
    float* dst = a.out + (t * a.heads + head) * kV + 2 * (lane & 3);
#pragma unroll
    for (int j = 0; j < kV / 8; ++j) {
      *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][2 * half] * inv, o[j][2 * half + 1] * inv);
    }
  }
}

// E [H (Pn + Dv) rows x R]: row h Pn + j is k_b[j, :, h]; row H Pn + h Dv + d is v_b[:, d, h].
__global__ void ExpansionWeightsKernel(DType k_type, const uint8_t* k_b, size_t k_row_bytes, DType v_type,
                                       const uint8_t* v_b, size_t v_row_bytes, int64_t R, int64_t heads,
                                       __half* e) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= heads * (kNope + kV) * R) return;
  const int64_t r = i % R, f = i / R;
  float value;
  if (f < heads * kNope) {
    value = LoadElement(k_type, k_b + (r + R * (f / kNope)) * k_row_bytes, f % kNope);
  } else {
    value = LoadElement(v_type, v_b + (f - heads * kNope) * v_row_bytes, r);  // row (d, h) of v_b
  }
  e[i] = __float2half_rn(value);
}

// Positions [0, count) of a sequence's cached rows as dense f16 rows.
__global__ void GatherRowsKernel(DType type, const uint8_t* pool, size_t row_bytes, int64_t page_tokens,
                                 const int32_t* pages, int64_t width, int64_t count, __half* rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (type == DType::kF16 && width % 8 == 0) {  // 16-byte copies
    const int64_t vectors = width / 8;
    if (i >= count * vectors) return;
    const int64_t p = i / vectors, v = i % vectors;
    const int64_t row = static_cast<int64_t>(pages[p / page_tokens]) * page_tokens + p % page_tokens;
    reinterpret_cast<int4*>(rows)[i] = reinterpret_cast<const int4*>(pool + row * row_bytes)[v];
    return;
  }
  if (i >= count * width) return;
  const int64_t p = i / width, e = i % width;
  const int64_t row = static_cast<int64_t>(pages[p / page_tokens]) * page_tokens + p % page_tokens;
  rows[i] = __float2half_rn(LoadElement(type, pool + row * row_bytes, e));
}

__global__ void ScaleToHalfKernel(const float* x, float scale, int64_t count, __half* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < count) y[i] = __float2half_rn(x[i] * scale);
}

// The form for one sequence. The flash kernel is built for Kimi-Linear's head shape.
enum class Form { kAbsorbed, kMha };

Form ChooseForm(const Tensor& k_b, const Tensor& v_b, const Tensor& pool, const LatentSeqView& seq) {
  const int64_t Pn = k_b.ne[0], R = k_b.ne[1], H = k_b.ne[2], Dv = v_b.ne[1], L = pool.ne[0];
  if (Pn != kNope || Dv != kV || L - R != kRope || R % 8 != 0 || L % 8 != 0) return Form::kAbsorbed;
  if (seq.device != nullptr) return Form::kAbsorbed;  // recorded decode steps: the paged kernel
  const char* forced = std::getenv("LATENTSERVE_MLA_FORM");
  if (forced != nullptr && std::strcmp(forced, "absorbed") == 0) return Form::kAbsorbed;
  if (forced != nullptr && std::strcmp(forced, "mha") == 0) return Form::kMha;
  // Multiply-adds per key: the expansion (R H (Pn + Dv)) plus n H (Pn + Pr + Dv) in the MHA
  // form, against n H (L + R) absorbed.
  const double n = static_cast<double>(seq.token_count);
  const double mha = double(R) * H * (Pn + Dv) + n * H * (Pn + kRope + Dv);
  const double absorbed = n * H * (L + R);
  return mha < absorbed ? Form::kMha : Form::kAbsorbed;
}

}  // namespace

void GatherLatentRows(cudaStream_t stream, const Tensor& pool, const int32_t* pages, int64_t count, __half* rows) {
  const int64_t width = pool.ne[0];
  const int64_t threads = pool.dtype == DType::kF16 && width % 8 == 0 ? count * width / 8 : count * width;
  GatherRowsKernel<<<Blocks(threads, 256), 256, 0, stream>>>(pool.dtype, DevPtr(pool), pool.row_bytes(), pool.ne[1],
                                                            pages, width, count, rows);
  LAUNCH_OK();
}

const __half* CudaBackend::MlaExpansionWeights(const Tensor& k_b, const Tensor& v_b) {
  const auto key = std::make_pair(static_cast<const void*>(DevPtr(k_b)), static_cast<const void*>(DevPtr(v_b)));
  auto it = mla_expansion_.find(key);
  if (it != mla_expansion_.end()) return static_cast<const __half*>(it->second);
  const int64_t R = k_b.ne[1], H = k_b.ne[2];
  const int64_t count = H * (kNope + kV) * R;
  void* matrix = nullptr;
  CUDA_OK(cudaMallocAsync(&matrix, static_cast<size_t>(count) * 2, stream_));
  ExpansionWeightsKernel<<<Blocks(count, 256), 256, 0, stream_>>>(k_b.dtype, DevPtr(k_b), k_b.row_bytes(), v_b.dtype,
                                                                  DevPtr(v_b), v_b.row_bytes(), R, H,
                                                                  static_cast<__half*>(matrix));
  LAUNCH_OK();
  mla_expansion_.emplace(key, matrix);
  return static_cast<const __half*>(matrix);
}

void LaunchMlaFlashMma(const MlaFlashArgs& args, cudaStream_t stream) {
  CUDA_OK(cudaFuncSetAttribute(MlaFlashMmaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(kSmemBytes)));
  const dim3 grid(static_cast<unsigned>((args.n + kBlockQ - 1) / kBlockQ), static_cast<unsigned>(args.heads));
  MlaFlashMmaKernel<<<grid, kThreads, kSmemBytes, stream>>>(args);
  LAUNCH_OK();
}

void CudaBackend::MlaMhaAttention(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                                  const LatentSeqView& seq, float scale, const Tensor& out) {
  const int64_t R = k_b.ne[1], H = k_b.ne[2], L = pool.ne[0];
  const int64_t n = seq.token_count, keys = seq.cached_tokens + n;
  if (n == 0) return;
  const int64_t keys_ld = (keys + 63) / 64 * 64;  // whole key tiles; rows past `keys` are zero
  const __half* expansion = MlaExpansionWeights(k_b, v_b);
  const int32_t* pages = SeqPages(seq, 8);
  auto* rows = static_cast<__half*>(Scratch(9, static_cast<size_t>(keys_ld * L) * 2));
  CUDA_OK(cudaMemsetAsync(rows + keys * L, 0, static_cast<size_t>((keys_ld - keys) * L) * 2, stream_));
  GatherLatentRows(stream_, pool, pages, keys, rows);
  // rows[:, 0:R] is column-major R x keys_ld (leading dimension L); E is stored [features x R],
  // i.e. column-major R x features. K (column-major H Pn x keys) = E_k^T . rows;
  // Vt (column-major keys_ld x H Dv) = rows^T . E_v.
  auto* k = static_cast<__half*>(Scratch(10, static_cast<size_t>(keys * H * kNope) * 2));
  auto* vt = static_cast<__half*>(Scratch(12, static_cast<size_t>(keys_ld * H * kV) * 2));
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(H * kNope), static_cast<int>(keys),
                         static_cast<int>(R), &one, expansion, CUDA_R_16F, static_cast<int>(R), rows, CUDA_R_16F,
                         static_cast<int>(L), &zero, k, CUDA_R_16F, static_cast<int>(H * kNope), CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
  CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(keys_ld), static_cast<int>(H * kV),
                         static_cast<int>(R), &one, rows, CUDA_R_16F, static_cast<int>(L), expansion + H * kNope * R,
                         CUDA_R_16F, static_cast<int>(R), &zero, vt, CUDA_R_16F, static_cast<int>(keys_ld),
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  auto* q16 = static_cast<__half*>(Scratch(11, static_cast<size_t>(n * H * kQk) * 2));
  const float* q_first = DevF32(q) + seq.first_token * H * kQk;
  ScaleToHalfKernel<<<Blocks(n * H * kQk, 256), 256, 0, stream_>>>(q_first, scale * 1.4426950408889634f, n * H * kQk,
                                                                  q16);
  LAUNCH_OK();
  const MlaFlashArgs args{q16, k, rows, vt, L, R, keys_ld, DevF32(out) + seq.first_token * H * kV,
                          n, H, keys, seq.cached_tokens};
  const char* kernel = std::getenv("LATENTSERVE_MLA_KERNEL");
  const std::string name = kernel != nullptr ? kernel : "";
  if (name == "mma") {
    LaunchMlaFlashMma(args, stream_);
  } else {
    const MlaFlashVariant variant = name == "tma_base" ? MlaFlashVariant::kBase : MlaFlashVariant::kLean;
    CUDA_OK(LaunchMlaFlashTma(args, variant, stream_));
  }
}

absl::Status CudaBackend::MlaAttentionHeads(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                                            absl::Span<const LatentSeqView> seqs, float scale, const Tensor& out) {
  CU_CHECK(q.ne[0] == k_b.ne[0] + pool.ne[0] - k_b.ne[1] && q.ne[1] == k_b.ne[2] && out.ne[0] == v_b.ne[1] &&
           out.ne[1] == q.ne[1] && out.ne[2] == q.ne[2] && v_b.ne[0] == k_b.ne[1] && v_b.ne[2] == k_b.ne[2]);
  std::vector<LatentSeqView> absorbed, mha;
  for (const LatentSeqView& seq : seqs) {
    (ChooseForm(k_b, v_b, pool, seq) == Form::kMha ? mha : absorbed).push_back(seq);
  }
  // The absorbed default writes every column of `out` (its value expansion runs over the whole
  // batch), so it goes first and the MHA sequences overwrite their own columns after it.
  if (!absorbed.empty()) RETURN_IF_ERROR(Backend::MlaAttentionHeads(q, k_b, v_b, pool, absorbed, scale, out));
  for (const LatentSeqView& seq : mha) MlaMhaAttention(q, k_b, v_b, pool, seq, scale, out);
  return absl::OkStatus();
}

}  // namespace latentserve::kernels::cuda
