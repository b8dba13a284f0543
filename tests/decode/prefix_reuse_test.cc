// The exactness guard of prefix reuse (issue 14): prompts that share prefixes of random
// lengths with cached ones (mid-page, at page boundaries, at and between checkpoints, longer
// than the checkpoint interval) give the logits a fresh prefill gives (NMSE <= 1e-6 on the f32
// test model) and the same greedy tokens; then the decode worker's own path (lease from a
// cached prefix, local prefill, decode) against fresh generations; then the memory rules.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "cache/prefix_cache.h"
#include "decode/decode_worker.h"
#include "decode/local_prefill.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tests/model/tiny_model_fixture.h"

namespace latentserve::decode {
namespace {

constexpr int64_t kPageTokens = 16;
constexpr int64_t kInterval = 24;  // not a multiple of the page: checkpoints fall mid-page too

using test::Nmse;

class PrefixReuse : public test::TinyModelFixture</*seed=*/5, kPageTokens, /*pages=*/256> {
 protected:
  std::vector<int32_t> RandomTokens(std::mt19937& rng, int64_t count) {
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(model_->vocab()) - 1);
    std::vector<int32_t> tokens(count);
    for (auto& t : tokens) t = id(rng);
    return tokens;
  }
  // Last-token logits of `tokens` read from scratch, and `steps` greedy tokens after them.
  std::pair<std::vector<float>, std::vector<int32_t>> Fresh(const std::vector<int32_t>& tokens, int steps) {
    auto sequence = *table_->New();
    auto logits = model_->Prefill(*sequence, tokens, *cache_, 512, false);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return {*logits, Greedy(*sequence, *logits, steps)};
  }
  std::vector<int32_t> Greedy(model::Sequence& sequence, std::vector<float> logits, int steps) {
    std::vector<int32_t> out;
    for (int i = 0; i < steps; ++i) {
      out.push_back(model::Argmax(logits));
      model::BatchEntry entry{&sequence, absl::MakeConstSpan(&out.back(), 1), false};
      auto next = model_->Forward({entry}, *cache_);
      EXPECT_TRUE(next.ok()) << next.status();
      logits = *next;
    }
    return out;
  }

};

TEST_F(PrefixReuse, ReusedPrefixesGiveTheLogitsOfAFreshPrefill) {
  std::mt19937 rng(1234);
  cache::PrefixCache prefixes(*table_, {int64_t{1} << 30, kInterval});
  LocalPrefillParams local;
  local.chunk_tokens = 40;
  local.checkpoint_interval_tokens = kInterval;
  std::vector<std::vector<int32_t>> documents;
  for (int64_t length : {23, 48, 97, 130}) documents.push_back(RandomTokens(rng, length));
  // Shared lengths: mid-page, page boundary, at a checkpoint, between, past several intervals.
  const std::vector<int64_t> shared_choices = {1, 5, 16, 24, 32, 47, 48, 49, 72, 96, 97, 100, 129, 130};
  int hits = 0, cases = 0;
  for (int round = 0; round < 60; ++round) {
    const std::vector<int32_t>& document = documents[rng() % documents.size()];
    int64_t shared = shared_choices[rng() % shared_choices.size()];
    if (round % 3 == 0) shared = 1 + rng() % document.size();  // fully random too
    shared = std::min<int64_t>(shared, document.size());
    std::vector<int32_t> prompt(document.begin(), document.begin() + shared);
    const std::vector<int32_t> suffix = RandomTokens(rng, 1 + rng() % 40);
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());

    const cache::PrefixMatch match = prefixes.Find(prompt);
    ASSERT_LE(match.resume_tokens, std::min<int64_t>(match.shared_tokens, prompt.size() - 1));
    std::unique_ptr<model::Sequence> sequence;
    if (match.entry >= 0) {
      sequence = *prefixes.Resume(match);
      hits++;
    } else {
      sequence = *table_->New();
    }
    ASSERT_EQ(sequence->cached_tokens(), match.resume_tokens);
    // Once this document was kept, the resume point is its last checkpoint at or before the
    // shared part (every interval, and its end).
    const auto rest = absl::MakeConstSpan(prompt).subspan(match.resume_tokens);
    auto prefilled = PrefillWithCheckpoints(*model_, *cache_, *sequence, rest, local);
    ASSERT_TRUE(prefilled.ok()) << prefilled.status();
    const auto [fresh_logits, fresh_tokens] = Fresh(prompt, 4);
    EXPECT_LT(Nmse(prefilled->last_logits, fresh_logits), 1e-6)
        << "round " << round << ": shared " << shared << ", resumed at " << match.resume_tokens;
    ASSERT_TRUE(prefixes.Insert(prompt, *sequence, std::move(prefilled->checkpoints)).ok());
    EXPECT_EQ(Greedy(*sequence, prefilled->last_logits, 4), fresh_tokens) << "round " << round;
    cases++;
    // Documents themselves are kept too, so later prompts find them (checkpoints inside).
    if (round < 4) {
      auto whole = *table_->New();
      auto kept = PrefillWithCheckpoints(*model_, *cache_, *whole, documents[round], local);
      ASSERT_TRUE(kept.ok());
      ASSERT_TRUE(prefixes.Insert(documents[round], *whole, std::move(kept->checkpoints)).ok());
    }
  }
  EXPECT_GE(hits, cases / 2) << "too few prompts exercised reuse";
  const cache::PrefixCacheStats stats = prefixes.Stats();
  EXPECT_EQ(stats.hits, hits);
  EXPECT_GT(stats.hit_tokens, 0);
  EXPECT_EQ(stats.evictions, 0);
}

TEST_F(PrefixReuse, ResumesAtTheLastCheckpointAtOrBeforeTheSharedPrefix) {
  std::mt19937 rng(7);
  cache::PrefixCache prefixes(*table_, {int64_t{1} << 30, kInterval});
  const std::vector<int32_t> document = RandomTokens(rng, 100);
  {
    auto sequence = *table_->New();
    auto kept = PrefillWithCheckpoints(*model_, *cache_, *sequence, document, {40, kInterval, nullptr, nullptr});
    ASSERT_TRUE(kept.ok());
    std::vector<int64_t> positions;
    for (auto& c : kept->checkpoints) positions.push_back(c->tokens());
    EXPECT_EQ(positions, (std::vector<int64_t>{24, 48, 72, 96, 100}));
    ASSERT_TRUE(prefixes.Insert(document, *sequence, std::move(kept->checkpoints)).ok());
  }
  const std::vector<std::pair<int64_t, int64_t>> shared_to_resume = {{23, 0}, {24, 24}, {47, 24}, {73, 72},
                                                                     {99, 96}, {100, 100}};
  for (const auto& [shared, resume] : shared_to_resume) {
    std::vector<int32_t> prompt(document.begin(), document.begin() + shared);
    prompt.push_back(0);
    EXPECT_EQ(prefixes.Find(prompt).resume_tokens, resume) << "shared " << shared;
  }
  // The whole document again: its last token is always computed, so it resumes at 96.
  EXPECT_EQ(prefixes.Find(document).resume_tokens, 96);
}

TEST_F(PrefixReuse, EvictionIsLruAmongUnpinnedAndGivesPagesBack) {
  std::mt19937 rng(9);
  const int64_t page_bytes = static_cast<int64_t>(cache_->page_bytes_per_layer()) * cache_->mla_layers();
  const cache::KdaLayout& kda = table_->kda_layout();
  const int64_t checkpoint_bytes = kda.layer_bytes() * kda.layers;
  // Room for two 32-token prompts (2 pages + 1 end checkpoint each), not three.
  cache::PrefixCache prefixes(*table_, {2 * (2 * page_bytes + checkpoint_bytes) + page_bytes, 0});
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> ids;
  for (int i = 0; i < 3; ++i) {
    prompts.push_back(RandomTokens(rng, 32));
    auto sequence = *table_->New();
    auto kept = PrefillWithCheckpoints(*model_, *cache_, *sequence, prompts.back(), {});
    ASSERT_TRUE(kept.ok());
    auto id = prefixes.Insert(prompts.back(), *sequence, std::move(kept->checkpoints), /*pinned=*/i == 0);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  // The pinned first one stays; the second (least recently used unpinned) went.
  EXPECT_TRUE(prefixes.Contains(ids[0]));
  EXPECT_FALSE(prefixes.Contains(ids[1]));
  EXPECT_TRUE(prefixes.Contains(ids[2]));
  EXPECT_EQ(prefixes.Stats().evictions, 1);
  EXPECT_EQ(cache_->free_pages(), cache_->total_pages() - 4);
  // A fourth that cannot fit beside a pinned one and with the other pinned is refused whole.
  ASSERT_TRUE(prefixes.SetPinned(ids[2], true).ok());
  auto sequence = *table_->New();
  const std::vector<int32_t> fourth = RandomTokens(rng, 32);
  auto kept = PrefillWithCheckpoints(*model_, *cache_, *sequence, fourth, {});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(prefixes.Insert(fourth, *sequence, std::move(kept->checkpoints)).status().code(),
            absl::StatusCode::kResourceExhausted);
  sequence.reset();
  EXPECT_EQ(table_->Stats().checkpoints, 2);
  // MakeRoom never drops pinned prefixes; unpinned, they go.
  EXPECT_FALSE(prefixes.MakeRoom(cache_->total_pages()));
  ASSERT_TRUE(prefixes.SetPinned(ids[0], false).ok());
  ASSERT_TRUE(prefixes.SetPinned(ids[2], false).ok());
  EXPECT_TRUE(prefixes.MakeRoom(cache_->total_pages()));
  EXPECT_EQ(prefixes.Stats().entries, 0);
}

// The decode worker's whole path: a lease that starts from a cached prefix, the local prefill
// of the rest, decode; tokens equal to fresh greedy generations, pages back at the end.
TEST_F(PrefixReuse, DecodeWorkerAnswersEqualFreshGenerations) {
  std::mt19937 rng(21);
  const std::vector<int32_t> document = RandomTokens(rng, 90);
  std::vector<std::vector<int32_t>> prompts;
  prompts.push_back(document);
  for (int64_t shared : {90, 90, 48, 50, 17, 72}) {
    std::vector<int32_t> prompt(document.begin(), document.begin() + shared);
    const std::vector<int32_t> question = RandomTokens(rng, 3 + rng() % 12);
    prompt.insert(prompt.end(), question.begin(), question.end());
    prompts.push_back(prompt);
  }
  std::vector<std::vector<int32_t>> expected;
  for (const auto& prompt : prompts) {
    auto [logits, tokens] = Fresh(prompt, 6);
    expected.push_back(tokens);
  }
  DecodePrefixOptions options;
  options.budget_bytes = int64_t{1} << 30;
  options.checkpoint_interval_tokens = kInterval;
  options.local_prefill_max_tokens = 128;
  options.chunk_tokens = 32;
  auto worker = std::make_unique<DecodeWorker>(*model_, *cache_, "fp", absl::Minutes(1), options);
  for (size_t i = 0; i < prompts.size(); ++i) {
    LeaseReuse reuse;
    auto lease = worker->ReserveLease("r", static_cast<int64_t>(prompts[i].size()) + 8, absl::Minutes(1), "fp", "me",
                                      prompts[i], &reuse);
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(reuse.local_prefill);
    // Every prompt after the first shares a checkpointed prefix but the one sharing 17 tokens
    // (the first checkpoint is at 24).
    if (i >= 1 && i != 5) {
      EXPECT_GT(reuse.cached_tokens, 0) << "prompt " << i;
    }
    DecodeParams params;
    params.lease_id = *lease;
    params.caller = "me";
    params.max_new_tokens = 6;
    std::vector<int32_t> got;
    auto finish = worker->Decode(
        params, [&](const std::vector<int32_t>& t) { got.insert(got.end(), t.begin(), t.end()); return true; },
        [] { return false; });
    ASSERT_TRUE(finish.ok()) << finish.status();
    EXPECT_EQ(got, expected[i]) << "prompt " << i << " resumed at " << reuse.cached_tokens;
  }
  const DecodeStats stats = worker->Stats();
  EXPECT_EQ(stats.local_prefills, static_cast<int64_t>(prompts.size()));
  EXPECT_EQ(stats.prefix.hits, static_cast<int64_t>(prompts.size()) - 2);
  EXPECT_GT(stats.prefix.pages, 0);
  EXPECT_EQ(stats.pages_free + stats.prefix.pages, stats.pages_total) << "only the kept prefixes hold pages";
  // A lease that needs every page takes them back from the cached prefixes.
  auto big = worker->ReserveLease("big", cache_->total_pages() * kPageTokens, absl::Minutes(1), "fp", "me");
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(worker->Stats().prefix.entries, 0);
  ASSERT_TRUE(worker->ReleaseLease(*big, "me").ok());
  worker.reset();
}

}  // namespace
}  // namespace latentserve::decode
