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

}  // namespace latentserve::kernels
