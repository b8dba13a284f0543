// The test-model generator read back through the GGUF reader: keys, shapes, types, values.
#include "tools/lib/test_model.h"

#include <cmath>
#include <fstream>
#include <iterator>
#include <set>

#include "common/gguf/gguf.h"
#include "gguf_test_util.h"
#include "gtest/gtest.h"

namespace latentserve::tools {
namespace {

using gguf::File;

std::unique_ptr<File> Generate(TestModelOptions o, const std::string& name,
                               TestModelSummary* summary = nullptr) {
  o.out_path = gguf::testing::TempPath(name);
  const absl::Status status = WriteTestModel(o, summary);
  EXPECT_TRUE(status.ok()) << status;
  auto file = File::Open(o.out_path);
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void ExpectShape(const File& f, const std::string& name, std::vector<int64_t> ne, DType type) {
  const gguf::TensorInfo* t = f.FindTensor(name);
  ASSERT_NE(t, nullptr) << name;
  EXPECT_EQ(t->ne, ne) << name;
  EXPECT_EQ(t->type, type) << name << " is " << DTypeName(t->type);
}

TEST(TestModel, TinyMetadata) {
  TestModelSummary summary;
  auto f = Generate(TinyTestModel(), "tiny_meta.gguf", &summary);
  ASSERT_NE(f, nullptr);
  const std::string p = "kimi-linear.";
  EXPECT_EQ(*f->GetString("general.architecture"), "kimi-linear");
  EXPECT_TRUE(f->GetString("general.name").ok());
  EXPECT_EQ(*f->GetUint(p + "block_count"), 4u);
  EXPECT_EQ(*f->GetUint(p + "embedding_length"), 64u);
  EXPECT_EQ(*f->GetUint(p + "feed_forward_length"), 128u);
  EXPECT_EQ(*f->GetUint(p + "vocab_size"), 320u);
  EXPECT_EQ(*f->GetUint(p + "context_length"), 4096u);
  EXPECT_EQ(*f->GetUint(p + "attention.head_count"), 4u);
  EXPECT_EQ(*f->GetIntArray(p + "attention.head_count_kv"), (std::vector<int64_t>{0, 1, 0, 1}));
  EXPECT_FLOAT_EQ(static_cast<float>(*f->GetFloat(p + "attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_EQ(*f->GetUint(p + "attention.key_length"), 32u + 16u);
  EXPECT_EQ(*f->GetUint(p + "attention.value_length"), 32u);
  EXPECT_EQ(*f->GetUint(p + "attention.key_length_mla"), 16u + 16u);
  EXPECT_EQ(*f->GetUint(p + "attention.value_length_mla"), 16u);
  EXPECT_EQ(*f->GetUint(p + "attention.kv_lora_rank"), 32u);
  EXPECT_EQ(f->Find(p + "attention.q_lora_rank"), nullptr);
  EXPECT_EQ(*f->GetUint(p + "rope.dimension_count"), 16u);
  EXPECT_EQ(*f->GetUint(p + "ssm.conv_kernel"), 4u);
  EXPECT_EQ(*f->GetUint(p + "kda.head_dim"), 16u);
  EXPECT_EQ(*f->GetUint(p + "expert_count"), 8u);
  EXPECT_EQ(*f->GetUint(p + "expert_used_count"), 2u);
  EXPECT_EQ(*f->GetUint(p + "expert_feed_forward_length"), 32u);
  EXPECT_EQ(*f->GetUint(p + "expert_shared_count"), 1u);
  EXPECT_EQ(*f->GetUint(p + "leading_dense_block_count"), 1u);
  EXPECT_FLOAT_EQ(static_cast<float>(*f->GetFloat(p + "expert_weights_scale")), 2.446f);
  EXPECT_TRUE(*f->GetBool(p + "expert_weights_norm"));
  EXPECT_EQ(*f->GetUint(p + "expert_gating_func"), 2u);
  EXPECT_EQ(summary.tensors, f->tensors().size());
  EXPECT_EQ(summary.file_bytes, f->file_size());
  uint64_t params = 0;
  for (const auto& t : f->tensors()) params += static_cast<uint64_t>(t.elements());
  EXPECT_EQ(summary.parameters, params);
}

TEST(TestModel, TokenizerIsAValidBpe) {
  auto f = Generate(TinyTestModel(), "tiny_tok.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*f->GetString("tokenizer.ggml.pre"), "kimi-k2");
  EXPECT_FALSE(*f->GetBool("tokenizer.ggml.add_bos_token"));
  const auto tokens = *f->GetStringArray("tokenizer.ggml.tokens");
  const auto types = *f->GetIntArray("tokenizer.ggml.token_type");
  const auto merges = *f->GetStringArray("tokenizer.ggml.merges");
  ASSERT_EQ(tokens.size(), 320u);
  ASSERT_EQ(types.size(), tokens.size());
  EXPECT_EQ(std::set<std::string>(tokens.begin(), tokens.end()).size(), tokens.size());
  EXPECT_EQ(tokens[' '], "\xC4\xA0");   // 'Ġ'
  EXPECT_EQ(tokens['\n'], "\xC4\x8A");  // 'Ċ'
  EXPECT_EQ(tokens['A'], "A");
  const std::set<std::string> vocab(tokens.begin(), tokens.end());
  ASSERT_FALSE(merges.empty());
  for (const std::string& m : merges) {
    const size_t space = m.find(' ');
    ASSERT_NE(space, std::string::npos) << m;
    const std::string a = m.substr(0, space), b = m.substr(space + 1);
    EXPECT_TRUE(vocab.count(a)) << m;
    EXPECT_TRUE(vocab.count(b)) << m;
    EXPECT_TRUE(vocab.count(a + b)) << m;
  }
  const int64_t bos = *f->GetInt("tokenizer.ggml.bos_token_id");
  const int64_t eos = *f->GetInt("tokenizer.ggml.eos_token_id");
  const int64_t pad = *f->GetInt("tokenizer.ggml.padding_token_id");
  EXPECT_EQ(tokens[bos], "[BOS]");
  EXPECT_EQ(tokens[eos], "<|im_end|>");
  EXPECT_EQ(tokens[pad], "[PAD]");
  for (const char* control : {"<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>",
                              "<|im_middle|>", "[BOS]", "[EOS]", "[PAD]"}) {
    auto it = std::find(tokens.begin(), tokens.end(), control);
    ASSERT_NE(it, tokens.end()) << control;
    EXPECT_EQ(types[it - tokens.begin()], 3) << control;
  }
}

TEST(TestModel, LargeVocabIsFilledWithUnusedTokens) {
  auto vocab = BuildTestVocab(4000);
  ASSERT_TRUE(vocab.ok());
  EXPECT_EQ(vocab->tokens.size(), 4000u);
  EXPECT_EQ(vocab->token_types.back(), 5);
  EXPECT_EQ(std::set<std::string>(vocab->tokens.begin(), vocab->tokens.end()).size(), 4000u);
  EXPECT_FALSE(BuildTestVocab(100).ok());
}

TEST(TestModel, TensorShapesAndTypes) {
  TestModelOptions o = TinyTestModel();
  o.weight_type = DType::kQ8_0;
  auto f = Generate(o, "tiny_q8.gguf");
  ASSERT_NE(f, nullptr);
  const DType q = DType::kQ8_0, f32 = DType::kF32;
  ExpectShape(*f, "token_embd.weight", {64, 320}, q);
  ExpectShape(*f, "output_norm.weight", {64}, f32);
  ExpectShape(*f, "output.weight", {64, 320}, q);
  // Layer 0: KDA + dense FFN.
  ExpectShape(*f, "blk.0.attn_norm.weight", {64}, f32);
  ExpectShape(*f, "blk.0.attn_q.weight", {64, 64}, q);
  ExpectShape(*f, "blk.0.attn_k.weight", {64, 64}, q);
  ExpectShape(*f, "blk.0.attn_v.weight", {64, 64}, q);
  ExpectShape(*f, "blk.0.ssm_conv1d_q.weight", {4, 1, 64}, f32);
  ExpectShape(*f, "blk.0.ssm_conv1d_v.weight", {4, 1, 64}, f32);
  ExpectShape(*f, "blk.0.ssm_f_a.weight", {64, 16}, q);
  ExpectShape(*f, "blk.0.ssm_f_b.weight", {16, 64}, f32);  // ne[0] = 16: not quantisable
  ExpectShape(*f, "blk.0.ssm_beta.weight", {64, 4}, q);
  ExpectShape(*f, "blk.0.ssm_a", {1, 4, 1, 1}, f32);
  ExpectShape(*f, "blk.0.ssm_dt.bias", {64}, f32);
  ExpectShape(*f, "blk.0.ssm_g_a.weight", {64, 16}, q);
  ExpectShape(*f, "blk.0.ssm_g_b.weight", {16, 64}, f32);
  ExpectShape(*f, "blk.0.ssm_norm.weight", {16}, f32);
  ExpectShape(*f, "blk.0.attn_output.weight", {64, 64}, q);
  ExpectShape(*f, "blk.0.ffn_norm.weight", {64}, f32);
  ExpectShape(*f, "blk.0.ffn_gate.weight", {64, 128}, q);
  ExpectShape(*f, "blk.0.ffn_up.weight", {64, 128}, q);
  ExpectShape(*f, "blk.0.ffn_down.weight", {128, 64}, q);
  EXPECT_EQ(f->FindTensor("blk.0.ffn_gate_inp.weight"), nullptr);
  // Layer 1: MLA + MoE.
  ExpectShape(*f, "blk.1.attn_q.weight", {64, 4 * 32}, q);
  ExpectShape(*f, "blk.1.attn_kv_a_mqa.weight", {64, 48}, q);
  ExpectShape(*f, "blk.1.attn_kv_a_norm.weight", {32}, f32);
  ExpectShape(*f, "blk.1.attn_k_b.weight", {16, 32, 4}, f32);
  ExpectShape(*f, "blk.1.attn_v_b.weight", {32, 16, 4}, q);
  ExpectShape(*f, "blk.1.attn_output.weight", {64, 64}, q);
  ExpectShape(*f, "blk.1.ffn_gate_inp.weight", {64, 8}, f32);
  ExpectShape(*f, "blk.1.exp_probs_b.bias", {8}, f32);
  ExpectShape(*f, "blk.1.ffn_gate_exps.weight", {64, 32, 8}, q);
  ExpectShape(*f, "blk.1.ffn_up_exps.weight", {64, 32, 8}, q);
  ExpectShape(*f, "blk.1.ffn_down_exps.weight", {32, 64, 8}, q);
  ExpectShape(*f, "blk.1.ffn_gate_shexp.weight", {64, 32}, q);
  ExpectShape(*f, "blk.1.ffn_up_shexp.weight", {64, 32}, q);
  ExpectShape(*f, "blk.1.ffn_down_shexp.weight", {32, 64}, q);
  EXPECT_EQ(f->FindTensor("blk.1.ssm_a"), nullptr);
  EXPECT_NE(f->FindTensor("blk.2.ssm_a"), nullptr);
  EXPECT_NE(f->FindTensor("blk.3.attn_kv_a_mqa.weight"), nullptr);
  EXPECT_EQ(f->FindTensor("blk.4.attn_norm.weight"), nullptr);
}

TEST(TestModel, ValueDistributions) {
  auto f = Generate(TinyTestModel(), "tiny_values.gguf");
  ASSERT_NE(f, nullptr);
  auto values = [&](const std::string& name) {
    const gguf::TensorInfo* t = f->FindTensor(name);
    EXPECT_NE(t, nullptr) << name;
    EXPECT_EQ(t->type, DType::kF32);
    const float* p = reinterpret_cast<const float*>(t->data);
    return std::vector<float>(p, p + t->elements());
  };
  auto stddev = [](const std::vector<float>& v) {
    double s = 0, s2 = 0;
    for (float x : v) s += x, s2 += double{x} * x;
    const double mean = s / v.size();
    return std::sqrt(s2 / v.size() - mean * mean);
  };
  EXPECT_NEAR(stddev(values("token_embd.weight")), 1.0, 0.05);
  EXPECT_NEAR(stddev(values("blk.0.attn_q.weight")), 1.0 / 8.0, 0.01);
  for (float a : values("blk.0.ssm_a")) {
    EXPECT_LE(a, -1.0f);
    EXPECT_GE(a, -std::exp(1.5f));
  }
  for (float w : values("blk.0.attn_norm.weight")) EXPECT_NEAR(w, 1.0f, 0.6f);
  for (float c : values("blk.0.ssm_conv1d_k.weight")) EXPECT_LE(std::fabs(c), 0.5f);
  for (float b : values("blk.1.exp_probs_b.bias")) EXPECT_LT(std::fabs(b), 0.5f);
}

TEST(TestModel, DeterministicPerSeed) {
  TestModelOptions o = TinyTestModel();
  o.weight_type = DType::kQ4_0;
  o.seed = 7;
  ASSERT_NE(Generate(o, "seed7a.gguf"), nullptr);
  ASSERT_NE(Generate(o, "seed7b.gguf"), nullptr);
  o.seed = 8;
  ASSERT_NE(Generate(o, "seed8.gguf"), nullptr);
  const std::string a = ReadAll(gguf::testing::TempPath("seed7a.gguf"));
  EXPECT_EQ(a, ReadAll(gguf::testing::TempPath("seed7b.gguf")));
  EXPECT_NE(a, ReadAll(gguf::testing::TempPath("seed8.gguf")));
}

TEST(TestModel, OutputIndependentOfThreadCount) {
  TestModelOptions o = TinyTestModel();
  o.hidden = 256;  // large enough rows to use several threads
  o.weight_type = DType::kQ8_0;
  o.threads = 1;
  ASSERT_NE(Generate(o, "threads1.gguf"), nullptr);
  o.threads = 3;
  ASSERT_NE(Generate(o, "threads3.gguf"), nullptr);
  EXPECT_EQ(ReadAll(gguf::testing::TempPath("threads1.gguf")),
            ReadAll(gguf::testing::TempPath("threads3.gguf")));
}

TEST(TestModel, AllWeightTypesLoad) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0}) {
    TestModelOptions o = TinyTestModel();
    o.weight_type = t;
    auto f = Generate(o, std::string("wt_") + DTypeName(t) + ".gguf");
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->FindTensor("blk.0.ffn_down.weight")->type, t);
    EXPECT_EQ(f->FindTensor("blk.0.ssm_a")->type, DType::kF32);
  }
}

TEST(TestModel, DefaultMlaPatternAndCustomShapes) {
  TestModelOptions o = TinyTestModel();
  o.layers = 9;
  o.mla_layers.clear();
  EXPECT_EQ(o.DefaultMlaLayers(), (std::vector<int64_t>{3, 7, 8}));
  o.dense_layers = 2;
  o.shared_experts = 0;
  auto f = Generate(o, "nine_layers.gguf");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(*f->GetIntArray("kimi-linear.attention.head_count_kv"),
            (std::vector<int64_t>{0, 0, 0, 1, 0, 0, 0, 1, 1}));
  EXPECT_NE(f->FindTensor("blk.1.ffn_gate.weight"), nullptr);
  EXPECT_EQ(f->FindTensor("blk.2.ffn_gate_shexp.weight"), nullptr);
  EXPECT_EQ(KimiLinear48BA3B().DefaultMlaLayers(), KimiLinear48BA3B().mla_layers);
}

TEST(TestModel, RejectsBadOptions) {
  auto expect_bad = [](TestModelOptions o, const std::string& needle) {
    o.out_path = gguf::testing::TempPath("bad.gguf");
    const absl::Status s = WriteTestModel(o);
    ASSERT_FALSE(s.ok()) << needle;
    EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
  };
  TestModelOptions o = TinyTestModel();
  o.experts_used = 9;
  expect_bad(o, "experts-used");
  o = TinyTestModel();
  o.mla_layers = {1, 4};
  expect_bad(o, "MLA layer 4");
  o = TinyTestModel();
  o.mla_layers = {1, 1};
  expect_bad(o, "twice");
  o = TinyTestModel();
  o.vocab = 100;
  expect_bad(o, "vocab");
  o = TinyTestModel();
  o.hidden = 0;
  expect_bad(o, "hidden");
  o = TinyTestModel();
  o.dense_layers = 5;
  expect_bad(o, "dense-layers");
  EXPECT_FALSE(TestModelPreset("gpt-5").ok());
  EXPECT_TRUE(TestModelPreset("kimi-linear-48b-a3b").ok());
}

}  // namespace
}  // namespace latentserve::tools
