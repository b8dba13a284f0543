// What the router checks of a Generate request before placing it: the prompt's size in
// bytes before tokenising, its tokens, and every field against the model and the limits.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "latentserve/v1/generate.pb.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "router/generation_service.h"

namespace latentserve::router {

// The prompt as token ids (text and chat through the router's tokenizer), after the
// --max-prompt-bytes check.
absl::StatusOr<std::vector<int32_t>> PromptTokens(RouterState& state, const v1::GenerateRequest& request);

// Every field of the request against the model, the prompt and context limits.
absl::Status ValidateRequest(RouterState& state, const v1::GenerateRequest& request,
                             const std::vector<int32_t>& tokens, const internal::v1::ModelDescriptor& model);

}  // namespace latentserve::router
