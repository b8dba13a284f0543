// Host time of one sampled token from a 163,840-entry row (Kimi-Linear's vocabulary), normal
// logits: Sampler against the full sort it replaced (docs/benchmarks.md). Run by hand:
// build/bin/bench_sampler.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "model/sampler.h"

namespace {

using latentserve::model::Sampler;
using latentserve::model::SamplingParams;

// The previous Sampler::Sample: sort the whole row, cut top-p, draw.
int32_t FullSortDraw(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  size_t keep = ids.size();
  std::vector<double> w(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += w[i] = std::exp(double(logits[ids[i]]) - logits[ids[0]]);
  if (p.top_p < 1.0f) {
    double cumulative = 0;
    for (size_t i = 0; i < keep; ++i) {
      if ((cumulative += w[i] / sum) >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  for (size_t i = 0; i < keep; ++i) w[i] = std::exp((double(logits[ids[i]]) - logits[ids[0]]) / p.temperature);
  std::discrete_distribution<size_t> pick(w.begin(), w.begin() + keep);
  return ids[pick(rng)];
}

template <typename Draw>
double MsPerToken(Draw draw) {
  constexpr int kTokens = 50;
  const auto start = std::chrono::steady_clock::now();
  int64_t sink = 0;
  for (int i = 0; i < kTokens; ++i) sink += draw();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return sink < 0 ? 0 : ms / kTokens;
}

}  // namespace

int main() {
  std::mt19937_64 rng(1);
  for (float spread : {3.0f, 10.0f}) {
    std::normal_distribution<float> normal(0.0f, spread);
    std::vector<float> logits(163840);
    for (float& v : logits) v = normal(rng);
    for (const SamplingParams& p : {SamplingParams{1.0f, 0, 1.0f, 0.0f, 2}, SamplingParams{1.0f, 0, 0.9f, 0.0f, 2},
                                    SamplingParams{0.8f, 40, 1.0f, 0.0f, 2}}) {
      std::mt19937_64 old_rng(2);
      Sampler sampler(p);
      std::printf("logits N(0, %.0f), temperature %.1f, top_k %d, top_p %.2f: full sort %.2f ms/token, Sampler %.2f\n",
                  spread, p.temperature, p.top_k, p.top_p, MsPerToken([&] { return FullSortDraw(logits, p, old_rng); }),
                  MsPerToken([&] { return sampler.Sample(logits); }));
    }
  }
  return 0;
}
