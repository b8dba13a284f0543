#include "tools/lib/engine_setup.h"

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::cli {

absl::StatusOr<Engine> EngineFromArgs(const Args& args, int64_t context_tokens) {
  Engine engine;
  kernels::BackendOptions backend_options;
  backend_options.kind = args.Get("backend", "cpu");
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  backend_options.threads = static_cast<int>(threads);
  ASSIGN_OR_RETURN(int64_t device, args.GetInt("device", 0));
  if (device < 0 || device > 1023) return absl::InvalidArgumentError("--device must be a CUDA device ordinal >= 0");
  if (args.Has("device") && backend_options.kind != "cuda") {
    return absl::InvalidArgumentError("--device picks a CUDA device: it needs --backend cuda");
  }
  backend_options.device = static_cast<int>(device);
  ASSIGN_OR_RETURN(engine.backend, kernels::CreateBackend(backend_options));
  if (args.Has("random-weights")) {
    // The real shape with random weights made on the backend: full-size runs without a file.
    if (args.Get("random-weights") != "kimi-linear-48b-a3b") {
      return absl::InvalidArgumentError("--random-weights supports kimi-linear-48b-a3b");
    }
    auto weight_type = ParseDType(args.Get("weight-type", "q4_0"));
    if (!weight_type) return absl::InvalidArgumentError("--weight-type must be f32, f16, bf16, q8_0, q4_0, q4_k, q5_k or q6_k");
    ASSIGN_OR_RETURN(int64_t seed, args.GetInt("weights-seed", 1));
    ASSIGN_OR_RETURN(engine.model, model::Model::Random(model::ModelConfig::KimiLinear48B(), *engine.backend,
                                                        *weight_type, static_cast<uint64_t>(seed)));
  } else {
    ASSIGN_OR_RETURN(std::string path, args.Require("model"));
    ASSIGN_OR_RETURN(engine.model, model::Model::Load(path, *engine.backend));
  }
  model::LatentCacheOptions cache_options;
  const std::string cache_type = args.Get("cache-type", "f16");
  auto dtype = ParseDType(cache_type);
  if (!dtype) {
    return absl::InvalidArgumentError(absl::StrCat("--cache-type must be f32, f16, bf16, q8_0 or q4_0, got '",
                                                   cache_type, "'"));
  }
  cache_options.dtype = *dtype;
  ASSIGN_OR_RETURN(cache_options.page_tokens, args.GetInt("page-tokens", 256));
  // Checked before any arithmetic with them: 0 divided, and a count near INT64_MAX wrapped
  // to a one-page cache.
  constexpr int64_t kMaxPageTokens = 1 << 16;
  constexpr int64_t kMaxCacheTokens = int64_t{1} << 40;
  if (cache_options.page_tokens <= 0 || cache_options.page_tokens > kMaxPageTokens) {
    return absl::InvalidArgumentError(absl::StrCat("--page-tokens must be in [1, ", kMaxPageTokens, "], got ",
                                                   cache_options.page_tokens));
  }
  ASSIGN_OR_RETURN(int64_t context, args.GetInt("context", context_tokens));
  context = std::max(context, context_tokens);
  if (context <= 0 || context > kMaxCacheTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cache-tokens / --context must be in [1, ", kMaxCacheTokens, "], got ", context));
  }
  cache_options.pages = std::max<int64_t>(1, (context + cache_options.page_tokens - 1) / cache_options.page_tokens);
  // A worker that may receive by CUDA IPC (--transport auto|cuda-ipc) keeps its pools in
  // memory another process can open; other backends and commands allocate as usual.
  const std::string transport = args.Get("transport", "auto");
  cache_options.exportable = backend_options.kind == "cuda" && (transport == "auto" || transport == "cuda-ipc");
  ASSIGN_OR_RETURN(engine.cache, model::NewLatentCache(engine.model->config(), *engine.backend, cache_options));
  engine.sequences = std::make_unique<cache::SequenceTable>(*engine.cache, engine.model->kda_layout());
  // Prefill chunk: 512 tokens on the CPU; 65,536 on the GPU, where the MHA-form MLA prefill
  // expands every cached key once per chunk, the MoE prefill reaches 2,048 rows an expert (its
  // pre-dequantised kernel) and the flash kernel's last wave of CTAs idles fewer SMs (at a 1M
  // context it ran at 70.8% of the bf16 GEMM rate for 16,384 queries, 74.5% for 65,536);
  // docs/benchmarks.md. Peak device memory for a 1M-token prompt: 71.6 GB of the H200's 141.
  ASSIGN_OR_RETURN(engine.chunk_tokens, args.GetInt("chunk", backend_options.kind == "cuda" ? 65536 : 512));
  if (engine.chunk_tokens <= 0) return absl::InvalidArgumentError("--chunk must be positive");
  return engine;
}

absl::StatusOr<uint64_t> SeedFromArgs(const Args& args, bool* random) {
  *random = !args.Has("seed");
  if (*random) {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }
  uint64_t seed;
  if (!absl::SimpleAtoi(args.Get("seed"), &seed)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed expects an integer in [0, 18446744073709551615], got '", args.Get("seed"), "'"));
  }
  return seed;
}

void PrintMemoryBreakdown(const Engine& engine, int64_t sequences) {
  const int64_t weights = static_cast<int64_t>(engine.model->weights().bytes);
  const int64_t cache = static_cast<int64_t>(engine.cache->total_bytes());
  const int64_t kda = engine.model->KdaStateBytes() * sequences;
  const int64_t peak = engine.backend->PeakMemoryBytes();
  std::fprintf(stderr,
               "{\"memory\":{\"backend\":\"%s\",\"weights_bytes\":%lld,\"latent_cache_bytes\":%lld,"
               "\"kda_state_bytes\":%lld,\"peak_bytes\":%lld,\"workspace_bytes\":%lld}}\n",
               engine.backend->name().c_str(), static_cast<long long>(weights), static_cast<long long>(cache),
               static_cast<long long>(kda), static_cast<long long>(peak),
               static_cast<long long>(peak >= 0 ? peak - weights - cache - kda : -1));
}

absl::StatusOr<std::vector<int32_t>> TokensFromArgs(const Args& args, const std::string& flag,
                                                    const std::string& file_flag) {
  std::string text;
  if (args.Has(file_flag)) {
    std::ifstream in(args.Get(file_flag));
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read --", file_flag, " ", args.Get(file_flag)));
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  } else if (args.Has(flag)) {
    text = args.Get(flag);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " or --", file_flag, " is required"));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> values, ParseIntList(text));
  std::vector<int32_t> tokens;
  for (int64_t v : values) {
    if (v < 0 || v > INT32_MAX) return absl::InvalidArgumentError(absl::StrCat("token id ", v, " is out of range"));
    tokens.push_back(static_cast<int32_t>(v));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  return tokens;
}

}  // namespace latentserve::cli
