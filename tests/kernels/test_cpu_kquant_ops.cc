// K-quant weights (q4_K, q5_K, q6_K) on the CPU backend against their dequantised-f32
// reference: every weight role's op (MatMul, HeadMatMul, MoeExperts, GetRows), every tile
// remainder, and column independence, mirroring test_cpu_ops.cc's q8_0 / q4_0 cases.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/kquant_internal.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::MaxRelDiff;

constexpr DType kKQuants[] = {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

class CpuKQuantOps : public op_test::CpuOpsFixture {
 protected:
  CpuKQuantOps() : CpuOpsFixture(4321) {}
};

// ggml's q8_K rounding, which the backend applies to activations before K-quant weights: per
// 256 values, the value of largest magnitude maps to -127; q = min(127, round(x * -127 / max)).
std::vector<float> RoundActivationsToQ8K(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size() / 256; ++b) {
    float amax = 0, max = 0;
    for (int i = 0; i < 256; ++i) {
      if (std::fabs(x[b * 256 + i]) > amax) {
        amax = std::fabs(x[b * 256 + i]);
        max = x[b * 256 + i];
      }
    }
    const float inverse = amax != 0 ? -127.0f / max : 0.0f;
    const float d = amax != 0 ? 1.0f / inverse : 0.0f;
    for (int i = 0; i < 256; ++i) {
      out[b * 256 + i] = float(std::min(127.0f, std::nearbyint(inverse * x[b * 256 + i]))) * d;
    }
  }
  return out;
}

// y[m][n] = sum_k dequantised w[n][k] * rounded x[m][k], in double.
std::vector<float> ReferenceMatMul(DType type, const std::vector<uint8_t>& w_bytes, size_t row_bytes,
                                   const std::vector<float>& x, int64_t K, int64_t N, int64_t M) {
  std::vector<float> wd(K * N);
  for (int64_t n = 0; n < N; ++n) DequantizeRow(type, w_bytes.data() + n * row_bytes, wd.data() + n * K, K);
  const std::vector<float> xr = RoundActivationsToQ8K(x);
  std::vector<float> y(N * M);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(wd[n * K + k]) * xr[m * K + k];
      y[m * N + n] = float(s);
    }
  return y;
}

// The column groups are 4 wide and the callers split rows in blocks of 16: every remainder, one
// token, one super-block per row; a column's result must not depend on how many columns share
// the call (prefill then decode must equal a longer prefill).
TEST_F(CpuKQuantOps, MatMulOddShapesAndColumnIndependence) {
  for (DType type : kKQuants) {
    for (int64_t K : {256, 768}) {
      for (int64_t N : {1, 3, 4, 5, 17, 45}) {
        for (int64_t M : {1, 2, 3, 4, 5, 9, 33}) {
          auto w = Random(K * N, -2, 2), x = Random(K * M, -3, 3);
          Tensor wt = Make(type, {K, N, 1, 1}, w);
          const auto bytes = Bytes(wt);
          Tensor y = Zeros({N, M, 1, 1});
          backend_->MatMul(wt, F32({K, M, 1, 1}, x), y);
          const auto got = Read(y);
          const std::string what = std::string(DTypeName(type)) + " K=" + std::to_string(K) +
                                   " N=" + std::to_string(N) + " M=" + std::to_string(M);
          ASSERT_LT(MaxRelDiff(got, ReferenceMatMul(type, bytes, wt.row_bytes(), x, K, N, M)), 1e-5) << what;
          const int64_t last = M - 1;
          Tensor y1 = Zeros({N, 1, 1, 1});
          backend_->MatMul(wt, F32({K, 1, 1, 1}, std::vector<float>(x.begin() + last * K, x.end())), y1);
          const auto alone = Read(y1);
          for (int64_t n = 0; n < N; ++n) ASSERT_EQ(alone[n], got[last * N + n]) << what << " row " << n;
        }
      }
    }
  }
}

// Where the CPU has AVX-512 VNNI, its kernel must give bitwise the AVX2 kernel's results (the
// reference tests compare either with llama.cpp): every column-group remainder up to 8, one and
// three super-blocks, a spike and +-127 activations.
TEST_F(CpuKQuantOps, Avx512MatchesAvx2Bitwise) {
  if (!cpu::kquant::UseAvx512()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU: only the AVX2 kernels run";
  for (DType type : kKQuants) {
    for (int64_t K : {256, 768}) {
      for (int64_t M : {1, 2, 5, 8, 9, 16, 23}) {
        const int64_t N = 19;
        auto w = Random(K * N, -2, 2), x = Random(K * M, -3, 3);
        x[7] = 1e6f;
        for (int64_t i = 0; i < K; ++i) x[(M - 1) * K + i] = (i % 2 ? 127.0f : -127.0f);
        Tensor wt = Make(type, {K, N, 1, 1}, w), xt = F32({K, M, 1, 1}, x);
        Tensor fast = Zeros({N, M, 1, 1}), avx2 = Zeros({N, M, 1, 1});
        backend_->MatMul(wt, xt, fast);
        cpu::AllowKQuantAvx512(false);
        backend_->MatMul(wt, xt, avx2);
        cpu::AllowKQuantAvx512(true);
        const auto got = Read(fast), expect = Read(avx2);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_EQ(got[i], expect[i]) << DTypeName(type) << " K=" << K << " M=" << M << " element " << i;
        }
      }
    }
  }
}

// Weights with negative values only (q4_K / q5_K mins carry the whole value), all zeros, and
// activations with a zero super-block, a spike and values at +-127.
TEST_F(CpuKQuantOps, ExtremeWeightsAndActivations) {
  const int64_t K = 768, N = 6;
  std::vector<float> x(K, 0.0f);
  x[300] = 1e6f;
  for (int i = 512; i < 768; ++i) x[i] = (i % 2 ? 1.0f : -1.0f) * float(i - 511);
  std::vector<float> w = Random(K * N);
  for (int64_t i = 0; i < K; ++i) w[i] = -std::fabs(w[i]) - 0.5f;  // row 0 all negative
  std::fill(w.begin() + K, w.begin() + 2 * K, 0.0f);               // row 1 all zero
  for (DType type : kKQuants) {
    Tensor wt = Make(type, {K, N, 1, 1}, w);
    const auto bytes = Bytes(wt);
    Tensor y = Zeros({N, 1, 1, 1});
    backend_->MatMul(wt, F32({K, 1, 1, 1}, x), y);
    EXPECT_LT(MaxRelDiff(Read(y), ReferenceMatMul(type, bytes, wt.row_bytes(), x, K, N, 1)), 1e-5) << DTypeName(type);
  }
}

TEST_F(CpuKQuantOps, HeadMatMulUsesColumnOffset) {
  const int64_t K = 256, N = 7, H = 3, T = 5, Kx = 768, off = 256;
  auto w = Random(K * N * H), x = Random(Kx * H * T);
  for (DType type : kKQuants) {
    Tensor wt = Make(type, {K, N, H, 1}, w);
    const auto bytes = Bytes(wt);
    Tensor y = Zeros({N, H, T, 1});
    backend_->HeadMatMul(wt, F32({Kx, H, T, 1}, x), off, y);
    const auto got = Read(y);
    for (int64_t h = 0; h < H; ++h) {
      std::vector<uint8_t> head(bytes.begin() + h * N * wt.row_bytes(), bytes.begin() + (h + 1) * N * wt.row_bytes());
      std::vector<float> xh(K * T);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t k = 0; k < K; ++k) xh[t * K + k] = x[(t * H + h) * Kx + off + k];
      const auto expect = ReferenceMatMul(type, head, wt.row_bytes(), xh, K, N, T);
      std::vector<float> got_h(N * T);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t n = 0; n < N; ++n) got_h[t * N + n] = got[(t * H + h) * N + n];
      EXPECT_LT(MaxRelDiff(got_h, expect), 1e-5) << DTypeName(type) << " head " << h;
    }
  }
}

// Embedding lookups dequantise the stored rows exactly.
TEST_F(CpuKQuantOps, GetRowsDequantisesExactly) {
  const int64_t W = 512, R = 9;
  auto table = Random(W * R, -2, 2);
  for (DType type : kKQuants) {
    Tensor t = Make(type, {W, R, 1, 1}, table);
    const auto bytes = Bytes(t);
    std::vector<int32_t> ids = {8, 0, 3, 3};
    Tensor id = *backend_->Alloc(DType::kI32, {4, 1, 1, 1});
    backend_->Upload(ids.data(), 16, id);
    Tensor out = Zeros({W, 4, 1, 1});
    backend_->GetRows(t, id, out);
    const auto got = Read(out);
    for (size_t i = 0; i < ids.size(); ++i) {
      std::vector<float> row(W);
      DequantizeRow(type, bytes.data() + ids[i] * t.row_bytes(), row.data(), W);
      for (int64_t j = 0; j < W; ++j) ASSERT_EQ(got[i * W + j], row[j]) << DTypeName(type);
    }
  }
}

// q5_0 / q5_1 (llama.cpp's fallback for rows that are not whole super-blocks) keep f32
// activations: the reference is the exact product over the dequantised weights.
TEST_F(CpuKQuantOps, Q5FallbackTypesMatMulAndHeadMatMul) {
  for (DType type : {DType::kQ5_0, DType::kQ5_1}) {
    for (int64_t M : {1, 2, 7}) {
      const int64_t K = 128, N = 37, H = 2;
      auto w = Random(K * N * H), x = Random(K * H * M);
      Tensor wt = Make(type, {K, N * H, 1, 1}, w);
      const auto bytes = Bytes(wt);
      std::vector<float> wd(K * N * H);
      for (int64_t r = 0; r < N * H; ++r) DequantizeRow(type, bytes.data() + r * wt.row_bytes(), wd.data() + r * K, K);
      Tensor y = Zeros({N * H, M, 1, 1});
      backend_->MatMul(wt, F32({K, M, 1, 1}, std::vector<float>(x.begin(), x.begin() + K * M)), y);
      std::vector<float> expect(N * H * M);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N * H; ++n) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) s += double(wd[n * K + k]) * x[m * K + k];
          expect[m * N * H + n] = float(s);
        }
      EXPECT_LT(MaxRelDiff(Read(y), expect), 1e-5) << DTypeName(type) << " M=" << M;
      Tensor heads = Make(type, {K, N, H, 1}, w);  // the MLA k_b role: one matrix per head
      Tensor yh = Zeros({N, H, M, 1});
      backend_->HeadMatMul(heads, F32({K, H, M, 1}, x), 0, yh);
      std::vector<float> expect_h(N * H * M);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t n = 0; n < N; ++n) {
            double s = 0;
            for (int64_t k = 0; k < K; ++k) s += double(wd[(h * N + n) * K + k]) * x[(m * H + h) * K + k];
            expect_h[(m * H + h) * N + n] = float(s);
          }
      EXPECT_LT(MaxRelDiff(Read(yh), expect_h), 1e-5) << DTypeName(type) << " heads M=" << M;
    }
  }
}

// MoE experts, including the Q4_K_M pattern of gate / up in one type and down in another.
TEST_F(CpuKQuantOps, MoeExpertsMatchReference) {
  const int64_t hidden = 256, ffn = 512, experts = 5, top_k = 2, tokens = 11;
  auto gate = Random(hidden * ffn * experts), up = Random(hidden * ffn * experts);
  auto down = Random(ffn * hidden * experts), x = Random(hidden * tokens, -2, 2);
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> route_w(tokens * top_k);
  for (int64_t t = 0; t < tokens; ++t) {
    ids[t * top_k] = static_cast<int32_t>(t % experts);
    ids[t * top_k + 1] = static_cast<int32_t>((t + 1 + t / experts) % experts);
    route_w[t * top_k] = 0.7f;
    route_w[t * top_k + 1] = 0.4f;
  }
  const std::pair<DType, DType> cases[] = {{DType::kQ4_K, DType::kQ4_K}, {DType::kQ5_K, DType::kQ5_K},
                                           {DType::kQ6_K, DType::kQ6_K}, {DType::kQ4_K, DType::kQ6_K},
                                           {DType::kQ4_K, DType::kQ8_0}};
  for (const auto& [gu_type, down_type] : cases) {
    Tensor g = Make(gu_type, {hidden, ffn, experts, 1}, gate), u = Make(gu_type, {hidden, ffn, experts, 1}, up);
    Tensor d = Make(down_type, {ffn, hidden, experts, 1}, down);
    const auto gb = Bytes(g), ub = Bytes(u), db = Bytes(d);
    auto run = [&](int64_t first, int64_t count) {
      Tensor id = *backend_->Alloc(DType::kI32, {top_k, count, 1, 1});
      backend_->Upload(ids.data() + first * top_k, count * top_k * 4, id);
      const std::vector<float> xs(x.begin() + first * hidden, x.begin() + (first + count) * hidden);
      const std::vector<float> ws(route_w.begin() + first * top_k, route_w.begin() + (first + count) * top_k);
      Tensor y = Zeros({hidden, count, 1, 1});
      backend_->MoeExperts(F32({hidden, count, 1, 1}, xs), MoeWeights{g, u, d}, id, F32({top_k, count, 1, 1}, ws), y);
      return Read(y);
    };
    const auto all = run(0, tokens);
    std::vector<float> expect(hidden * tokens, 0.0f);
    for (int64_t t = 0; t < tokens; ++t) {
      const std::vector<float> xt(x.begin() + t * hidden, x.begin() + (t + 1) * hidden);
      for (int64_t j = 0; j < top_k; ++j) {
        const int64_t e = ids[t * top_k + j];
        auto slice = [&](const std::vector<uint8_t>& b, const Tensor& whole, int64_t rows) {
          const int64_t bytes = rows * whole.row_bytes();
          return std::vector<uint8_t>(b.begin() + e * bytes, b.begin() + (e + 1) * bytes);
        };
        const auto gv = ReferenceMatMul(gu_type, slice(gb, g, ffn), g.row_bytes(), xt, hidden, ffn, 1);
        const auto uv = ReferenceMatMul(gu_type, slice(ub, u, ffn), u.row_bytes(), xt, hidden, ffn, 1);
        std::vector<float> act(ffn);
        for (int64_t f = 0; f < ffn; ++f) act[f] = float(gv[f] / (1.0 + std::exp(-double(gv[f]))) * uv[f]);
        std::vector<float> dv;
        if (down_type == DType::kQ8_0) {  // q8_0 rounds activations per 32 (test_cpu_ops.cc)
          std::vector<float> wd(ffn * hidden);
          const auto dbytes = slice(db, d, hidden);
          for (int64_t n = 0; n < hidden; ++n) DequantizeRow(down_type, dbytes.data() + n * d.row_bytes(), wd.data() + n * ffn, ffn);
          dv.assign(hidden, 0.0f);
          std::vector<float> ar(ffn);
          for (int64_t b = 0; b < ffn / 32; ++b) {
            float amax = 0;
            for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(act[b * 32 + i]));
            const float dd = amax / 127.0f, inv = dd != 0.0f ? 1.0f / dd : 0.0f;
            for (int i = 0; i < 32; ++i) ar[b * 32 + i] = float(std::nearbyint(act[b * 32 + i] * inv)) * dd;
          }
          for (int64_t n = 0; n < hidden; ++n) {
            double s = 0;
            for (int64_t k = 0; k < ffn; ++k) s += double(wd[n * ffn + k]) * ar[k];
            dv[n] = float(s);
          }
        } else {
          dv = ReferenceMatMul(down_type, slice(db, d, hidden), d.row_bytes(), act, ffn, hidden, 1);
        }
        for (int64_t i = 0; i < hidden; ++i) expect[t * hidden + i] += route_w[t * top_k + j] * dv[i];
      }
    }
    const std::string what = std::string(DTypeName(gu_type)) + "/" + DTypeName(down_type);
    EXPECT_LT(MaxRelDiff(all, expect), 1e-4) << what;
    const auto last = run(tokens - 1, 1);
    for (int64_t i = 0; i < hidden; ++i) ASSERT_EQ(last[i], all[(tokens - 1) * hidden + i]) << what << " element " << i;
  }
}

}  // namespace
}  // namespace latentserve::kernels
