// The hand-built needle model (docs/needle.md) through the CPU engine: its vocabulary makes
// every listed word one token; q4_0 stores its weights exactly; and the logits come out as
// the construction says (answer 64, EOS 51.2, every other token <= 32) with the fact at any
// depth, every cache type, chunked prefill and decode; an ambiguous key falls back to EOS.
#include "tools/lib/needle_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/gguf/gguf.h"
#include "common/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/lib/test_model.h"

namespace latentserve {
namespace {

#define NEEDLE_WORDS(name, ...) const std::vector<std::string> name = {__VA_ARGS__};
#include "tools/lib/needle_words.inc"
#undef NEEDLE_WORDS

std::string TempModel(const std::string& tag) {
  return (std::filesystem::temp_directory_path() /
          ("ls_needle_" + tag + "_" + std::to_string(::getpid()) + ".gguf"))
      .string();
}

class NeedleModel : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() {
    for (DType type : {DType::kF32, DType::kQ4_0}) {
      tools::TestModelOptions o = tools::NeedleTestModel();
      o.weight_type = type;
      o.out_path = TempModel(DTypeName(type));
      ASSERT_TRUE(tools::WriteTestModel(o).ok());
      paths_.push_back(o.out_path);
    }
  }
  static void TearDownTestSuite() {
    for (const std::string& p : paths_) std::filesystem::remove(p);
  }

  void SetUp() override {
    backend_ = *kernels::CreateBackend({"cpu", 2, 0});
    auto model = model::Model::Load(paths_[1], *backend_);  // q4_0 weights
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    model::LatentCacheOptions options;
    options.dtype = GetParam();
    options.page_tokens = 16;
    options.pages = 128;
    cache_ = *model::NewLatentCache(model_->config(), *backend_, options);
    table_ = std::make_unique<cache::SequenceTable>(*cache_, model_->kda_layout());
    auto file = gguf::File::Open(paths_[1]);
    ASSERT_TRUE(file.ok());
    auto tokenizer = tokenizer::Tokenizer::FromGguf(**file);
    ASSERT_TRUE(tokenizer.ok());
    tokenizer_ = std::make_unique<tokenizer::Tokenizer>(std::move(*tokenizer));
    std::mt19937 rng(5);
    for (int i = 0; i < 900; ++i) {
      const auto& group = (i % 2) ? kNeedleNouns : kNeedleVerbs;
      filler_.push_back(Id(group[rng() % group.size()]));
      if (i % 9 == 8) filler_.push_back(Id("."));
    }
  }
  void TearDown() override {
    EXPECT_EQ(cache_->free_pages(), cache_->total_pages()) << "pages leaked";
  }

  int32_t Id(const std::string& word) const {
    const std::string text = word == "." ? word : " " + word;
    const std::vector<int32_t> ids = tokenizer_->Encode(text, false);
    EXPECT_EQ(ids.size(), 1u) << "'" << text << "'";
    return ids.empty() ? -1 : ids[0];
  }

  // Last-position logits of `tokens`, prefilled in chunks of `chunk`.
  std::vector<float> Prefill(model::Sequence& seq, const std::vector<int32_t>& tokens,
                             int64_t chunk) {
    auto logits = model_->Prefill(seq, tokens, *cache_, chunk, false);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }

  // The construction's margins: `want` at 64, EOS at 51.2, everything else at most 32.
  void ExpectAnswer(const std::vector<float>& logits, int32_t want, const std::string& where) {
    ASSERT_EQ(static_cast<int64_t>(logits.size()), model_->vocab());
    const int32_t eos = tokenizer_->eos_id();
    EXPECT_NEAR(logits[want], 64.0f, 0.5f) << where;
    EXPECT_NEAR(logits[eos], 51.2f, 0.5f) << where;
    float other = -1e30f;
    for (int32_t t = 0; t < static_cast<int32_t>(logits.size()); ++t) {
      if (t != want && t != eos) other = std::max(other, logits[t]);
    }
    EXPECT_LE(other, 32.5f) << where;
  }

  static std::vector<std::string> paths_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<model::LatentCache> cache_;
  std::unique_ptr<cache::SequenceTable> table_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::vector<int32_t> filler_;
};
std::vector<std::string> NeedleModel::paths_;

TEST_P(NeedleModel, EveryListedWordIsOneToken) {
  for (const auto* group :
       {&kNeedleStarters, &kNeedleAdjectives, &kNeedleNouns, &kNeedleVerbs, &kNeedleAdverbs,
        &kNeedlePrepositions, &kNeedleLinks, &kNeedleFactWords, &kNeedleNames, &kNeedleDigits}) {
    for (const std::string& word : *group) Id(word);
  }
  const std::vector<int32_t> chat =
      tokenizer_->Encode("<|im_user|>user<|im_middle|>hi<|im_end|>", true);
  EXPECT_EQ(chat.front(), tokenizer_->Encode("<|im_user|>", true).at(0));
  EXPECT_EQ(chat.back(), tokenizer_->eos_id());
}

TEST_P(NeedleModel, RetrievesTheValueAtEveryDepthAndChunking) {
  const int32_t key = Id("Orion"), eos = tokenizer_->eos_id();
  const std::vector<int32_t> value = {Id("is"), Id("four"), Id("one"), Id("seven"), Id(".")};
  // Depths from the first token to the last page; pages hold 16 tokens.
  for (size_t at : {size_t{0}, size_t{15}, size_t{16}, size_t{17}, size_t{400}, filler_.size()}) {
    for (int64_t chunk : {int64_t{64}, int64_t{1000}}) {
      std::vector<int32_t> prompt(filler_.begin(), filler_.begin() + at);
      prompt.push_back(key);
      prompt.insert(prompt.end(), value.begin(), value.end());
      prompt.insert(prompt.end(), filler_.begin() + at, filler_.end());
      prompt.push_back(key);
      const std::string where =
          "fact at " + std::to_string(at) + ", chunk " + std::to_string(chunk);
      auto seq = *table_->New();
      ExpectAnswer(Prefill(*seq, prompt, chunk), value[0], where);
      // Decode copies the rest: each value token is the key of the next; "." is ambiguous.
      for (size_t i = 0; i < value.size(); ++i) {
        model::BatchEntry entry{seq.get(), absl::MakeConstSpan(&value[i], 1), false};
        auto logits = model_->Forward({entry}, *cache_);
        ASSERT_TRUE(logits.ok()) << logits.status();
        const int32_t next = static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) -
                                                  logits->begin());
        if (i + 1 < value.size()) {
          ExpectAnswer(*logits, value[i + 1], where + ", decode step " + std::to_string(i));
        } else {
          EXPECT_EQ(next, eos) << where << ": after '.' (many successors) the model should stop";
        }
      }
      table_->Reset(*seq);
    }
  }
}

TEST_P(NeedleModel, AKeyWithTwoValuesGivesEos) {
  std::vector<int32_t> prompt = filler_;
  const int32_t key = Id("Vega");
  prompt.insert(prompt.begin() + 100, {key, Id("two")});
  prompt.insert(prompt.begin() + 500, {key, Id("nine")});
  prompt.push_back(key);
  auto seq = *table_->New();
  const std::vector<float> logits = Prefill(*seq, prompt, 256);
  EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), tokenizer_->eos_id());
  table_->Reset(*seq);
}

TEST_P(NeedleModel, SeveralFactsEachFoundByItsKey) {
  std::vector<int32_t> prompt = filler_;
  const std::vector<std::pair<std::string, std::string>> facts = {
      {"Lyra", "five"}, {"Deneb", "zero"}, {"Spica", "eight"}};
  for (size_t i = 0; i < facts.size(); ++i) {
    prompt.insert(prompt.begin() + 100 + 300 * i, {Id(facts[i].first), Id(facts[i].second)});
  }
  for (const auto& [key, value] : facts) {
    std::vector<int32_t> question = prompt;
    question.push_back(Id(key));
    auto seq = *table_->New();
    ExpectAnswer(Prefill(*seq, question, 256), Id(value), "key " + key);
    table_->Reset(*seq);
  }
}

INSTANTIATE_TEST_SUITE_P(CacheTypes, NeedleModel,
                         ::testing::Values(DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// q4_0 keeps every needle weight to f16-scale precision: no quantisation block holds two
// distinct non-zero magnitudes (docs/needle.md, "Quantised weights").
TEST(NeedleWeights, Q4_0StoresEveryWeightExactly) {
  std::vector<std::unique_ptr<gguf::File>> files;
  for (DType type : {DType::kF32, DType::kQ4_0}) {
    tools::TestModelOptions o = tools::NeedleTestModel();
    o.weight_type = type;
    o.out_path = TempModel(std::string("exact_") + DTypeName(type));
    ASSERT_TRUE(tools::WriteTestModel(o).ok());
    files.push_back(*gguf::File::Open(o.out_path));
    std::filesystem::remove(o.out_path);  // the mapping stays valid
  }
  int quantised = 0;
  for (const gguf::TensorInfo& q : files[1]->tensors()) {
    if (q.type != DType::kQ4_0) continue;
    ++quantised;
    const gguf::TensorInfo* f = files[0]->FindTensor(q.name);
    ASSERT_NE(f, nullptr);
    const int64_t width = q.ne[0], rows = q.elements() / width;
    std::vector<float> row(width);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(DType::kQ4_0, q.data + r * RowBytes(DType::kQ4_0, width), row.data(), width);
      const float* want = reinterpret_cast<const float*>(f->data) + r * width;
      for (int64_t i = 0; i < width; ++i) {
        ASSERT_NEAR(row[i], want[i], std::fabs(want[i]) * 1e-3f)
            << q.name << " row " << r << " col " << i;
      }
    }
  }
  EXPECT_GT(quantised, 10);
}

// The real model's widths (hidden 2304, 32 heads, Dk 128, R 512, Pn 128, Pr 64, Dv 128) with
// inactive KDA and MLA layers around the two that act: the margins do not depend on the shape.
TEST(NeedleWeights, RealDimensionsKeepTheMargins) {
  tools::TestModelOptions o = tools::NeedleTestModel();
  const tools::TestModelOptions real = tools::KimiLinear48BA3B();
  o.hidden = real.hidden;
  o.heads = real.heads;
  o.kda_head_dim = real.kda_head_dim;
  o.kv_lora_rank = real.kv_lora_rank;
  o.qk_nope = real.qk_nope;
  o.qk_rope = real.qk_rope;
  o.v_head = real.v_head;
  o.layers = 5;
  o.mla_layers = {3, 4};
  o.weight_type = DType::kQ4_0;
  o.out_path = TempModel("real_dims");
  ASSERT_TRUE(tools::WriteTestModel(o).ok());
  auto backend = *kernels::CreateBackend({"cpu", 2, 0});
  auto model = model::Model::Load(o.out_path, *backend);
  ASSERT_TRUE(model.ok()) << model.status();
  auto file = *gguf::File::Open(o.out_path);
  auto tokenizer = *tokenizer::Tokenizer::FromGguf(*file);
  std::filesystem::remove(o.out_path);
  model::LatentCacheOptions cache_options;
  cache_options.dtype = DType::kQ4_0;
  cache_options.page_tokens = 64;
  cache_options.pages = 8;
  auto cache = *model::NewLatentCache((*model)->config(), *backend, cache_options);
  cache::SequenceTable table(*cache, (*model)->kda_layout());
  std::vector<int32_t> prompt;
  for (int i = 0; i < 150; ++i)
    prompt.push_back(tokenizer.Encode(" " + kNeedleNouns[(i * 7) % kNeedleNouns.size()], false)[0]);
  const int32_t key = tokenizer.Encode(" Sirius", false)[0],
                value = tokenizer.Encode(" three", false)[0];
  prompt.insert(prompt.begin() + 70, {key, value});
  prompt.push_back(key);
  auto seq = *table.New();
  auto logits = (*model)->Prefill(*seq, prompt, *cache, 64, false);
  ASSERT_TRUE(logits.ok()) << logits.status();
  EXPECT_NEAR((*logits)[value], 64.0f, 0.5f);
  EXPECT_NEAR((*logits)[tokenizer.eos_id()], 51.2f, 0.5f);
  (*logits)[value] = (*logits)[tokenizer.eos_id()] = -1e30f;
  EXPECT_LE(*std::max_element(logits->begin(), logits->end()), 32.5f);
  table.Reset(*seq);
}

TEST(NeedleWeights, RefusesShapesThatCannotCarryTheConstruction) {
  tools::TestModelOptions o = tools::NeedleTestModel();
  o.out_path = TempModel("refused");
  o.qk_rope = 32;
  EXPECT_FALSE(tools::WriteTestModel(o).ok());
  o = tools::NeedleTestModel();
  o.out_path = TempModel("refused");
  o.mla_layers = {0};
  EXPECT_FALSE(tools::WriteTestModel(o).ok());
}

}  // namespace
}  // namespace latentserve
