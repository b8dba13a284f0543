// Activations rounded once for several products (Backend::RoundActivations) on the CUDA
// backend: GEMVs and decode experts that read the rounded copy must give exactly what they give
// when they round x themselves (same arithmetic, bitwise), and match the CPU backend's own
// integer path, which rounds the same way. Runs only where a GPU is visible (ctest label "gpu").
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

class RoundedOps : public op_test::BackendPairFixture {
 protected:
  RoundedOps() : BackendPairFixture(1234) {}
};

// Decode widths get a rounded copy; more columns, widths not whole blocks, and the CPU do not.
TEST_F(RoundedOps, RoundedOnlyWhereItPays) {
  // 1..8 columns: the GEMVs' layout; 9..64 with k a multiple of 256: the f16 tensor-core
  // product's fragments (quant_mma.h); more columns (prefill: cuBLAS in f16) or other k: none.
  for (auto [m, k, wanted] : {std::tuple<int64_t, int64_t, bool>{1, 2304, true}, {8, 256, true}, {9, 256, true},
                              {64, 2304, true}, {9, 288, false}, {65, 256, false}, {1, 100, false}}) {
    auto x = F32({k, m, 1, 1}, Random(k * m));
    auto rounded = gpu_->RoundActivations(x.gpu);
    ASSERT_TRUE(rounded.ok()) << rounded.status();
    EXPECT_EQ(rounded->defined(), wanted) << "m=" << m << " k=" << k;
    auto on_cpu = cpu_->RoundActivations(x.cpu);
    ASSERT_TRUE(on_cpu.ok());
    EXPECT_FALSE(on_cpu->defined());
  }
}

// The residual add + RMSNorm that rounds its output in the same kernel: the same y and x as
// AddRmsNorm, and the same bytes as RoundActivations of that y. Widths: the CTA-per-row kernel
// (2304, 4096), the warp-per-row kernel (256; 288, whose last 32-block leaves a warp partly
// idle), and a width that is not whole blocks (2305: no rounded copy); 9 rows: RoundActivations'
// copy for the f16 tensor-core product (made after the norm, not by its kernel).
TEST_F(RoundedOps, AddRmsNormRoundedMatchesSeparateOps) {
  for (auto [width, rows] : {std::pair<int64_t, int64_t>{2304, 1}, {2304, 3}, {4096, 1}, {256, 8}, {288, 2},
                             {2305, 1}, {2304, 9}}) {
    const std::string what = "width=" + std::to_string(width) + " rows=" + std::to_string(rows);
    const std::vector<float> x0 = Random(width * rows, -2, 2), a0 = Random(width * rows, -2, 2);
    auto w = F32({width, 1, 1, 1}, Random(width, 0.5f, 1.5f));
    auto x = F32({width, rows, 1, 1}, x0), a = F32({width, rows, 1, 1}, a0);
    auto x_ref = F32({width, rows, 1, 1}, x0);
    auto y = Poisoned({width, rows, 1, 1}), y_ref = Poisoned({width, rows, 1, 1});
    auto rounded = gpu_->AddRmsNormRounded(x.gpu, a.gpu, w.gpu, 1e-6f, y.gpu);
    ASSERT_TRUE(rounded.ok()) << rounded.status();
    gpu_->AddRmsNorm(x_ref.gpu, a.gpu, w.gpu, 1e-6f, y_ref.gpu);
    EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_ref.gpu)) << what;
    EXPECT_EQ(GpuBytes(x.gpu), GpuBytes(x_ref.gpu)) << what;
    const bool wanted = width % 32 == 0 && (rows <= 8 || width % 256 == 0);
    ASSERT_EQ(rounded->defined(), wanted) << what;
    if (!wanted) continue;
    auto separate = gpu_->RoundActivations(y_ref.gpu);
    ASSERT_TRUE(separate.ok() && separate->defined()) << what;
    EXPECT_EQ(GpuBytes(*rounded), GpuBytes(*separate)) << what;
  }
}

// q4_0 / q8_0 GEMVs on the rounded copy: few rows per warp (the decode projections, which
// otherwise keep f32 activations), many (the lm_head class, which otherwise rounds per CTA),
// and a width the pipelined GEMV does not take (k 320: the plain warp GEMV ignores the copy).
// K-quant rows round to q8_K themselves and ignore it too.
TEST_F(RoundedOps, GemvOnRoundedCopy) {
  for (DType type : {DType::kQ4_0, DType::kQ8_0, DType::kQ4_K}) {
    for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{1, 2304, 333}, {3, 2304, 4096}, {8, 4096, 2304},
                           {1, 256, 300000}, {2, 320, 333}}) {
      if (type == DType::kQ4_K && k % 256 != 0) continue;
      const std::string what = std::string(DTypeName(type)) + " m=" + std::to_string(m) + " k=" + std::to_string(k) +
                               " n=" + std::to_string(n);
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m, -3, 3));
      auto rounded = gpu_->RoundActivations(x.gpu);
      ASSERT_TRUE(rounded.ok() && rounded->defined()) << what;
      auto y = Poisoned({n, m, 1, 1});
      auto y_self = Poisoned({n, m, 1, 1});
      gpu_->MatMul(w.gpu, x.gpu, *rounded, y.gpu);
      gpu_->MatMul(w.gpu, x.gpu, y_self.gpu);
      const bool pipelined = k % 256 == 0;
      const bool self_rounds = type == DType::kQ4_K || n >= 300000;  // QuantiseRows: many rows per warp
      if (!pipelined || self_rounds) {
        EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_self.gpu)) << "same kernel and rounding: " << what;
      }
      if (pipelined && type != DType::kQ4_K) {  // (q4_K: test_backend_kquant_ops.cc)
        cpu_->MatMul(w.cpu, x.cpu, y.cpu);  // the CPU's integer path rounds x the same way
        Expect(y, 1e-9, "GEMV on rounded x " + what);
      }
    }
  }
}

// Decode experts (gate and up read the rounded copy; down rounds its own input) against the
// experts that round x per CTA, bitwise, and the CPU's integer path.
TEST_F(RoundedOps, DecodeExpertsOnRoundedCopy) {
  for (DType type : {DType::kQ4_0, DType::kQ8_0}) {
    const int64_t experts = 40, top_k = 6, hidden = 512, ffn = 256;
    for (int64_t tokens : {1, 5}) {
      const std::string what = std::string(DTypeName(type)) + " tokens=" + std::to_string(tokens);
      auto ids = Ints({top_k, tokens, 1, 1}, op_test::RandomRouting(experts, top_k, tokens, rng_));
      auto weights = F32({top_k, tokens, 1, 1}, Random(top_k * tokens, 0.01f, 0.4f));
      auto gate = Make(type, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
      auto up = Make(type, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
      auto down = Make(type, {ffn, hidden, experts, 1}, Random(ffn * hidden * experts));
      const MoeWeights cw{gate.cpu, up.cpu, down.cpu}, gw{gate.gpu, up.gpu, down.gpu};
      auto x = F32({hidden, tokens, 1, 1}, Random(hidden * tokens));
      auto rounded = gpu_->RoundActivations(x.gpu);
      ASSERT_TRUE(rounded.ok() && rounded->defined()) << what;
      auto y = Poisoned({hidden, tokens, 1, 1});
      auto y_self = Poisoned({hidden, tokens, 1, 1});
      gpu_->MoeExperts(x.gpu, *rounded, gw, ids.gpu, weights.gpu, y.gpu);
      gpu_->MoeExperts(x.gpu, gw, ids.gpu, weights.gpu, y_self.gpu);
      EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_self.gpu)) << what;
      cpu_->MoeExperts(x.cpu, cw, ids.cpu, weights.cpu, y.cpu);
      Expect(y, 1e-6, "decode experts on rounded x " + what);
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
