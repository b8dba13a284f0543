// Weight x activation products. Few columns (decode): a GEMV that reads each weight once in its
// stored type (quantised included): whole rows per warp through shared memory
// (row_pipeline.cuh; q4_0 / q8_0 / K-quants on 8-bit activations when the warps have many
// rows), else a warp per row. 9..64 columns on q4_0 / q8_0 rows (a batched decode step): f16
// tensor cores reading each weight once, dequantised in registers (cuda_matmul_mma.cu). Many columns (prefill): cuBLAS, with
// quantised weights dequantised to f16 a tile of rows at a time and activations cast to the
// same 16-bit type (f32 accumulation); f32 weights use SGEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/dequant.cuh"
#include "kernels/cuda/quant_mma.h"
#include "kernels/cuda/row_pipeline.cuh"
#include "kernels/cuda/warp_dot.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int64_t kGemvMaxColumns = 8;
constexpr int kGemvWarps = 8;

template <DType T>
__global__ void GemvKernel(const uint8_t* w, size_t row_bytes, int64_t k, int64_t n, const float* x, int64_t m, float* y) {
  AllowDependents();
  const int64_t row = blockIdx.x * int64_t(kGemvWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const uint8_t* wrow = w + row * row_bytes;
  for (int64_t col = 0; col < m; ++col) {
    const float acc = WarpSum(WarpDotPartial<T>(wrow, x + col * k, k, lane));
    if (lane == 0) y[col * n + row] = acc;
  }
}

// The pipelined GEMV (row_pipeline.cuh): x (m columns; 8-bit blocks with kQ8) in shared
// memory, each warp a strided set of whole rows through its ring of row buffers.
template <DType T, bool kQ8>
__global__ void __launch_bounds__(kRowWarps * 32)
    GemvRowsKernel(const uint8_t* w, size_t row_bytes, int64_t k, int64_t n, const float* x, const uint8_t* rounded,
                   int64_t m, float* y) {
  extern __shared__ __align__(16) uint8_t smem[];
  AllowDependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t slot_bytes = StagedSlotBytes<T>(row_bytes);
  uint8_t* ring =
      smem + Align16(ActivationSmem<kQ8>(k, m)) + size_t(warp) * kRowStages * slot_bytes;
  WarpRowPipeline(
      int64_t{blockIdx.x} * kRowWarps + warp, n, int64_t{gridDim.x} * kRowWarps,
      [&](int slot, int64_t r) {
        IssueStagedRow<T>(ring + slot * slot_bytes, w + r * row_bytes, row_bytes, lane);
      },
      [&] {  // the weight rows are static: only x waits for the kernel before
             // (dependent_launch.cuh)
        WaitForPredecessor();
        if (rounded != nullptr) {  // kQ8 with q4_0 / q8_0 rows: rounded once for every product of x
          CopyRoundedColumns(rounded, k, m, 0, m, smem);
        } else {
          LoadActivations<T, kQ8>(x, k, m, smem);
        }
        __syncthreads();
      },
      [&](int slot, int64_t r) {
        const uint8_t* staged = StagedRow<T>(ring + slot * slot_bytes, w + r * row_bytes);
        for (int64_t col = 0; col < m; ++col) {
          const float sum = WarpSum(RowDot<T, kQ8>(staged, smem, k, m, col, lane));
          if (lane == 0) y[col * n + r] = sum;
        }
      });
}

// `rounded` (kQ8 only): x rounded once by RoundActivations, used whatever the rows per warp.
template <DType T, bool kQ8>
bool LaunchGemvRows(cudaStream_t stream, const uint8_t* w, size_t row_bytes, int64_t k, int64_t n, const float* x,
                    const uint8_t* rounded, int64_t m, float* y) {
  const size_t smem = RowPipelineSmem(ActivationSmem<kQ8>(k, m), StagedSlotBytes<T>(row_bytes), 1);
  if (smem > kRowSmemLimit || !AllowRowSmem<GemvRowsKernel<T, kQ8>>()) return false;
  const unsigned blocks = RowPipelineBlocks(n, 1, RowPipelineCtasPerSm<GemvRowsKernel<T, kQ8>>(smem));
  if (rounded == nullptr && kQ8 != QuantiseRows<T>(n, blocks)) return false;
  CUDA_OK(LaunchDependent(GemvRowsKernel<T, kQ8>, dim3(blocks), dim3(kRowWarps * 32), smem, stream, w, row_bytes, k,
                          n, x, rounded, m, y));
  return true;
}

template <DType T>
void LaunchGemv(cudaStream_t stream, const uint8_t* w, size_t row_bytes, int64_t k, int64_t n, const float* x,
                const uint8_t* rounded, int64_t m, float* y) {
  if (StagedRowsFit<T>(k, row_bytes, w) && k % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    if constexpr (kQ8Rows<T>) {
      if (rounded != nullptr && LaunchGemvRows<T, true>(stream, w, row_bytes, k, n, x, rounded, m, y)) return;
      if (LaunchGemvRows<T, true>(stream, w, row_bytes, k, n, x, nullptr, m, y)) return;
    }
    if (LaunchGemvRows<T, false>(stream, w, row_bytes, k, n, x, nullptr, m, y)) return;
  }
  const unsigned blocks = static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps);
  GemvKernel<T><<<blocks, kGemvWarps * 32, 0, stream>>>(w, row_bytes, k, n, x, m, y);
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
                       float* y, const void* x_rounded) {
  const auto* rounded = static_cast<const uint8_t*>(x_rounded);
  if (n == 0 || m == 0) return;
  const auto* wp = static_cast<const uint8_t*>(w);
  // q5_0 / q5_1 (llama.cpp's fallback for the few K-quant-file matrices whose rows are not whole
  // super-blocks) have no GEMV: they take the dequantising path at every column count.
  const bool gemv_type = wtype != DType::kQ5_0 && wtype != DType::kQ5_1;
  if (m <= kGemvMaxColumns && gemv_type) {
    switch (wtype) {
      case DType::kF32: {
        const unsigned blocks = static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps);
        GemvKernel<DType::kF32><<<blocks, kGemvWarps * 32, 0, stream_>>>(wp, row_bytes, k, n, x, m, y);
        break;
      }
      case DType::kF16: LaunchGemv<DType::kF16>(stream_, wp, row_bytes, k, n, x, nullptr, m, y); break;
      case DType::kBF16: LaunchGemv<DType::kBF16>(stream_, wp, row_bytes, k, n, x, nullptr, m, y); break;
      case DType::kQ8_0: LaunchGemv<DType::kQ8_0>(stream_, wp, row_bytes, k, n, x, rounded, m, y); break;
      case DType::kQ4_0: LaunchGemv<DType::kQ4_0>(stream_, wp, row_bytes, k, n, x, rounded, m, y); break;
      case DType::kQ4_K: LaunchGemv<DType::kQ4_K>(stream_, wp, row_bytes, k, n, x, nullptr, m, y); break;
      case DType::kQ5_K: LaunchGemv<DType::kQ5_K>(stream_, wp, row_bytes, k, n, x, nullptr, m, y); break;
      case DType::kQ6_K: LaunchGemv<DType::kQ6_K>(stream_, wp, row_bytes, k, n, x, nullptr, m, y); break;
      default: CU_CHECK(false);
    }
    LAUNCH_OK();
    return;
  }
  // A batched decode step's widths on q4_0 / q8_0 rows: the f16 tensor-core product, which
  // reads each weight once (LATENTSERVE_CUDA_QUANT_MMA=0: the dequantising path below).
  const QuantMmaPart part{wp, n, y};
  if (QuantMmaProducts(wtype, row_bytes, k, {&part, 1}, x, m, rounded)) return;
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

bool CudaBackend::QuantMmaProducts(DType wtype, size_t row_bytes, int64_t k, absl::Span<const QuantMmaPart> parts,
                                   const float* x, int64_t m, const void* fragments) {
  if (!QuantMmaEnabled() || parts.empty() || parts.size() > kMaxQuantMmaParts) return false;
  for (const QuantMmaPart& part : parts) {
    if (!QuantMmaApplies(wtype, part.w, row_bytes, k, m)) return false;
  }
  if (fragments == nullptr && reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;  // the rounding reads float4s
  const QuantMmaPlan plan = PlanQuantMma(k, parts, m, sms_);
  if (fragments == nullptr) {
    void* own = Scratch(0, QuantMmaFragmentBytes(k, m));
    LaunchHalfFragments(stream_, x, k, m, own);
    fragments = own;
  }
  auto* partials = plan.partial_bytes > 0 ? static_cast<float*>(Scratch(1, plan.partial_bytes)) : nullptr;
  int* tickets = plan.k_slices > 1 ? Tickets(mma_tickets_, plan.row_tiles) : nullptr;
  LaunchQuantMma(stream_, plan, wtype, parts, row_bytes, k, fragments, m, partials, tickets);
  return true;
}

void CudaBackend::MatMuls(absl::Span<const Tensor> w, const Tensor& x, const Tensor& x_rounded,
                          absl::Span<const Tensor> y) {
  CU_CHECK(w.size() == y.size());
  const int64_t k = x.ne[0], m = x.rows();
  bool alike = !w.empty() && x.dtype == DType::kF32 && m > kRoundedMaxColumns;
  std::vector<QuantMmaPart> parts;
  for (size_t i = 0; alike && i < w.size(); ++i) {
    alike = w[i].dtype == w[0].dtype && w[i].ne[0] == k && w[i].row_bytes() == w[0].row_bytes() &&
            y[i].dtype == DType::kF32 && y[i].ne[0] == w[i].rows() && y[i].rows() == m;
    parts.push_back({static_cast<const uint8_t*>(DevPtr(w[i])), w[i].rows(), DevF32(y[i])});
  }
  if (alike && QuantMmaProducts(w[0].dtype, w[0].row_bytes(), k, parts, DevF32(x), m, FragmentsFor(x, x_rounded))) {
    return;
  }
  Backend::MatMuls(w, x, x_rounded, y);
}

void CudaBackend::MatMul(const Tensor& w, const Tensor& x, const Tensor& y) { MatMul(w, x, Tensor(), y); }

void CudaBackend::MatMul(const Tensor& w, const Tensor& x, const Tensor& x_rounded, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.rows(), m = x.rows();
  CU_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32 && x.ne[0] == k && y.ne[0] == n && y.rows() == m);
  Gemm(w.dtype, DevPtr(w), w.row_bytes(), k, n, DevF32(x), m, DevF32(y),
       m <= kRoundedMaxColumns ? RoundedFor(x, x_rounded) : FragmentsFor(x, x_rounded));
}

// One warp per block of 32 values, the rounding LoadActivations does per CTA (row_pipeline.cuh).
__global__ void RoundActivationsKernel(const float* x, int64_t k, int64_t m, uint8_t* out) {
  AllowDependents();
  WaitForPredecessor();
  const int64_t b = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  if (b >= m * k / 32) return;
  RoundBlock32(x, b, threadIdx.x % 32, reinterpret_cast<int8_t*>(out),
               reinterpret_cast<float*>(out + Align16(static_cast<size_t>(k * m))), nullptr);
}

absl::StatusOr<Tensor> CudaBackend::RoundActivations(const Tensor& x) {
  const int64_t k = x.ne[0], m = x.rows();
  if (x.dtype != DType::kF32 || m == 0 || k % 32 != 0) return Tensor();
  // A batched step's widths: the tensor-core product's f16 fragments (quant_mma.h).
  if (m > kRoundedMaxColumns) {
    if (m < kQuantMmaMinColumns || m > kQuantMmaMaxColumns || k % 256 != 0 || !QuantMmaEnabled() ||
        reinterpret_cast<uintptr_t>(DevPtr(x)) % 16 != 0) {
      return Tensor();
    }
    ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kI32, {static_cast<int64_t>(QuantMmaFragmentBytes(k, m) / 4), 1, 1, 1}));
    LaunchHalfFragments(stream_, DevF32(x), k, m, DevPtr(out));
    return out;
  }
  // Decode widths (the GEMVs' columns); prefill's products go through cuBLAS in f16.
  const size_t bytes = RoundedBytes(k, m);
  ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kI32, {static_cast<int64_t>(bytes / 4), 1, 1, 1}));
  constexpr int kWarps = 8;
  CUDA_OK(LaunchDependent(RoundActivationsKernel, dim3(static_cast<unsigned>((m * k / 32 + kWarps - 1) / kWarps)),
                          dim3(kWarps * 32), 0, stream_, DevF32(x), k, m, static_cast<uint8_t*>(DevPtr(out))));
  return out;
}

const void* CudaBackend::RoundedFor(const Tensor& x, const Tensor& x_rounded) {
  if (!x_rounded.defined() || x.rows() > kRoundedMaxColumns) return nullptr;
  CU_CHECK(x_rounded.dtype == DType::kI32 && x.ne[0] % 32 == 0 &&
           static_cast<size_t>(x_rounded.elements()) * 4 == RoundedBytes(x.ne[0], x.rows()));
  return DevPtr(x_rounded);
}

const void* CudaBackend::FragmentsFor(const Tensor& x, const Tensor& x_rounded) {
  if (!x_rounded.defined() || x.rows() <= kRoundedMaxColumns) return nullptr;
  CU_CHECK(x_rounded.dtype == DType::kI32 && x.ne[0] % 256 == 0 &&
           static_cast<size_t>(x_rounded.elements()) * 4 == QuantMmaFragmentBytes(x.ne[0], x.rows()));
  return DevPtr(x_rounded);
}

const float* CudaBackend::F32Weights(const Tensor& w) {
  const void* key = DevPtr(w);
  if (auto it = f32_weights_.find(key); it != f32_weights_.end()) {
    if (it->second.first.lock() == w.buffer) return it->second.second;
    if (capture_) {  // no synchronising while recording
      CaptureRefused("a per-head weight was replaced while recording");
      return it->second.second;
    }
    CUDA_OK(cudaStreamSynchronize(stream_));  // a freed weight's copy: its last use may be queued
    CUDA_OK(cudaFree(it->second.second));
    f32_weights_.erase(it);
  }
  // Made once per weight (7 MLA layers x k_b and v_b: 16 MiB each at full size). While a step
  // is recorded the copy runs on a side stream, so replays do not dequantise again; the
  // weights were uploaded and synchronised long before any recording.
  float* out = nullptr;
  CUDA_OK(cudaMalloc(&out, static_cast<size_t>(w.elements()) * 4));
  cudaStream_t stream = stream_;
  if (capture_) {
    if (aux_stream_ == nullptr) CUDA_OK(cudaStreamCreateWithFlags(&aux_stream_, cudaStreamNonBlocking));
    stream = aux_stream_;
  }
  DequantKernel<<<Blocks(w.elements(), 256), 256, 0, stream>>>(w.dtype, DevPtr(w), w.row_bytes(), w.ne[0],
                                                              w.elements() / w.ne[0], out);
  LAUNCH_OK();
  if (capture_) CUDA_OK(cudaStreamSynchronize(aux_stream_));
  f32_weights_[key] = {w.buffer, out};
  return out;
}

void CudaBackend::HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) {
  const int64_t k = w.ne[0], n = w.ne[1], heads = w.ne[2];
  const int64_t x_width = x.ne[0], tokens = x.ne[2];
  CU_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32 && x_offset + k <= x_width && x.ne[1] == heads &&
           y.ne[0] == n && y.ne[1] == heads && y.ne[2] == tokens);
  if (tokens == 0) return;
  const float* wf = w.dtype == DType::kF32 ? reinterpret_cast<const float*>(DevPtr(w)) : F32Weights(w);
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_OK(cublasSgemmStridedBatched(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(tokens),
                                      static_cast<int>(k), &one, wf, static_cast<int>(k), k * n, DevF32(x) + x_offset,
                                      static_cast<int>(heads * x_width), x_width, &zero, DevF32(y),
                                      static_cast<int>(heads * n), n, static_cast<int>(heads)));
}

}  // namespace latentserve::kernels::cuda
