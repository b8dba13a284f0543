// K-quant blocks (q4_K, q5_K, q6_K): sizes and type ids, every bit position of ggml's layouts
// on hand-built blocks, and quantise / dequantise round trips.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"

namespace latentserve {
namespace {

TEST(KQuant, TraitsMatchGgml) {
  EXPECT_EQ(static_cast<uint32_t>(DType::kQ4_K), 12u);
  EXPECT_EQ(static_cast<uint32_t>(DType::kQ5_K), 13u);
  EXPECT_EQ(static_cast<uint32_t>(DType::kQ6_K), 14u);
  EXPECT_EQ(GetDTypeTraits(12)->block_bytes, 144);
  EXPECT_EQ(GetDTypeTraits(13)->block_bytes, 176);
  EXPECT_EQ(GetDTypeTraits(14)->block_bytes, 210);
  for (uint32_t id : {12u, 13u, 14u}) EXPECT_EQ(GetDTypeTraits(id)->block_elements, 256);
  EXPECT_EQ(RowBytes(DType::kQ4_K, 2304), 9 * 144);
  EXPECT_EQ(ParseDType("q6_k"), DType::kQ6_K);
}

// Sub-block j: scale 10 + 7 j, min 60 - 7 j (both above 15 for some j >= 4, so the 2 high
// bits stored in bytes 0..7 matter), packed as ggml packs them.
void FillScales(uint8_t scales[12], int sc[8], int m[8]) {
  for (int j = 0; j < 8; ++j) {
    sc[j] = 10 + 7 * j;
    m[j] = 60 - 7 * j;
  }
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j] | (sc[j + 4] >> 4) << 6);
    scales[j + 4] = static_cast<uint8_t>(m[j] | (m[j + 4] >> 4) << 6);
    scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
  }
}

TEST(KQuant, Q4KLayout) {
  BlockQ4_K block{};
  block.d = FloatToHalf(0.5f);
  block.dmin = FloatToHalf(0.25f);
  int sc[8], m[8];
  FillScales(block.scales, sc, m);
  for (int i = 0; i < 128; ++i) block.qs[i] = static_cast<uint8_t>(i * 37 + 11);
  float y[256];
  DequantizeRow(DType::kQ4_K, &block, y, 256);
  for (int e = 0; e < 256; ++e) {
    const int chunk = e / 64, l = e % 32, j = e / 32;
    const uint8_t byte = block.qs[32 * chunk + l];
    const int q = (e % 64) < 32 ? byte & 15 : byte >> 4;
    EXPECT_EQ(y[e], 0.5f * sc[j] * q - 0.25f * m[j]) << e;
  }
}

TEST(KQuant, Q5KLayout) {
  BlockQ5_K block{};
  block.d = FloatToHalf(0.5f);
  block.dmin = FloatToHalf(0.25f);
  int sc[8], m[8];
  FillScales(block.scales, sc, m);
  for (int i = 0; i < 128; ++i) block.qs[i] = static_cast<uint8_t>(i * 53 + 5);
  for (int i = 0; i < 32; ++i) block.qh[i] = static_cast<uint8_t>(i * 29 + 3);
  float y[256];
  DequantizeRow(DType::kQ5_K, &block, y, 256);
  for (int e = 0; e < 256; ++e) {
    const int chunk = e / 64, l = e % 32, j = e / 32;
    const bool high_half = (e % 64) >= 32;
    const uint8_t byte = block.qs[32 * chunk + l];
    const int bit = (block.qh[l] >> (2 * chunk + (high_half ? 1 : 0))) & 1;
    const int q = (high_half ? byte >> 4 : byte & 15) + 16 * bit;
    EXPECT_EQ(y[e], 0.5f * sc[j] * q - 0.25f * m[j]) << e;
  }
}

TEST(KQuant, Q6KLayout) {
  BlockQ6_K block{};
  block.d = FloatToHalf(0.125f);
  for (int i = 0; i < 128; ++i) block.ql[i] = static_cast<uint8_t>(i * 41 + 7);
  for (int i = 0; i < 64; ++i) block.qh[i] = static_cast<uint8_t>(i * 23 + 1);
  for (int s = 0; s < 16; ++s) block.scales[s] = static_cast<int8_t>(s * 17 - 128);
  float y[256];
  DequantizeRow(DType::kQ6_K, &block, y, 256);
  for (int e = 0; e < 256; ++e) {
    const int half = e / 128, l = e % 32, i = (e % 128) / 32;  // i: which of the 4 per (half, l)
    const uint8_t lo_byte = block.ql[64 * half + l + (i % 2 ? 32 : 0)];
    const int lo = i < 2 ? lo_byte & 15 : lo_byte >> 4;
    const int hi = (block.qh[32 * half + l] >> (2 * i)) & 3;
    EXPECT_EQ(y[e], 0.125f * block.scales[e / 16] * ((lo | hi << 4) - 32)) << e;
  }
}

TEST(KQuant, Q5Layouts) {
  BlockQ5_0 b0{};
  BlockQ5_1 b1{};
  b0.d = b1.d = FloatToHalf(0.5f);
  b1.m = FloatToHalf(-2.0f);
  for (int i = 0; i < 16; ++i) b0.qs[i] = b1.qs[i] = static_cast<uint8_t>(i * 37 + 3);
  const uint8_t qh[4] = {0x5a, 0x0f, 0xc3, 0x81};
  std::memcpy(b0.qh, qh, 4);
  std::memcpy(b1.qh, qh, 4);
  float y0[32], y1[32];
  DequantizeRow(DType::kQ5_0, &b0, y0, 32);
  DequantizeRow(DType::kQ5_1, &b1, y1, 32);
  for (int e = 0; e < 32; ++e) {
    const int low = e < 16 ? b0.qs[e] & 15 : b0.qs[e - 16] >> 4;
    const int q = low | ((qh[e / 8] >> (e % 8)) & 1) << 4;  // fifth bit: bit e of qh
    EXPECT_EQ(y0[e], (q - 16) * 0.5f) << e;
    EXPECT_EQ(y1[e], q * 0.5f - 2.0f) << e;
  }
  EXPECT_EQ(GetDTypeTraits(6)->block_bytes, 22);
  EXPECT_EQ(GetDTypeTraits(7)->block_bytes, 24);
  EXPECT_EQ(SuperBlockFallback(DType::kQ4_K), DType::kQ5_0);
}

// Normalised squared error of a gaussian row; ggml's own quantisers reach about 4e-3 (q4_K),
// 1e-3 (q5_K) and 2.5e-4 (q6_K); ours, without ggml's scale search, must stay near.
TEST(KQuant, RoundTripError) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.7f);
  std::vector<float> x(256 * 32);
  for (float& v : x) v = normal(rng);
  for (const auto& [type, bound] : {std::pair{DType::kQ4_K, 1.5e-2}, {DType::kQ5_K, 4e-3}, {DType::kQ6_K, 1e-3},
                                    {DType::kQ5_0, 4e-3}, {DType::kQ5_1, 4e-3}}) {
    std::vector<uint8_t> packed(RowBytes(type, x.size()));
    std::vector<float> y(x.size());
    QuantizeRow(type, x.data(), packed.data(), x.size());
    DequantizeRow(type, packed.data(), y.data(), y.size());
    double sq = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      sq += double(y[i] - x[i]) * (y[i] - x[i]);
      norm += double(x[i]) * x[i];
    }
    EXPECT_LT(sq / norm, bound) << DTypeName(type);
  }
}

TEST(KQuant, ZeroAndConstantBlocks) {
  for (DType type : {DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    for (float value : {0.0f, -1.5f, 2.0f}) {
      const std::vector<float> x(256, value);
      std::vector<uint8_t> packed(RowBytes(type, 256));
      std::vector<float> y(256);
      QuantizeRow(type, x.data(), packed.data(), 256);
      DequantizeRow(type, packed.data(), y.data(), 256);
      for (float v : y) EXPECT_NEAR(v, value, std::fabs(value) * 0.02f) << DTypeName(type);
    }
  }
}

}  // namespace
}  // namespace latentserve
