// `latentserve generate --batch N`: N sequences prefilled one after another, then decoded
// together, one forward a step for all of them (as the decode worker's continuous batch runs
// them), with the aggregate decode rate: llama-batched-bench's measurement on our engine, with
// no servers in the way. --profile times the parts of a batched forward.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tools/lib/engine_setup.h"

namespace latentserve::cli {

struct BatchGenerateOptions {
  int64_t batch = 1;
  int64_t max_tokens = 16;         // per sequence, the prefill's token included
  model::SamplingParams sampling;  // sequence i draws with seed + i
  bool profile = false;            // unrecorded forwards, each part timed
  bool print_ids = false;          // each sequence's ids, one line each, on stdout
  bool profiler_range = false;     // Backend::ProfilerStart / Stop around the decode steps
};

absl::Status GenerateBatch(Engine& engine, absl::Span<const int32_t> prompt,
                           const BatchGenerateOptions& options);

// One line of JSON on stderr: the mean ms of each part of `profile`'s forwards.
void PrintForwardProfile(const char* name, const model::ForwardProfile& profile);

}  // namespace latentserve::cli
