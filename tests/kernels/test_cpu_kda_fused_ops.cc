// The KDA layer's fused ops on the CPU backend: bitwise the separate ops they replace (the
// CPU model is compared against llama.cpp, so fusing may not move its output).
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

class CpuKdaFusedOps : public op_test::CpuOpsFixture {
 protected:
  CpuKdaFusedOps() : CpuOpsFixture(2027) {}
};

// g and beta in place, as the model calls it: the model's shapes (32 heads of 128, decode and
// 3 tokens) and odd ones; f reaches past the softplus switch at 20.
TEST_F(CpuKdaFusedOps, KdaGateAndBetaIsGateThenSigmoid) {
  for (auto [heads, head_dim, tokens] : {std::tuple<int64_t, int64_t, int64_t>{32, 128, 1}, {32, 128, 3}, {3, 48, 5},
                                         {7, 13, 1}}) {
    const std::string what = "H=" + std::to_string(heads) + " Dk=" + std::to_string(head_dim) +
                             " n=" + std::to_string(tokens);
    const int64_t di = heads * head_dim;
    const std::vector<float> f = Random(di * tokens, -8, 24), logits = Random(heads * tokens, -6, 6);
    const Tensor bias = F32({di, 1, 1, 1}, Random(di)), a = F32({heads, 1, 1, 1}, Random(heads, -2, -0.1f));
    const Tensor g = F32({di, tokens, 1, 1}, f), beta = F32({heads, tokens, 1, 1}, logits);
    backend_->KdaGateAndBeta(g, bias, a, head_dim, g, beta, beta);
    const Tensor g_ref = F32({di, tokens, 1, 1}, f), beta_ref = F32({heads, tokens, 1, 1}, logits);
    backend_->KdaGate(g_ref, bias, a, head_dim, g_ref);
    backend_->Sigmoid(beta_ref, beta_ref);
    EXPECT_EQ(Bytes(g), Bytes(g_ref)) << what;
    EXPECT_EQ(Bytes(beta), Bytes(beta_ref)) << what;
  }
}

// Per-head rows (128: the model's, 48, and a norm weight shorter than the row), y = x and apart.
TEST_F(CpuKdaFusedOps, GatedRmsNormIsSigmoidNormMul) {
  for (auto [width, d, rows, in_place] : {std::tuple<int64_t, int64_t, int64_t, bool>{128, 128, 32, true},
                                          {128, 128, 96, true}, {128, 128, 32, false}, {48, 48, 15, true},
                                          {128, 120, 7, false}, {130, 130, 6, true}}) {
    const std::string what = "width " + std::to_string(width) + " d " + std::to_string(d) + " rows " +
                             std::to_string(rows) + (in_place ? " y = x" : "");
    const Shape ne = {width, rows, 1, 1};
    const std::vector<float> x0 = Random(width * rows, -4, 4), gate0 = Random(width * rows, -6, 6);
    const Tensor w = F32({d, 1, 1, 1}, Random(d, 0.5f, 1.5f));
    const Tensor x = F32(ne, x0), gate = F32(ne, gate0);
    const Tensor y = in_place ? x : Zeros(ne);
    backend_->GatedRmsNorm(x, w, 1e-5f, gate, y);
    const Tensor x_ref = F32(ne, x0), gate_ref = F32(ne, gate0);
    const Tensor y_ref = in_place ? x_ref : Zeros(ne);
    backend_->Sigmoid(gate_ref, gate_ref);
    backend_->RmsNorm(x_ref, w, 1e-5f, y_ref);
    backend_->Mul(y_ref, gate_ref, y_ref);
    EXPECT_EQ(Bytes(y), Bytes(y_ref)) << what;
  }
}

}  // namespace
}  // namespace latentserve::kernels
