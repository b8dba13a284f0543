// Built without LATENTSERVE_CUDA: asking for the CUDA backend is a clear error.
#include "kernels/backend.h"

namespace latentserve::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions&) {
  return absl::UnimplementedError(
      "this latentserve was built without CUDA; rebuild with -DLATENTSERVE_CUDA=ON for --backend cuda");
}

}  // namespace latentserve::kernels
