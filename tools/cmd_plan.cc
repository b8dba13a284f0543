// `latentserve plan`: the memory arithmetic of DESIGN.md §2 for a model file or a named config.
#include <cstdio>
#include <string>

#include "common/args.h"
#include "common/dtype.h"
#include "common/status.h"
#include "model/plan.h"
#include "tools/cli.h"
#include "tools/lib/engine_setup.h"

namespace latentserve::cli {
namespace {

// latentserve plan: the memory arithmetic of DESIGN.md §2 for a model file or a named config.
absl::Status RunPlan(int argc, char** argv) {
  ASSIGN_OR_RETURN(
      Args args,
      Args::Parse(argc, argv, {"model", "config", "context", "cache-type", "weight-type"}));
  ASSIGN_OR_RETURN(int64_t context, args.GetInt("context", 1048576));
  if (context <= 0) return absl::InvalidArgumentError("--context must be positive");
  auto cache_type = ParseDType(args.Get("cache-type", "f16"));
  if (!cache_type)
    return absl::InvalidArgumentError("--cache-type must be f32, f16, bf16, q8_0 or q4_0");
  model::ModelConfig config;
  int64_t weights_bytes = 0;
  if (args.Has("model")) {
    ASSIGN_OR_RETURN(auto file, gguf::File::Open(args.Get("model")));
    ASSIGN_OR_RETURN(config, model::ModelConfig::FromGguf(*file));
    for (const auto& t : file->tensors()) weights_bytes += static_cast<int64_t>(t.nbytes);
  } else if (args.Get("config") == "kimi-linear-48b-a3b") {
    config = model::ModelConfig::KimiLinear48B();
    auto weight_type = ParseDType(args.Get("weight-type", "q4_0"));
    if (!weight_type)
      return absl::InvalidArgumentError("--weight-type must be f32, f16, bf16, q8_0, q4_0, q4_k, q5_k or q6_k");
    weights_bytes = model::WeightBytes(config, *weight_type);
  } else {
    return absl::InvalidArgumentError("give --model PATH or --config kimi-linear-48b-a3b");
  }
  const model::MemoryPlan plan = model::PlanMemory(config, context, *cache_type, weights_bytes);
  std::printf(
      "{\"context_tokens\":%lld,\"cache_type\":\"%s\",\"mla_layers\":%lld,\"kda_layers\":%lld,"
      "\"latent_bytes_per_token\":%lld,\"latent_cache_bytes\":%lld,\"kda_state_bytes\":%lld,"
      "\"weights_bytes\":%lld,\"mha_cache_bytes_f16\":%lld}\n",
      static_cast<long long>(context), DTypeName(*cache_type),
      static_cast<long long>(config.mla_layer_count()),
      static_cast<long long>(config.kda_layer_count()),
      static_cast<long long>(plan.latent_cache_bytes / context),
      static_cast<long long>(plan.latent_cache_bytes), static_cast<long long>(plan.kda_state_bytes),
      static_cast<long long>(plan.weights_bytes), static_cast<long long>(plan.mha_cache_bytes_f16));
  return absl::OkStatus();
}

Registrar plan_cmd("plan", "memory plan (latent cache, KDA state, weights) for a context",
                   StatusHandler("plan", RunPlan));

}  // namespace
}  // namespace latentserve::cli
