// The sequence table under the model: a fork, a trim to a checkpoint and a fork at a
// checkpoint (prefix reuse) must give the logits a fresh prefill gives (f32 test model).
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "cache/sequence_table.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tests/model/tiny_model_fixture.h"

namespace latentserve::cache {
namespace {

using test::Nmse;

class SequenceTableModel : public test::TinyModelFixture</*seed=*/3, /*page_tokens=*/16, /*pages=*/64> {
 protected:
  void SetUp() override {
    TinyModelFixture::SetUp();
    std::mt19937 rng(17);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(model_->vocab()) - 1);
    for (int i = 0; i < 120; ++i) prompt_.push_back(id(rng));
    for (int i = 0; i < 40; ++i) other_.push_back(id(rng));
  }

  std::vector<float> Prefill(Sequence& sequence, absl::Span<const int32_t> tokens) {
    auto logits = model_->Prefill(sequence, tokens, *cache_, 16, /*all_logits=*/true);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>();
  }
  // Logits of `tokens` continuing a fresh sequence that first read `prefix`.
  std::vector<float> Fresh(absl::Span<const int32_t> prefix, absl::Span<const int32_t> tokens) {
    auto sequence = *table_->New();
    Prefill(*sequence, prefix);
    return Prefill(*sequence, tokens);
  }
  std::vector<std::string> KdaBytes(const Sequence& sequence) {
    std::vector<std::string> states(sequence.kda().size());
    for (size_t i = 0; i < states.size(); ++i) EXPECT_TRUE(table_->ExportKdaState(sequence, i, &states[i]).ok());
    return states;
  }
  absl::Span<const int32_t> Prompt(size_t first, size_t count) {
    return absl::MakeConstSpan(prompt_).subspan(first, count);
  }

  std::vector<int32_t> prompt_, other_;
};
TEST_F(SequenceTableModel, ForkedContinuationsEqualFreshPrefills) {
  // 40 tokens: the third page is partial, so both continuations write into a shared page.
  auto parent = *table_->New();
  Prefill(*parent, Prompt(0, 40));
  auto child = *table_->Fork(*parent);
  const std::vector<float> child_logits = Prefill(*child, Prompt(40, 30));
  const std::vector<float> parent_logits = Prefill(*parent, other_);
  EXPECT_LT(Nmse(child_logits, Fresh(Prompt(0, 40), Prompt(40, 30))), 1e-6);
  EXPECT_LT(Nmse(parent_logits, Fresh(Prompt(0, 40), other_)), 1e-6) << "the child's writes reached the parent";
  EXPECT_GE(table_->Stats().pages_copied, 1);
  // Decoding both in one batch after the fork: each sees only its own tokens.
  const int32_t a = prompt_[100], b = prompt_[101];
  model::BatchEntry batch[] = {{parent.get(), absl::MakeConstSpan(&a, 1), false},
                               {child.get(), absl::MakeConstSpan(&b, 1), false}};
  auto together = model_->Forward(batch, *cache_);
  ASSERT_TRUE(together.ok()) << together.status();
  const int64_t vocab = model_->vocab();
  std::vector<int32_t> parent_tokens(prompt_.begin(), prompt_.begin() + 40);
  parent_tokens.insert(parent_tokens.end(), other_.begin(), other_.end());
  std::vector<int32_t> child_tokens(prompt_.begin(), prompt_.begin() + 70);
  const std::vector<float> fresh_a = Fresh(parent_tokens, absl::MakeConstSpan(&a, 1));
  const std::vector<float> fresh_b = Fresh(child_tokens, absl::MakeConstSpan(&b, 1));
  EXPECT_LT(Nmse(std::vector<float>(together->begin(), together->begin() + vocab), fresh_a), 1e-6);
  EXPECT_LT(Nmse(std::vector<float>(together->begin() + vocab, together->end()), fresh_b), 1e-6);
}

TEST_F(SequenceTableModel, TrimToACheckpointRestoresKdaStateExactly) {
  auto sequence = *table_->New();
  Prefill(*sequence, Prompt(0, 50));
  const std::vector<std::string> at_50 = KdaBytes(*sequence);
  auto checkpoint = *table_->Checkpoint(*sequence);
  Prefill(*sequence, other_);
  ASSERT_NE(KdaBytes(*sequence), at_50);
  ASSERT_TRUE(table_->Trim(*sequence, *checkpoint).ok());
  EXPECT_EQ(sequence->cached_tokens(), 50);
  EXPECT_EQ(KdaBytes(*sequence), at_50) << "restored KDA state differs from the checkpoint";
  EXPECT_LT(Nmse(Prefill(*sequence, Prompt(50, 30)), Fresh(Prompt(0, 50), Prompt(50, 30))), 1e-6);
}

TEST_F(SequenceTableModel, ForkAtACheckpointReusesThePrefix) {
  // Prefix reuse: the parent read 100 tokens with a checkpoint at 37 (mid-page); a new
  // request sharing those 37 tokens resumes there and reads only its own suffix.
  auto parent = *table_->New();
  Prefill(*parent, Prompt(0, 37));
  auto checkpoint = *table_->Checkpoint(*parent);
  Prefill(*parent, Prompt(37, 63));
  const int64_t free_before = cache_->free_pages();
  auto child = *table_->Fork(*parent, *checkpoint);
  EXPECT_EQ(child->cached_tokens(), 37);
  EXPECT_EQ(cache_->free_pages(), free_before) << "the prefix pages are shared, not copied";
  const std::vector<float> reused = Prefill(*child, other_);
  EXPECT_LT(Nmse(reused, Fresh(Prompt(0, 37), other_)), 1e-6);
  // The parent's rows past the checkpoint, in the page the child wrote to, are intact.
  const std::vector<float> parent_next = Prefill(*parent, Prompt(100, 10));
  EXPECT_LT(Nmse(parent_next, Fresh(Prompt(0, 100), Prompt(100, 10))), 1e-6);
}

TEST_F(SequenceTableModel, ASequenceOfAnotherCacheIsRefused) {
  model::LatentCacheOptions options;
  options.dtype = DType::kF32;
  options.page_tokens = 16;
  options.pages = 4;
  auto other_cache = *model::NewLatentCache(model_->config(), *backend_, options);
  SequenceTable other_table(*other_cache, model_->kda_layout());
  auto sequence = *other_table.New();
  EXPECT_EQ(model_->Prefill(*sequence, Prompt(0, 5), *cache_, 16, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sequence->cached_tokens(), 0);
  EXPECT_EQ(other_cache->free_pages(), 4);
}

}  // namespace
}  // namespace latentserve::cache
