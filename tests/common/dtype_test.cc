// Quantise/dequantise round trips with their error bounds, and the q4_0/q8_0 block layouts.
#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"

namespace latentserve {
namespace {

std::vector<float> RandomRow(int64_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

std::vector<float> RoundTrip(DType type, const std::vector<float>& x) {
  std::vector<uint8_t> packed(RowBytes(type, static_cast<int64_t>(x.size())));
  std::vector<float> y(x.size());
  QuantizeRow(type, x.data(), packed.data(), static_cast<int64_t>(x.size()));
  DequantizeRow(type, packed.data(), y.data(), static_cast<int64_t>(x.size()));
  return y;
}

TEST(DType, TraitsAndNames) {
  EXPECT_EQ(Traits(DType::kQ8_0).block_bytes, 34);
  EXPECT_EQ(Traits(DType::kQ4_0).block_bytes, 18);
  EXPECT_EQ(RowBytes(DType::kQ4_0, 64), 36);
  EXPECT_EQ(RowBytes(DType::kBF16, 3), 6);
  EXPECT_FALSE(GetDTypeTraits(11).has_value());  // q3_K
  EXPECT_FALSE(GetDTypeTraits(3).has_value());   // q4_1
  EXPECT_TRUE(GetDTypeTraits(30).has_value());
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_K, DType::kQ5_K,
                  DType::kQ6_K}) {
    EXPECT_EQ(ParseDType(DTypeName(t)), t);
  }
  EXPECT_FALSE(ParseDType("q4_K").has_value());
}

TEST(DType, F32IsExact) {
  const auto x = RandomRow(100, 1, 3.0f);
  EXPECT_EQ(RoundTrip(DType::kF32, x), x);
}

TEST(DType, F16RelativeError) {
  const auto x = RandomRow(4096, 2, 10.0f);
  const auto y = RoundTrip(DType::kF16, x);
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::fabs(x[i]) < 6.1e-5f) continue;  // subnormal halves have absolute, not relative, error
    EXPECT_LE(std::fabs(y[i] - x[i]), std::fabs(x[i]) * std::ldexp(1.0f, -11)) << x[i];
  }
  EXPECT_EQ(HalfToFloat(FloatToHalf(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(FloatToHalf(1e6f))));
}

TEST(DType, Bf16RelativeError) {
  const auto x = RandomRow(4096, 3, 1e3f);
  const auto y = RoundTrip(DType::kBF16, x);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(y[i] - x[i]), std::fabs(x[i]) * std::ldexp(1.0f, -8)) << x[i];
  }
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
}

// Per block: |error| <= d/2 plus the f16 rounding of the scale (<= 127 * d * 2^-11).
TEST(DType, Q8_0ErrorBound) {
  const auto x = RandomRow(32 * 64, 4, 2.0f);
  const auto y = RoundTrip(DType::kQ8_0, x);
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[b * 32 + i]));
    const float d = amax / 127.0f;
    for (int i = 0; i < 32; ++i) {
      EXPECT_LE(std::fabs(y[b * 32 + i] - x[b * 32 + i]), d * (0.5f + 127.0f / 2048.0f) + 1e-7f);
    }
  }
}

// q4_0 maps the block's extreme to -8 d, so the opposite extreme clamps at 7 d: |error| <= |d|.
TEST(DType, Q4_0ErrorBound) {
  const auto x = RandomRow(32 * 64, 5, 2.0f);
  const auto y = RoundTrip(DType::kQ4_0, x);
  double sq = 0, norm = 0;
  for (size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[b * 32 + i]));
    const float d = amax / 8.0f;
    for (int i = 0; i < 32; ++i) {
      const float err = std::fabs(y[b * 32 + i] - x[b * 32 + i]);
      EXPECT_LE(err, d * (1.0f + 8.0f / 2048.0f) + 1e-7f);
      sq += err * err;
      norm += x[b * 32 + i] * x[b * 32 + i];
    }
  }
  EXPECT_LT(sq / norm, 0.02);  // normalised MSE of 4-bit quantisation of a gaussian
}

TEST(DType, ZeroBlocksStayZero) {
  const std::vector<float> x(64, 0.0f);
  for (DType t : {DType::kQ8_0, DType::kQ4_0}) EXPECT_EQ(RoundTrip(t, x), x);
}

TEST(DType, Q4_0NibbleLayout) {
  BlockQ4_0 block{};
  block.d = FloatToHalf(0.5f);
  for (int i = 0; i < 16; ++i) block.qs[i] = static_cast<uint8_t>((i & 0xf) | ((15 - i) << 4));
  float y[32];
  DequantizeRow(DType::kQ4_0, &block, y, 32);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(y[i], (i - 8) * 0.5f);             // low nibbles: elements 0..15
    EXPECT_EQ(y[16 + i], (15 - i - 8) * 0.5f);   // high nibbles: elements 16..31
  }
}

TEST(DType, Q8_0Layout) {
  BlockQ8_0 block{};
  block.d = FloatToHalf(0.25f);
  for (int i = 0; i < 32; ++i) block.qs[i] = static_cast<int8_t>(i - 16);
  float y[32];
  DequantizeRow(DType::kQ8_0, &block, y, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], (i - 16) * 0.25f);
}

}  // namespace
}  // namespace latentserve
