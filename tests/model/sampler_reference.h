// The sampler chain the way Sampler worked before SamplingCandidates: sort the whole row,
// then cut top-k, top-p (probabilities at temperature 1 over the top-k) and min-p against the
// largest. The kept ids, most likely first. For test_sampler and bench_sampler.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "model/sampler.h"

namespace latentserve::model {

inline std::vector<int32_t> FullSortKept(const std::vector<float>& logits, const SamplingParams& p) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  size_t keep = ids.size();
  if (p.top_k > 0) keep = std::min<size_t>(keep, p.top_k);
  std::vector<double> probs(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += probs[i] = std::exp(double(logits[ids[i]]) - logits[ids[0]]);
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    size_t cut = 1;
    while (cut < keep && probs[cut] >= p.min_p * probs[0]) ++cut;
    keep = cut;
  }
  ids.resize(keep);
  return ids;
}

}  // namespace latentserve::model
