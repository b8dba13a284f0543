// The sampler's chain against a full sort of the row (sampler_reference.h), and the draws'
// distribution.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "model/sampler.h"
#include "tests/model/sampler_reference.h"

namespace latentserve::model {
namespace {

std::vector<float> RandomLogits(size_t n, float spread, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> logits(n);
  for (float& v : logits) v = normal(rng);
  return logits;
}

TEST(Sampler, CandidatesAreTheReferenceChainsTokens) {
  int cases = 0;
  for (size_t n : {size_t{1}, size_t{7}, size_t{300}, size_t{20000}}) {
    for (float spread : {0.1f, 2.0f, 8.0f}) {
      std::vector<float> logits = RandomLogits(n, spread, n * 31 + static_cast<uint64_t>(spread * 10));
      if (n > 10) logits[5] = logits[9];  // a tie
      for (int32_t top_k : {0, 1, 5, 1000}) {
        for (float top_p : {1.0f, 0.95f, 0.5f, 0.0f}) {
          for (float min_p : {0.0f, 0.05f, 0.5f, 2.0f}) {
            const SamplingParams params{1.0f, top_k, top_p, min_p, 0};
            const std::vector<int32_t> got = SamplingCandidates(logits, params);
            ASSERT_FALSE(got.empty());
            EXPECT_EQ(got[0], Argmax(logits)) << n << " " << top_k << " " << top_p << " " << min_p;
            EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), [&] {
              const std::vector<int32_t> kept = FullSortKept(logits, params);
              return std::set<int32_t>(kept.begin(), kept.end());
            }())
                << "n " << n << " spread " << spread << " top_k " << top_k << " top_p " << top_p << " min_p " << min_p;
            ++cases;
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 4 * 3 * 4 * 4 * 4);
}

// Argmax is std::max_element's answer: the first of tied maxima, -0 and +0 equal, NaN ignored
// after the first entry and answered with 0 at it.
TEST(Sampler, ArgmaxIsMaxElement) {
  std::vector<std::vector<float>> rows;
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{1000}, size_t{163840}}) {
    rows.push_back(RandomLogits(n, 2.0f, n));
  }
  rows.push_back({1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f, 3.0f});
  rows.push_back({-0.0f, 0.0f, -1.0f});
  rows.push_back({0.0f, -0.0f, -1.0f});
  rows.push_back({NAN, 5.0f, 6.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 7.0f});
  rows.push_back({1.0f, NAN, 6.0f, 1.0f, 2.0f, NAN, 4.0f, 5.0f, 6.0f, 2.0f});
  std::vector<float> late_max = RandomLogits(163840, 2.0f, 9);
  late_max[163839] = 100.0f;
  rows.push_back(late_max);
  for (const std::vector<float>& row : rows) {
    EXPECT_EQ(Argmax(row), std::max_element(row.begin(), row.end()) - row.begin()) << row.size();
  }
}

TEST(Sampler, GreedyIsArgmaxAndTopOneIsGreedy) {
  const std::vector<float> logits = RandomLogits(163840, 3.0f, 1);
  Sampler greedy({0.0f, 0, 1.0f, 0.0f, 1});
  EXPECT_TRUE(greedy.greedy());
  EXPECT_EQ(greedy.Sample(logits), Argmax(logits));
  Sampler top_one({2.0f, 1, 1.0f, 0.0f, 7});
  EXPECT_FALSE(top_one.greedy());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(top_one.Sample(logits), Argmax(logits));
}

// Draws follow softmax(logits / T) over the kept tokens: frequencies within 5 standard
// deviations over 20,000 draws, nothing outside the candidates, and a seed repeats its draws.
TEST(Sampler, DrawsFollowTheTemperedDistribution) {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -30.0f};
  for (const SamplingParams& params : {SamplingParams{1.0f, 0, 1.0f, 0.0f, 11}, SamplingParams{0.7f, 4, 1.0f, 0.0f, 12},
                                       SamplingParams{1.3f, 0, 0.9f, 0.0f, 13}, SamplingParams{1.0f, 0, 1.0f, 0.2f, 14}}) {
    const std::vector<int32_t> kept = SamplingCandidates(logits, params);
    double total = 0;
    std::map<int32_t, double> expected;
    for (int32_t id : kept) total += expected[id] = std::exp((logits[id] - logits[0]) / params.temperature);
    Sampler sampler(params), again(params);
    std::map<int32_t, int> counts;
    constexpr int kDraws = 20000;
    for (int i = 0; i < kDraws; ++i) {
      const int32_t id = sampler.Sample(logits);
      ASSERT_EQ(id, again.Sample(logits));
      ASSERT_TRUE(expected.count(id)) << "drew " << id << ", not a candidate";
      counts[id]++;
    }
    for (const auto& [id, weight] : expected) {
      const double p = weight / total, mean = p * kDraws, sd = std::sqrt(kDraws * p * (1 - p));
      EXPECT_NEAR(counts[id], mean, 5 * sd + 1) << "token " << id << " T " << params.temperature;
    }
  }
}

// A step's rows drawn on a pool give each row the token its sampler draws alone, row by row
// (greedy and sampled rows mixed; each sampler's own stream of draws).
TEST(Sampler, RowsOnAPoolDrawWhatEachSamplerDrawsAlone) {
  constexpr int64_t kRows = 13, kVocab = 5000;
  std::vector<float> logits;
  for (int64_t r = 0; r < kRows; ++r) {
    const std::vector<float> row = RandomLogits(kVocab, 3.0f, 100 + static_cast<uint64_t>(r));
    logits.insert(logits.end(), row.begin(), row.end());
  }
  const auto params = [](int64_t r) {
    return SamplingParams{r % 3 == 0 ? 0.0f : 0.8f, static_cast<int32_t>(r % 2 ? 40 : 0), 0.9f, 0.0f,
                          static_cast<uint64_t>(r)};
  };
  std::vector<Sampler> pooled, alone;
  for (int64_t r = 0; r < kRows; ++r) pooled.emplace_back(params(r)), alone.emplace_back(params(r));
  std::vector<Sampler*> rows;
  for (Sampler& s : pooled) rows.push_back(&s);
  const std::unique_ptr<kernels::cpu::ThreadPool> pool = NewSamplingPool();
  for (int step = 0; step < 4; ++step) {
    std::vector<int32_t> tokens(kRows, -1);
    SampleRows(logits, kVocab, rows, absl::MakeSpan(tokens), step % 2 ? pool.get() : nullptr);
    for (int64_t r = 0; r < kRows; ++r) {
      EXPECT_EQ(tokens[r], alone[r].Sample(absl::MakeConstSpan(logits).subspan(r * kVocab, kVocab)))
          << "step " << step << " row " << r;
    }
  }
}

}  // namespace
}  // namespace latentserve::model
