// Row and element-wise ops: norms, activations, the KDA gate and the short convolution.
#include <initializer_list>

#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dependent_launch.cuh"
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
// kAdd (AddRmsNorm): x += a first, the sum kept in registers, written back to x and normalised
// into y; all loads of x and a are issued before any store, so y may be x (or a).
// `rounded` (else null; width % 32 == 0): y also rounded to 8-bit blocks of 32 in
// RoundActivations' layout (row_pipeline.cuh), the arithmetic of RoundBlock32: a block is 8
// float4s held by 8 adjacent lanes.
template <int kRowThreads, int kPer, bool kAdd>
__global__ void __launch_bounds__(kThreads) RmsNormVecKernel(float* x, const float* a, const float* w, int64_t rows,
                                                             int64_t width, int64_t d, float eps, float* y,
                                                             uint8_t* rounded) {
  AllowDependents();
  WaitForPredecessor();  // launched dependent: x and a come from the kernels before
  const int64_t row = int64_t{blockIdx.x} * (kThreads / kRowThreads) + threadIdx.x / kRowThreads;
  const int t = threadIdx.x % kRowThreads;
  const int64_t n4 = width / 4, d4 = d / 4;
  // Rows past the end (spare warps of the last CTA) read the last row, in bounds, and store nothing.
  const int64_t first = min(row, rows - 1) * width;
  const float4* in = reinterpret_cast<const float4*>(x + first);
  float4 v[kPer];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = t + int64_t{j} * kRowThreads;
    v[j] = i < n4 ? in[i] : make_float4(0, 0, 0, 0);
    if constexpr (kAdd) {
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
  const float4* w4 = reinterpret_cast<const float4*>(w);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = t + int64_t{j} * kRowThreads;
    if (i >= n4) continue;
    if constexpr (kAdd) reinterpret_cast<float4*>(x + first)[i] = v[j];  // before y's store: y may be x
    if (i < d4) {
      const float4 g = w4[i];
      v[j] = make_float4(v[j].x * scale * g.x, v[j].y * scale * g.y, v[j].z * scale * g.z, v[j].w * scale * g.w);
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
    const float dq = __fdiv_rn(amax, 127.0f);
    const float inv = dq != 0.0f ? __frcp_rn(dq) : 0.0f;
    const auto byte = [&](float value, int shift) {
      return static_cast<uint32_t>(static_cast<uint8_t>(__float2int_rn(__fmul_rn(value, inv)))) << shift;
    };
    qs[i] = byte(q.x, 0) | byte(q.y, 8) | byte(q.z, 16) | byte(q.w, 24);
    if (i % 8 == 0) ds[i / 8] = dq;
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
  if (i < n) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

__global__ void KdaGateKernel(const float* f, const float* bias, const float* a, int64_t width, int64_t head_dim,
                              float* g, int64_t n) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t c = i % width;
  const float x = f[i] + bias[c];
  const float softplus = x > 20.0f ? x : log1pf(expf(x));
  g[i] = a[c / head_dim] * softplus;
}

// One thread per (channel, token): reads its window from the carried tail and the new inputs.
__global__ void ShortConvKernel(const float* x, const float* w, const float* tail, int64_t channels, int64_t taps,
                                int64_t first, int64_t count, float* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= channels * count) return;
  const int64_t t = i / channels, c = i % channels;
  float acc = 0;
  for (int64_t j = 0; j < taps; ++j) {
    const int64_t src = t + j - (taps - 1);  // < 0: from the tail
    const float value = src >= 0 ? x[(first + src) * channels + c] : tail[c * (taps - 1) + (taps - 1 + src)];
    acc += w[c * taps + j] * value;
  }
  y[(first + t) * channels + c] = acc / (1.0f + expf(-acc));
}

// New tail = the last taps-1 values of [old tail, x]; run after ShortConvKernel.
__global__ void ShortConvTailKernel(const float* x, float* tail, int64_t channels, int64_t taps, int64_t first,
                                    int64_t count) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  float* prev = tail + c * (taps - 1);
  float window[8];  // taps - 1 <= 8
  for (int64_t j = 0; j < taps - 1; ++j) {
    const int64_t src = count - (taps - 1) + j;  // index into x's new tokens
    window[j] = src >= 0 ? x[(first + src) * channels + c] : prev[j + count];
  }
  for (int64_t j = 0; j < taps - 1; ++j) prev[j] = window[j];
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
template <bool kAdd>
void LaunchRmsNormVec(float* x, const float* a, const float* w, int64_t rows, int64_t width, int64_t d, float eps,
                      float* y, cudaStream_t stream, uint8_t* rounded = nullptr) {
  const auto blocks = [&](int rows_per_block) { return static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block); };
  if (width <= 4 * 32 * 4) {
    CUDA_OK(LaunchDependent(RmsNormVecKernel<32, 4, kAdd>, dim3(blocks(kThreads / 32)), dim3(kThreads), 0, stream, x,
                            a, w, rows, width, d, eps, y, rounded));
  } else {
    CUDA_OK(LaunchDependent(RmsNormVecKernel<kThreads, 4, kAdd>, dim3(blocks(1)), dim3(kThreads), 0, stream, x, a, w,
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
    LaunchRmsNormVec<false>(DevF32(x), nullptr, DevF32(w), rows, width, d, eps, DevF32(y), stream_);
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
  LaunchRmsNormVec<true>(DevF32(x), DevF32(a), DevF32(w), rows, width, d, eps, DevF32(y), stream_);
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
  ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kI32, {static_cast<int64_t>(ActivationSmem<true>(width, rows) / 4), 1, 1, 1}));
  LaunchRmsNormVec<true>(DevF32(x), DevF32(a), DevF32(w), rows, width, d, eps, DevF32(y), stream_,
                         static_cast<uint8_t*>(DevPtr(out)));
  LAUNCH_OK();
  return out;
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

void CudaBackend::KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim, const Tensor& g) {
  CU_CHECK(dt_bias.elements() == f.ne[0] && a.elements() * head_dim == f.ne[0]);
  KdaGateKernel<<<Blocks(f.elements(), kThreads), kThreads, 0, stream_>>>(DevF32(f), DevF32(dt_bias), DevF32(a), f.ne[0],
                                                                          head_dim, DevF32(g), f.elements());
  LAUNCH_OK();
}

void CudaBackend::ShortConvSilu(const Tensor& x, const Tensor& weight, int which, absl::Span<const SeqSlice> seqs,
                                absl::Span<const KdaStateView> states, const Tensor& y) {
  const int64_t channels = x.ne[0], taps = weight.ne[0];
  CU_CHECK(weight.dtype == DType::kF32 && weight.rows() == channels && seqs.size() == states.size() && taps <= 9);
  for (size_t s = 0; s < seqs.size(); ++s) {
    float* tail = DevF32(states[s].conv) + which * channels * (taps - 1);
    const int64_t n = seqs[s].token_count;
    if (n == 0) continue;
    ShortConvKernel<<<Blocks(channels * n, kThreads), kThreads, 0, stream_>>>(DevF32(x), DevF32(weight), tail, channels,
                                                                              taps, seqs[s].first_token, n, DevF32(y));
    LAUNCH_OK();
    ShortConvTailKernel<<<Blocks(channels, kThreads), kThreads, 0, stream_>>>(DevF32(x), tail, channels, taps,
                                                                              seqs[s].first_token, n);
    LAUNCH_OK();
  }
}

}  // namespace latentserve::kernels::cuda
