#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>

namespace latentserve::model {

// The chain's cuts without sorting the vocabulary: a row of 163,840 logits took ~10 ms to sort
// for every sampled token. top-k selects its k (nth_element); top-p sorts a growing prefix
// (64, 256, ... tokens) until it holds the cut; min-p keeps the tokens whose probability is at
// least min_p times the largest's. Order: logit descending, then id ascending.
std::vector<int32_t> SamplingCandidates(absl::Span<const float> logits, const SamplingParams& params) {
  const int64_t n = static_cast<int64_t>(logits.size());
  if (n == 0) return {};
  const auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::vector<int32_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  int64_t keep = n, sorted = 0;  // ids[0, keep) are kept; ids[0, sorted) are their first, in order
  if (params.top_k > 0 && params.top_k < n) {
    std::nth_element(ids.begin(), ids.begin() + params.top_k, ids.end(), before);
    keep = params.top_k;
  }
  const auto sort_first = [&](int64_t count) {
    count = std::min(count, keep);
    if (count > sorted) std::partial_sort(ids.begin(), ids.begin() + count, ids.begin() + keep, before);
    sorted = std::max(sorted, count);
  };
  sort_first(1);
  // Probabilities at temperature 1 decide the top-p / min-p cut, as llama.cpp does.
  const double top = logits[ids[0]];
  if (params.top_p < 1.0f) {
    double sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += std::exp(static_cast<double>(logits[ids[i]]) - top);
    double cumulative = 0;
    int64_t walked = 0;
    for (int64_t prefix = 64; walked < keep; prefix *= 4) {
      sort_first(prefix);
      for (; walked < sorted; ++walked) {
        cumulative += std::exp(static_cast<double>(logits[ids[walked]]) - top) / sum;
        if (cumulative >= params.top_p) {
          keep = walked + 1;
          break;
        }
      }
      if (walked < sorted) break;  // cut
    }
  }
  if (params.min_p > 0.0f) {
    const auto passes = [&](int32_t id) { return std::exp(static_cast<double>(logits[id]) - top) >= params.min_p; };
    if (sorted >= keep) {  // a sorted prefix: the first that fails ends it
      int64_t cut = 1;
      while (cut < keep && passes(ids[cut])) ++cut;
      keep = cut;
    } else {  // the largest stays first (a min-p above 1 keeps it alone)
      keep = 1 + (std::partition(ids.begin() + 1, ids.begin() + keep, passes) - (ids.begin() + 1));
    }
  }
  ids.resize(keep);
  return ids;
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (params_.temperature <= 0.0f) return Argmax(logits);
  const std::vector<int32_t> ids = SamplingCandidates(logits, params_);
  const double top = logits[ids[0]];
  std::vector<double> weights(ids.size());
  double total = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    total += weights[i] = std::exp((static_cast<double>(logits[ids[i]]) - top) / params_.temperature);
  }
  // One draw over the candidates in SamplingCandidates' order.
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (u < weights[i]) return ids[i];
    u -= weights[i];
  }
  return ids.back();  // rounding left u at the end
}

namespace {

// tokens[i] = token(row i of logits) for each of tokens' rows, in parallel on `pool` when given.
template <typename TokenOf>
void ForEachRow(absl::Span<const float> logits, int64_t vocab, absl::Span<int32_t> tokens,
                kernels::cpu::ThreadPool* pool, const TokenOf& token) {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  const auto draw = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      tokens[i] = token(i, logits.subspan(static_cast<size_t>(i * vocab), static_cast<size_t>(vocab)));
    }
  };
  if (pool == nullptr || rows <= 1) {
    draw(0, rows);
  } else {
    pool->ParallelFor(rows, 1, draw);
  }
}

}  // namespace

void SampleRows(absl::Span<const float> logits, int64_t vocab, absl::Span<Sampler* const> samplers,
                absl::Span<int32_t> tokens, kernels::cpu::ThreadPool* pool) {
  ForEachRow(logits, vocab, tokens.subspan(0, samplers.size()), pool,
             [&](int64_t i, absl::Span<const float> row) { return samplers[i]->Sample(row); });
}

void ArgmaxRows(absl::Span<const float> logits, int64_t vocab, absl::Span<int32_t> tokens,
                kernels::cpu::ThreadPool* pool) {
  ForEachRow(logits, vocab, tokens, pool, [](int64_t, absl::Span<const float> row) { return Argmax(row); });
}

std::unique_ptr<kernels::cpu::ThreadPool> NewSamplingPool() {
  return std::make_unique<kernels::cpu::ThreadPool>(
      static_cast<int>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 8)));
}

}  // namespace latentserve::model
