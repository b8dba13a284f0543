// The KDA layer's fused decode ops on the CUDA backend (part of test_backend_ops: needs a GPU,
// skipped elsewhere): each must give exactly the bytes of the separate ops it replaces on the
// same backend (the model's output may not move), and match the CPU reference like those ops.
// KdaGateAndBeta against KdaGate + Sigmoid; GatedRmsNorm against Sigmoid + RmsNorm + Mul; the
// one-pass short convolution against the conv and tail kernels (LATENTSERVE_SHORT_CONV=split).
#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::kExact;

using op_test::ScopedEnv;

class KdaFusedOps : public op_test::BackendPairFixture {
 protected:
  KdaFusedOps() : BackendPairFixture(2027) {}
  // A second GPU tensor with t's contents.
  Tensor GpuCopy(const Tensor& t) {
    Tensor copy = *gpu_->Alloc(t.dtype, t.ne);
    gpu_->Copy(t, copy);
    return copy;
  }
};

struct HeadShape {
  int64_t heads, head_dim, tokens;
  std::string Name() const {
    return "H=" + std::to_string(heads) + " Dk=" + std::to_string(head_dim) + " n=" + std::to_string(tokens);
  }
};

// The model's shapes (32 heads of 128, decode and 3 tokens) and odd ones. f reaches past the
// softplus switch at 20.
TEST_F(KdaFusedOps, KdaGateAndBetaMatchesGateThenSigmoid) {
  for (const HeadShape& s : {HeadShape{32, 128, 1}, HeadShape{32, 128, 3}, HeadShape{3, 48, 5}, HeadShape{7, 13, 1}}) {
    const int64_t di = s.heads * s.head_dim;
    auto f = F32({di, s.tokens, 1, 1}, Random(di * s.tokens, -8, 24));
    auto bias = F32({di, 1, 1, 1}, Random(di));
    auto a = F32({s.heads, 1, 1, 1}, Random(s.heads, -2, -0.1f));
    auto logits = F32({s.heads, s.tokens, 1, 1}, Random(s.heads * s.tokens, -6, 6));
    auto g = Poisoned({di, s.tokens, 1, 1}), beta = Poisoned({s.heads, s.tokens, 1, 1});
    gpu_->KdaGateAndBeta(f.gpu, bias.gpu, a.gpu, s.head_dim, g.gpu, logits.gpu, beta.gpu);
    cpu_->KdaGateAndBeta(f.cpu, bias.cpu, a.cpu, s.head_dim, g.cpu, logits.cpu, beta.cpu);
    Expect(g, kExact, "KdaGateAndBeta g " + s.Name());
    Expect(beta, kExact, "KdaGateAndBeta beta " + s.Name());

    auto g_ref = Poisoned({di, s.tokens, 1, 1}), beta_ref = Poisoned({s.heads, s.tokens, 1, 1});
    gpu_->KdaGate(f.gpu, bias.gpu, a.gpu, s.head_dim, g_ref.gpu);
    gpu_->Sigmoid(logits.gpu, beta_ref.gpu);
    EXPECT_EQ(GpuBytes(g.gpu), GpuBytes(g_ref.gpu)) << s.Name();
    EXPECT_EQ(GpuBytes(beta.gpu), GpuBytes(beta_ref.gpu)) << s.Name();

    // In place, as the model calls it.
    const Tensor g_in_place = GpuCopy(f.gpu), beta_in_place = GpuCopy(logits.gpu);
    gpu_->KdaGateAndBeta(g_in_place, bias.gpu, a.gpu, s.head_dim, g_in_place, beta_in_place, beta_in_place);
    EXPECT_EQ(GpuBytes(g_in_place), GpuBytes(g_ref.gpu)) << "in place " << s.Name();
    EXPECT_EQ(GpuBytes(beta_in_place), GpuBytes(beta_ref.gpu)) << "in place " << s.Name();
  }
}

// Per-head rows as the model norms them (a warp per row of 128), rows of 48 (12 float4s), a
// norm weight shorter than the row (its tail is copied, then gated), a CTA per row (width 1024)
// and rows of 130 (not whole float4s: the separate ops themselves). y = x and y apart.
TEST_F(KdaFusedOps, GatedRmsNormMatchesSigmoidNormMul) {
  struct Case {
    int64_t width, d, rows;
    bool in_place;
  };
  for (const Case& c : {Case{128, 128, 32, true}, Case{128, 128, 96, true}, Case{128, 128, 32, false},
                        Case{48, 48, 15, true}, Case{128, 120, 7, false}, Case{1024, 1024, 3, false},
                        Case{130, 130, 6, true}}) {
    const std::string what = "width " + std::to_string(c.width) + " d " + std::to_string(c.d) + " rows " +
                             std::to_string(c.rows) + (c.in_place ? " y = x" : "");
    const Shape ne = {c.width, c.rows, 1, 1};
    const std::vector<float> x0 = Random(c.width * c.rows, -4, 4), gate0 = Random(c.width * c.rows, -6, 6);
    auto w = F32({c.d, 1, 1, 1}, Random(c.d, 0.5f, 1.5f));
    auto x = F32(ne, x0), gate = F32(ne, gate0);  // gate: consumed
    auto y = c.in_place ? x : Poisoned(ne);
    gpu_->GatedRmsNorm(x.gpu, w.gpu, 1e-5f, gate.gpu, y.gpu);
    cpu_->GatedRmsNorm(x.cpu, w.cpu, 1e-5f, gate.cpu, y.cpu);
    Expect(y, kExact, "GatedRmsNorm " + what);

    auto x_ref = F32(ne, x0), gate_ref = F32(ne, gate0);
    auto y_ref = c.in_place ? x_ref : Poisoned(ne);
    gpu_->Sigmoid(gate_ref.gpu, gate_ref.gpu);
    gpu_->RmsNorm(x_ref.gpu, w.gpu, 1e-5f, y_ref.gpu);
    gpu_->Mul(y_ref.gpu, gate_ref.gpu, y_ref.gpu);
    EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_ref.gpu)) << what;
  }
}

// ShortConvSilu's one-pass form (sequences of up to 8 new tokens, 4 taps) against the conv and
// tail kernels, bitwise, for the outputs and every carried tail, and against the CPU. Cases: the
// model's stacked decode conv (q, k, v of 32 x 128 channels, `which` 0), one and three
// sequences; a mixed batch (1, 3 and 8 tokens in one pass, 20 tokens through the two kernels);
// 40 decode sequences (past one launch's 32); an odd channel count in part 2 of the state; and
// 3 taps (the two kernels only, on both sides).
TEST_F(KdaFusedOps, ShortConvOnePassMatchesConvThenTail) {
  struct Case {
    int64_t channels, taps;
    int which;
    std::vector<int64_t> lengths;
  };
  const std::vector<Case> cases = {{3 * 4096, 4, 0, {1}},       {3 * 4096, 4, 0, {1, 1, 1}},
                                   {4096, 4, 1, {1, 3, 20, 8}}, {384, 4, 0, std::vector<int64_t>(40, 1)},
                                   {333, 4, 2, {2, 1}},         {333, 3, 1, {1, 5}}};
  for (const Case& c : cases) {
    std::vector<SeqSlice> seqs;
    int64_t n = 0;
    for (int64_t length : c.lengths) {
      seqs.push_back({n, length});
      n += length;
    }
    const std::string what = "channels " + std::to_string(c.channels) + " taps " + std::to_string(c.taps) +
                             " sequences " + std::to_string(seqs.size()) + " tokens " + std::to_string(n);
    auto x = F32({c.channels, n, 1, 1}, Random(c.channels * n, -3, 3));
    auto w = F32({c.taps, c.channels, 1, 1}, Random(c.taps * c.channels));
    // Per sequence: the tail state, a copy for the split kernels, and the states to hand over.
    std::vector<Pair> tails;
    std::vector<Tensor> split_tails;
    std::vector<KdaStateView> cpu_states, gpu_states, split_states;
    for (size_t s = 0; s < seqs.size(); ++s) {
      tails.push_back(F32({c.taps - 1, c.channels, 3, 1}, Random((c.taps - 1) * c.channels * 3, -3, 3)));
      split_tails.push_back(GpuCopy(tails.back().gpu));
      cpu_states.push_back({Tensor(), tails.back().cpu});
      gpu_states.push_back({Tensor(), tails.back().gpu});
      split_states.push_back({Tensor(), split_tails.back()});
    }
    auto y = Poisoned({c.channels, n, 1, 1});
    auto y_split = Poisoned({c.channels, n, 1, 1});
    gpu_->ShortConvSilu(x.gpu, w.gpu, c.which, seqs, gpu_states, y.gpu);
    cpu_->ShortConvSilu(x.cpu, w.cpu, c.which, seqs, cpu_states, y.cpu);
    {
      ScopedEnv split("LATENTSERVE_SHORT_CONV", "split");
      gpu_->ShortConvSilu(x.gpu, w.gpu, c.which, seqs, split_states, y_split.gpu);
    }
    EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_split.gpu)) << what;
    Expect(y, kExact, "ShortConvSilu " + what);
    for (size_t s = 0; s < seqs.size(); ++s) {
      EXPECT_EQ(GpuBytes(tails[s].gpu), GpuBytes(split_tails[s])) << what << " tail " << s;
      Expect(tails[s], 0, "ShortConvSilu tail " + what);  // values moved, not computed
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
