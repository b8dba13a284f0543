// OpenAI request bodies (POST /v1/completions, /v1/chat/completions) -> GenerateRequest.
//
// Every field is either honoured, accepted as a no-op with the same meaning (n = 1, user),
// or refused with INVALID_ARGUMENT naming the field: a client must never believe a setting
// took effect when it did not. The table of fields is in docs/serving.md ("HTTP front").
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "latentserve/v1/generate.pb.h"

namespace latentserve::http {

enum class Endpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  v1::GenerateRequest generate;  // prompt, sampling, stopping, model
  bool stream = false;           // answer as server-sent events
  bool include_usage = false;    // stream_options.include_usage: a last chunk with usage
};

// Defaults when the body gives no max_tokens: OpenAI's 16 for completions; chat has no
// limit at OpenAI, which a serving system with a finite cache cannot offer.
inline constexpr int kDefaultCompletionMaxTokens = 16;
inline constexpr int kDefaultChatMaxTokens = 1024;
// OpenAI's own bound on stop sequences.
inline constexpr int kMaxStopSequences = 4;

// Parses and checks one body. Errors are INVALID_ARGUMENT with a message naming the field.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(Endpoint endpoint, const std::string& body);

}  // namespace latentserve::http
