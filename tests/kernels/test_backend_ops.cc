// Every op of a second backend (CUDA) against the CPU reference, in the style of llama.cpp's
// test-backend-ops: random inputs, awkward shapes (non-multiples of tile sizes, single
// tokens, long contexts), normalised MSE per op and dtype. Runs only where a GPU is visible
// (ctest label "gpu"; CI has no GPU and skips the label).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_mla_decode_stats.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::ScopedEnv;

using op_test::kExact;
using op_test::kHalfActivations;
using op_test::Nmse;
// TF32 tensor-core products (10-bit mantissas), f32 accumulation and state: the chunked KDA
// prefill lands near 1e-7 (measured in a host emulation of its kernels).
constexpr double kTf32 = 1e-5;

class BackendOps : public op_test::BackendPairFixture {
 protected:
  BackendOps() : BackendPairFixture(42) {}
  // The CPU reference for a weight: for q8_0 / q4_0 the same values dequantised to f32. The
  // CPU backend multiplies quantised weights on 8-bit activation blocks (as ggml does); the
  // CUDA kernels keep f32 activations (most GEMVs) or f16 (GEMM), so the exact reference for
  // them is the f32 matmul over the dequantised weights.
  Tensor CpuReferenceWeights(const Pair& w) {
    return w.cpu.dtype == DType::kQ8_0 || w.cpu.dtype == DType::kQ4_0 ? Dequantised(w) : w.cpu;
  }
};

TEST_F(BackendOps, MatMulAllTypesAndColumnCounts) {
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    // k 320: the plain warp GEMV; 2304 and 5120: the pipelined row GEMV (row_pipeline.cuh),
    // except f32 / 16-bit rows at k 5120 x 8 columns, whose activations do not fit.
    for (auto [m, k] : {std::pair<int64_t, int64_t>{1, 320}, {3, 320}, {8, 320}, {9, 320}, {77, 320}, {1, 2304},
                        {5, 2304}, {8, 2304}, {1, 5120}, {2, 5120}}) {
      const int64_t n = 333;
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m));
      auto y = Poisoned({n, m, 1, 1});
      cpu_->MatMul(CpuReferenceWeights(w), x.cpu, y.cpu);
      gpu_->MatMul(w.gpu, x.gpu, y.gpu);
      const bool half = m > 8 && type != DType::kF32;
      Expect(y, half ? kHalfActivations : 1e-9,
             std::string("MatMul ") + DTypeName(type) + " m=" + std::to_string(m) + " k=" + std::to_string(k));
    }
  }
}

// Tall q4_0 / q8_0 matrices (the lm_head's shape class: far more rows than warps) take the
// pipelined GEMV with activations rounded to 8-bit blocks as the CPU backend rounds them:
// compared with the CPU's own integer path, which must agree to rounding of the f32 sums.
TEST_F(BackendOps, MatMulTallQuantisedRowsMatchCpuIntegerPath) {
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    for (int64_t m : {1, 3}) {
      const int64_t k = 256, n = 300000;
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m, -3, 3));
      auto y = Poisoned({n, m, 1, 1});
      cpu_->MatMul(w.cpu, x.cpu, y.cpu);
      gpu_->MatMul(w.gpu, x.gpu, y.gpu);
      Expect(y, 1e-9, std::string("tall MatMul ") + DTypeName(type) + " m=" + std::to_string(m));
    }
  }
}

// A batched decode step's widths (9..64 columns) on q4_0 / q8_0 rows take the f16 tensor-core
// product (cuda_matmul_mma.cu): weights dequantised in registers, activations rounded to f16, so
// the exact reference is the f32 product over the dequantised weights (as for cuBLAS's f16
// GEMMs). Shapes cover a partial 8-column tile (9, 17, 33), each kernel width (2, 4 and 8 tiles
// of 8 columns), rows that are not a multiple of the CTA's 128 (333), reductions split across
// CTAs (few rows) and not (20,000 rows), and a reduction too long for one CTA's shared memory
// (k 9,216).
TEST_F(BackendOps, MatMulBatchedDecodeWidthsMatchDequantisedProduct) {
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{9, 256, 333}, {16, 2304, 333}, {17, 4096, 333},
                           {32, 2304, 2304}, {33, 1024, 4096}, {48, 2304, 333}, {64, 2304, 333},
                           {32, 256, 20000}, {64, 9216, 200}}) {
      auto w = Make(type, {k, n, 1, 1}, Random(k * n));
      auto x = F32({k, m, 1, 1}, Random(k * m, -3, 3));
      auto y = Poisoned({n, m, 1, 1});
      cpu_->MatMul(CpuReferenceWeights(w), x.cpu, y.cpu);
      gpu_->MatMul(w.gpu, x.gpu, y.gpu);
      const std::string what = std::string("batched MatMul ") + DTypeName(type) + " m=" + std::to_string(m) +
                               " k=" + std::to_string(k) + " n=" + std::to_string(n);
      Expect(y, kHalfActivations, what);
      // x rounded once beforehand (RoundActivations, shared by a step's projections of one
      // input) gives the same bits.
      absl::StatusOr<Tensor> rounded = gpu_->RoundActivations(x.gpu);
      ASSERT_TRUE(rounded.ok()) << rounded.status();
      EXPECT_TRUE(rounded->defined()) << what;
      auto again = Poisoned({n, m, 1, 1});
      gpu_->MatMul(w.gpu, x.gpu, *rounded, again.gpu);
      EXPECT_EQ(Read(*gpu_, again.gpu), Read(*gpu_, y.gpu)) << what << ", rounded beforehand";
    }
  }
}

// Several products of one x (a layer's projections) in one launch (MatMuls): parts of different
// row counts, with and without x rounded beforehand, each against the f32 product over the
// dequantised weights; and parts of mixed types, which take one product each.
TEST_F(BackendOps, MatMulsOfOneInputMatchDequantisedProduct) {
  for (int64_t m : {9, 32, 64}) {
    for (bool pre_rounded : {false, true}) {
      for (bool mixed : {false, true}) {
        const int64_t k = 2304;
        const std::vector<int64_t> rows = {4096, 333, 128};
        std::vector<Pair> w, y;
        std::vector<Tensor> gw, gy;
        for (size_t i = 0; i < rows.size(); ++i) {
          const DType type = mixed && i == 1 ? DType::kQ8_0 : DType::kQ4_0;
          w.push_back(Make(type, {k, rows[i], 1, 1}, Random(k * rows[i])));
          y.push_back(Poisoned({rows[i], m, 1, 1}));
          gw.push_back(w.back().gpu);
          gy.push_back(y.back().gpu);
        }
        auto x = F32({k, m, 1, 1}, Random(k * m, -3, 3));
        Tensor rounded;
        if (pre_rounded) {
          absl::StatusOr<Tensor> r = gpu_->RoundActivations(x.gpu);
          ASSERT_TRUE(r.ok()) << r.status();
          rounded = *r;
        }
        gpu_->MatMuls(gw, x.gpu, rounded, gy);
        for (size_t i = 0; i < rows.size(); ++i) {
          cpu_->MatMul(CpuReferenceWeights(w[i]), x.cpu, y[i].cpu);
          Expect(y[i], kHalfActivations, "MatMuls part " + std::to_string(i) + " m=" + std::to_string(m) +
                                 (pre_rounded ? " rounded" : "") + (mixed ? " mixed" : ""));
        }
      }
    }
  }
}

TEST_F(BackendOps, FillRandomIsIdenticalOnBothBackends) {
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    Tensor c = *cpu_->Alloc(type, {96, 7, 2, 1}), g = *gpu_->Alloc(type, {96, 7, 2, 1});
    cpu_->FillRandom(c, 99, 0.5f, 0.25f);
    gpu_->FillRandom(g, 99, 0.5f, 0.25f);
    std::vector<uint8_t> a(c.nbytes()), b(g.nbytes());
    cpu_->Download(c, a.data(), a.size());
    gpu_->Download(g, b.data(), b.size());
    EXPECT_EQ(a, b) << DTypeName(type);
  }
}

TEST_F(BackendOps, HeadMatMul) {
  for (DType type : {DType::kF32, DType::kQ8_0}) {
    const int64_t k = 64, n = 96, heads = 5, kx = 96, tokens = 7;
    auto w = Make(type, {k, n, heads, 1}, Random(k * n * heads));
    auto x = F32({kx, heads, tokens, 1}, Random(kx * heads * tokens));
    auto y = Poisoned({n, heads, tokens, 1});
    cpu_->HeadMatMul(CpuReferenceWeights(w), x.cpu, 32, y.cpu);
    gpu_->HeadMatMul(w.gpu, x.gpu, 32, y.gpu);
    Expect(y, kExact, std::string("HeadMatMul ") + DTypeName(type));
  }
}

TEST_F(BackendOps, ElementwiseAndNorms) {
  const int64_t width = 200, rows = 37;
  auto a = F32({width, rows, 1, 1}, Random(width * rows, -4, 4));
  auto b = F32({width, rows, 1, 1}, Random(width * rows, -4, 4));
  auto w = F32({150, 1, 1, 1}, Random(150));
  auto out = Poisoned({width, rows, 1, 1});
  cpu_->RmsNorm(a.cpu, w.cpu, 1e-5f, out.cpu);
  gpu_->RmsNorm(a.gpu, w.gpu, 1e-5f, out.gpu);
  Expect(out, kExact, "RmsNorm partial row");
  cpu_->L2Norm(a.cpu, 1e-5f, out.cpu);
  gpu_->L2Norm(a.gpu, 1e-5f, out.gpu);
  Expect(out, kExact, "L2Norm");
  cpu_->Add(a.cpu, b.cpu, out.cpu);
  gpu_->Add(a.gpu, b.gpu, out.gpu);
  Expect(out, kExact, "Add");
  cpu_->Mul(a.cpu, b.cpu, out.cpu);
  gpu_->Mul(a.gpu, b.gpu, out.gpu);
  Expect(out, kExact, "Mul");
  cpu_->Sigmoid(a.cpu, out.cpu);
  gpu_->Sigmoid(a.gpu, out.gpu);
  Expect(out, kExact, "Sigmoid");
  cpu_->SwiGlu(a.cpu, b.cpu, out.cpu);
  gpu_->SwiGlu(a.gpu, b.gpu, out.gpu);
  Expect(out, kExact, "SwiGlu");
  auto cols = Poisoned({width, rows, 1, 1});
  cpu_->Copy(a.cpu, cols.cpu);
  gpu_->Copy(a.gpu, cols.gpu);
  cpu_->CopyColumns(b.cpu, 10, cols.cpu, 50, 33);
  gpu_->CopyColumns(b.gpu, 10, cols.gpu, 50, 33);
  Expect(cols, 0, "Copy + CopyColumns");
  auto table = Make(DType::kQ4_0, {64, 50, 1, 1}, Random(64 * 50));
  auto ids = Ints({5, 1, 1, 1}, {3, 49, 0, 3, 17});
  auto rows_out = Poisoned({64, 5, 1, 1});
  cpu_->GetRows(table.cpu, ids.cpu, rows_out.cpu);
  gpu_->GetRows(table.gpu, ids.gpu, rows_out.gpu);
  Expect(rows_out, 0, "GetRows q4_0");
}

// The vectorised RMSNorm paths: a warp per row (per-head norms), a CTA per row (the model
// width, the MLA latent with its rotary tail kept), and the scalar fallback.
TEST_F(BackendOps, RmsNormRowShapes) {
  struct Shape { int64_t width, d, rows; };
  for (Shape s : {Shape{128, 128, 37}, Shape{512, 508, 3}, Shape{576, 512, 5}, Shape{2304, 2304, 1},
                  Shape{2304, 2304, 9}, Shape{4096, 4096, 2}, Shape{5000, 5000, 2}}) {
    auto a = F32({s.width, s.rows, 1, 1}, Random(s.width * s.rows, -4, 4));
    auto w = F32({s.d, 1, 1, 1}, Random(s.d));
    auto out = Poisoned({s.width, s.rows, 1, 1});
    cpu_->RmsNorm(a.cpu, w.cpu, 1e-5f, out.cpu);
    gpu_->RmsNorm(a.gpu, w.gpu, 1e-5f, out.gpu);
    Expect(out, kExact, "RmsNorm width " + std::to_string(s.width) + " d " + std::to_string(s.d));
  }
}

TEST_F(BackendOps, KdaGateConvAndDeltaRule) {
  for (int64_t dk : {16, 48, 128}) {  // 48 takes the generic shared-memory kernel
    const int64_t heads = 3, di = heads * dk;
    // Two sequences of different lengths in one batch, with non-zero carried state.
    std::vector<SeqSlice> seqs = {{0, 1}, {1, 45}};
    const int64_t n = 46;
    auto f = F32({di, n, 1, 1}, Random(di * n, -3, 3));
    auto bias = F32({di, 1, 1, 1}, Random(di));
    auto a = F32({heads, 1, 1, 1}, Random(heads, -2, -0.1f));
    auto g = Poisoned({di, n, 1, 1});
    cpu_->KdaGate(f.cpu, bias.cpu, a.cpu, dk, g.cpu);
    gpu_->KdaGate(f.gpu, bias.gpu, a.gpu, dk, g.gpu);
    Expect(g, kExact, "KdaGate dk=" + std::to_string(dk));

    std::vector<Pair> rec, conv;
    std::vector<KdaStateView> cpu_states, gpu_states;
    for (size_t s = 0; s < seqs.size(); ++s) {
      rec.push_back(F32({dk, dk, heads, 1}, Random(dk * dk * heads, -0.3f, 0.3f)));
      conv.push_back(F32({3, di, 3, 1}, Random(3 * di * 3)));
      cpu_states.push_back({rec.back().cpu, conv.back().cpu});
      gpu_states.push_back({rec.back().gpu, conv.back().gpu});
    }
    auto x = F32({di, n, 1, 1}, Random(di * n));
    auto taps = F32({4, di, 1, 1}, Random(4 * di));
    auto y = Poisoned({di, n, 1, 1});
    cpu_->ShortConvSilu(x.cpu, taps.cpu, 2, seqs, cpu_states, y.cpu);
    gpu_->ShortConvSilu(x.gpu, taps.gpu, 2, seqs, gpu_states, y.gpu);
    Expect(y, kExact, "ShortConvSilu");
    for (auto& c : conv) Expect(c, kExact, "ShortConvSilu tail");

    auto unit = [&](std::vector<float> v) {
      for (int64_t r = 0; r < n * heads; ++r) {
        double s = 0;
        for (int64_t i = 0; i < dk; ++i) s += double(v[r * dk + i]) * v[r * dk + i];
        for (int64_t i = 0; i < dk; ++i) v[r * dk + i] /= float(std::sqrt(s));
      }
      return v;
    };
    const Shape shape = {dk, heads, n, 1};
    auto q = F32(shape, unit(Random(dk * heads * n)));
    auto k = F32(shape, unit(Random(dk * heads * n)));
    auto v = F32(shape, Random(dk * heads * n));
    auto gg = F32(shape, Random(dk * heads * n, -1.5f, -0.01f));
    auto beta = F32({heads, n, 1, 1}, Random(heads * n, 0.05f, 0.95f));
    for (int64_t chunk : {0, 16}) {
      auto out = Poisoned(shape);
      cpu_->KdaAttention(q.cpu, k.cpu, v.cpu, gg.cpu, beta.cpu, seqs, cpu_states, chunk, out.cpu);
      gpu_->KdaAttention(q.gpu, k.gpu, v.gpu, gg.gpu, beta.gpu, seqs, gpu_states, chunk, out.gpu);
      // Head size 128 with chunk > 0 takes the chunked tensor-core kernels on the GPU.
      const double tolerance = chunk > 0 && dk == 128 ? kTf32 : kExact;
      Expect(out, tolerance, "KdaAttention dk=" + std::to_string(dk) + " chunk=" + std::to_string(chunk));
      for (auto& r : rec) Expect(r, tolerance, "KdaAttention state");
    }
  }
}

// KDA prefill in the chunked form (chunks of 64 on the GPU) against the CPU and against the
// GPU's own token recurrence: two sequences per batch (the one under test, then 37 tokens),
// non-zero carried state, head size 128 as in the model. Gates: a mild range (long memory, so
// the carried state matters across many chunks), a log-uniform one reaching -20 per token
// (e^{-G} over a chunk would overflow any factorisation without a reference point; a few
// channels of a few sub-chunks take the per-pair path), and uniform in [-20, -1] (almost
// every channel takes it). A sequence under 8 tokens takes the GPU recurrence even here
// (CudaBackend::kKdaChunkedMinTokens); the chunked kernels meet short chunks as the tails of
// 65, 200 and 4097 tokens.
class KdaPrefill : public BackendOps {
 protected:
  static std::string Scientific(double x) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.3e", x);
    return text;
  }
  struct Inputs {
    Pair q, k, v, g, beta;
    std::vector<SeqSlice> seqs;
    std::vector<std::vector<float>> initial_states;  // per sequence [Dk, Dk, H]
  };
  enum class Gates { kMild, kLogUniformTo20, kUniformTo20 };
  static std::string Name(Gates gates) {
    return gates == Gates::kMild ? "mild gates" : gates == Gates::kLogUniformTo20 ? "log-uniform gates to -20" : "gates in [-20, -1]";
  }
  Inputs MakeInputs(int64_t heads, std::vector<int64_t> lengths, Gates gates) {
    Inputs in;
    int64_t n = 0;
    for (int64_t length : lengths) {
      in.seqs.push_back({n, length});
      n += length;
    }
    const Shape shape = {kDk, heads, n, 1};
    auto unit = [&](std::vector<float> v) {
      for (int64_t r = 0; r < n * heads; ++r) {
        double s = 0;
        for (int64_t i = 0; i < kDk; ++i) s += double(v[r * kDk + i]) * v[r * kDk + i];
        for (int64_t i = 0; i < kDk; ++i) v[r * kDk + i] /= float(std::sqrt(s));
      }
      return v;
    };
    in.q = F32(shape, unit(Random(kDk * heads * n)));
    in.k = F32(shape, unit(Random(kDk * heads * n)));
    in.v = F32(shape, Random(kDk * heads * n));
    std::vector<float> g;
    if (gates == Gates::kMild) g = Random(kDk * heads * n, -0.1f, -0.001f);
    if (gates == Gates::kUniformTo20) g = Random(kDk * heads * n, -20.0f, -1.0f);
    if (gates == Gates::kLogUniformTo20) {
      g = Random(kDk * heads * n, std::log(1e-3f), std::log(20.0f));
      for (float& x : g) x = -std::exp(x);
    }
    in.g = F32(shape, g);
    in.beta = F32({heads, n, 1, 1}, Random(heads * n, 0.05f, 0.95f));
    for (size_t s = 0; s < lengths.size(); ++s) in.initial_states.push_back(Random(kDk * kDk * heads, -0.3f, 0.3f));
    return in;
  }
  // Runs KdaAttention on one backend from the initial states; returns the output and the
  // final states, concatenated.
  std::vector<float> Run(Backend& b, const Inputs& in, bool on_gpu, int64_t chunk_tokens) {
    const int64_t heads = in.q.cpu.ne[1], n = in.q.cpu.ne[2];
    std::vector<Tensor> recurrent;
    std::vector<KdaStateView> states;
    for (const auto& initial : in.initial_states) {
      recurrent.push_back(*b.Alloc(DType::kF32, {kDk, kDk, heads, 1}));
      b.Upload(initial.data(), initial.size() * 4, recurrent.back());
      states.push_back({recurrent.back(), *b.Alloc(DType::kF32, {3, kDk * heads, 3, 1})});
    }
    Tensor out = *b.Alloc(DType::kF32, {kDk, heads, n, 1});
    const std::vector<float> poison(out.elements(), NAN);
    b.Upload(poison.data(), poison.size() * 4, out);
    auto side = [&](const Pair& p) { return on_gpu ? p.gpu : p.cpu; };
    b.KdaAttention(side(in.q), side(in.k), side(in.v), side(in.g), side(in.beta), in.seqs, states, chunk_tokens, out);
    std::vector<float> result = Read(b, out);
    for (const Tensor& r : recurrent) {
      std::vector<float> state = Read(b, r);
      result.insert(result.end(), state.begin(), state.end());
    }
    return result;
  }
  static constexpr int64_t kDk = 128;
};

class KdaChunkedPrefill : public KdaPrefill, public ::testing::WithParamInterface<int64_t> {};

TEST_P(KdaChunkedPrefill, MatchesCpuAndRecurrence) {
  const int64_t tokens = GetParam(), heads = 4;
  for (Gates gates : {Gates::kMild, Gates::kLogUniformTo20, Gates::kUniformTo20}) {
    const std::string what = std::to_string(tokens) + " tokens, " + Name(gates);
    Inputs in = MakeInputs(heads, {tokens, 37}, gates);
    const std::vector<float> chunked = Run(*gpu_, in, true, 64);
    const std::vector<float> recurrent = Run(*gpu_, in, true, 0);
    const std::vector<float> cpu = Run(*cpu_, in, false, 64);
    const double vs_cpu = Nmse(chunked, cpu), vs_recurrence = Nmse(chunked, recurrent);
    EXPECT_LE(vs_cpu, kTf32) << "chunked GPU vs CPU, " << what;
    EXPECT_LE(vs_recurrence, kTf32) << "chunked vs recurrent GPU, " << what;
    RecordProperty("vs_cpu " + what, Scientific(vs_cpu));
    RecordProperty("vs_recurrence " + what, Scientific(vs_recurrence));
  }
}

INSTANTIATE_TEST_SUITE_P(Tokens, KdaChunkedPrefill, ::testing::Values(1, 63, 64, 65, 200, 4097));

TEST_F(KdaPrefill, SeveralWorkspacePassesMatchRecurrence) {
  // 32 heads x 15,300 tokens needs more than one pass over the 512 MiB workspace, so a
  // sequence is split between passes (its state carried through the state tensor).
  Inputs in = MakeInputs(32, {300, 15000}, Gates::kMild);
  const double nmse = Nmse(Run(*gpu_, in, true, 64), Run(*gpu_, in, true, 0));
  EXPECT_LE(nmse, kTf32);
  RecordProperty("vs_recurrence", Scientific(nmse));
}

TEST_F(BackendOps, LatentStoreAndMlaAttentionAllCacheTypes) {
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    for (int64_t width : {64, 576}) {
      const int64_t value_dim = width == 576 ? 512 : 48, heads = 4, page = 16, pages = 40;
      auto pool = Make(type, {width, page, pages, 1}, std::vector<float>(width * page * pages, 0.0f));
      // Sequence 0: 300 cached + 5 new; sequence 1: 0 cached + 1 new (single token, empty history).
      std::vector<int32_t> table0(20), table1 = {39};
      for (int i = 0; i < 20; ++i) table0[i] = (i * 7) % 38;  // shuffled pages
      std::vector<LatentSeqView> history = {{table0, 0, 0, 300}};
      auto rows = F32({width, 300, 1, 1}, Random(width * 300, -2, 2));
      cpu_->LatentStore(rows.cpu, history, pool.cpu);
      gpu_->LatentStore(rows.gpu, history, pool.gpu);
      std::vector<LatentSeqView> batch = {{table0, 300, 0, 5}, {table1, 0, 5, 1}};
      auto fresh = F32({width, 6, 1, 1}, Random(width * 6, -2, 2));
      cpu_->LatentStore(fresh.cpu, batch, pool.cpu);
      gpu_->LatentStore(fresh.gpu, batch, pool.gpu);
      std::vector<uint8_t> a(pool.cpu.nbytes()), b(pool.gpu.nbytes());
      cpu_->Download(pool.cpu, a.data(), a.size());
      gpu_->Download(pool.gpu, b.data(), b.size());
      EXPECT_EQ(a, b) << "LatentStore " << DTypeName(type) << " width " << width;
      auto q = F32({width, heads, 6, 1}, Random(width * heads * 6, -0.5f, 0.5f));
      auto out = Poisoned({value_dim, heads, 6, 1});
      cpu_->MlaAttention(q.cpu, pool.cpu, batch, 0.07f, out.cpu);
      gpu_->MlaAttention(q.gpu, pool.gpu, batch, 0.07f, out.gpu);
      Expect(out, 1e-5, std::string("MlaAttention (f16 GEMMs) ") + DTypeName(type) + " width " + std::to_string(width));
      auto copy = Make(type, {width, page, pages, 1}, std::vector<float>(width * page * pages, 0.0f));
      gpu_->CopyPage(pool.gpu, table0[3], copy.gpu, 5);
      std::vector<uint8_t> c(copy.gpu.nbytes());
      gpu_->Download(copy.gpu, c.data(), c.size());
      const size_t page_bytes = pool.gpu.row_bytes() * page;
      EXPECT_EQ(0, std::memcmp(c.data() + 5 * page_bytes, b.data() + table0[3] * page_bytes, page_bytes));
    }
  }
}

class MlaDecodeContexts : public BackendOps, public ::testing::WithParamInterface<int64_t> {};

TEST_P(MlaDecodeContexts, LongContextAllHeads) {
  // The real model's decode shape: 32 heads, latent 576, value 512, thousands of cached rows
  // (the chunked flash-decoding path: a partial last chunk, or keys filling whole chunks),
  // batch of two sequences of different lengths.
  const int64_t width = 576, value_dim = 512, heads = 32, page = 64, cached0 = GetParam(), cached1 = 77;
  const int64_t pages = (cached0 + 1 + page - 1) / page + (cached1 + 1 + page - 1) / page;
  auto pool = Make(DType::kF16, {width, page, pages, 1}, std::vector<float>(width * page * pages, 0.0f));
  std::vector<int32_t> table0, table1;
  for (int64_t i = 0; i < pages; ++i) ((i % 5 == 4 && table1.size() * page < cached1 + 1) ? table1 : table0).push_back(int32_t(i));
  ASSERT_GE(int64_t(table0.size()) * page, cached0 + 1);
  ASSERT_GE(int64_t(table1.size()) * page, cached1 + 1);
  std::vector<LatentSeqView> history = {{table0, 0, 0, cached0}, {table1, 0, cached0, cached1}};
  auto rows = F32({width, cached0 + cached1, 1, 1}, Random(width * (cached0 + cached1), -2, 2));
  cpu_->LatentStore(rows.cpu, history, pool.cpu);
  gpu_->LatentStore(rows.gpu, history, pool.gpu);
  std::vector<LatentSeqView> step = {{table0, cached0, 0, 1}, {table1, cached1, 1, 1}};
  auto fresh = F32({width, 2, 1, 1}, Random(width * 2, -2, 2));
  cpu_->LatentStore(fresh.cpu, step, pool.cpu);
  gpu_->LatentStore(fresh.gpu, step, pool.gpu);
  auto q = F32({width, heads, 2, 1}, Random(width * heads * 2, -0.3f, 0.3f));
  for (const char* kernel : {"wgmma", "mma", "gather"}) {
    ScopedEnv env("LATENTSERVE_MLA_DECODE", kernel);
    auto out = Poisoned({value_dim, heads, 2, 1});
    cpu_->MlaAttention(q.cpu, pool.cpu, step, 1.0f / std::sqrt(192.0f), out.cpu);
    gpu_->MlaAttention(q.gpu, pool.gpu, step, 1.0f / std::sqrt(192.0f), out.gpu);
    Expect(out, 1e-5, "MlaAttention decode (" + std::string(kernel) + ") 32 heads x " + std::to_string(cached0 + 1) +
                          " keys");
  }
  // The same step with its pages from a page plan (the model's path).
  Tensor plan;
  const std::vector<LatentSeqView> planned = Planned(step, &plan);
  auto out_planned = Poisoned({value_dim, heads, 2, 1});
  cpu_->MlaAttention(q.cpu, pool.cpu, step, 1.0f / std::sqrt(192.0f), out_planned.cpu);
  gpu_->MlaAttention(q.gpu, pool.gpu, planned, 1.0f / std::sqrt(192.0f), out_planned.gpu);
  Expect(out_planned, 1e-5, "MlaAttention decode, page plan, " + std::to_string(cached0 + 1) + " keys");
}

// 5,001 keys: a partial last chunk; 2,048: whole chunks; 40,000: many chunks.
INSTANTIATE_TEST_SUITE_P(Keys, MlaDecodeContexts, ::testing::Values(5000, 2047, 39999));

// Decode steps of several sequences in one batch over the pages in place (the paged decode
// kernel), every cache type, 16 and 32 heads, contexts of 1 to 5,001 keys (ranges of at least 128
// keys per CTA at least 128: partial first tile, exact multiples, many ranges), pages shuffled.
TEST_F(BackendOps, MlaDecodePagedAllCacheTypes) {
  const int64_t width = 576, value_dim = 512, page = 64;
  const std::vector<int64_t> cached = {0, 62, 63, 64, 511, 512, 5000};
  int64_t pages = 0;
  for (int64_t c : cached) pages += (c + 1 + page - 1) / page;
  std::vector<int32_t> order(pages);
  for (int64_t i = 0; i < pages; ++i) order[i] = int32_t((i * 37) % pages);  // 37 is prime to the count
  // Rows never written hold NaN (float caches): a kernel must not let them reach the output.
  const float poison = std::numeric_limits<float>::quiet_NaN();
  for (const char* kernel : {"wgmma", "mma"}) {
  ScopedEnv env("LATENTSERVE_MLA_DECODE", kernel);
  for (int64_t heads : {16, 32}) {
    for (DType type : {DType::kF16, DType::kF32, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
      const bool float_rows = type == DType::kF16 || type == DType::kF32 || type == DType::kBF16;
      auto pool = Make(type, {width, page, pages, 1}, std::vector<float>(width * page * pages, float_rows ? poison : 0.0f));
      std::vector<std::vector<int32_t>> tables;
      int64_t next = 0, total = 0;
      for (int64_t c : cached) {
        tables.emplace_back(order.begin() + next, order.begin() + next + (c + 1 + page - 1) / page);
        next += (c + 1 + page - 1) / page;
        total += c;
      }
      std::vector<LatentSeqView> history, step;
      int64_t column = 0;
      for (size_t s = 0; s < cached.size(); ++s) {
        history.push_back({tables[s], 0, column, cached[s]});
        column += cached[s];
      }
      auto rows = F32({width, std::max<int64_t>(total, 1), 1, 1}, Random(width * std::max<int64_t>(total, 1), -2, 2));
      cpu_->LatentStore(rows.cpu, history, pool.cpu);
      gpu_->LatentStore(rows.gpu, history, pool.gpu);
      for (size_t s = 0; s < cached.size(); ++s) step.push_back({tables[s], cached[s], int64_t(s), 1});
      const int64_t n = static_cast<int64_t>(cached.size());
      auto fresh = F32({width, n, 1, 1}, Random(width * n, -2, 2));
      cpu_->LatentStore(fresh.cpu, step, pool.cpu);
      gpu_->LatentStore(fresh.gpu, step, pool.gpu);
      auto q = F32({width, heads, n, 1}, Random(width * heads * n, -0.3f, 0.3f));
      auto out = Poisoned({value_dim, heads, n, 1});
      cpu_->MlaAttention(q.cpu, pool.cpu, step, 1.0f / std::sqrt(192.0f), out.cpu);
      const int64_t launches = cuda::MlaDecodeWgmmaLaunches();
      gpu_->MlaAttention(q.gpu, pool.gpu, step, 1.0f / std::sqrt(192.0f), out.gpu);
      // The Hopper kernel answers f16 caches unless told not to; the mma.sync kernel the rest.
      const bool expect_wgmma = std::string(kernel) == "wgmma" && type == DType::kF16;
      EXPECT_EQ(cuda::MlaDecodeWgmmaLaunches() - launches, expect_wgmma ? 1 : 0) << kernel << " " << DTypeName(type);
      Expect(out, 1e-5, std::string("MlaAttention paged decode (") + kernel + ") " + DTypeName(type) + " " +
                            std::to_string(heads) + " heads");
    }
  }
  }
}

// Long ranges (many tiles each, so the wgmma kernel's ring of boxes wraps many times) over
// 256-row pages (tiles inside a page, ranges starting mid-page), unwritten rows NaN, 16 and 32
// heads, both kernels; checked against the CPU.
TEST_F(BackendOps, MlaDecodePagedLongRangesPoisonedPages) {
  const int64_t width = 576, value_dim = 512, page = 256;
  const std::vector<int64_t> cached = {45000, 20000, 130};
  int64_t pages = 0, total = 0;
  for (int64_t c : cached) pages += (c + 1 + page - 1) / page, total += c;
  std::vector<int32_t> order(pages);
  for (int64_t i = 0; i < pages; ++i) order[i] = int32_t((i * 37) % pages);  // 37 is prime to the count
  auto pool = Make(DType::kF16, {width, page, pages, 1},
                   std::vector<float>(width * page * pages, std::numeric_limits<float>::quiet_NaN()));
  std::vector<std::vector<int32_t>> tables;
  std::vector<LatentSeqView> history, step;
  int64_t next = 0, column = 0;
  for (size_t s = 0; s < cached.size(); ++s) {
    const int64_t count = (cached[s] + 1 + page - 1) / page;
    tables.emplace_back(order.begin() + next, order.begin() + next + count);
    next += count;
  }
  for (size_t s = 0; s < cached.size(); ++s) {
    history.push_back({tables[s], 0, column, cached[s]});
    column += cached[s];
    step.push_back({tables[s], cached[s], int64_t(s), 1});
  }
  auto rows = F32({width, total, 1, 1}, Random(width * total, -2, 2));
  cpu_->LatentStore(rows.cpu, history, pool.cpu);
  gpu_->LatentStore(rows.gpu, history, pool.gpu);
  const int64_t n = static_cast<int64_t>(cached.size());
  auto fresh = F32({width, n, 1, 1}, Random(width * n, -2, 2));
  cpu_->LatentStore(fresh.cpu, step, pool.cpu);
  gpu_->LatentStore(fresh.gpu, step, pool.gpu);
  for (int64_t heads : {16, 32}) {
    auto q = F32({width, heads, n, 1}, Random(width * heads * n, -0.3f, 0.3f));
    auto expected = Poisoned({value_dim, heads, n, 1});
    cpu_->MlaAttention(q.cpu, pool.cpu, step, 1.0f / std::sqrt(192.0f), expected.cpu);
    for (const char* kernel : {"wgmma", "mma"}) {
      ScopedEnv env("LATENTSERVE_MLA_DECODE", kernel);
      auto out = Poisoned({value_dim, heads, n, 1});
      cpu_->Copy(expected.cpu, out.cpu);  // the CPU answer, computed once
      const int64_t launches = cuda::MlaDecodeWgmmaLaunches();
      gpu_->MlaAttention(q.gpu, pool.gpu, step, 1.0f / std::sqrt(192.0f), out.gpu);
      EXPECT_EQ(cuda::MlaDecodeWgmmaLaunches() - launches, std::string(kernel) == "wgmma" ? 1 : 0);
      Expect(out, 1e-5, std::string("long ranges, NaN in unwritten rows (") + kernel + ") " + std::to_string(heads) +
                            " heads");
    }
  }
}

// A decode step recorded once (CUDA graph) and replayed for two steps: LatentStore and the
// paged decode read positions and page tables from device memory (DeviceStep), so the second
// replay, whose positions differ from the recorded host values, must still match the CPU.
TEST_F(BackendOps, MlaDecodeRecordedStepReadsDevicePositions) {
  if (!gpu_->CanCapture()) GTEST_SKIP() << "backend does not record";
  const int64_t width = 576, page = 64, heads = 32, stride = 640;
  const std::vector<int64_t> cached = {0, 63, 64, 5000, 39999};
  const int64_t n = static_cast<int64_t>(cached.size());
  int64_t pages = 0;
  for (int64_t c : cached) pages += (c + 2 + page - 1) / page;
  std::vector<int32_t> order(pages);
  for (int64_t i = 0; i < pages; ++i) order[i] = int32_t((i * 37) % pages);
  for (const char* kernel : {"wgmma", "mma"}) {
  ScopedEnv env("LATENTSERVE_MLA_DECODE", kernel);
  for (DType type : {DType::kF16, DType::kQ8_0}) {
    auto pool = Make(type, {width, page, pages, 1}, std::vector<float>(width * page * pages, 0.0f));
    std::vector<std::vector<int32_t>> tables;
    int64_t next = 0, total = 0;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t count = (cached[s] + 2 + page - 1) / page;  // room for two steps
      tables.emplace_back(order.begin() + next, order.begin() + next + count);
      next += count;
      total += cached[s];
    }
    std::vector<LatentSeqView> history;
    int64_t column = 0;
    for (int64_t s = 0; s < n; ++s) {
      history.push_back({tables[s], 0, column, cached[s]});
      column += cached[s];
    }
    auto rows = F32({width, total, 1, 1}, Random(width * total, -2, 2));
    cpu_->LatentStore(rows.cpu, history, pool.cpu);
    gpu_->LatentStore(rows.gpu, history, pool.gpu);
    CheckRecordedMlaStep(pool, tables, cached, heads, stride, {0, 1},
                         std::string("recorded MLA decode step (") + kernel + ") " + DTypeName(type));
  }
  }
}

TEST_F(BackendOps, MlaPrefillChunkOnTensorCores) {
  // A prefill chunk (> 64 new tokens) over a cached prefix spanning several key tiles takes
  // the GEMM path: f16 queries/keys/probabilities, f32 accumulation.
  for (DType type : {DType::kF16, DType::kQ8_0}) {
    const int64_t width = 576, value_dim = 512, heads = 8, page = 128, cached = 4500, fresh = 300;
    const int64_t pages = (cached + fresh + page - 1) / page + 1;
    auto pool = Make(type, {width, page, pages, 1}, std::vector<float>(width * page * pages, 0.0f));
    std::vector<int32_t> table;
    for (int64_t i = pages - 1; i >= 1; --i) table.push_back(int32_t(i));  // reversed page order
    std::vector<LatentSeqView> history = {{table, 0, 0, cached}};
    auto rows = F32({width, cached, 1, 1}, Random(width * cached, -1, 1));
    cpu_->LatentStore(rows.cpu, history, pool.cpu);
    gpu_->LatentStore(rows.gpu, history, pool.gpu);
    std::vector<LatentSeqView> chunk = {{table, cached, 0, fresh}};
    auto fresh_rows = F32({width, fresh, 1, 1}, Random(width * fresh, -1, 1));
    cpu_->LatentStore(fresh_rows.cpu, chunk, pool.cpu);
    gpu_->LatentStore(fresh_rows.gpu, chunk, pool.gpu);
    auto q = F32({width, heads, fresh, 1}, Random(width * heads * fresh, -0.5f, 0.5f));
    auto out = Poisoned({value_dim, heads, fresh, 1});
    cpu_->MlaAttention(q.cpu, pool.cpu, chunk, 1.0f / std::sqrt(192.0f), out.cpu);
    gpu_->MlaAttention(q.gpu, pool.gpu, chunk, 1.0f / std::sqrt(192.0f), out.gpu);
    Expect(out, 1e-5, std::string("MlaAttention prefill chunk (f16 GEMMs) ") + DTypeName(type));
  }
}

// MLA attention from un-absorbed queries at Kimi-Linear's head shape (Pn 128, Pr 64, R 512,
// Dv 128): the CPU's absorbed form is the reference for the CUDA MHA form (keys and values
// expanded per head, flash kernel). LATENTSERVE_MLA_FORM=mha forces the MHA form for short
// chunks too; a batch under the automatic choice mixes both forms.
struct MlaHeadsCase {
  int64_t cached, fresh, heads;
  DType cache, weights;
  const char* form;  // LATENTSERVE_MLA_FORM
};

class MlaHeads : public BackendOps, public ::testing::WithParamInterface<MlaHeadsCase> {};

TEST_P(MlaHeads, MhaFormMatchesAbsorbedReference) {
  const MlaHeadsCase c = GetParam();
  const int64_t Pn = 128, Pr = 64, R = 512, Dv = 128, L = R + Pr, H = c.heads, page = 64;
  // Two sequences: the case's, and a short one (3 new tokens over 70 cached) in the same batch.
  const int64_t cached1 = 70, fresh1 = 3;
  const int64_t pages0 = (c.cached + c.fresh + page - 1) / page, pages1 = (cached1 + fresh1 + page - 1) / page;
  const int64_t pages = pages0 + pages1;
  auto pool = Make(c.cache, {L, page, pages, 1}, std::vector<float>(L * page * pages, 0.0f));
  std::vector<int32_t> table0, table1;
  for (int64_t i = 0; i < pages; ++i) (int64_t(table0.size()) < pages0 ? table0 : table1).push_back(int32_t(pages - 1 - i));
  std::vector<LatentSeqView> history = {{table0, 0, 0, c.cached}, {table1, 0, c.cached, cached1}};
  auto rows = F32({L, c.cached + cached1, 1, 1}, Random(L * (c.cached + cached1), -1.5f, 1.5f));
  cpu_->LatentStore(rows.cpu, history, pool.cpu);
  gpu_->LatentStore(rows.gpu, history, pool.gpu);
  const int64_t n = c.fresh + fresh1;
  std::vector<LatentSeqView> batch = {{table0, c.cached, 0, c.fresh}, {table1, cached1, c.fresh, fresh1}};
  // The GPU side reads its pages from a page plan (the model's path), the CPU from the tables.
  Tensor plan;
  const std::vector<LatentSeqView> planned = Planned(batch, &plan);
  auto fresh_rows = F32({L, n, 1, 1}, Random(L * n, -1.5f, 1.5f));
  cpu_->LatentStore(fresh_rows.cpu, batch, pool.cpu);
  gpu_->LatentStore(fresh_rows.gpu, planned, pool.gpu);
  auto k_b = Make(c.weights, {Pn, R, H, 1}, Random(Pn * R * H, -0.08f, 0.08f));
  auto v_b = Make(c.weights, {R, Dv, H, 1}, Random(R * Dv * H, -0.08f, 0.08f));
  const Tensor k_b_ref = CpuReferenceWeights(k_b), v_b_ref = CpuReferenceWeights(v_b);
  auto q = F32({Pn + Pr, H, n, 1}, Random((Pn + Pr) * H * n, -2.0f, 2.0f));
  const float scale = 1.0f / std::sqrt(192.0f);
  // The flash kernels (wgmma + TMA in its two loops, mma.sync) against the same CPU result.
  for (const char* kernel : {"tma", "tma_base", "mma"}) {
    auto out = Poisoned({Dv, H, n, 1});
    ASSERT_TRUE(cpu_->MlaAttentionHeads(q.cpu, k_b_ref, v_b_ref, pool.cpu, batch, scale, out.cpu).ok());
    setenv("LATENTSERVE_MLA_FORM", c.form, 1);
    setenv("LATENTSERVE_MLA_KERNEL", kernel, 1);
    const absl::Status status = gpu_->MlaAttentionHeads(q.gpu, k_b.gpu, v_b.gpu, pool.gpu, planned, scale, out.gpu);
    unsetenv("LATENTSERVE_MLA_FORM");
    unsetenv("LATENTSERVE_MLA_KERNEL");
    ASSERT_TRUE(status.ok()) << status;
    Expect(out, 2e-5,
           std::string("MlaAttentionHeads ") + c.form + " (" + kernel + ") " + std::to_string(c.fresh) + " q @ " +
               std::to_string(c.cached) + " cached, cache " + DTypeName(c.cache) + ", weights " + DTypeName(c.weights));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MlaHeads,
    ::testing::Values(MlaHeadsCase{0, 1, 4, DType::kF16, DType::kF16, "mha"},
                      MlaHeadsCase{0, 63, 4, DType::kF16, DType::kF16, "mha"},
                      MlaHeadsCase{0, 65, 4, DType::kF16, DType::kF16, "mha"},
                      MlaHeadsCase{0, 128, 4, DType::kF16, DType::kF16, "mha"},
                      MlaHeadsCase{64, 129, 4, DType::kF16, DType::kF16, "mha"},
                      MlaHeadsCase{4500, 300, 4, DType::kF16, DType::kF16, "auto"},
                      MlaHeadsCase{4500, 300, 4, DType::kQ8_0, DType::kQ4_0, "auto"},
                      MlaHeadsCase{1000, 257, 32, DType::kBF16, DType::kQ8_0, "auto"},
                      MlaHeadsCase{5001, 200, 2, DType::kQ4_0, DType::kF16, "mha"},
                      MlaHeadsCase{0, 4097, 2, DType::kF16, DType::kF16, "auto"},
                      MlaHeadsCase{4500, 300, 4, DType::kF16, DType::kF16, "absorbed"}));

// hidden 96 / ffn 64: the plain warp-per-row decode kernels for quantised rows; 512 / 256 and
// f16 rows: the pipelined row kernels (row_pipeline.cuh).
TEST_F(BackendOps, MoeRouteAndExperts) {
  for (auto [type, hidden, ffn] : {std::tuple<DType, int64_t, int64_t>{DType::kF32, 96, 64}, {DType::kQ4_0, 96, 64},
                                   {DType::kQ4_0, 512, 256}, {DType::kQ8_0, 512, 256}, {DType::kF16, 96, 64}}) {
    const int64_t experts = 40, top_k = 6;
    for (int64_t tokens : {1, 13}) {
      auto logits = F32({experts, tokens, 1, 1}, Random(experts * tokens, -3, 3));
      auto bias = F32({experts, 1, 1, 1}, Random(experts, -0.2f, 0.2f));
      Pair ids{*cpu_->Alloc(DType::kI32, {top_k, tokens, 1, 1}), *gpu_->Alloc(DType::kI32, {top_k, tokens, 1, 1})};
      auto weights = Poisoned({top_k, tokens, 1, 1});
      cpu_->MoeRoute(logits.cpu, bias.cpu, top_k, true, 2.446f, ids.cpu, weights.cpu);
      gpu_->MoeRoute(logits.gpu, bias.gpu, top_k, true, 2.446f, ids.gpu, weights.gpu);
      std::vector<int32_t> ci(top_k * tokens), gi(top_k * tokens);
      cpu_->Download(ids.cpu, ci.data(), ci.size() * 4);
      gpu_->Download(ids.gpu, gi.data(), gi.size() * 4);
      EXPECT_EQ(ci, gi) << "MoeRoute ids";
      Expect(weights, kExact, "MoeRoute weights");
      MoeWeights cw, gw;
      auto gate = Make(type, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
      auto up = Make(type, {hidden, ffn, experts, 1}, Random(hidden * ffn * experts));
      auto down = Make(type, {ffn, hidden, experts, 1}, Random(ffn * hidden * experts));
      // Pipelined decode experts round activations to 8-bit blocks for q4_0 / q8_0 rows as the
      // CPU backend does: compared with the CPU's own integer path (SiLU's exp differs by ulps,
      // which can move a rounding of the down projection's input by one step).
      const bool q8 = (type == DType::kQ4_0 || type == DType::kQ8_0) && hidden % 256 == 0 && tokens * top_k <= 64;
      cw = q8 ? MoeWeights{gate.cpu, up.cpu, down.cpu}
              : MoeWeights{CpuReferenceWeights(gate), CpuReferenceWeights(up), CpuReferenceWeights(down)};
      gw = {gate.gpu, up.gpu, down.gpu};
      auto x = F32({hidden, tokens, 1, 1}, Random(hidden * tokens));
      auto y = Poisoned({hidden, tokens, 1, 1});
      cpu_->MoeExperts(x.cpu, cw, ids.cpu, weights.cpu, y.cpu);
      gpu_->MoeExperts(x.gpu, gw, ids.gpu, weights.gpu, y.gpu);
      // Over 64 slots, quantised weights take the grouped GEMMs (f16 activations).
      const bool half = type != DType::kF32 && tokens * top_k > 64;
      Expect(y, half ? kHalfActivations : q8 ? 1e-6 : kExact, std::string("MoeExperts ") + DTypeName(type) + " hidden=" + std::to_string(hidden) + " tokens=" + std::to_string(tokens));
    }
  }
}

// The prefill path: the routing sorted on the device, gate+up (SwiGLU fused) and down as
// grouped tensor-core GEMMs over all experts, f16 activations (bf16 for bf16 weights) with
// f32 accumulation. hidden 160 and ffn 96 leave partial tiles along N and K in both GEMMs.
// Routing "random": 8 distinct experts per token (with 256 experts most get no token at small
// counts); "skewed": every token to the same 8 experts (the first and the last among them),
// so those receive all tokens and the rest none. Each case runs with both tile shapes, twice
// each: the results must be bitwise equal (stable sort, fixed tiles, slot-order sums).
class MoeGrouped : public BackendOps {
 protected:
  void Run(DType type, int64_t n_experts, int64_t hidden, int64_t ffn, const std::vector<int64_t>& token_counts,
           bool force_grouped, const std::vector<const char*>& kernels = {"warps8", "warps4"}) {
    const int64_t top_k = 8;
    auto gate = Make(type, {hidden, ffn, n_experts, 1}, Random(hidden * ffn * n_experts));
    auto up = Make(type, {hidden, ffn, n_experts, 1}, Random(hidden * ffn * n_experts));
    auto down = Make(type, {ffn, hidden, n_experts, 1}, Random(ffn * hidden * n_experts));
    const MoeWeights cw{CpuReferenceWeights(gate), CpuReferenceWeights(up), CpuReferenceWeights(down)};
    const MoeWeights gw{gate.gpu, up.gpu, down.gpu};
    if (force_grouped) setenv("LATENTSERVE_CUDA_MOE", "grouped", 1);
    for (int64_t tokens : token_counts) {
      for (bool skewed : {false, true}) {
        std::vector<int32_t> id_values(top_k * tokens);
        std::vector<int32_t> experts(n_experts);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t e = 0; e < n_experts; ++e) experts[e] = int32_t(e);
          if (skewed) {  // the same 8 experts in a rotating slot order
            const int32_t fixed[8] = {int32_t(n_experts - 1), 0, 3, int32_t(n_experts / 2), 1, int32_t(n_experts - 2), 5, 2};
            for (int64_t j = 0; j < top_k; ++j) id_values[t * top_k + j] = fixed[(j + t) % 8];
          } else {
            std::shuffle(experts.begin(), experts.end(), rng_);
            for (int64_t j = 0; j < top_k; ++j) id_values[t * top_k + j] = experts[j];
          }
        }
        auto ids = Ints({top_k, tokens, 1, 1}, id_values);
        auto weights = F32({top_k, tokens, 1, 1}, Random(top_k * tokens, 0.01f, 0.4f));
        auto x = F32({hidden, tokens, 1, 1}, Random(hidden * tokens));
        auto y = Poisoned({hidden, tokens, 1, 1});
        cpu_->MoeExperts(x.cpu, cw, ids.cpu, weights.cpu, y.cpu);
        for (const char* tile : kernels) {  // LATENTSERVE_CUDA_MOE_TILE: the grouped GEMM kernel
          setenv("LATENTSERVE_CUDA_MOE_TILE", tile, 1);
          gpu_->MoeExperts(x.gpu, gw, ids.gpu, weights.gpu, y.gpu);
          const std::string what = std::string("MoeExperts grouped ") + tile + " " + DTypeName(type) + " experts=" +
                                   std::to_string(n_experts) + " hidden=" + std::to_string(hidden) + " tokens=" +
                                   std::to_string(tokens) + (skewed ? " skewed" : " random");
          Expect(y, kHalfActivations, what);
          const std::vector<float> first = Read(*gpu_, y.gpu);
          gpu_->MoeExperts(x.gpu, gw, ids.gpu, weights.gpu, y.gpu);
          EXPECT_TRUE(Read(*gpu_, y.gpu) == first) << what << ": a second run differs";
        }
        unsetenv("LATENTSERVE_CUDA_MOE_TILE");
      }
    }
    if (force_grouped) unsetenv("LATENTSERVE_CUDA_MOE");
  }
};

class MoeGroupedExperts : public MoeGrouped, public ::testing::WithParamInterface<std::tuple<DType, int64_t>> {};

TEST_P(MoeGroupedExperts, AgainstCpu) {
  const auto [type, n_experts] = GetParam();
  Run(type, n_experts, 160, 96, {63, 65, 300, 4097}, false);
}

// One token (8 slots) normally takes the decode kernels; forced through the grouped path.
TEST_P(MoeGroupedExperts, OneTokenForcedGrouped) {
  const auto [type, n_experts] = GetParam();
  Run(type, n_experts, 160, 96, {1, 2}, true);
}

INSTANTIATE_TEST_SUITE_P(Types, MoeGroupedExperts,
                         ::testing::Combine(::testing::Values(DType::kQ4_0, DType::kQ8_0, DType::kF16, DType::kBF16),
                                            ::testing::Values(int64_t{8}, int64_t{256})),
                         [](const auto& info) {
                           return std::string(DTypeName(std::get<0>(info.param))) + "_experts" +
                                  std::to_string(std::get<1>(info.param));
                         });

// The real model's expert shape (hidden 2304: 36 K-steps; ffn 1024: 16 N-tiles of gate+up),
// 16 experts to keep the f32 CPU reference small.
TEST_F(MoeGrouped, ModelShapeQ4_0) { Run(DType::kQ4_0, 16, 2304, 1024, {300}, false); }

// A batched decode step's widths (9..64 tokens, more than the decode kernels' 64 slots) on
// q4_0 / q8_0 experts whose sizes are whole 256-value runs: each expert's rows through the f16
// tensor-core products (quant_mma.h), 1 to 8 tiles of 8 rows an expert (each kernel width), few
// experts (every expert many rows) and many (most experts no rows); a second run gives the same
// bits.
TEST_F(MoeGrouped, BatchedDecodeQuantMmaExperts) {
  for (DType type : {DType::kQ4_0, DType::kQ8_0}) {
    Run(type, 8, 512, 256, {9, 32, 33}, false, {"default"});
    Run(type, 256, 256, 512, {16, 64}, false, {"default"});
  }
}

// The warpgroup-MMA kernel (sm_90a, opt-in until measured) on the same cases. Its own suite,
// instantiated last, so that a failure there (descriptor or swizzle layout) cannot hide the
// results of the default kernels: --gtest_filter=-Wgmma/* leaves it out.
class MoeGroupedWgmma : public MoeGrouped, public ::testing::WithParamInterface<std::tuple<DType, int64_t>> {};

TEST_P(MoeGroupedWgmma, AgainstCpu) {
  const auto [type, n_experts] = GetParam();
  Run(type, n_experts, 160, 96, {1}, true, {"wgmma"});
  Run(type, n_experts, 160, 96, {63, 65, 300, 4097}, false, {"wgmma"});
}

INSTANTIATE_TEST_SUITE_P(Wgmma, MoeGroupedWgmma,
                         ::testing::Combine(::testing::Values(DType::kQ4_0, DType::kQ8_0, DType::kF16, DType::kBF16),
                                            ::testing::Values(int64_t{8}, int64_t{256})),
                         [](const auto& info) {
                           return std::string(DTypeName(std::get<0>(info.param))) + "_experts" +
                                  std::to_string(std::get<1>(info.param));
                         });

// The real expert shape (36 K-steps through the two shared-memory stages, 16 N-tiles).
class MoeGroupedWgmmaModelShape : public MoeGrouped, public ::testing::WithParamInterface<DType> {};

TEST_P(MoeGroupedWgmmaModelShape, AgainstCpu) { Run(GetParam(), 16, 2304, 1024, {300}, false, {"wgmma"}); }

INSTANTIATE_TEST_SUITE_P(Wgmma, MoeGroupedWgmmaModelShape, ::testing::Values(DType::kQ4_0, DType::kQ8_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// The weights dequantised ahead of a wgmma GEMM of 128 x 256 tiles (cuda_moe_predequant.cu,
// opt-in until measured): the same cases, then the workspace budget cut so that the experts go
// in passes of consecutive ids (1 MiB: 17 experts per gate+up pass and 34 per down pass at
// hidden 160 / ffn 96; 20 MiB at the model shape: 2 and 4). f16 / bf16 weights are read in place.
class MoeGroupedPredequant : public MoeGrouped, public ::testing::WithParamInterface<std::tuple<DType, int64_t>> {};

TEST_P(MoeGroupedPredequant, AgainstCpu) {
  const auto [type, n_experts] = GetParam();
  Run(type, n_experts, 160, 96, {1}, true, {"predequant"});
  Run(type, n_experts, 160, 96, {63, 65, 300, 4097}, false, {"predequant"});
  setenv("LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB", "1", 1);
  Run(type, n_experts, 160, 96, {65, 300}, false, {"predequant"});
  unsetenv("LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB");
}

INSTANTIATE_TEST_SUITE_P(Predequant, MoeGroupedPredequant,
                         ::testing::Combine(::testing::Values(DType::kQ4_0, DType::kQ8_0, DType::kF16, DType::kBF16),
                                            ::testing::Values(int64_t{8}, int64_t{256})),
                         [](const auto& info) {
                           return std::string(DTypeName(std::get<0>(info.param))) + "_experts" +
                                  std::to_string(std::get<1>(info.param));
                         });

class MoeGroupedPredequantModelShape : public MoeGrouped, public ::testing::WithParamInterface<DType> {};

TEST_P(MoeGroupedPredequantModelShape, AgainstCpu) {
  Run(GetParam(), 16, 2304, 1024, {300}, false, {"predequant"});
  setenv("LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB", "20", 1);
  Run(GetParam(), 16, 2304, 1024, {300}, false, {"predequant"});
  unsetenv("LATENTSERVE_CUDA_MOE_PREDEQUANT_MIB");
}

INSTANTIATE_TEST_SUITE_P(Predequant, MoeGroupedPredequantModelShape, ::testing::Values(DType::kQ4_0, DType::kQ8_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace latentserve::kernels
