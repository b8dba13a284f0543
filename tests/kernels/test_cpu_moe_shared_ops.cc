// Backend::MoeExpertsWithShared on the CPU backend (the base class's default): bitwise the ops
// the model ran before it (MoeExperts, the shared expert's MatMuls and SwiGlu, Add), so the CPU
// model's output, compared with llama.cpp in tests/reference, does not move.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

class CpuMoeSharedOps : public op_test::CpuOpsFixture {
 protected:
  CpuMoeSharedOps() : CpuOpsFixture(99) {}
};

struct SharedCase {
  DType experts_gate_up, experts_down;
  DType shared_gate, shared_up, shared_down;  // stacked when gate and up have one type
  int64_t shared_ffn;
};

TEST_F(CpuMoeSharedOps, BitwiseTheSeparateOps) {
  const int64_t hidden = 256, ffn = 256, experts = 8, top_k = 3;
  const SharedCase cases[] = {
      {DType::kF32, DType::kF32, DType::kF32, DType::kF32, DType::kF32, ffn},
      {DType::kF16, DType::kF16, DType::kF16, DType::kF16, DType::kF16, ffn},
      {DType::kQ8_0, DType::kQ8_0, DType::kQ8_0, DType::kQ8_0, DType::kQ8_0, ffn},
      {DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, ffn},
      {DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, 2 * ffn},
      {DType::kQ4_K, DType::kQ6_K, DType::kQ4_K, DType::kQ4_K, DType::kQ6_K, ffn},
      {DType::kQ4_0, DType::kQ4_0, DType::kQ8_0, DType::kQ4_0, DType::kF16, ffn},  // mixed: not stacked
  };
  for (const SharedCase& c : cases) {
    const int64_t fs = c.shared_ffn;
    Tensor gate = Make(c.experts_gate_up, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
    Tensor up = Make(c.experts_gate_up, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
    Tensor down = Make(c.experts_down, {ffn, hidden, experts, 1}, Random(ffn * hidden * experts));
    const MoeWeights moe{gate, up, down};
    SharedExpert shared;
    if (c.shared_gate == c.shared_up) {  // as model/weights.h loads it: parts are views of one tensor
      shared.gate_up = Make(c.shared_gate, {hidden, 2 * fs, 1, 1}, Random(hidden * 2 * fs));
      shared.gate = shared.gate_up.RowSlice(0, fs);
      shared.up = shared.gate_up.RowSlice(fs, fs);
    } else {
      shared.gate = Make(c.shared_gate, {hidden, fs, 1, 1}, Random(hidden * fs));
      shared.up = Make(c.shared_up, {hidden, fs, 1, 1}, Random(hidden * fs));
    }
    shared.down = Make(c.shared_down, {fs, hidden, 1, 1}, Random(fs * hidden));
    for (int64_t tokens : {1, 5, 70}) {
      const std::string what = std::string(DTypeName(c.experts_gate_up)) + "/" + DTypeName(c.experts_down) +
                               " shared " + DTypeName(c.shared_gate) + "/" + DTypeName(c.shared_up) + "/" +
                               DTypeName(c.shared_down) + " Fs=" + std::to_string(fs) +
                               " tokens=" + std::to_string(tokens);
      Tensor ids = *backend_->Alloc(DType::kI32, {top_k, tokens, 1, 1});
      const std::vector<int32_t> routing = op_test::RandomRouting(experts, top_k, tokens, rng_);
      backend_->Upload(routing.data(), routing.size() * 4, ids);
      Tensor weights = F32({top_k, tokens, 1, 1}, Random(top_k * tokens, 0.1f, 1.0f));
      Tensor x = F32({hidden, tokens, 1, 1}, Random(hidden * tokens, -2, 2));
      Tensor fused = Zeros({hidden, tokens, 1, 1}), separate = Zeros({hidden, tokens, 1, 1});
      ASSERT_TRUE(backend_->MoeExpertsWithShared(x, Tensor(), moe, ids, weights, shared, fused).ok()) << what;
      op_test::MoeThenSharedOps(*backend_, x, Tensor(), moe, ids, weights, shared, separate);
      EXPECT_EQ(Bytes(fused), Bytes(separate)) << what;
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
