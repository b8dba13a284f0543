// Row and element-wise ops: norms (with the residual add or the KDA output gate folded in) and
// activations. The KDA gate and short convolution: cuda_kda_gate_conv.cu.
#include <initializer_list>

#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/row_pipeline.cuh"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

__device__ float BlockSum(float value) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffff, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += partial[w];
  return total;
}

__global__ void RmsNormKernel(const float* x, const float* w, int64_t width, int64_t d, float eps, float* y) {
  const float* in = x + blockIdx.x * width;
  float* out = y + blockIdx.x * width;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += in[i] * in[i];
  const float scale = rsqrtf(BlockSum(sum) / d + eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[i] = i < d ? in[i] * scale * w[i] : in[i];
}

// The same for rows of whole float4s (width, d % 4 == 0), each value read once into registers
// (kPer float4s per thread, all loads issued before the reduction): kRowThreads threads per
// row, a warp (short rows: the KDA and MLA per-head norms) or the whole CTA (the model width).
// kOp kAdd (AddRmsNorm): x += a first, the sum kept in registers, written back to x and
// normalised into y; all loads of x and a are issued before any store, so y may be x (or a).
// kGate (GatedRmsNorm): y = the normalised row * sigmoid(a), a (the gate logits, laid out as x)
// loaded with x; the products are those of Sigmoid, RmsNorm and Mul's kernels, so bitwise theirs.
// `rounded` (else null; width % 32 == 0): y also rounded to 8-bit blocks of 32 in
// RoundActivations' layout (row_pipeline.cuh), the arithmetic of RoundBlock32: a block is 8
// float4s held by 8 adjacent lanes.
enum class RowOp { kNorm, kAdd, kGate };

template <int kRowThreads, int kPer, RowOp kOp>
__global__ void __launch_bounds__(kThreads) RmsNormVecKernel(float* x, const float* a, const float* w, int64_t rows,
                                                             int64_t width, int64_t d, float eps, float* y,
                                                             uint8_t* rounded) {
  AllowDependents();
  const int64_t row = int64_t{blockIdx.x} * (kThreads / kRowThreads) + threadIdx.x / kRowThreads;
  const int t = threadIdx.x % kRowThreads;
  const int64_t n4 = width / 4, d4 = d / 4;
  // The norm weights are static: their trip from memory overlaps the kernels before.
  const float4* w4 = reinterpret_cast<const float4*>(w);
  float4 g[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = t + int64_t{j} * kRowThreads;
    g[j] = i < d4 ? w4[i] : make_float4(0, 0, 0, 0);
  }
  WaitForPredecessor();  // launched dependent: x and a come from the kernels before
  // Rows past the end (spare warps of the last CTA) read the last row, in bounds, and store nothing.
  const int64_t first = min(row, rows - 1) * width;
  const float4* in = reinterpret_cast<const float4*>(x + first);
  float4 v[kPer];
  float4 gate[kPer];  // kGate only
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = t + int64_t{j} * kRowThreads;
    v[j] = i < n4 ? in[i] : make_float4(0, 0, 0, 0);
    if constexpr (kOp == RowOp::kGate) {
      gate[j] = i < n4 ? reinterpret_cast<const float4*>(a + first)[i] : make_float4(0, 0, 0, 0);
    }
    if constexpr (kOp == RowOp::kAdd) {
      if (i < n4) {
        const float4 b = reinterpret_cast<const float4*>(a + first)[i];
        v[j] = make_float4(v[j].x + b.x, v[j].y + b.y, v[j].z + b.z, v[j].w + b.w);
      }
    }
    if (i < d4) sum += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  if constexpr (kRowThreads == 32) {
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  } else {
    sum = BlockSum(sum);
  }
  if (row >= rows) return;
  const float scale = rsqrtf(sum / d + eps);
  float4* out = reinterpret_cast<float4*>(y + row * width);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = t + int64_t{j} * kRowThreads;
    if (i >= n4) continue;
    if constexpr (kOp == RowOp::kAdd) {
      reinterpret_cast<float4*>(x + first)[i] = v[j];  // before y's store: y may be x
    }
    if (i < d4) {
      v[j] = make_float4(v[j].x * scale * g[j].x, v[j].y * scale * g[j].y, v[j].z * scale * g[j].z,
                         v[j].w * scale * g[j].w);
    }
    if constexpr (kOp == RowOp::kGate) {
      const float4 z = gate[j];
      v[j] = make_float4(v[j].x * SigmoidOf(z.x), v[j].y * SigmoidOf(z.y), v[j].z * SigmoidOf(z.z),
                         v[j].w * SigmoidOf(z.w));
    }
    out[i] = v[j];
  }
  if (rounded == nullptr) return;
  auto* qs = reinterpret_cast<uint32_t*>(rounded + row * width);
  auto* ds = reinterpret_cast<float*>(rounded + Align16(static_cast<size_t>(rows * width))) + row * (width / 32);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {  // every lane takes part in the shuffles
    const int64_t i = t + int64_t{j} * kRowThreads;
    const float4 q = i < n4 ? v[j] : make_float4(0, 0, 0, 0);
    float amax = fmaxf(fmaxf(fabsf(q.x), fabsf(q.y)), fmaxf(fabsf(q.z), fabsf(q.w)));
    for (int offset = 1; offset < 8; offset <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, offset));
    if (i >= n4) continue;
    const Q8Rounding rounding = Q8RoundingOf(amax);
    qs[i] = rounding.Word(q);
    if (i % 8 == 0) ds[i / 8] = rounding.scale;
  }
}

__global__ void L2NormKernel(const float* x, int64_t width, float eps, float* y) {
  const float* in = x + blockIdx.x * width;
  float* out = y + blockIdx.x * width;
  float sum = 0;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) sum += in[i] * in[i];
  const float scale = 1.0f / fmaxf(sqrtf(BlockSum(sum)), eps);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[i] = in[i] * scale;
}

enum class Binary { kAdd, kMul, kSwiGlu };

__global__ void BinaryKernel(Binary op, const float* a, const float* b, float* y, int64_t n) {
  AllowDependents();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  switch (op) {
    case Binary::kAdd: y[i] = a[i] + b[i]; break;
    case Binary::kMul: y[i] = a[i] * b[i]; break;
    case Binary::kSwiGlu: y[i] = a[i] / (1.0f + expf(-a[i])) * b[i]; break;
  }
}

__global__ void SigmoidKernel(const float* x, float* y, int64_t n) {
  AllowDependents();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = SigmoidOf(x[i]);
}

// Whether RmsNormVecKernel takes these rows: whole float4s, 16-byte aligned, at most 4 float4s
// per thread of a CTA.
bool VecRows(int64_t width, int64_t d, std::initializer_list<const void*> pointers) {
  if (width % 4 != 0 || d % 4 != 0 || width > 4 * kThreads * 4) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// RmsNormVecKernel with a warp per row (up to 4 float4s per lane) or a CTA per row.
template <RowOp kOp>
void LaunchRmsNormVec(float* x, const float* a, const float* w, int64_t rows, int64_t width, int64_t d, float eps,
                      float* y, cudaStream_t stream, uint8_t* rounded = nullptr) {
  const auto blocks = [&](int rows_per_block) { return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block); };
  if (width <= 4 * 32 * 4) {
    CUDA_OK(LaunchDependent(RmsNormVecKernel<32, 4, kOp>, dim3(blocks(kThreads / 32)), dim3(kThreads), 0, stream, x,
                            a, w, rows, width, d, eps, y, rounded));
  } else {
    CUDA_OK(LaunchDependent(RmsNormVecKernel<kThreads, 4, kOp>, dim3(blocks(1)), dim3(kThreads), 0, stream, x, a, w,
                            rows, width, d, eps, y, rounded));
  }
}

}  // namespace

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements();
  CU_CHECK(d <= width && x.elements() == y.elements());
  const int64_t rows = x.rows();
  if (rows == 0) return;
  if (VecRows(width, d, {DevPtr(x), DevPtr(w), DevPtr(y)})) {
    LaunchRmsNormVec<RowOp::kNorm>(DevF32(x), nullptr, DevF32(w), rows, width, d, eps, DevF32(y), stream_);
  } else {
    RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream_>>>(DevF32(x), DevF32(w), width, d, eps, DevF32(y));
  }
  LAUNCH_OK();
}

void CudaBackend::AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements();
  CU_CHECK(d <= width && x.elements() == a.elements() && x.elements() == y.elements());
  const int64_t rows = x.rows();
  if (rows == 0) return;
  if (!VecRows(width, d, {DevPtr(x), DevPtr(a), DevPtr(w), DevPtr(y)})) {
    Backend::AddRmsNorm(x, a, w, eps, y);  // Add, then RmsNorm on whichever path it takes
    return;
  }
  LaunchRmsNormVec<RowOp::kAdd>(DevF32(x), DevF32(a), DevF32(w), rows, width, d, eps, DevF32(y), stream_);
  LAUNCH_OK();
}

absl::StatusOr<Tensor> CudaBackend::AddRmsNormRounded(const Tensor& x, const Tensor& a, const Tensor& w, float eps,
                                                     const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements(), rows = x.rows();
  CU_CHECK(d <= width && x.elements() == a.elements() && x.elements() == y.elements());
  // RoundActivations' widths (decode columns, whole blocks), on the vector kernel's rows.
  if (rows == 0 || rows > kRoundedMaxColumns || width % 32 != 0 ||
      !VecRows(width, d, {DevPtr(x), DevPtr(a), DevPtr(w), DevPtr(y)})) {
    return Backend::AddRmsNormRounded(x, a, w, eps, y);
  }
  ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kI32, {static_cast<int64_t>(RoundedBytes(width, rows) / 4), 1, 1, 1}));
  LaunchRmsNormVec<RowOp::kAdd>(DevF32(x), DevF32(a), DevF32(w), rows, width, d, eps, DevF32(y), stream_,
                                static_cast<uint8_t*>(DevPtr(out)));
  LAUNCH_OK();
  return out;
}

void CudaBackend::GatedRmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& gate, const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements();
  CU_CHECK(d <= width && x.elements() == gate.elements() && x.elements() == y.elements());
  if (x.rows() == 0) return;
  if (!VecRows(width, d, {DevPtr(x), DevPtr(w), DevPtr(gate), DevPtr(y)})) {
    Backend::GatedRmsNorm(x, w, eps, gate, y);  // Sigmoid, RmsNorm (scalar kernel), Mul
    return;
  }
  LaunchRmsNormVec<RowOp::kGate>(DevF32(x), DevF32(gate), DevF32(w), x.rows(), width, d, eps, DevF32(y), stream_);
  LAUNCH_OK();
}

void CudaBackend::L2Norm(const Tensor& x, float eps, const Tensor& y) {
  CU_CHECK(x.elements() == y.elements());
  if (x.rows() == 0) return;
  const int threads = x.ne[0] <= 128 ? 128 : kThreads;
  L2NormKernel<<<static_cast<unsigned>(x.rows()), threads, 0, stream_>>>(DevF32(x), x.ne[0], eps, DevF32(y));
  LAUNCH_OK();
}

void CudaBackend::Add(const Tensor& a, const Tensor& b, const Tensor& y) {
  CU_CHECK(a.elements() == b.elements() && a.elements() == y.elements());
  BinaryKernel<<<Blocks(a.elements(), kThreads), kThreads, 0, stream_>>>(Binary::kAdd, DevF32(a), DevF32(b), DevF32(y), a.elements());
  LAUNCH_OK();
}

void CudaBackend::Mul(const Tensor& a, const Tensor& b, const Tensor& y) {
  CU_CHECK(a.elements() == b.elements() && a.elements() == y.elements());
  BinaryKernel<<<Blocks(a.elements(), kThreads), kThreads, 0, stream_>>>(Binary::kMul, DevF32(a), DevF32(b), DevF32(y), a.elements());
  LAUNCH_OK();
}

void CudaBackend::SwiGlu(const Tensor& gate, const Tensor& up, const Tensor& y) {
  CU_CHECK(gate.elements() == up.elements() && gate.elements() == y.elements());
  BinaryKernel<<<Blocks(gate.elements(), kThreads), kThreads, 0, stream_>>>(Binary::kSwiGlu, DevF32(gate), DevF32(up),
                                                                            DevF32(y), gate.elements());
  LAUNCH_OK();
}

void CudaBackend::Sigmoid(const Tensor& x, const Tensor& y) {
  CU_CHECK(x.elements() == y.elements());
  SigmoidKernel<<<Blocks(x.elements(), kThreads), kThreads, 0, stream_>>>(DevF32(x), DevF32(y), x.elements());
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
