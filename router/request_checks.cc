#include "router/request_checks.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "router/text_codec.h"

namespace latentserve::router {
namespace {

// Text and chat prompts are measured before the tokenizer sees them: tokenising is the
// expensive, memory-hungry step a limit must come before.
absl::Status CheckPromptBytes(const RouterState& state, const v1::GenerateRequest& request) {
  const int64_t limit = state.options().max_prompt_bytes;
  if (limit <= 0) return absl::OkStatus();
  int64_t bytes = 0;
  if (request.prompt_case() == v1::GenerateRequest::kText) bytes = static_cast<int64_t>(request.text().size());
  if (request.prompt_case() == v1::GenerateRequest::kChat) {
    for (const v1::ChatMessage& m : request.chat().messages()) {
      bytes += static_cast<int64_t>(m.role().size() + m.content().size());
    }
  }
  if (bytes > limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", bytes, " bytes exceeds this router's limit of ", limit,
                                                   " bytes (--max-prompt-bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> PromptTokens(RouterState& state, const v1::GenerateRequest& request) {
  RETURN_IF_ERROR(CheckPromptBytes(state, request));
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kTokens:
      return std::vector<int32_t>(request.tokens().ids().begin(), request.tokens().ids().end());
    case v1::GenerateRequest::kText:
    case v1::GenerateRequest::kChat: {
      const TextCodec* codec = state.codec();
      if (!codec) {
        return absl::UnimplementedError(
            "this deployment has no tokenizer, so text and chat prompts cannot be encoded; send token ids instead");
      }
      if (request.prompt_case() == v1::GenerateRequest::kText) return codec->EncodeText(request.text());
      if (request.chat().messages().empty()) return absl::InvalidArgumentError("chat prompt has no messages");
      return codec->EncodeChat(request.chat());
    }
    default:
      return absl::InvalidArgumentError("the request has no prompt: set text, tokens or chat");
  }
}

absl::Status ValidateRequest(RouterState& state, const v1::GenerateRequest& request,
                             const std::vector<int32_t>& tokens, const internal::v1::ModelDescriptor& model) {
  if (!request.model().empty() && request.model() != model.name()) {
    return absl::NotFoundError(absl::StrCat("unknown model '", request.model(), "'; this router serves '", model.name(),
                                            "' (or leave model empty)"));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt is empty: it has no tokens");
  const int64_t max_prompt = state.options().max_prompt_tokens;
  if (max_prompt > 0 && static_cast<int64_t>(tokens.size()) > max_prompt) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", tokens.size(), " tokens exceeds this router's limit of ",
                                                   max_prompt, " tokens (--max-prompt-tokens)"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= model.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", tokens[i],
                                                     ", outside the vocabulary [0, ", model.vocab_size(), ")"));
    }
  }
  const int64_t max_tokens = request.stopping().max_tokens();
  if (max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_tokens must be positive, got ", max_tokens));
  }
  const int64_t limit = state.registry().MaxContextTokens();
  if (static_cast<int64_t>(tokens.size()) + max_tokens > limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", tokens.size(), " tokens) + max_tokens (", max_tokens,
                                                   ") = ", tokens.size() + max_tokens, " exceeds the context limit of ",
                                                   limit, " tokens"));
  }
  // A server-side limit, not the client's fault: say which configuration falls short.
  const int64_t prefill_limit = state.registry().MaxContextTokens("prefill");
  if (prefill_limit > 0 && static_cast<int64_t>(tokens.size()) > prefill_limit) {
    return absl::FailedPreconditionError(absl::StrCat(
        "prompt of ", tokens.size(), " tokens exceeds the cache of every live prefill worker (largest ", prefill_limit,
        " tokens) although the decode workers hold ", limit, ": start prefill workers with --cache-tokens >= ",
        tokens.size()));
  }
  const auto& s = request.sampling();
  // Written so that NaN fails every comparison (NaN < 0 and NaN > 1 are both false).
  const bool sampling_ok = std::isfinite(s.temperature()) && s.temperature() >= 0 && s.top_k() >= 0 &&
                           s.top_p() >= 0 && s.top_p() <= 1 && s.min_p() >= 0 && s.min_p() <= 1;
  if (!sampling_ok) {
    return absl::InvalidArgumentError("sampling: temperature finite and >= 0, top_k >= 0, top_p and min_p in [0, 1]");
  }
  for (int32_t id : request.stopping().stop_token_ids()) {
    if (id < 0 || id >= model.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("stop token id ", id, " is outside the vocabulary"));
    }
  }
  if (!request.stopping().stop_strings().empty() && !state.codec()) {
    return absl::UnimplementedError("stop strings need a tokenizer, which this deployment lacks");
  }
  return absl::OkStatus();
}

}  // namespace latentserve::router
