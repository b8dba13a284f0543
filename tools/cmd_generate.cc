// `latentserve generate`: prefill then sample in this process (no servers), streaming each
// token as it is made; --profile times the parts of a forward.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/args.h"
#include "common/status.h"
#include "common/tokenizer/detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "model/decode_graphs.h"
#include "model/sampler.h"
#include "tools/cli.h"
#include "tools/lib/batch_generate.h"
#include "tools/lib/engine_setup.h"

namespace latentserve::cli {
namespace {

constexpr int64_t kMaxBatch = 1024;

// latentserve generate: prefill then sample, streaming each token id as it is made.
absl::Status RunGenerate(int argc, char** argv) {
  std::set<std::string> known = kEngineFlags;
  known.insert({"prompt-tokens", "prompt-tokens-file", "prompt", "prompt-file", "max-tokens",
                "temperature", "top-k", "top-p", "min-p", "seed", "batch"});
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known,
                                          {"ignore-eos", "ids", "profile", "profile-overlap",
                                           "profiler-range"}));
  const bool text_prompt = args.Has("prompt") || args.Has("prompt-file");
  std::string prompt_text = args.Get("prompt");
  if (args.Has("prompt-file")) {
    std::ifstream in(args.Get("prompt-file"), std::ios::binary);
    if (!in) return absl::NotFoundError("cannot read --prompt-file " + args.Get("prompt-file"));
    std::stringstream buffer;
    buffer << in.rdbuf();
    prompt_text = buffer.str();
  }
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 16));
  if (max_tokens <= 0) return absl::InvalidArgumentError("--max-tokens must be positive");
  model::SamplingParams sampling;
  ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.0));
  ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 0));
  ASSIGN_OR_RETURN(double top_p, args.GetDouble("top-p", 1.0));
  ASSIGN_OR_RETURN(double min_p, args.GetDouble("min-p", 0.0));
  bool random_seed = false;
  ASSIGN_OR_RETURN(uint64_t seed, SeedFromArgs(args, &random_seed));
  if (random_seed && temperature > 0) {  // said, so that the run can be repeated
    std::fprintf(stderr, "generate: --seed %llu\n", static_cast<unsigned long long>(seed));
  }
  sampling.temperature = static_cast<float>(temperature);
  sampling.top_k = static_cast<int32_t>(top_k);
  sampling.top_p = static_cast<float>(top_p);
  sampling.min_p = static_cast<float>(min_p);
  sampling.seed = seed;
  // The tokenizer comes from the model file (none with --random-weights: ids only).
  std::unique_ptr<tokenizer::Tokenizer> vocab;
  std::unique_ptr<gguf::File> vocab_file;
  if (args.Has("model")) {
    ASSIGN_OR_RETURN(vocab_file, gguf::File::Open(args.Get("model")));
    auto loaded = tokenizer::Tokenizer::FromGguf(*vocab_file);
    if (loaded.ok()) vocab = std::make_unique<tokenizer::Tokenizer>(std::move(*loaded));
  }
  std::vector<int32_t> prompt;
  if (text_prompt) {
    if (!vocab)
      return absl::FailedPreconditionError("--prompt needs a model file with a tokenizer");
    prompt = vocab->Encode(prompt_text, /*parse_special=*/true, /*add_special=*/true);
    if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  } else {
    ASSIGN_OR_RETURN(prompt, TokensFromArgs(args, "prompt-tokens", "prompt-tokens-file"));
  }
  const bool print_ids = args.Has("ids") || !vocab;
  const bool stop_at_eos = !args.Has("ignore-eos") && vocab && vocab->eos_id() >= 0;
  ASSIGN_OR_RETURN(int64_t batch, args.GetInt("batch", 1));
  if (batch < 1 || batch > kMaxBatch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch must be in [1, ", kMaxBatch, "], got ", batch));
  }
  // Each sequence's prompt and answer, plus two pages of rounding. (Bounded: --max-tokens and the
  // prompt are below 2^40, --batch below 2^10; EngineFromArgs checks the total.)
  const int64_t per_sequence = static_cast<int64_t>(prompt.size()) + max_tokens;
  if (max_tokens > (int64_t{1} << 40) || per_sequence > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError("--max-tokens plus the prompt is too long");
  }
  ASSIGN_OR_RETURN(int64_t page_tokens,
                   args.GetInt("page-tokens", 256));  // checked by EngineFromArgs
  const int64_t rounding = 2 * std::clamp<int64_t>(page_tokens, 1, int64_t{1} << 16);
  ASSIGN_OR_RETURN(Engine engine, EngineFromArgs(args, batch > 1 ? batch * (per_sequence + rounding)
                                                                 : per_sequence));
  if (batch > 1) {
    if (args.Has("profile-overlap"))
      return absl::InvalidArgumentError("--batch takes --profile, not --profile-overlap");
    BatchGenerateOptions batched;
    batched.batch = batch;
    batched.max_tokens = max_tokens;
    batched.sampling = sampling;
    batched.profile = args.Has("profile");
    batched.print_ids = args.Has("ids");
    batched.profiler_range = args.Has("profiler-range");
    return GenerateBatch(engine, prompt, batched);
  }
  const model::Model& m = *engine.model;
  ASSIGN_OR_RETURN(auto sequence, engine.sequences->New());
  std::unique_ptr<tokenizer::StreamingDecoder> decoder;
  if (!print_ids)
    decoder = std::make_unique<tokenizer::StreamingDecoder>(*vocab, /*render_special=*/false);
  const auto start = std::chrono::steady_clock::now();
  model::ForwardProfile prefill_profile, decode_profile;
  model::ForwardOptions prefill_options, decode_options;
  const bool profile = args.Has("profile") || args.Has("profile-overlap");
  if (profile) {
    prefill_options.profile = &prefill_profile;
    decode_options.profile = &decode_profile;
    // --profile-overlap: no synchronise between parts, so the host runs ahead as it does
    // normally; only the enqueue / wait split is measured.
    prefill_options.profile_parts = decode_options.profile_parts = !args.Has("profile-overlap");
  }
  ASSIGN_OR_RETURN(std::vector<float> prefill_logits,
                   m.Prefill(*sequence, prompt, *engine.cache, engine.chunk_tokens, false, nullptr,
                             prefill_options));
  const auto prefilled = std::chrono::steady_clock::now();
  model::Sampler sampler(sampling);
  model::DecodeGraphs graphs(m, *engine.cache);     // decode steps replayed as CUDA graphs
  std::vector<float> forward_logits;                // --profile: Forward's
  absl::Span<const float> logits = prefill_logits;  // the last step's (a view)
  const bool profiler_range = args.Has("profiler-range");
  if (profiler_range) m.backend().ProfilerStart();
  int64_t generated = 0;
  for (; generated < max_tokens; ++generated) {
    const int32_t next = sampler.Sample(logits);
    if (stop_at_eos && next == vocab->eos_id()) break;
    if (decoder) {
      ASSIGN_OR_RETURN(std::string piece, decoder->Push(next));
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    } else {
      std::printf("%s%d", generated ? "," : "", next);
    }
    std::fflush(stdout);
    if (generated + 1 == max_tokens) break;
    model::BatchEntry entry{sequence.get(), absl::MakeConstSpan(&next, 1), false};
    if (profile) {
      ASSIGN_OR_RETURN(forward_logits, m.Forward({entry}, *engine.cache, decode_options));
      logits = forward_logits;
    } else {
      ASSIGN_OR_RETURN(logits, graphs.Step({entry}));
    }
  }
  if (profiler_range) m.backend().ProfilerStop();
  const auto done = std::chrono::steady_clock::now();
  if (decoder) {
    const std::string rest = decoder->Flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::printf("\n");
  std::fflush(stdout);
  PrintMemoryBreakdown(engine, 1);
  const double prefill_s = std::chrono::duration<double>(prefilled - start).count();
  const double decode_s = std::chrono::duration<double>(done - prefilled).count();
  const int64_t produced = std::min(generated + 1, max_tokens);
  std::fprintf(stderr, "prompt %zu tokens in %.3f s (%.1f tok/s); %lld tokens, decode %.1f tok/s\n",
               prompt.size(), prefill_s, prompt.size() / prefill_s,
               static_cast<long long>(produced), generated > 0 ? generated / decode_s : 0.0);
  if (m.backend().CanCapture()) {
    std::fprintf(
        stderr, "decode graphs: %lld recorded, %lld replays%s%s\n",
        static_cast<long long>(graphs.recordings()), static_cast<long long>(graphs.replays()),
        graphs.disabled_reason().empty() ? "" : "; off: ", graphs.disabled_reason().c_str());
  }
  if (profile) {
    PrintForwardProfile("prefill", prefill_profile);
    PrintForwardProfile("decode", decode_profile);
  }
  sequence.reset();  // its pages go back to the cache
  return absl::OkStatus();
}

Registrar generate_cmd("generate", "generate tokens from a prompt, streaming them",
                       StatusHandler("generate", RunGenerate));

}  // namespace
}  // namespace latentserve::cli
