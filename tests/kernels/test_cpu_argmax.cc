// Backend::ArgmaxRows on the CPU backend (the default, through the host) against Argmax
// (Argmax against std::max_element: tests/model/test_sampler.cc; the CUDA kernel:
// test_backend_argmax_ops.cc).
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace latentserve::kernels {
namespace {

// Row by row, with a tie (the first wins) and NaN first (0).
TEST(CpuArgmax, BackendArgmaxRowsIsArgmax) {
  auto backend = CreateBackend({"cpu", 1, 0});
  ASSERT_TRUE(backend.ok()) << backend.status();
  const int64_t width = 1000, rows = 4;
  std::vector<float> all(width * rows);
  for (size_t i = 0; i < all.size(); ++i) all[i] = std::sin(0.37f * static_cast<float>(i)) * 8.0f;
  all[width + 10] = all[width + 900] = 50.0f;  // a tie: the first wins
  all[2 * width] = NAN;                        // NaN first: 0
  auto x = (*backend)->Alloc(DType::kF32, {width, rows, 1, 1});
  auto ids = (*backend)->Alloc(DType::kI32, {rows, 1, 1, 1});
  ASSERT_TRUE(x.ok() && ids.ok());
  (*backend)->Upload(all.data(), all.size() * 4, *x);
  (*backend)->ArgmaxRows(*x, *ids);
  std::vector<int32_t> got(rows);
  (*backend)->Download(*ids, got.data(), rows * 4);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r], Argmax(absl::MakeConstSpan(all).subspan(r * width, width))) << r;
  }
  EXPECT_EQ(got[1], 10);
  EXPECT_EQ(got[2], 0);
}

}  // namespace
}  // namespace latentserve::kernels
