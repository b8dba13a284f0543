// The fused residual add + RMSNorm of the CUDA backend against the CPU reference (part of
// test_backend_ops: needs a GPU, skipped elsewhere). A file of its own because
// test_backend_ops.cc is past the 500-line limit.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::kExact;

class BackendNormOps : public op_test::BackendPairFixture {
 protected:
  BackendNormOps() : BackendPairFixture(7) {}
};

// The decode shapes (the model width for 1 and 3 tokens, per-head norms), a rotary tail kept,
// rows that leave spare warps in the last CTA, y = x, and widths that take the fallback
// (not whole float4s; too wide for a CTA's registers). x after the op is x + a on both
// backends exactly (one f32 add each).
TEST_F(BackendNormOps, AddRmsNormMatchesCpuForYAndX) {
  struct Case {
    Shape ne;
    int64_t d;
    bool in_place;
  };
  for (const Case& c : {Case{{2304, 1, 1, 1}, 2304, false}, Case{{2304, 3, 1, 1}, 2304, false},
                        Case{{128, 8, 4, 1}, 128, false}, Case{{256, 13, 1, 1}, 256, false},
                        Case{{576, 5, 1, 1}, 512, false}, Case{{2304, 3, 1, 1}, 2304, true},
                        Case{{2305, 2, 1, 1}, 2305, false}, Case{{5000, 2, 1, 1}, 5000, false}}) {
    const int64_t n = c.ne[0] * c.ne[1] * c.ne[2] * c.ne[3];
    const std::string what = "AddRmsNorm width " + std::to_string(c.ne[0]) + " d " + std::to_string(c.d) + " rows " +
                             std::to_string(n / c.ne[0]) + (c.in_place ? " y = x" : "");
    auto x = F32(c.ne, Random(n, -4, 4));
    auto a = F32(c.ne, Random(n, -4, 4));
    auto w = F32({c.d, 1, 1, 1}, Random(c.d));
    auto y = c.in_place ? x : Poisoned(c.ne);
    cpu_->AddRmsNorm(x.cpu, a.cpu, w.cpu, 1e-5f, y.cpu);
    gpu_->AddRmsNorm(x.gpu, a.gpu, w.gpu, 1e-5f, y.gpu);
    Expect(y, kExact, what + ": y");
    if (!c.in_place) Expect(x, 0, what + ": x");
  }
}

}  // namespace
}  // namespace latentserve::kernels
