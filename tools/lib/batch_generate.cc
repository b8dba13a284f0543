#include "tools/lib/batch_generate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "common/status.h"
#include "model/decode_graphs.h"

namespace latentserve::cli {

namespace {
double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

absl::Status GenerateBatch(Engine& engine, absl::Span<const int32_t> prompt,
                           const BatchGenerateOptions& options) {
  const model::Model& m = *engine.model;
  const int64_t n = options.batch, vocab = m.vocab();
  std::vector<std::unique_ptr<model::Sequence>> sequences;
  std::vector<model::Sampler> samplers;
  std::vector<int32_t> next(static_cast<size_t>(n));
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  // Sequence i reads the prompt rotated left by i tokens: the same tokens, other states (and no
  // two sequences share a cached prefix).
  std::vector<int32_t> tokens(prompt.begin(), prompt.end());
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(std::unique_ptr<model::Sequence> sequence, engine.sequences->New());
    if (i > 0) std::rotate(tokens.begin(), tokens.begin() + 1, tokens.end());
    ASSIGN_OR_RETURN(std::vector<float> logits,
                     m.Prefill(*sequence, tokens, *engine.cache, engine.chunk_tokens, false));
    model::SamplingParams params = options.sampling;
    params.seed += static_cast<uint64_t>(i);
    samplers.emplace_back(params);
    next[i] = samplers.back().Sample(logits);
    out[i].push_back(next[i]);
    sequences.push_back(std::move(sequence));
    std::fprintf(stderr, "\rgenerate: prefilled %lld of %lld sequences",
                 static_cast<long long>(i + 1), static_cast<long long>(n));
  }
  std::fprintf(stderr, "\n");
  const double prefill_s = SecondsSince(start);

  model::DecodeGraphs graphs(m, *engine.cache);
  model::ForwardProfile profile;
  model::ForwardOptions forward_options;
  forward_options.profile = &profile;
  std::vector<float> forward_logits;
  std::vector<model::BatchEntry> entries;
  std::vector<model::Sampler*> sampler_of_row;
  for (model::Sampler& sampler : samplers) sampler_of_row.push_back(&sampler);
  const std::unique_ptr<kernels::cpu::ThreadPool> pool = model::NewSamplingPool();
  // Every row has options.sampling's temperature: greedy rows take their tokens from the device.
  const bool greedy = !samplers.empty() && samplers.front().greedy();
  int64_t steps = 0;
  if (options.profiler_range) m.backend().ProfilerStart();
  const auto decode_start = std::chrono::steady_clock::now();
  for (; static_cast<int64_t>(out[0].size()) < options.max_tokens; ++steps) {
    entries.clear();
    for (int64_t i = 0; i < n; ++i)
      entries.push_back({sequences[i].get(), absl::MakeConstSpan(&next[i], 1), false});
    absl::Span<const float> logits;
    if (options.profile) {
      ASSIGN_OR_RETURN(forward_logits, m.Forward(entries, *engine.cache, forward_options));
      logits = forward_logits;
    } else if (greedy) {  // the tokens from the device, as the decode worker takes them
      ASSIGN_OR_RETURN(absl::Span<const int32_t> ids, graphs.GreedyStep(entries, pool.get()));
      std::copy(ids.begin(), ids.end(), next.begin());
    } else {
      ASSIGN_OR_RETURN(logits, graphs.Step(entries));
    }
    if (!logits.empty()) model::SampleRows(logits, vocab, sampler_of_row, absl::MakeSpan(next), pool.get());
    for (int64_t i = 0; i < n; ++i) out[i].push_back(next[i]);
  }
  if (options.profiler_range) m.backend().ProfilerStop();
  const double decode_s = SecondsSince(decode_start);

  if (options.print_ids) {
    for (const std::vector<int32_t>& ids : out) {
      for (size_t j = 0; j < ids.size(); ++j) std::printf("%s%d", j ? "," : "", ids[j]);
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  PrintMemoryBreakdown(engine, n);
  std::fprintf(stderr,
               "batch %lld: prompts of %zu tokens prefilled in %.3f s (%.1f tok/s); %lld steps of "
               "%lld sequences, "
               "%.3f ms a step, decode %.1f tok/s aggregate\n",
               static_cast<long long>(n), prompt.size(), prefill_s, n * prompt.size() / prefill_s,
               static_cast<long long>(steps), static_cast<long long>(n),
               steps ? 1e3 * decode_s / steps : 0.0, steps ? n * steps / decode_s : 0.0);
  if (m.backend().CanCapture()) {
    std::fprintf(
        stderr, "decode graphs: %lld recorded, %lld replays%s%s\n",
        static_cast<long long>(graphs.recordings()), static_cast<long long>(graphs.replays()),
        graphs.disabled_reason().empty() ? "" : "; off: ", graphs.disabled_reason().c_str());
  }
  if (options.profile) PrintForwardProfile("decode", profile);
  sequences.clear();  // their pages go back to the cache
  return absl::OkStatus();
}

void PrintForwardProfile(const char* name, const model::ForwardProfile& p) {
  const double per = p.forwards ? 1e3 / p.forwards : 0;
  std::fprintf(
      stderr,
      "{\"profile\":\"%s\",\"forwards\":%lld,\"ms_per_forward\":{\"embed\":%.3f,\"norms\":%.3f,"
      "\"kda\":%.3f,\"mla\":%.3f,\"ffn_dense\":%.3f,\"moe\":%.3f,\"head\":%.3f,\"enqueue\":%.3f,"
      "\"wait\":%.3f}}\n",
      name, static_cast<long long>(p.forwards), p.embed * per, p.norms * per, p.kda * per,
      p.mla * per, p.ffn_dense * per, p.moe * per, p.head * per, p.enqueue * per, p.wait * per);
}

}  // namespace latentserve::cli
