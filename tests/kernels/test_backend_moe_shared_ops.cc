// Backend::MoeExpertsWithShared on the CUDA backend against the CPU backend's (the separate
// ops, bitwise: test_cpu_moe_shared_ops.cc). At decode, with the shared expert of the routed
// experts' types and ffn, it runs as one more slot per token of the decode expert kernels
// (cuda_moe_decode.cu): compared with the CPU's integer path where the kernels round activations
// to 8-bit blocks (q4_0 / q8_0 / K-quant rows of whole blocks), with f32 products otherwise.
// Elsewhere the CUDA backend takes the base class's default: bitwise the separate ops on the
// GPU. Runs only where a GPU is visible (ctest label "gpu").
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::kExact;
using op_test::kHalfActivations;

class MoeSharedOps : public op_test::BackendPairFixture {
 protected:
  MoeSharedOps() : BackendPairFixture(2718) {}

  struct Case {
    DType gate_up, down;                        // routed experts
    DType shared_gate, shared_up, shared_down;  // stacked when gate and up have one type
    int64_t hidden, ffn, shared_ffn, tokens;
  };
  struct Layer {
    Pair x, ids, weights, gate, up, down;
    Pair shared_gate_up, shared_gate, shared_up, shared_down;  // gate_up undefined when not stacked
  };

  Layer Build(const Case& c) {
    const int64_t experts = 40, top_k = 6, h = c.hidden, f = c.ffn, fs = c.shared_ffn, n = c.tokens;
    Layer l;
    l.x = F32({h, n, 1, 1}, Random(h * n, -2, 2));
    l.ids = Ints({top_k, n, 1, 1}, op_test::RandomRouting(experts, top_k, n, rng_));
    l.weights = F32({top_k, n, 1, 1}, Random(top_k * n, 0.1f, 1.0f));
    l.gate = Make(c.gate_up, {h, f, experts, 1}, Random(h * f * experts));
    l.up = Make(c.gate_up, {h, f, experts, 1}, Random(h * f * experts));
    l.down = Make(c.down, {f, h, experts, 1}, Random(f * h * experts));
    if (c.shared_gate == c.shared_up) {  // as model/weights.h loads it: parts are views of one tensor
      l.shared_gate_up = Make(c.shared_gate, {h, 2 * fs, 1, 1}, Random(h * 2 * fs));
      l.shared_gate = {l.shared_gate_up.cpu.RowSlice(0, fs), l.shared_gate_up.gpu.RowSlice(0, fs)};
      l.shared_up = {l.shared_gate_up.cpu.RowSlice(fs, fs), l.shared_gate_up.gpu.RowSlice(fs, fs)};
    } else {
      l.shared_gate = Make(c.shared_gate, {h, fs, 1, 1}, Random(h * fs));
      l.shared_up = Make(c.shared_up, {h, fs, 1, 1}, Random(h * fs));
    }
    l.shared_down = Make(c.shared_down, {fs, h, 1, 1}, Random(fs * h));
    return l;
  }
  static MoeWeights GpuExperts(const Layer& l) { return {l.gate.gpu, l.up.gpu, l.down.gpu}; }
  static SharedExpert GpuShared(const Layer& l) {
    return {l.shared_gate.gpu, l.shared_up.gpu, l.shared_down.gpu, l.shared_gate_up.gpu};
  }
  // The CPU's weights: stored (its integer path for q4_0 / q8_0 / K-quants, or f32 / f16), or
  // dequantised to f32 (the reference for GPU products that keep f32 activations).
  Tensor CpuWeight(const Pair& w, bool dequantise) {
    return dequantise && w.cpu.dtype != DType::kF32 && w.cpu.dtype != DType::kF16 ? Dequantised(w) : w.cpu;
  }
  MoeWeights CpuExperts(const Layer& l, bool dequantise) {
    return {CpuWeight(l.gate, dequantise), CpuWeight(l.up, dequantise), CpuWeight(l.down, dequantise)};
  }
  SharedExpert CpuShared(const Layer& l, bool dequantise) {
    if (!l.shared_gate_up.cpu.defined()) {
      return {CpuWeight(l.shared_gate, dequantise), CpuWeight(l.shared_up, dequantise),
              CpuWeight(l.shared_down, dequantise), Tensor()};
    }
    const Tensor both = CpuWeight(l.shared_gate_up, dequantise);
    const int64_t fs = both.ne[1] / 2;
    return {both.RowSlice(0, fs), both.RowSlice(fs, fs), CpuWeight(l.shared_down, dequantise), both};
  }
  static std::string Name(const Case& c) {
    return std::string(DTypeName(c.gate_up)) + "/" + DTypeName(c.down) + " shared " + DTypeName(c.shared_gate) +
           "/" + DTypeName(c.shared_up) + "/" + DTypeName(c.shared_down) + " hidden=" + std::to_string(c.hidden) +
           " ffn=" + std::to_string(c.ffn) + " Fs=" + std::to_string(c.shared_ffn) +
           " tokens=" + std::to_string(c.tokens);
  }
};

// q4_0 / q8_0 at the model's proportions: the pipelined kernels round x (or read its rounded
// copy) and the down input to 8-bit blocks, the shared slot too, as the CPU's integer path does
// (SiLU's exp differs by ulps, which can move one rounding step of the down input: 1e-6). The
// rounded copy changes nothing: bitwise what the kernels round per CTA.
TEST_F(MoeSharedOps, SharedSlotMatchesCpuIntegerPath) {
  for (DType type : {DType::kQ4_0, DType::kQ8_0}) {
    for (int64_t tokens : {1, 5}) {
      const Case c{type, type, type, type, type, 512, 256, 256, tokens};
      const Layer l = Build(c);
      auto rounded = gpu_->RoundActivations(l.x.gpu);
      ASSERT_TRUE(rounded.ok() && rounded->defined()) << Name(c);
      auto y = Poisoned({c.hidden, tokens, 1, 1}), y_self = Poisoned({c.hidden, tokens, 1, 1});
      ASSERT_TRUE(gpu_->MoeExpertsWithShared(l.x.gpu, *rounded, GpuExperts(l), l.ids.gpu, l.weights.gpu,
                                             GpuShared(l), y.gpu).ok());
      ASSERT_TRUE(gpu_->MoeExpertsWithShared(l.x.gpu, Tensor(), GpuExperts(l), l.ids.gpu, l.weights.gpu,
                                             GpuShared(l), y_self.gpu).ok());
      EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_self.gpu)) << "rounded copy vs rounding per CTA: " << Name(c);
      ASSERT_TRUE(cpu_->MoeExpertsWithShared(l.x.cpu, Tensor(), CpuExperts(l, false), l.ids.cpu, l.weights.cpu,
                                             CpuShared(l, false), y.cpu).ok());
      Expect(y, 1e-6, "shared slot: " + Name(c));
    }
  }
}

// The shared slot in the other kernels: f32 rows (the plain warp-per-row kernels), f16 rows
// (pipelined, f32 activations), q4_0 at hidden 96 / ffn 64 (plain kernels, f32 activations:
// against the dequantised weights), q4_K gate/up with q6_K down (pipelined, q8_K rounding,
// q6_K rows staged as 16-byte spans: the CPU's K-quant integer path).
TEST_F(MoeSharedOps, SharedSlotEveryKernel) {
  struct Row {
    Case c;
    bool dequantise;
    double nmse;
  };
  for (int64_t tokens : {1, 5}) {
    const Row rows[] = {
        {{DType::kF32, DType::kF32, DType::kF32, DType::kF32, DType::kF32, 96, 64, 64, tokens}, false, kExact},
        {{DType::kF16, DType::kF16, DType::kF16, DType::kF16, DType::kF16, 512, 256, 256, tokens}, false, kExact},
        {{DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, 96, 64, 64, tokens}, true, kExact},
        {{DType::kQ4_K, DType::kQ6_K, DType::kQ4_K, DType::kQ4_K, DType::kQ6_K, 512, 256, 256, tokens}, false, 1e-6},
    };
    for (const Row& row : rows) {
      const Layer l = Build(row.c);
      auto y = Poisoned({row.c.hidden, tokens, 1, 1});
      ASSERT_TRUE(gpu_->MoeExpertsWithShared(l.x.gpu, Tensor(), GpuExperts(l), l.ids.gpu, l.weights.gpu,
                                             GpuShared(l), y.gpu).ok());
      ASSERT_TRUE(cpu_->MoeExpertsWithShared(l.x.cpu, Tensor(), CpuExperts(l, row.dequantise), l.ids.cpu,
                                             l.weights.cpu, CpuShared(l, row.dequantise), y.cpu).ok());
      Expect(y, row.nmse, "shared slot: " + Name(row.c));
    }
  }
}

// Where the shared expert cannot be a slot (another ffn, other types, over 64 routed slots) the
// CUDA backend runs the separate ops: bitwise those ops on the GPU, with and without a rounded
// copy. Against the CPU: routed decode experts on the integer path and shared GEMVs of few rows
// on f32 activations (quantised shared weights dequantised on the CPU; without a rounded copy,
// which only the shared gate/up GEMV would read); 13 tokens take f16 GEMMs.
TEST_F(MoeSharedOps, FallbackIsTheSeparateOps) {
  struct Row {
    Case c;
    double nmse;
  };
  const Row rows[] = {
      {{DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, 512, 256, 128, 1}, 1e-6},
      {{DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, 512, 256, 128, 5}, 1e-6},
      {{DType::kQ4_0, DType::kQ4_0, DType::kQ8_0, DType::kQ8_0, DType::kQ8_0, 512, 256, 256, 1}, 1e-6},
      {{DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ8_0, DType::kQ4_0, 512, 256, 256, 5}, 1e-6},
      {{DType::kF32, DType::kF32, DType::kF32, DType::kF32, DType::kF32, 96, 64, 32, 5}, kExact},
      {{DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, DType::kQ4_0, 512, 256, 256, 13}, kHalfActivations},
  };
  for (const Row& row : rows) {
    const Case& c = row.c;
    const Layer l = Build(c);
    auto rounded = gpu_->RoundActivations(l.x.gpu);
    ASSERT_TRUE(rounded.ok()) << Name(c);
    for (const Tensor& x_rounded : {Tensor(), *rounded}) {
      const std::string what = Name(c) + (x_rounded.defined() ? " rounded x" : "");
      auto y = Poisoned({c.hidden, c.tokens, 1, 1}), y_ops = Poisoned({c.hidden, c.tokens, 1, 1});
      ASSERT_TRUE(gpu_->MoeExpertsWithShared(l.x.gpu, x_rounded, GpuExperts(l), l.ids.gpu, l.weights.gpu,
                                             GpuShared(l), y.gpu).ok());
      op_test::MoeThenSharedOps(*gpu_, l.x.gpu, x_rounded, GpuExperts(l), l.ids.gpu, l.weights.gpu, GpuShared(l),
                                y_ops.gpu);
      EXPECT_EQ(GpuBytes(y.gpu), GpuBytes(y_ops.gpu)) << what;
      if (x_rounded.defined()) continue;
      const bool decode = c.tokens * 6 <= 64;
      ASSERT_TRUE(cpu_->MoeExpertsWithShared(l.x.cpu, Tensor(), CpuExperts(l, !decode), l.ids.cpu, l.weights.cpu,
                                             CpuShared(l, true), y.cpu).ok());
      Expect(y, row.nmse, "fallback: " + what);
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
