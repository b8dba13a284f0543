// Model identity shared by router, prefill and decode workers: a cache built by one model
// must never be imported by another.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace latentserve::transfer {

// Hex XXH64 over the GGUF's first 8 MiB (header, metadata, tokenizer, first tensors) and
// its size. Cheap to compute at startup, and any re-quantisation or reshape changes it.
absl::StatusOr<std::string> ModelFingerprint(const std::string& gguf_path);

}  // namespace latentserve::transfer
