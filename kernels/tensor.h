// Backend tensors: a typed, shaped view of memory owned by a backend buffer.
// Model code handles Tensors but never their memory: only the backend reads or writes it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/dtype.h"

namespace latentserve::kernels {

// Memory owned by one backend (host memory for CPU, device memory for CUDA).
class Buffer {
 public:
  virtual ~Buffer() = default;
  // Opaque address: only the owning backend may dereference it.
  virtual void* address() = 0;
  virtual size_t size() const = 0;
};

// Dimensions in ggml order: ne[0] is the fastest-moving (contiguous) dimension. Unused
// trailing dimensions are 1. Tensors are always contiguous.
using Shape = std::array<int64_t, 4>;

struct Tensor {
  DType dtype = DType::kF32;
  Shape ne = {0, 1, 1, 1};
  std::shared_ptr<Buffer> buffer;  // shared by views
  size_t offset = 0;               // bytes into buffer

  bool defined() const { return buffer != nullptr; }
  int64_t elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  int64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  size_t row_bytes() const { return static_cast<size_t>(RowBytes(dtype, ne[0])); }
  size_t nbytes() const { return row_bytes() * static_cast<size_t>(rows()); }

  // Same memory, another shape with the same element count (metadata only).
  Tensor Reshape(Shape shape) const;
  // Rows [first, first + count) as a [ne[0], count] matrix sharing this memory.
  Tensor RowSlice(int64_t first, int64_t count) const;
};

}  // namespace latentserve::kernels
