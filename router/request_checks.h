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
// --max-prompt-bytes check. With a session_id the prompt is a suffix: text without BOS.
absl::StatusOr<std::vector<int32_t>> PromptTokens(RouterState& state, const v1::GenerateRequest& request);

// The prompt's length against --max-prompt-tokens (Generate and Tokenize).
absl::Status CheckPromptTokens(const RouterState& state, const std::vector<int32_t>& tokens);

// Every field of the request against the model, the prompt and context limits. Errors carry
// an ErrorInfo reason (common/error_details.h) as payload: PROMPT_TOO_LONG,
// CONTEXT_LIMIT_EXCEEDED, FIELD_INVALID (metadata "field"), MODEL_NOT_FOUND, ...
absl::Status ValidateRequest(RouterState& state, const v1::GenerateRequest& request,
                             const std::vector<int32_t>& tokens, const internal::v1::ModelDescriptor& model);

}  // namespace latentserve::router
