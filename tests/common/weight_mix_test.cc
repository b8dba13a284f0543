// --weight-type parsing and the per-tensor types of the K-quant mixes (tools/lib/weight_mix.h),
// and that a generated Q4_K_M file carries them.
#include <cstdio>
#include <map>
#include <string>

#include "common/gguf/gguf.h"
#include "gtest/gtest.h"
#include "tools/lib/test_model.h"
#include "tools/lib/weight_mix.h"

namespace latentserve::tools {
namespace {

TEST(WeightMix, Parse) {
  EXPECT_EQ(ParseWeightType("q4_k_m")->base, DType::kQ4_K);
  EXPECT_EQ(ParseWeightType("q4_k_m")->mix, WeightMix::kQ4_K_M);
  EXPECT_EQ(ParseWeightType("q5_k_m")->mix, WeightMix::kQ5_K_M);
  EXPECT_EQ(ParseWeightType("q6_k")->base, DType::kQ6_K);
  EXPECT_EQ(ParseWeightType("q6_k")->mix, WeightMix::kNone);
  EXPECT_FALSE(ParseWeightType("q3_k").has_value());
  EXPECT_FALSE(ParseWeightType("i32").has_value());
}

TEST(WeightMix, Q4KMTypes) {
  const WeightTypeChoice q4km{DType::kQ4_K, WeightMix::kQ4_K_M};
  const int64_t layers = 8;  // more bits: 0 (< 1), 7 (>= 7), and 3, 6 ((il - 1) % 3 == 2)
  EXPECT_EQ(MatrixType(q4km, "output.weight", 256, layers), DType::kQ6_K);
  EXPECT_EQ(MatrixType(q4km, "token_embd.weight", 256, layers), DType::kQ4_K);
  for (int64_t il = 0; il < layers; ++il) {
    const bool more = il == 0 || il == 7 || il == 3 || il == 6;
    const std::string p = "blk." + std::to_string(il) + ".";
    EXPECT_EQ(MatrixType(q4km, p + "ffn_down_exps.weight", 256, layers), more ? DType::kQ6_K : DType::kQ4_K) << il;
    EXPECT_EQ(MatrixType(q4km, p + "attn_v.weight", 512, layers), more ? DType::kQ6_K : DType::kQ4_K) << il;
    EXPECT_EQ(MatrixType(q4km, p + "ffn_gate_exps.weight", 256, layers), DType::kQ4_K) << il;
  }
  // Widths a super-block does not divide: llama.cpp's fallbacks, then f32.
  EXPECT_EQ(MatrixType(q4km, "blk.1.attn_k_b.weight", 128, layers), DType::kQ5_0);
  EXPECT_EQ(MatrixType({DType::kQ5_K, WeightMix::kQ5_K_M}, "blk.1.attn_k_b.weight", 128, layers), DType::kQ5_1);
  EXPECT_EQ(MatrixType({DType::kQ6_K, WeightMix::kNone}, "blk.1.attn_k_b.weight", 128, layers), DType::kQ8_0);
  EXPECT_EQ(MatrixType(q4km, "blk.1.ssm_beta.weight", 48, layers), DType::kF32);
  EXPECT_EQ(MatrixType({DType::kQ4_0, WeightMix::kNone}, "x", 48, layers), DType::kF32);
  EXPECT_EQ(FileType(q4km), 15u);
}

TEST(WeightMix, GeneratedFileCarriesTheMix) {
  TestModelOptions o = TinyTestModel();
  o.hidden = 256;
  o.expert_ffn = 256;
  o.ffn = 256;
  o.layers = 2;
  o.mla_layers = {1};
  o.qk_nope = 128;
  o.weight_type = DType::kQ4_K;
  o.weight_mix = WeightMix::kQ4_K_M;
  o.out_path = ::testing::TempDir() + "/weight_mix_q4_k_m.gguf";
  ASSERT_TRUE(WriteTestModel(o).ok());
  auto file = gguf::File::Open(o.out_path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::map<std::string, DType> types;
  for (const auto& t : (*file)->tensors()) types[t.name] = t.type;
  EXPECT_EQ(types["output.weight"], DType::kQ6_K);
  EXPECT_EQ(types["token_embd.weight"], DType::kQ4_K);
  // Of 2 layers only layer 1 (>= 7 * 2 / 8) gets more bits.
  EXPECT_EQ(types["blk.0.ffn_down.weight"], DType::kQ4_K);
  EXPECT_EQ(types["blk.1.ffn_down_exps.weight"], DType::kQ6_K);
  EXPECT_EQ(types["blk.1.ffn_gate_exps.weight"], DType::kQ4_K);
  EXPECT_EQ(types["blk.1.attn_k_b.weight"], DType::kQ5_0);  // qk_nope 128: no whole super-block
  std::remove(o.out_path.c_str());
}

}  // namespace
}  // namespace latentserve::tools
