#include "kernels/tensor.h"

#include <cstdlib>

namespace latentserve::kernels {

Tensor Tensor::Reshape(Shape shape) const {
  Tensor view = *this;
  view.ne = shape;
  if (view.elements() != elements() || RowBytes(dtype, shape[0]) * view.rows() != static_cast<int64_t>(nbytes())) {
    std::abort();  // a reshape that changes the size is a programming error
  }
  return view;
}

Tensor Tensor::RowSlice(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first + count > rows()) std::abort();  // a programming error, as in Reshape
  Tensor view = *this;
  view.ne = {ne[0], count, 1, 1};
  view.offset = offset + static_cast<size_t>(first) * row_bytes();
  return view;
}

}  // namespace latentserve::kernels
