// K-quant weights (q4_K, q5_K, q6_K) on the CUDA backend against the CPU reference, in the
// manner of test_backend_ops.cc: every op that reads weights (MatMul at decode and prefill
// column counts, HeadMatMul, GetRows, MoeExperts decode and prefill, same and mixed types) and
// FillRandom. Paths on f32 / f16 activations are compared with the dequantised f32 weights on
// the CPU; paths that round activations to q8_K (the tall GEMV, the decode experts) with the
// CPU's own K-quant integer path, which rounds them the same way.
// Runs only where a GPU is visible (ctest label "gpu").
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::kExact;
using op_test::kHalfActivations;
constexpr DType kKQuants[] = {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

class BackendKQuantOps : public op_test::BackendPairFixture {
 protected:
  BackendKQuantOps() : BackendPairFixture(77) {}
  // The same weights dequantised to f32 on the CPU.
  Tensor Reference(const Pair& w) { return Dequantised(w); }
};

// m <= 8: the row-pipelined GEMV on the stored super-blocks (f32 activations: 333 rows are few
// rows per warp; q6_K rows of 210 / 1890 / 4200 bytes are staged as 16-byte spans); m > 8: rows
// dequantised to f16 for cuBLAS.
TEST_F(BackendKQuantOps, MatMulAllColumnCounts) {
  for (DType type : kKQuants) {
    for (auto [m, k] : {std::pair<int64_t, int64_t>{1, 256}, {3, 256}, {8, 256}, {9, 256}, {77, 256}, {1, 2304},
                        {5, 2304}, {8, 2304}, {40, 2304}, {1, 5120}, {2, 5120}}) {
      const int64_t n = 333;
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m));
      auto y = Poisoned({n, m, 1, 1});
      cpu_->MatMul(Reference(w), x.cpu, y.cpu);
      gpu_->MatMul(w.gpu, x.gpu, y.gpu);
      Expect(y, m > 8 ? kHalfActivations : kExact,
             std::string("MatMul ") + DTypeName(type) + " m=" + std::to_string(m) + " k=" + std::to_string(k));
    }
  }
}

// Tall matrices (the lm_head's shape class: at least 8 rows per warp) take the pipelined GEMV on
// q8_K-rounded activations: compared with the CPU's integer path, which rounds them the same
// way and so agrees to the rounding of the f32 sums. k 768: q6_K rows of 630 bytes, staged
// from every 2-byte alignment.
TEST_F(BackendKQuantOps, MatMulTallRowsMatchCpuIntegerPath) {
  for (DType type : kKQuants) {
    for (auto [k, n] : {std::pair<int64_t, int64_t>{256, 300000}, {768, 100000}}) {
      for (int64_t m : {1, 3}) {
        auto w = Make(type, {k, n, 1, 1}, Random(k * n));
        auto x = F32({k, m, 1, 1}, Random(k * m, -3, 3));
        auto y = Poisoned({n, m, 1, 1});
        cpu_->MatMul(w.cpu, x.cpu, y.cpu);
        gpu_->MatMul(w.gpu, x.gpu, y.gpu);
        Expect(y, kExact,
               std::string("tall MatMul ") + DTypeName(type) + " k=" + std::to_string(k) +
                   " m=" + std::to_string(m));
      }
    }
  }
}

// q5_0 / q5_1: dequantised to f16 for cuBLAS at every column count.
TEST_F(BackendKQuantOps, Q5FallbackTypesMatMul) {
  for (DType type : {DType::kQ5_0, DType::kQ5_1}) {
    for (int64_t m : {1, 8, 40}) {
      const int64_t k = 128, n = 333;
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m));
      auto y = Poisoned({n, m, 1, 1});
      cpu_->MatMul(Reference(w), x.cpu, y.cpu);
      gpu_->MatMul(w.gpu, x.gpu, y.gpu);
      Expect(y, kHalfActivations, std::string("MatMul ") + DTypeName(type) + " m=" + std::to_string(m));
    }
  }
}

TEST_F(BackendKQuantOps, HeadMatMul) {
  for (DType type : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kQ5_0, DType::kQ5_1}) {
    const int64_t k = 256, n = 96, heads = 5, kx = 512, tokens = 7;
    auto w = Make(type, {k, n, heads, 1}, Random(k * n * heads));
    auto x = F32({kx, heads, tokens, 1}, Random(kx * heads * tokens));
    auto y = Poisoned({n, heads, tokens, 1});
    cpu_->HeadMatMul(Reference(w), x.cpu, 128, y.cpu);
    gpu_->HeadMatMul(w.gpu, x.gpu, 128, y.gpu);
    Expect(y, kExact, std::string("HeadMatMul ") + DTypeName(type));
  }
}

TEST_F(BackendKQuantOps, GetRowsAndFillRandom) {
  for (DType type : kKQuants) {
    auto table = Make(type, {512, 50, 1, 1}, Random(512 * 50, -2, 2));
    auto ids = Ints({5, 1, 1, 1}, {3, 49, 0, 3, 17});
    auto rows = Poisoned({512, 5, 1, 1});
    cpu_->GetRows(table.cpu, ids.cpu, rows.cpu);
    gpu_->GetRows(table.gpu, ids.gpu, rows.gpu);
    Expect(rows, kExact, std::string("GetRows ") + DTypeName(type));  // nvcc may fuse d * sc * q - dmin * m
    Tensor c = *cpu_->Alloc(type, {256, 7, 2, 1}), g = *gpu_->Alloc(type, {256, 7, 2, 1});
    cpu_->FillRandom(c, 99, 0.5f, 0.25f);
    gpu_->FillRandom(g, 99, 0.5f, 0.25f);
    std::vector<uint8_t> a(c.nbytes()), b(g.nbytes());
    cpu_->Download(c, a.data(), a.size());
    gpu_->Download(g, b.data(), b.size());
    EXPECT_EQ(a, b) << "FillRandom " << DTypeName(type);
  }
}

// Up to 64 slots (1 and 2 tokens x top-6): the decode kernels, whose K-quant rows meet
// q8_K-rounded activations, for gate/up and down of the same or different types (the Q4_K_M
// pairing q4_K / q6_K among them): compared with the CPU's integer path (SiLU's exp may differ by
// ulps and move one rounding step of the down projection's input, hence 1e-6). hidden 768 / ffn
// 512 stage q6_K rows of 630 / 420 bytes as spans. 13 tokens (78 slots): the per-expert chain with
// f16 GEMMs (K-quants have no grouped kernel), against the dequantised weights.
TEST_F(BackendKQuantOps, MoeExpertsSameAndMixedTypes) {
  const std::pair<DType, DType> cases[] = {{DType::kQ4_K, DType::kQ4_K},
                                           {DType::kQ5_K, DType::kQ5_K},
                                           {DType::kQ6_K, DType::kQ6_K},
                                           {DType::kQ4_K, DType::kQ6_K},
                                           {DType::kQ6_K, DType::kQ5_K}};
  const int64_t experts = 12, top_k = 6;
  for (auto [hidden, ffn] : {std::pair<int64_t, int64_t>{256, 512}, {768, 512}}) {
    for (const auto& [gate_up, down_type] : cases) {
      for (int64_t tokens : {1, 2, 13}) {
        auto logits = F32({experts, tokens, 1, 1}, Random(experts * tokens, -3, 3));
        auto bias = F32({experts, 1, 1, 1}, Random(experts, -0.2f, 0.2f));
        Pair ids{*cpu_->Alloc(DType::kI32, {top_k, tokens, 1, 1}),
                 *gpu_->Alloc(DType::kI32, {top_k, tokens, 1, 1})};
        auto weights = Poisoned({top_k, tokens, 1, 1});
        cpu_->MoeRoute(logits.cpu, bias.cpu, top_k, true, 2.446f, ids.cpu, weights.cpu);
        gpu_->MoeRoute(logits.gpu, bias.gpu, top_k, true, 2.446f, ids.gpu, weights.gpu);
        auto gate = Make(gate_up, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
        auto up = Make(gate_up, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
        auto down = Make(down_type, {ffn, hidden, experts, 1}, Random(ffn * hidden * experts));
        const bool decode = tokens * top_k <= 64;
        const MoeWeights cw = decode ? MoeWeights{gate.cpu, up.cpu, down.cpu}
                                     : MoeWeights{Reference(gate), Reference(up), Reference(down)};
        const MoeWeights gw{gate.gpu, up.gpu, down.gpu};
        auto x = F32({hidden, tokens, 1, 1}, Random(hidden * tokens));
        auto y = Poisoned({hidden, tokens, 1, 1});
        cpu_->MoeExperts(x.cpu, cw, ids.cpu, weights.cpu, y.cpu);
        gpu_->MoeExperts(x.gpu, gw, ids.gpu, weights.gpu, y.gpu);
        Expect(y, decode ? 1e-6 : kHalfActivations,
               std::string("MoeExperts ") + DTypeName(gate_up) + "/" + DTypeName(down_type) +
                   " hidden=" + std::to_string(hidden) + " tokens=" + std::to_string(tokens));
      }
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
