// Each row's largest value's index (Backend::ArgmaxRows): greedy decoding's tokens found on the
// GPU, so a batched step copies a token per sequence to the host instead of its logits.
#include <cub/block/block_reduce.cuh>

#include <climits>
#include <cmath>

#include "kernels/cuda/cuda_backend.h"

namespace latentserve::kernels::cuda {
namespace {

constexpr int kThreads = 1024;

// One CTA per row. Each thread walks its indices in increasing order keeping the first of its
// largest values, then CUB's ArgMax (ties to the smaller index) combines the threads. NaN is
// read as -inf: it then never beats a number, and where it ties with -inf the first index still
// wins, as with std::max_element, except for a NaN first entry, which max_element keeps (0).
__global__ void ArgmaxRowsKernel(const float* x, int64_t width, int32_t* out) {
  using Pair = cub::KeyValuePair<int, float>;
  using Reduce = cub::BlockReduce<Pair, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const float* row = x + blockIdx.x * width;
  Pair best(INT_MAX, -INFINITY);
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    const float v = isnan(row[i]) ? -INFINITY : row[i];
    if (best.key == INT_MAX || v > best.value) best = Pair(static_cast<int>(i), v);
  }
  const Pair top = Reduce(temp).Reduce(best, cub::ArgMax());
  if (threadIdx.x == 0) out[blockIdx.x] = isnan(row[0]) || top.key == INT_MAX ? 0 : top.key;
}

}  // namespace

void CudaBackend::ArgmaxRows(const Tensor& x, const Tensor& out) {
  const int64_t rows = x.rows();
  CU_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kI32 && out.elements() == rows && x.ne[0] < INT_MAX);
  if (rows == 0) return;
  if (x.ne[0] == 0) {  // empty rows: Argmax's 0
    Zero(out);
    return;
  }
  ArgmaxRowsKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream_>>>(DevF32(x), x.ne[0],
                                                                        reinterpret_cast<int32_t*>(DevPtr(out)));
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
