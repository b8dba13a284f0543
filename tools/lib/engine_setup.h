// Shared setup of the offline engine subcommands: backend, model and latent cache from flags.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/args.h"
#include "kernels/backend.h"
#include "cache/sequence_table.h"
#include "model/latent_cache.h"
#include "model/model.h"

namespace latentserve::cli {

// Flags understood by EngineFromArgs.
inline const std::set<std::string> kEngineFlags = {"model", "backend", "device", "threads", "cache-type", "page-tokens",
                                                   "chunk", "context", "random-weights", "weight-type",
                                                   "weights-seed"};

struct Engine {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<model::Model> model;
  std::unique_ptr<model::LatentCache> cache;
  std::unique_ptr<cache::SequenceTable> sequences;  // over `cache`; dropped before it
  int64_t chunk_tokens = 512;
};

// Loads the model and sizes a latent cache for `context_tokens` (at least).
absl::StatusOr<Engine> EngineFromArgs(const Args& args, int64_t context_tokens);

// One line of JSON on stderr: weights, latent cache, KDA state, backend peak and workspace.
void PrintMemoryBreakdown(const Engine& engine, int64_t sequences);

// --seed as the API's uint64; without it a random seed (OpenAI and vLLM: unset means random;
// not a secret, so std::random_device is enough). `*random` says which.
absl::StatusOr<uint64_t> SeedFromArgs(const Args& args, bool* random);

// Token ids from --tokens "1,2,3" or --tokens-file F (same format).
absl::StatusOr<std::vector<int32_t>> TokensFromArgs(const Args& args, const std::string& flag,
                                                    const std::string& file_flag);

}  // namespace latentserve::cli
