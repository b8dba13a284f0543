#include "router/request_checks.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/error_details.h"
#include "common/status.h"
#include "router/text_codec.h"

namespace latentserve::router {
namespace {

absl::Status FieldInvalid(const char* field, std::string message) {
  return WithDetails(absl::InvalidArgumentError(std::move(message)),
                     Details(error_reason::kFieldInvalid, {{"field", field}}));
}

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
    return WithDetails(absl::InvalidArgumentError(absl::StrCat("prompt of ", bytes, " bytes exceeds this router's ",
                                                               "limit of ", limit, " bytes (--max-prompt-bytes)")),
                       Details(error_reason::kPromptTooLong,
                               {{"prompt_bytes", absl::StrCat(bytes)}, {"limit_bytes", absl::StrCat(limit)}}));
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
        return WithDetails(absl::UnimplementedError("this deployment has no tokenizer, so text and chat prompts cannot "
                                                    "be encoded; send token ids instead"),
                           Details(error_reason::kTokenizerMissing));
      }
      if (request.prompt_case() == v1::GenerateRequest::kText) {
        // A session's suffix continues the document: no BOS (EncodeText adds it when the vocabulary asks).
        return request.session_id().empty() ? codec->EncodeText(request.text())
                                            : codec->EncodeTextContinuation(request.text());
      }
      if (request.chat().messages().empty()) return FieldInvalid("chat.messages", "chat prompt has no messages");
      return codec->EncodeChat(request.chat());
    }
    default:
      return FieldInvalid("prompt", "the request has no prompt: set text, tokens or chat");
  }
}

absl::Status CheckPromptTokens(const RouterState& state, const std::vector<int32_t>& tokens) {
  const int64_t max_prompt = state.options().max_prompt_tokens;
  if (max_prompt > 0 && static_cast<int64_t>(tokens.size()) > max_prompt) {
    return WithDetails(absl::InvalidArgumentError(absl::StrCat("prompt of ", tokens.size(),
                                                               " tokens exceeds this router's limit of ", max_prompt,
                                                               " tokens (--max-prompt-tokens)")),
                       Details(error_reason::kPromptTooLong, {{"prompt_tokens", absl::StrCat(tokens.size())},
                                                              {"limit_tokens", absl::StrCat(max_prompt)}}));
  }
  return absl::OkStatus();
}

absl::Status ValidateRequest(RouterState& state, const v1::GenerateRequest& request,
                             const std::vector<int32_t>& tokens, const internal::v1::ModelDescriptor& model) {
  if (!request.model().empty() && request.model() != model.name()) {
    return WithDetails(absl::NotFoundError(absl::StrCat("unknown model '", request.model(), "'; this router serves '",
                                                        model.name(), "' (or leave model empty)")),
                       Details(error_reason::kModelNotFound, {{"model", model.name()}}));
  }
  if (tokens.empty()) return FieldInvalid("prompt", "the prompt is empty: it has no tokens");
  RETURN_IF_ERROR(CheckPromptTokens(state, tokens));
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= model.vocab_size()) {
      return FieldInvalid("tokens.ids", absl::StrCat("prompt token ", i, " has id ", tokens[i],
                                                     ", outside the vocabulary [0, ", model.vocab_size(), ")"));
    }
  }
  const int64_t max_tokens = request.stopping().max_tokens();
  if (max_tokens <= 0) {
    return FieldInvalid("stopping.max_tokens", absl::StrCat("stopping.max_tokens must be positive, got ", max_tokens));
  }
  const int64_t limit = state.registry().MaxContextTokens();
  if (static_cast<int64_t>(tokens.size()) + max_tokens > limit) {
    return WithDetails(absl::InvalidArgumentError(absl::StrCat("prompt (", tokens.size(), " tokens) + max_tokens (",
                                                               max_tokens, ") = ", tokens.size() + max_tokens,
                                                               " exceeds the context limit of ", limit, " tokens")),
                       Details(error_reason::kContextLimitExceeded,
                               {{"context_tokens", absl::StrCat(tokens.size() + max_tokens)},
                                {"limit_tokens", absl::StrCat(limit)}}));
  }
  // A server-side limit, not the client's fault: say which configuration falls short.
  const int64_t prefill_limit = state.registry().MaxContextTokens("prefill");
  if (prefill_limit > 0 && static_cast<int64_t>(tokens.size()) > prefill_limit) {
    return WithDetails(
        absl::FailedPreconditionError(absl::StrCat(
            "prompt of ", tokens.size(), " tokens exceeds the cache of every live prefill worker (largest ",
            prefill_limit, " tokens) although the decode workers hold ", limit,
            ": start prefill workers with --cache-tokens >= ", tokens.size())),
        Details(error_reason::kPrefillCacheTooSmall, {{"prompt_tokens", absl::StrCat(tokens.size())},
                                                      {"limit_tokens", absl::StrCat(prefill_limit)}}));
  }
  const auto& s = request.sampling();
  // Written so that NaN fails every comparison (NaN < 0 and NaN > 1 are both false).
  const bool sampling_ok = std::isfinite(s.temperature()) && s.temperature() >= 0 && s.top_k() >= 0 &&
                           s.top_p() >= 0 && s.top_p() <= 1 && s.min_p() >= 0 && s.min_p() <= 1;
  if (!sampling_ok) {
    return FieldInvalid("sampling", "sampling: temperature finite and >= 0, top_k >= 0, top_p and min_p in [0, 1]");
  }
  for (int32_t id : request.stopping().stop_token_ids()) {
    if (id < 0 || id >= model.vocab_size()) {
      return FieldInvalid("stopping.stop_token_ids", absl::StrCat("stop token id ", id, " is outside the vocabulary"));
    }
  }
  if (!request.stopping().stop_strings().empty() && !state.codec()) {
    return WithDetails(absl::UnimplementedError("stop strings need a tokenizer, which this deployment lacks"),
                       Details(error_reason::kTokenizerMissing));
  }
  return absl::OkStatus();
}

}  // namespace latentserve::router
