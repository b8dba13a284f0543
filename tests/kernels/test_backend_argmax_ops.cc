// Backend::ArgmaxRows (greedy decoding's tokens on the device) on the CUDA backend and the
// default (host) path of the CPU backend, against Argmax and std::max_element (part of
// test_backend_ops: needs a GPU, skipped elsewhere).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

class BackendArgmaxOps : public op_test::BackendPairFixture {
 protected:
  BackendArgmaxOps() : BackendPairFixture(11) {}
};

// Rows of one width: random ones, ties between indices that different threads and warps walk
// (the first must win), -0 against +0, NaN first (max_element answers 0), NaN elsewhere, only
// -inf, -inf with NaN, the largest value last.
TEST_F(BackendArgmaxOps, RowsMatchArgmaxAndMaxElement) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t width : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{1025}, int64_t{4099}, int64_t{163840}}) {
    std::vector<std::vector<float>> rows;
    for (int i = 0; i < 3; ++i) rows.push_back(Random(width, -8, 8));
    auto planted = [&](std::vector<std::pair<int64_t, float>> values) {
      std::vector<float> row = Random(width, -8, 8);
      for (auto [at, v] : values) {
        if (at < width) row[at] = v;
      }
      return row;
    };
    rows.push_back(planted({{width / 2, 9.0f}, {width - 1, 9.0f}, {3, 9.0f}, {1024 + 5, 9.0f}}));
    rows.push_back(planted({{width - 1, 9.0f}, {1024 + 5, 9.0f}}));
    rows.push_back(planted({{5, 9.0f}, {1024 + 5, 9.0f}}));  // one thread walks both
    rows.push_back(std::vector<float>(width, -1.0f));       // -0 first, then +0
    rows.back()[width > 2 ? 2 : 0] = -0.0f;
    rows.back()[width - 1] = 0.0f;
    rows.push_back(planted({{0, NAN}, {width - 1, 100.0f}}));
    rows.push_back(planted({{1, NAN}, {width / 3, NAN}, {width - 1, 100.0f}}));
    rows.push_back(std::vector<float>(width, -inf));
    rows.push_back(std::vector<float>(width, -inf));
    if (width > 1) rows.back()[1] = NAN;
    rows.push_back(planted({{width - 1, inf}}));
    const int64_t n = static_cast<int64_t>(rows.size());
    std::vector<float> all;
    for (const auto& row : rows) all.insert(all.end(), row.begin(), row.end());
    const auto x = F32({width, n, 1, 1}, all);
    const auto ids = Ints({n, 1, 1, 1}, std::vector<int32_t>(n, -7));
    cpu_->ArgmaxRows(x.cpu, ids.cpu);
    gpu_->ArgmaxRows(x.gpu, ids.gpu);
    std::vector<int32_t> got_cpu(n), got_gpu(n);
    cpu_->Download(ids.cpu, got_cpu.data(), n * 4);
    gpu_->Download(ids.gpu, got_gpu.data(), n * 4);
    for (int64_t r = 0; r < n; ++r) {
      const std::vector<float>& row = rows[r];
      const int32_t want = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      const std::string what = "width " + std::to_string(width) + " row " + std::to_string(r);
      EXPECT_EQ(Argmax(row), want) << what;
      EXPECT_EQ(got_cpu[r], want) << what << " (CPU backend)";
      EXPECT_EQ(got_gpu[r], want) << what << " (CUDA backend)";
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
