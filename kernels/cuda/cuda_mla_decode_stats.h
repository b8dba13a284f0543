// How often the paged MLA decode launched its Hopper kernel in this process (plain C++, so
// the op tests can check which kernel answered a call).
#pragma once

#include <cstdint>

namespace latentserve::kernels::cuda {

int64_t MlaDecodeWgmmaLaunches();

}  // namespace latentserve::kernels::cuda
