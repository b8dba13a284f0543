// Host time of one token from a 163,840-entry row (Kimi-Linear's vocabulary), normal logits:
// Sampler against the full sort it replaced, Argmax against std::max_element
// (docs/benchmarks.md). Run by hand: build/bin/bench_sampler.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "model/sampler.h"
#include "tests/model/sampler_reference.h"

namespace {

using latentserve::model::Sampler;
using latentserve::model::SamplingParams;

// The previous Sampler::Sample: sort the whole row, cut, draw.
int32_t FullSortDraw(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng) {
  const std::vector<int32_t> ids = latentserve::model::FullSortKept(logits, p);
  std::vector<double> w(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) w[i] = std::exp((double(logits[ids[i]]) - logits[ids[0]]) / p.temperature);
  std::discrete_distribution<size_t> pick(w.begin(), w.end());
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
    std::printf("logits N(0, %.0f), greedy: std::max_element %.3f ms/token, Argmax %.3f\n", spread,
                MsPerToken([&] { return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()); }),
                MsPerToken([&] { return latentserve::model::Argmax(logits); }));
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
