// Engine invariants on generated models: chunking, splitting, decoding and batching change
// nothing (up to float rounding, NMSE < 1e-6, where a wrong formula gives > 1e-2); bad
// input fails without touching the cache.
#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "cache/sequence_table.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/plan.h"
#include "tools/lib/test_model.h"

namespace latentserve::model {
namespace {

double Nmse(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return num / std::max(den, 1e-30);
}

class ModelInvariants : public ::testing::TestWithParam<DType> {
 protected:
  static void SetUpTestSuite() {
    path_ = (std::filesystem::temp_directory_path() / ("ls_invariants_" + std::to_string(::getpid()) + ".gguf")).string();
    tools::TestModelOptions options = tools::TinyTestModel();
    options.out_path = path_;
    options.seed = 7;
    options.layers = 5;
    options.mla_layers = {1, 4};
    options.qk_rope = 32;  // latent width 64: whole q8_0 / q4_0 blocks
    ASSERT_TRUE(tools::WriteTestModel(options).ok());
  }
  static void TearDownTestSuite() { std::filesystem::remove(path_); }

  void SetUp() override {
    backend_ = *kernels::CreateBackend({"cpu", 2, 0});
    auto model = Model::Load(path_, *backend_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    LatentCacheOptions options;
    options.dtype = GetParam();
    options.page_tokens = 16;
    options.pages = 64;
    cache_ = *NewLatentCache(model_->config(), *backend_, options);
    table_ = std::make_unique<cache::SequenceTable>(*cache_, model_->kda_layout());
    std::mt19937 rng(11);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(model_->vocab()) - 1);
    for (int i = 0; i < 150; ++i) prompt_.push_back(id(rng));
  }
  void TearDown() override { EXPECT_EQ(cache_->free_pages(), cache_->total_pages()) << "pages leaked"; }

  std::vector<float> PrefillAll(Sequence& seq, absl::Span<const int32_t> tokens, int64_t chunk) {
    auto logits = model_->Prefill(seq, tokens, *cache_, chunk, true);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;
  }

  static std::string path_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<LatentCache> cache_;
  std::unique_ptr<cache::SequenceTable> table_;
  std::vector<int32_t> prompt_;
};
std::string ModelInvariants::path_;

TEST_P(ModelInvariants, ChunkSizeDoesNotChangeLogits) {
  const int64_t V = model_->vocab();
  auto a = *table_->New();
  auto whole = PrefillAll(*a, prompt_, 1000);
  table_->Reset(*a);
  for (int64_t chunk : {1, 7, 64}) {
    auto b = *table_->New();
    auto chunked = PrefillAll(*b, prompt_, chunk);
    table_->Reset(*b);
    ASSERT_EQ(chunked.size(), whole.size());
    for (size_t t = 0; t < prompt_.size(); ++t) {
      ASSERT_LT(Nmse(chunked.data() + t * V, whole.data() + t * V, V), 1e-6) << "chunk " << chunk << " pos " << t;
    }
  }
}

TEST_P(ModelInvariants, PrefillOfAThenBEqualsPrefillOfAB) {
  const int64_t V = model_->vocab(), split = 61;
  auto ab = *table_->New();
  auto whole = PrefillAll(*ab, prompt_, 32);
  auto s = *table_->New();
  PrefillAll(*s, absl::MakeConstSpan(prompt_).subspan(0, split), 32);
  auto tail = PrefillAll(*s, absl::MakeConstSpan(prompt_).subspan(split), 32);
  for (size_t t = 0; t < prompt_.size() - split; ++t) {
    ASSERT_LT(Nmse(tail.data() + t * V, whole.data() + (split + t) * V, V), 1e-6) << "pos " << t;
  }
  table_->Reset(*ab);
  table_->Reset(*s);
}

TEST_P(ModelInvariants, PrefillThenDecodeEqualsLongerPrefill) {
  const int64_t V = model_->vocab(), prefix = 100;
  auto full = *table_->New();
  auto whole = PrefillAll(*full, prompt_, 64);
  auto s = *table_->New();
  PrefillAll(*s, absl::MakeConstSpan(prompt_).subspan(0, prefix), 64);
  for (size_t t = prefix; t < prompt_.size(); ++t) {
    BatchEntry entry{s.get(), absl::MakeConstSpan(&prompt_[t], 1), false};
    auto logits = model_->Forward({entry}, *cache_);
    ASSERT_TRUE(logits.ok());
    ASSERT_LT(Nmse(logits->data(), whole.data() + t * V, V), 1e-6) << "pos " << t;
  }
  table_->Reset(*full);
  table_->Reset(*s);
}

TEST_P(ModelInvariants, BatchedDecodeEqualsSeparateDecode) {
  const int64_t V = model_->vocab();
  std::vector<std::unique_ptr<Sequence>> batched, single;
  const int64_t lengths[] = {20, 57, 3};
  for (int64_t len : lengths) {
    for (auto* group : {&batched, &single}) {
      group->push_back(*table_->New());
      PrefillAll(*group->back(), absl::MakeConstSpan(prompt_).subspan(0, len), 16);
    }
  }
  for (int step = 0; step < 4; ++step) {
    std::vector<BatchEntry> batch;
    for (size_t i = 0; i < batched.size(); ++i) {
      batch.push_back({batched[i].get(), absl::MakeConstSpan(&prompt_[100 + step + i], 1), false});
    }
    auto together = model_->Forward(batch, *cache_);
    ASSERT_TRUE(together.ok());
    for (size_t i = 0; i < single.size(); ++i) {
      BatchEntry entry{single[i].get(), absl::MakeConstSpan(&prompt_[100 + step + i], 1), false};
      auto alone = model_->Forward({entry}, *cache_);
      ASSERT_TRUE(alone.ok());
      ASSERT_LT(Nmse(together->data() + i * V, alone->data(), V), 1e-9) << "seq " << i << " step " << step;
    }
  }
  for (auto* group : {&batched, &single})
    for (auto& s : *group) table_->Reset(*s);
}

TEST_P(ModelInvariants, OutOfRangeTokenFailsAndChangesNothing) {
  auto s = *table_->New();
  std::vector<int32_t> bad = {1, 2, static_cast<int32_t>(model_->vocab())};
  auto result = model_->Prefill(*s, bad, *cache_, 16, false);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("outside the vocabulary"), std::string::npos);
  EXPECT_EQ(s->cached_tokens(), 0);
  table_->Reset(*s);
  std::vector<int32_t> negative = {-1};
  EXPECT_EQ(model_->Prefill(*s, negative, *cache_, 16, false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(ModelInvariants, CacheExhaustionIsAnErrorNotACrash) {
  auto s = *table_->New();
  std::vector<int32_t> huge(16 * 64 + 1, 1);
  auto result = model_->Prefill(*s, huge, *cache_, 256, false);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  table_->Reset(*s);
}

TEST_P(ModelInvariants, ExportedStateContinuesOnAnotherCache) {
  // What a prefill worker hands to a decode worker: latent rows of every MLA layer plus every
  // KDA state. The receiver, with other page ids, must continue exactly like the sender.
  const int64_t prefix = 77;
  auto sender = *table_->New();
  PrefillAll(*sender, absl::MakeConstSpan(prompt_).subspan(0, prefix), 32);
  LatentCacheOptions options;
  options.dtype = GetParam();
  options.page_tokens = 16;
  options.pages = 64;
  auto other_cache = *NewLatentCache(model_->config(), *backend_, options);
  cache::SequenceTable other_table(*other_cache, model_->kda_layout());
  auto blocker = *other_cache->Allocate(3);  // so the receiver's page ids differ
  auto receiver = *other_table.New();
  ASSERT_TRUE(other_table.Reserve(*receiver, prefix).ok());
  for (int64_t layer = 0; layer < cache_->mla_layers(); ++layer) {
    std::string rows;
    ASSERT_TRUE(cache_->ExportRows(layer, sender->pages(), 0, prefix, &rows).ok());
    ASSERT_TRUE(other_cache->ImportRows(layer, receiver->pages(), 0, prefix, rows).ok());
  }
  for (int64_t k = 0; k < model_->config().kda_layer_count(); ++k) {
    std::string state;
    ASSERT_TRUE(table_->ExportKdaState(*sender, k, &state).ok());
    ASSERT_TRUE(other_table.ImportKdaState(*receiver, k, state).ok());
  }
  ASSERT_TRUE(other_table.Advance(*receiver, prefix).ok());
  EXPECT_FALSE(other_table.ImportKdaState(*receiver, 0, "short").ok());
  for (int64_t t = prefix; t < prefix + 5; ++t) {
    BatchEntry a{sender.get(), absl::MakeConstSpan(&prompt_[t], 1), false};
    BatchEntry b{receiver.get(), absl::MakeConstSpan(&prompt_[t], 1), false};
    auto la = model_->Forward({a}, *cache_);
    auto lb = model_->Forward({b}, *other_cache);
    ASSERT_TRUE(la.ok() && lb.ok());
    ASSERT_EQ(*la, *lb) << "pos " << t;
  }
  table_->Reset(*sender);
  other_table.Reset(*receiver);
  other_cache->Release(blocker);
  EXPECT_EQ(other_cache->free_pages(), other_cache->total_pages());
}

INSTANTIATE_TEST_SUITE_P(CacheTypes, ModelInvariants,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

// Projections of one input (KDA q/k/v and f_a/g_a/beta, MLA kv_a/q, FFN and shared-expert
// gate/up) are stacked into one matmul when the file gives them one type; a file that mixes
// types takes one matmul each. Both must compute the same layers: a model with one f16 part
// in every group (others f32, same underlying values) stays within f16 rounding of the
// all-f32 model, one token at a time (decode) and in chunks (prefill), where a swapped or
// misplaced projection would be far off.
TEST(MixedTypes, KdaProjectionsOfDifferentTypesMatchTheStackedPath) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::string stacked = (dir / ("ls_stacked_" + std::to_string(::getpid()) + ".gguf")).string();
  const std::string mixed = (dir / ("ls_mixed_" + std::to_string(::getpid()) + ".gguf")).string();
  tools::TestModelOptions options = tools::TinyTestModel();
  options.seed = 9;
  options.out_path = stacked;
  ASSERT_TRUE(tools::WriteTestModel(options).ok());
  options.out_path = mixed;
  options.type_overrides = {{"attn_k.weight", DType::kF16},        {"ssm_g_a.weight", DType::kF16},
                            {"attn_kv_a_mqa.weight", DType::kF16}, {"ffn_up_shexp.weight", DType::kF16},
                            {"ffn_up.weight", DType::kF16}};
  ASSERT_TRUE(tools::WriteTestModel(options).ok());
  auto backend = *kernels::CreateBackend({"cpu", 2, 0});
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back((i * 37 + 5) % 300);
  std::vector<std::vector<float>> logits;
  for (const std::string& path : {stacked, mixed}) {
    auto model = Model::Load(path, *backend);
    ASSERT_TRUE(model.ok()) << model.status();
    LatentCacheOptions cache_options;
    cache_options.page_tokens = 16;
    cache_options.pages = 16;
    auto cache = *NewLatentCache((*model)->config(), *backend, cache_options);
    cache::SequenceTable table(*cache, (*model)->kda_layout());
    auto seq = *table.New();
    // 30 tokens in chunks of 8 (several tokens per column), then 10 decoded one at a time.
    auto out = (*model)->Prefill(*seq, absl::MakeConstSpan(prompt).subspan(0, 30), *cache, 8, true);
    ASSERT_TRUE(out.ok()) << out.status();
    for (int t = 30; t < 40; ++t) {
      auto step = (*model)->Forward({{seq.get(), absl::MakeConstSpan(&prompt[t], 1), false}}, *cache, {});
      ASSERT_TRUE(step.ok()) << step.status();
      out->insert(out->end(), step->begin(), step->end());
    }
    table.Reset(*seq);
    logits.push_back(*out);
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  const double nmse = Nmse(logits[1].data(), logits[0].data(), static_cast<int64_t>(logits[0].size()));
  EXPECT_LT(nmse, 1e-4) << "mixed-type q/k/v path disagrees with the stacked path";
  EXPECT_GT(nmse, 0.0) << "the f16 attn_k must actually have been loaded";
  std::filesystem::remove(stacked);
  std::filesystem::remove(mixed);
}

TEST(Plan, RealModelLatentBytesMatchDesign) {
  const ModelConfig c = ModelConfig::KimiLinear48B();
  EXPECT_EQ(PlanMemory(c, 1048576, DType::kF16, 0).latent_cache_bytes, 8455716864);
  EXPECT_EQ(PlanMemory(c, 1048576, DType::kQ8_0, 0).latent_cache_bytes, 4492099584);
  EXPECT_EQ(PlanMemory(c, 1048576, DType::kQ4_0, 0).latent_cache_bytes, 2378170368);
  // 20 x (32 x 128 x 128 + 3 x 3 x 4096) x 4 B (DESIGN.md §2).
  EXPECT_EQ(PlanMemory(c, 1, DType::kF16, 0).kda_state_bytes, 20 * (32 * 128 * 128 + 3 * 3 * 4096) * 4);
}

}  // namespace
}  // namespace latentserve::model
