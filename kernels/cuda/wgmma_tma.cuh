// Hopper (sm_90a) building blocks of the MLA prefill flash kernel: 128-byte-swizzled
// shared-memory descriptors, register-sourced wgmma (m64n64k16 / m64n128k16, f16 in, f32
// accumulators), mbarriers and TMA tile loads, and the tensor maps that name the tiles.
// Included by .cu files of the sm_90a library only (kernels/cuda/CMakeLists.txt).
#pragma once

#include <cuda.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>

#include <cstdint>

#include "kernels/cuda/cuda_mla_flash.h"

namespace latentserve::kernels::cuda::sm90 {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATENTSERVE_WGMMA 1
#endif

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` inside a swizzled block.
__device__ __forceinline__ uint32_t SwizzledOffset(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Shared-memory matrix descriptor: 128-byte swizzle, 8-row groups 1,024 bytes apart.
__device__ __forceinline__ uint64_t Descriptor(uint32_t smem) {
  return static_cast<uint64_t>((smem & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem));
}

// The same four 8x8 matrices, transposed on the way (each lane gets a column pair).
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem));
}

template <int N>
__device__ __forceinline__ void FenceOperands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int M, int N>
__device__ __forceinline__ void FenceOperands(uint32_t (&d)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+r"(d[i][j])::"memory");
  }
}

#ifdef LATENTSERVE_WGMMA
// d (m64n64, f32) (+)= A (registers: this warp's 16 rows as mma.sync A fragments) . B (smem,
// K-major); f16 inputs. `accumulate` 0 overwrites d.
__device__ __forceinline__ void WgmmaRS_N64(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}

// d (m64n128, f32) (+)= A (registers: this warp's 16 rows as mma.sync A fragments) . B (smem,
// K-major); f16 inputs. `accumulate` 0 overwrites d.
__device__ __forceinline__ void WgmmaRS_N128(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
}
#endif

__device__ __forceinline__ void BarrierInit(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void BarrierExpect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// One box of a tensor map into shared memory; completion counted on `bar` in bytes.
__device__ __forceinline__ void TmaLoad2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// A 2-D or 3-D f16 tensor map with 128-byte swizzled boxes (inner box dimension 64 halves).
inline cudaError_t EncodeMap(CUtensorMap* map, const void* address, int rank, const cuuint64_t* dims,
                      const cuuint64_t* strides_bytes, const cuuint32_t* box) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult result;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &result) !=
            cudaSuccess ||
        result != cudaDriverEntryPointSuccess) {
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, static_cast<cuuint32_t>(rank),
                            const_cast<void*>(address), dims, strides_bytes, box, element_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// The four tensor maps of an MLA flash launch, for tiles of block_q queries and block_k keys:
// q (192, H, n) boxes (64, 1, block_q); k (H Pn, keys) boxes (64, block_k); rope = the latent
// rows (L, keys_ld) boxes (64, block_k); vt (keys_ld, H Dv) boxes (64, 128): a tile of more
// keys is several boxes.
inline cudaError_t EncodeMlaFlashMaps(const MlaFlashArgs& args, int block_q, int block_k, CUtensorMap (&maps)[4]) {
  const cuuint64_t H = static_cast<cuuint64_t>(args.heads);
  const cuuint64_t q_dims[3] = {kMlaQk, H, static_cast<cuuint64_t>(args.n)};
  const cuuint64_t q_strides[2] = {kMlaQk * 2, H * kMlaQk * 2};
  const cuuint32_t q_box[3] = {64, 1, static_cast<cuuint32_t>(block_q)};
  const cuuint64_t k_dims[2] = {H * kMlaNope, static_cast<cuuint64_t>(args.keys)};
  const cuuint64_t k_strides[1] = {H * kMlaNope * 2};
  const cuuint32_t k_box[2] = {64, static_cast<cuuint32_t>(block_k)};
  const cuuint64_t rope_dims[2] = {static_cast<cuuint64_t>(args.rows_ld), static_cast<cuuint64_t>(args.keys_ld)};
  const cuuint64_t rope_strides[1] = {static_cast<cuuint64_t>(args.rows_ld) * 2};
  const cuuint64_t vt_dims[2] = {static_cast<cuuint64_t>(args.keys_ld), H * kMlaV};
  const cuuint64_t vt_strides[1] = {static_cast<cuuint64_t>(args.keys_ld) * 2};
  const cuuint32_t vt_box[2] = {64, kMlaV};  // 64 keys: the 128-byte swizzle span
  cudaError_t e;
  if ((e = EncodeMap(&maps[0], args.q, 3, q_dims, q_strides, q_box)) != cudaSuccess) return e;
  if ((e = EncodeMap(&maps[1], args.k, 2, k_dims, k_strides, k_box)) != cudaSuccess) return e;
  if ((e = EncodeMap(&maps[2], args.rows, 2, rope_dims, rope_strides, k_box)) != cudaSuccess) return e;
  return EncodeMap(&maps[3], args.vt, 2, vt_dims, vt_strides, vt_box);
}

}  // namespace latentserve::kernels::cuda::sm90
