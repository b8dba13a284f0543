// Weight x activation products. Few columns (decode): a warp-per-row GEMV that reads each
// weight once in its stored type (quantised included). Many columns (prefill): cuBLAS, with
// quantised weights dequantised to f16 a tile of rows at a time and activations cast to the
// same 16-bit type (f32 accumulation); f32 weights use SGEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/warp_dot.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int64_t kGemvMaxColumns = 8;
constexpr int kGemvWarps = 8;

template <DType T>
__global__ void GemvKernel(const uint8_t* w, size_t row_bytes, int64_t k, int64_t n, const float* x, int64_t m, float* y) {
  const int64_t row = blockIdx.x * int64_t(kGemvWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const uint8_t* wrow = w + row * row_bytes;
  for (int64_t col = 0; col < m; ++col) {
    const float acc = WarpSum(WarpDotPartial<T>(wrow, x + col * k, k, lane));
    if (lane == 0) y[col * n + row] = acc;
  }
}

template <typename Out>
__global__ void DequantKernel(DType type, const uint8_t* w, size_t row_bytes, int64_t k, int64_t rows, Out* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * k) return;
  const float v = LoadElement(type, w + (i / k) * row_bytes, i % k);
  if constexpr (sizeof(Out) == 4) {
    out[i] = v;
  } else if constexpr (std::is_same_v<Out, __half>) {
    out[i] = __float2half_rn(v);
  } else {
    out[i] = __float2bfloat16_rn(v);
  }
}

template <typename Out>
__global__ void CastKernel(const float* x, Out* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if constexpr (std::is_same_v<Out, __half>) {
    out[i] = __float2half_rn(x[i]);
  } else {
    out[i] = __float2bfloat16_rn(x[i]);
  }
}

}  // namespace

void CudaBackend::Gemm(DType wtype, const void* w, size_t row_bytes, int64_t k, int64_t n, const float* x, int64_t m,
                       float* y) {
  if (n == 0 || m == 0) return;
  const auto* wp = static_cast<const uint8_t*>(w);
  if (m <= kGemvMaxColumns) {
    const unsigned blocks = static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps);
    switch (wtype) {
      case DType::kF32: GemvKernel<DType::kF32><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y); break;
      case DType::kF16: GemvKernel<DType::kF16><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y); break;
      case DType::kBF16: GemvKernel<DType::kBF16><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y); break;
      case DType::kQ8_0: GemvKernel<DType::kQ8_0><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y); break;
      case DType::kQ4_0: GemvKernel<DType::kQ4_0><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y); break;
      default: CU_CHECK(false);
    }
    LAUNCH_OK();
    return;
  }
  const float one = 1.0f, zero = 0.0f;
  const int ik = static_cast<int>(k), im = static_cast<int>(m), in = static_cast<int>(n);
  if (wtype == DType::kF32) {
    CUBLAS_OK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, in, im, ik, &one, reinterpret_cast<const float*>(wp), ik, x,
                          ik, &zero, y, in));
    return;
  }
  const bool bf16 = wtype == DType::kBF16;
  const cudaDataType_t type16 = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  // Activations in the 16-bit type.
  void* x16 = Scratch(0, static_cast<size_t>(k * m) * 2);
  if (bf16) {
    CastKernel<<<Blocks(k * m, 256), 256, 0, stream_>>>(x, static_cast<__nv_bfloat16*>(x16), k * m);
  } else {
    CastKernel<<<Blocks(k * m, 256), 256, 0, stream_>>>(x, static_cast<__half*>(x16), k * m);
  }
  LAUNCH_OK();
  if (wtype == DType::kF16 || wtype == DType::kBF16) {
    CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, in, im, ik, &one, wp, type16, ik, x16, type16, ik, &zero, y,
                           CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  // Quantised: dequantise tiles of rows to f16 (bounded scratch), one GEMM per tile.
  const int64_t tile_rows = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t{64} << 20) / k));
  auto* w16 = static_cast<__half*>(Scratch(1, static_cast<size_t>(tile_rows * k) * 2));
  for (int64_t r0 = 0; r0 < n; r0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, n - r0);
    DequantKernel<<<Blocks(rows * k, 256), 256, 0, stream_>>>(wtype, wp + r0 * row_bytes, row_bytes, k, rows, w16);
    LAUNCH_OK();
    CUBLAS_OK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), im, ik, &one, w16, CUDA_R_16F, ik,
                           x16, CUDA_R_16F, ik, &zero, y + r0, CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

void CudaBackend::MatMul(const Tensor& w, const Tensor& x, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.rows(), m = x.rows();
  CU_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32 && x.ne[0] == k && y.ne[0] == n && y.rows() == m);
  Gemm(w.dtype, DevPtr(w), w.row_bytes(), k, n, DevF32(x), m, DevF32(y));
}

void CudaBackend::HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.ne[1], heads = w.ne[2];
  const int64_t x_width = x.ne[0], tokens = x.ne[2];
  CU_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32 && x_offset + k <= x_width && x.ne[1] == heads &&
           y.ne[0] == n && y.ne[1] == heads && y.ne[2] == tokens);
  if (tokens == 0) return;
  const float* wf = reinterpret_cast<const float*>(DevPtr(w));
  if (w.dtype != DType::kF32) {
    auto* tmp = static_cast<float*>(Scratch(2, static_cast<size_t>(k * n * heads) * 4));
    DequantKernel<<<Blocks(k * n * heads, 256), 256, 0, stream_>>>(w.dtype, DevPtr(w), w.row_bytes(), k, n * heads, tmp);
    LAUNCH_OK();
    wf = tmp;
  }
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_OK(cublasSgemmStridedBatched(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(tokens),
                                      static_cast<int>(k), &one, wf, static_cast<int>(k), k * n, DevF32(x) + x_offset,
                                      static_cast<int>(heads * x_width), x_width, &zero, DevF32(y),
                                      static_cast<int>(heads * n), n, static_cast<int>(heads)));
}

}  // namespace latentserve::kernels::cuda
