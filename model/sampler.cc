#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace latentserve::model {

int32_t Argmax(absl::Span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  if (params_.temperature <= 0.0f) return Argmax(logits);
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  size_t keep = ids.size();
  if (params_.top_k > 0) keep = std::min<size_t>(keep, params_.top_k);
  // Probabilities at temperature 1 decide the top-p / min-p cut, as llama.cpp does.
  std::vector<double> probs(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += probs[i] = std::exp(static_cast<double>(logits[ids[i]] - logits[ids[0]]));
  if (params_.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += probs[i] / sum;
      if (cumulative >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (params_.min_p > 0.0f) {
    size_t cut = 1;
    while (cut < keep && probs[cut] >= params_.min_p * probs[0]) ++cut;
    keep = cut;
  }
  std::vector<double> weights(keep);
  for (size_t i = 0; i < keep; ++i) {
    weights[i] = std::exp(static_cast<double>(logits[ids[i]] - logits[ids[0]]) / params_.temperature);
  }
  std::discrete_distribution<size_t> pick(weights.begin(), weights.end());
  return ids[pick(rng_)];
}

}  // namespace latentserve::model
