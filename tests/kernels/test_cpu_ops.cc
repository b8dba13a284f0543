// CPU reference ops against direct double-precision formulas, and the KDA chunked form
// against the recurrence.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/simd.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::MaxRelDiff;

class CpuOps : public op_test::CpuOpsFixture {
 protected:
  CpuOps() : CpuOpsFixture(1234) {}
};

// What the CPU matmuls do to activations before meeting q8_0 / q4_0 weights (like ggml):
// per block of 32, d = max|x| / 127 and x becomes round(x * (1 / d)) * d.
std::vector<float> RoundActivationsToQ8(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    const float d = amax / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 32; ++i) out[b * 32 + i] = float(std::nearbyint(x[b * 32 + i] * inv)) * d;
  }
  return out;
}

bool QuantisesActivations(DType weights) { return weights == DType::kQ8_0 || weights == DType::kQ4_0; }

// y[m][n] = sum_k dequantised w[n][k] * x[m][k] in double, with x rounded as the backend does.
std::vector<float> ReferenceMatMul(DType type, const std::vector<uint8_t>& w_bytes, size_t row_bytes,
                                   const std::vector<float>& x, int64_t K, int64_t N, int64_t M) {
  std::vector<float> wd(K * N);
  for (int64_t n = 0; n < N; ++n) DequantizeRow(type, w_bytes.data() + n * row_bytes, wd.data() + n * K, K);
  const std::vector<float> xr = QuantisesActivations(type) ? RoundActivationsToQ8(x) : x;
  std::vector<float> y(N * M);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(wd[n * K + k]) * xr[m * K + k];
      y[m * N + n] = float(s);
    }
  return y;
}

TEST_F(CpuOps, MatMulEveryWeightType) {
  const int64_t K = 96, N = 37, M = 5;
  auto w = Random(K * N), x = Random(K * M);
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    Tensor wt = Make(type, {K, N, 1, 1}, w);
    std::vector<uint8_t> bytes(wt.nbytes());
    backend_->Download(wt, bytes.data(), bytes.size());
    Tensor y = Zeros({N, M, 1, 1});
    backend_->MatMul(wt, F32({K, M, 1, 1}, x), y);
    EXPECT_LT(MaxRelDiff(Read(y), ReferenceMatMul(type, bytes, wt.row_bytes(), x, K, N, M)), 1e-5) << DTypeName(type);
  }
}

// The integer tiles cover 4 rows x 4 columns and 16-row blocks: every remainder, one token,
// one block per row, and a column's result must not depend on how many columns share the call
// (prefill then decode must equal a longer prefill).
TEST_F(CpuOps, QuantisedMatMulOddShapesAndColumnIndependence) {
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    for (int64_t K : {32, 96, 320}) {
      for (int64_t N : {1, 3, 4, 5, 17, 333}) {
        for (int64_t M : {1, 2, 3, 4, 5, 9, 77}) {
          auto w = Random(K * N, -2, 2), x = Random(K * M, -3, 3);
          Tensor wt = Make(type, {K, N, 1, 1}, w);
          std::vector<uint8_t> bytes(wt.nbytes());
          backend_->Download(wt, bytes.data(), bytes.size());
          Tensor y = Zeros({N, M, 1, 1});
          backend_->MatMul(wt, F32({K, M, 1, 1}, x), y);
          const auto got = Read(y);
          const std::string what = std::string(DTypeName(type)) + " K=" + std::to_string(K) +
                                   " N=" + std::to_string(N) + " M=" + std::to_string(M);
          ASSERT_LT(MaxRelDiff(got, ReferenceMatMul(type, bytes, wt.row_bytes(), x, K, N, M)), 1e-5) << what;
          const int64_t last = M - 1;  // the last column alone
          Tensor y1 = Zeros({N, 1, 1, 1});
          backend_->MatMul(wt, F32({K, 1, 1, 1}, std::vector<float>(x.begin() + last * K, x.end())), y1);
          const auto alone = Read(y1);
          for (int64_t n = 0; n < N; ++n) ASSERT_EQ(alone[n], got[last * N + n]) << what << " row " << n;
        }
      }
    }
  }
}

TEST_F(CpuOps, QuantisedActivationsKeepZeroAndExtremeBlocks) {
  // A block of zeros (scale 0), one spike, and values that round to +-127 exactly.
  const int64_t K = 96, N = 6;
  std::vector<float> x(K, 0.0f);
  x[40] = 1e6f;
  for (int i = 64; i < 96; ++i) x[i] = (i % 2 ? 1.0f : -1.0f) * (i - 63);
  auto w = Random(K * N);
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    Tensor wt = Make(type, {K, N, 1, 1}, w);
    std::vector<uint8_t> bytes(wt.nbytes());
    backend_->Download(wt, bytes.data(), bytes.size());
    Tensor y = Zeros({N, 1, 1, 1});
    backend_->MatMul(wt, F32({K, 1, 1, 1}, x), y);
    EXPECT_LT(MaxRelDiff(Read(y), ReferenceMatMul(type, bytes, wt.row_bytes(), x, K, N, 1)), 1e-5) << DTypeName(type);
  }
}

TEST_F(CpuOps, QuantisedHeadMatMulUsesColumnOffset) {
  const int64_t K = 64, N = 7, H = 3, T = 5, Kx = 128, off = 32;
  auto w = Random(K * N * H), x = Random(Kx * H * T);
  for (DType type : {DType::kQ8_0, DType::kQ4_0}) {
    Tensor wt = Make(type, {K, N, H, 1}, w);
    std::vector<uint8_t> bytes(wt.nbytes());
    backend_->Download(wt, bytes.data(), bytes.size());
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

TEST_F(CpuOps, HeadMatMulUsesColumnOffset) {
  const int64_t K = 8, N = 5, H = 3, T = 4, Kx = 12, off = 3;
  auto w = Random(K * N * H), x = Random(Kx * H * T);
  Tensor y = Zeros({N, H, T, 1});
  backend_->HeadMatMul(F32({K, N, H, 1}, w), F32({Kx, H, T, 1}, x), off, y);
  std::vector<float> expect(N * H * T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n) {
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += double(w[(h * N + n) * K + k]) * x[(t * H + h) * Kx + off + k];
        expect[(t * H + h) * N + n] = float(s);
      }
  EXPECT_LT(MaxRelDiff(Read(y), expect), 1e-6);
}

TEST_F(CpuOps, RmsNormPartialRowKeepsTail) {
  const int64_t W = 10, D = 6, R = 3;
  auto x = Random(W * R), w = Random(D);
  Tensor y = Zeros({W, R, 1, 1});
  backend_->RmsNorm(F32({W, R, 1, 1}, x), F32({D, 1, 1, 1}, w), 1e-5f, y);
  auto out = Read(y);
  for (int64_t r = 0; r < R; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += double(x[r * W + i]) * x[r * W + i];
    const double scale = 1.0 / std::sqrt(ss / D + 1e-5);
    for (int64_t i = 0; i < D; ++i) EXPECT_NEAR(out[r * W + i], x[r * W + i] * scale * w[i], 1e-5);
    for (int64_t i = D; i < W; ++i) EXPECT_EQ(out[r * W + i], x[r * W + i]);
  }
}

// The fused op is the pair it replaces, bit for bit: model width, per-head rows, a kept tail,
// an odd width, and y = x.
TEST_F(CpuOps, AddRmsNormEqualsAddThenRmsNorm) {
  using Case = std::tuple<Shape, int64_t, bool>;  // x's shape, w's length, y = x
  for (auto [ne, d, in_place] : {Case{{2304, 3, 1, 1}, 2304, false}, Case{{128, 8, 4, 1}, 128, false},
                                 Case{{10, 3, 1, 1}, 6, false}, Case{{2305, 2, 1, 1}, 2305, true}}) {
    const std::vector<float> x = Random(ne[0] * ne[1] * ne[2]), a = Random(x.size());
    Tensor w = F32({d, 1, 1, 1}, Random(d)), add = F32(ne, a);
    Tensor want_x = F32(ne, x), got_x = F32(ne, x);
    Tensor want_y = in_place ? want_x : Zeros(ne), got_y = in_place ? got_x : Zeros(ne);
    backend_->Add(want_x, add, want_x);
    backend_->RmsNorm(want_x, w, 1e-5f, want_y);
    backend_->AddRmsNorm(got_x, add, w, 1e-5f, got_y);
    EXPECT_TRUE(Bytes(got_y) == Bytes(want_y)) << "width " << ne[0] << " d " << d;
    EXPECT_TRUE(Bytes(got_x) == Bytes(want_x)) << "width " << ne[0] << " d " << d;
  }
}

// The gated delta rule written out directly, in double precision.
struct KdaCase {
  int64_t dk, heads, tokens;
  std::vector<float> q, k, v, g, beta, state;
};

void ReferenceKda(const KdaCase& c, std::vector<float>& out, std::vector<double>& state) {
  const int64_t dk = c.dk, H = c.heads;
  state.assign(c.state.begin(), c.state.end());
  out.assign(dk * H * c.tokens, 0);
  const double scale = 1.0 / std::sqrt(double(dk));
  for (int64_t t = 0; t < c.tokens; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (t * H + h) * dk;
      double* S = state.data() + h * dk * dk;  // S[v][k]
      for (int64_t v = 0; v < dk; ++v) {
        for (int64_t kk = 0; kk < dk; ++kk) S[v * dk + kk] *= std::exp(double(c.g[base + kk]));
        double kv = 0;
        for (int64_t kk = 0; kk < dk; ++kk) kv += S[v * dk + kk] * c.k[base + kk];
        const double u = c.beta[t * H + h] * (c.v[base + v] - kv);
        double o = 0;
        for (int64_t kk = 0; kk < dk; ++kk) {
          S[v * dk + kk] += c.k[base + kk] * u;
          o += S[v * dk + kk] * c.q[base + kk];
        }
        out[base + v] = float(o * scale);
      }
    }
}

// (tokens, chunk, dk, most negative log-decay per token): deep decays take the chunked form's
// per-pair-exponent path, dk 20 the vector tails.
class KdaForms : public CpuOps,
                 public ::testing::WithParamInterface<std::tuple<int64_t, int64_t, int64_t, float>> {};

TEST_P(KdaForms, ChunkedAndRecurrentMatchReference) {
  const auto [tokens, chunk, dk, g_min] = GetParam();
  KdaCase c{dk, 3, tokens, {}, {}, {}, {}, {}, {}};
  const int64_t n = c.dk * c.heads * tokens;
  auto normalise = [&](std::vector<float>& x) {
    for (int64_t r = 0; r < n / c.dk; ++r) {
      double s = 0;
      for (int64_t i = 0; i < c.dk; ++i) s += double(x[r * c.dk + i]) * x[r * c.dk + i];
      for (int64_t i = 0; i < c.dk; ++i) x[r * c.dk + i] /= float(std::sqrt(s));
    }
  };
  c.q = Random(n);
  c.k = Random(n);
  normalise(c.q);
  normalise(c.k);
  c.v = Random(n);
  c.g = Random(n, g_min, -0.001f);
  c.beta = Random(c.heads * tokens, 0.05f, 0.95f);
  c.state = Random(c.dk * c.dk * c.heads, -0.5f, 0.5f);
  std::vector<float> expect;
  std::vector<double> expect_state;
  ReferenceKda(c, expect, expect_state);

  for (int64_t form_chunk : {int64_t{0}, chunk}) {
    KdaStateView state{F32({c.dk, c.dk, c.heads, 1}, c.state), Zeros({3, c.dk * c.heads, 3, 1})};
    Tensor out = Zeros({c.dk, c.heads, tokens, 1});
    const Shape shape = {c.dk, c.heads, tokens, 1};
    SeqSlice slice{0, tokens};
    backend_->KdaAttention(F32(shape, c.q), F32(shape, c.k), F32(shape, c.v), F32(shape, c.g),
                           F32({c.heads, tokens, 1, 1}, c.beta), {slice}, {state}, form_chunk, out);
    EXPECT_LT(MaxRelDiff(Read(out), expect), 2e-5) << "chunk " << form_chunk;
    std::vector<float> expect_state_f(expect_state.begin(), expect_state.end());
    EXPECT_LT(MaxRelDiff(Read(state.recurrent), expect_state_f), 2e-5) << "chunk " << form_chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KdaForms,
                         ::testing::Values(std::make_tuple(1, 64, 16, -2.0f), std::make_tuple(5, 2, 16, -2.0f),
                                           std::make_tuple(37, 8, 16, -2.0f), std::make_tuple(130, 64, 16, -2.0f),
                                           std::make_tuple(64, 64, 16, -2.0f), std::make_tuple(77, 16, 20, -0.2f),
                                           std::make_tuple(100, 64, 20, -8.0f), std::make_tuple(3, 64, 24, -8.0f)));

// The vectorised dequantisers give DequantizeRow's values bit for bit (RowDot and the f32 tiles
// rely on it): random rows with every q5_0 fifth-bit pattern, zero blocks and negatives.
TEST_F(CpuOps, DequantizeRowFastMatchesDequantizeRow) {
  for (DType type : {DType::kQ5_0, DType::kQ8_0, DType::kQ4_0, DType::kF16}) {
    const int64_t k = 32 * 37;
    auto values = Random(k, -4, 4);
    std::fill(values.begin() + 64, values.begin() + 96, 0.0f);
    std::vector<uint8_t> row(RowBytes(type, k));
    QuantizeRow(type, values.data(), row.data(), k);
    std::vector<float> fast(k), expect(k);
    cpu::DequantizeRowFast(type, row.data(), fast.data(), k);
    DequantizeRow(type, row.data(), expect.data(), k);
    for (int64_t i = 0; i < k; ++i) ASSERT_EQ(fast[i], expect[i]) << DTypeName(type) << " value " << i;
  }
}

// GemmNN's register blocks (6 rows, 32 / 16 columns) and their masked edges, with leading
// dimensions wider than the operands: every element is one FMA chain over p in order.
TEST_F(CpuOps, GemmNNEdgesAndStrides) {
  for (const auto& [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 1, 1}, {7, 45, 13}, {6, 32, 64}, {13, 17, 3}, {128, 128, 64}, {5, 8, 130}}) {
    const int64_t lda = k + 3, ldb = n + 5, ldc = n + 2;
    const auto a = Random(m * lda), b = Random(k * ldb);
    std::vector<float> c(m * ldc, -7.0f);
    cpu::GemmNN(a.data(), lda, b.data(), ldb, c.data(), ldc, m, n, k);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < ldc; ++j) {
        float expect = -7.0f;  // columns past n untouched
        if (j < n) {
          expect = 0.0f;
          for (int64_t p = 0; p < k; ++p) expect = std::fma(a[i * lda + p], b[p * ldb + j], expect);
        }
        ASSERT_EQ(c[i * ldc + j], expect) << m << "x" << n << "x" << k << " at " << i << "," << j;
      }
    }
  }
}

// The KDA gate's vectorised softplus against log1p(exp) in double: deep negative arguments
// (where 1 + e^x rounds to 1), the switch to x at 20, and a head width with a scalar tail.
TEST_F(CpuOps, KdaGateSoftplusWithinUlps) {
  for (int64_t head_dim : {64, 13}) {
    const int64_t heads = 3, width = heads * head_dim, tokens = 40;
    std::vector<float> f(width * tokens);
    for (size_t i = 0; i < f.size(); ++i) f[i] = -40.0f + 70.0f * float(i) / float(f.size());
    const auto bias = Random(width, -0.5f, 0.5f), a = Random(heads, -2.0f, -0.1f);
    Tensor g = Zeros({width, tokens, 1, 1});
    backend_->KdaGate(F32({width, tokens, 1, 1}, f), F32({width, 1, 1, 1}, bias), F32({heads, 1, 1, 1}, a), head_dim, g);
    const auto got = Read(g);
    for (int64_t i = 0; i < width * tokens; ++i) {
      const double x = double(f[i] + bias[i % width]);
      const double expect = double(a[(i % width) / head_dim]) * (x > 20 ? x : std::log1p(std::exp(x)));
      ASSERT_NEAR(got[i], expect, 4e-7 * std::fabs(expect)) << "x=" << x << " head_dim=" << head_dim;
    }
  }
}

TEST_F(CpuOps, ShortConvCarriesTailAcrossCalls) {
  const int64_t D = 5, taps = 4, T = 9;
  auto x = Random(D * T), w = Random(taps * D);
  auto run = [&](std::vector<SeqSlice> parts) {
    KdaStateView state{Zeros({1, 1, 1, 1}), Zeros({taps - 1, D, 3, 1})};
    Tensor y = Zeros({D, T, 1, 1});
    Tensor xt = F32({D, T, 1, 1}, x), wt = F32({taps, D, 1, 1}, w);
    for (const SeqSlice& part : parts) backend_->ShortConvSilu(xt, wt, 1, {part}, {state}, y);
    return Read(y);
  };
  auto whole = run({{0, T}});
  auto split = run({{0, 4}, {4, 1}, {5, 4}});
  EXPECT_EQ(whole, split);
  // Direct formula for one output: token 2, channel 3 (zero history before token 0).
  double acc = 0;
  for (int64_t j = 0; j < taps; ++j) {
    const int64_t t = 2 - (taps - 1) + j;
    if (t >= 0) acc += w[3 * taps + j] * x[t * D + 3];
  }
  EXPECT_NEAR(whole[2 * D + 3], acc / (1 + std::exp(-acc)), 1e-6);
}

TEST_F(CpuOps, MlaAttentionOverShuffledPages) {
  const int64_t L = 64, R = 48, H = 2, page = 4, pages = 5, cached = 6, fresh = 7;
  auto rows = Random(L * (cached + fresh));
  auto q = Random(L * H * fresh);
  Tensor pool = *backend_->Alloc(DType::kF32, {L, page, pages, 1});
  backend_->Zero(pool);
  std::vector<int32_t> table = {3, 0, 4, 1};  // 13 tokens need 4 pages
  LatentSeqView first{table, 0, 0, cached};
  backend_->LatentStore(F32({L, cached, 1, 1}, std::vector<float>(rows.begin(), rows.begin() + L * cached)), {first}, pool);
  LatentSeqView second{table, cached, 0, fresh};
  backend_->LatentStore(F32({L, fresh, 1, 1}, std::vector<float>(rows.begin() + L * cached, rows.end())), {second}, pool);
  Tensor out = Zeros({R, H, fresh, 1});
  const float scale = 0.3f;
  backend_->MlaAttention(F32({L, H, fresh, 1}, q), pool, {second}, scale, out);
  std::vector<float> expect(R * H * fresh);
  for (int64_t t = 0; t < fresh; ++t)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t visible = cached + t + 1;
      std::vector<double> s(visible);
      double mx = -1e30, sum = 0;
      for (int64_t p = 0; p < visible; ++p) {
        double d = 0;
        for (int64_t i = 0; i < L; ++i) d += double(q[(t * H + h) * L + i]) * rows[p * L + i];
        s[p] = d * scale;
        mx = std::max(mx, s[p]);
      }
      for (auto& v : s) sum += v = std::exp(v - mx);
      for (int64_t i = 0; i < R; ++i) {
        double acc = 0;
        for (int64_t p = 0; p < visible; ++p) acc += s[p] / sum * rows[p * L + i];
        expect[(t * H + h) * R + i] = float(acc);
      }
    }
  EXPECT_LT(MaxRelDiff(Read(out), expect), 1e-5);
}

TEST_F(CpuOps, LatentCacheTypesRoundTripWithinBounds) {
  const int64_t L = 576, T = 3;
  auto rows = Random(L * T, -3, 3);
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    Tensor pool = *backend_->Alloc(type, {L, 4, 1, 1});
    std::vector<int32_t> table = {0};
    LatentSeqView seq{table, 0, 0, T};
    backend_->LatentStore(F32({L, T, 1, 1}, rows), {seq}, pool);
    std::vector<uint8_t> bytes(pool.nbytes());
    backend_->Download(pool, bytes.data(), bytes.size());
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> back(L);
      DequantizeRow(type, bytes.data() + t * pool.row_bytes(), back.data(), L);
      for (int64_t b = 0; b < L / 32; ++b) {
        float absmax = 0;
        for (int i = 0; i < 32; ++i) absmax = std::max(absmax, std::fabs(rows[t * L + b * 32 + i]));
        for (int i = 0; i < 32; ++i) {
          const float x = rows[t * L + b * 32 + i], y = back[b * 32 + i];
          float bound = 0;
          switch (type) {
            case DType::kF32: bound = 0; break;
            case DType::kF16: bound = std::fabs(x) * 1e-3f; break;
            case DType::kBF16: bound = std::fabs(x) * 8e-3f; break;
            case DType::kQ8_0: bound = absmax / 127.0f * 0.5f + absmax * 1e-3f; break;
            case DType::kQ4_0: bound = absmax / 8.0f * 1.001f + absmax * 1e-3f; break;
            default: break;
          }
          ASSERT_LE(std::fabs(x - y), bound) << DTypeName(type) << " value " << x;
        }
      }
    }
  }
}

TEST_F(CpuOps, MoeRouteUsesBiasForChoiceOnly) {
  // Expert 2 has the lowest logit but a bias that makes it chosen; its weight is unbiased.
  std::vector<float> logits = {1.0f, 0.5f, -1.0f, 0.0f};
  std::vector<float> bias = {0, 0, 5.0f, 0};
  Tensor ids = *backend_->Alloc(DType::kI32, {2, 1, 1, 1});
  Tensor weights = Zeros({2, 1, 1, 1});
  backend_->MoeRoute(F32({4, 1, 1, 1}, logits), F32({4, 1, 1, 1}, bias), 2, true, 2.0f, ids, weights);
  int32_t chosen[2];
  backend_->Download(ids, chosen, sizeof(chosen));
  auto w = Read(weights);
  EXPECT_EQ(chosen[0], 2);
  EXPECT_EQ(chosen[1], 0);
  const double p2 = 1 / (1 + std::exp(1.0)), p0 = 1 / (1 + std::exp(-1.0));
  EXPECT_NEAR(w[0], 2.0 * p2 / (p0 + p2), 1e-6);
  EXPECT_NEAR(w[1], 2.0 * p0 / (p0 + p2), 1e-6);
}

// MoE experts against a direct formula (silu(gate x) * (up x), then down, weighted), with
// activations rounded the way the backend rounds them for quantised experts; and a token's
// output must not depend on which other tokens share the call.
TEST_F(CpuOps, MoeExpertsMatchReferenceForEveryWeightType) {
  const int64_t hidden = 64, ffn = 96, experts = 5, top_k = 2, tokens = 11;
  auto gate = Random(hidden * ffn * experts), up = Random(hidden * ffn * experts);
  auto down = Random(ffn * hidden * experts), x = Random(hidden * tokens, -2, 2);
  std::vector<int32_t> ids(tokens * top_k);
  std::vector<float> route_w(tokens * top_k);
  for (int64_t t = 0; t < tokens; ++t) {
    ids[t * top_k] = static_cast<int32_t>(t % experts);
    ids[t * top_k + 1] = static_cast<int32_t>((t + 1 + t / experts) % experts);  // never the first
    route_w[t * top_k] = 0.7f;
    route_w[t * top_k + 1] = 0.4f;
  }
  for (DType type : {DType::kF32, DType::kQ8_0, DType::kQ4_0}) {
    Tensor g = Make(type, {hidden, ffn, experts, 1}, gate), u = Make(type, {hidden, ffn, experts, 1}, up);
    Tensor d = Make(type, {ffn, hidden, experts, 1}, down);
    auto bytes = [&](const Tensor& t) {
      std::vector<uint8_t> b(t.nbytes());
      backend_->Download(t, b.data(), b.size());
      return b;
    };
    const auto gb = bytes(g), ub = bytes(u), db = bytes(d);
    auto run = [&](int64_t first, int64_t count) {  // tokens [first, first + count)
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
        auto slice = [&](const std::vector<uint8_t>& b, const Tensor& whole, int64_t rows) {  // expert e
          const int64_t bytes = rows * whole.row_bytes();
          return std::vector<uint8_t>(b.begin() + e * bytes, b.begin() + (e + 1) * bytes);
        };
        const auto gv = ReferenceMatMul(type, slice(gb, g, ffn), g.row_bytes(), xt, hidden, ffn, 1);
        const auto uv = ReferenceMatMul(type, slice(ub, u, ffn), u.row_bytes(), xt, hidden, ffn, 1);
        std::vector<float> act(ffn);
        for (int64_t f = 0; f < ffn; ++f) act[f] = float(gv[f] / (1.0 + std::exp(-double(gv[f]))) * uv[f]);
        const auto dv = ReferenceMatMul(type, slice(db, d, hidden), d.row_bytes(), act, ffn, hidden, 1);
        for (int64_t i = 0; i < hidden; ++i) expect[t * hidden + i] += route_w[t * top_k + j] * dv[i];
      }
    }
    EXPECT_LT(MaxRelDiff(all, expect), 1e-4) << DTypeName(type);
    if (type == DType::kF32) continue;  // f32 experts: a different summation order for one token
    const auto last = run(tokens - 1, 1);
    for (int64_t i = 0; i < hidden; ++i) {
      ASSERT_EQ(last[i], all[(tokens - 1) * hidden + i]) << DTypeName(type) << " element " << i;
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
