#include "http/openai_response.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "common/error_details.h"

namespace latentserve::http {
namespace {

using nlohmann::json;

// Text from the router is valid UTF-8 already; replacing keeps dump() from throwing should
// that ever break.
std::string Dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

json UsageJson(const v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()},
          {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()}};
}

json Envelope(Endpoint endpoint, const ResponseIdentity& identity, bool chunk) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  return {{"id", identity.id},
          {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"},
          {"created", identity.created},
          {"model", identity.model}};
}

}  // namespace

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP_TOKEN:
    case v1::FINISH_REASON_STOP_STRING:
      return "stop";
    default:
      return nullptr;
  }
}

std::string CompletionBody(Endpoint endpoint, const ResponseIdentity& identity, const std::string& text,
                           const v1::Finished& finished) {
  json body = Envelope(endpoint, identity, false);
  json choice = {{"index", 0}, {"finish_reason", FinishReasonName(finished.reason())}, {"logprobs", nullptr}};
  if (endpoint == Endpoint::kChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  body["choices"] = json::array({choice});
  body["usage"] = UsageJson(finished.usage());
  return Dump(body);
}

std::string ChunkBody(Endpoint endpoint, const ResponseIdentity& identity, const std::string& text, bool first,
                      const v1::Finished* finished) {
  json body = Envelope(endpoint, identity, true);
  json choice = {{"index", 0}, {"logprobs", nullptr}};
  choice["finish_reason"] = finished ? json(FinishReasonName(finished->reason())) : json(nullptr);
  if (endpoint == Endpoint::kChatCompletions) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || !finished) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  body["choices"] = json::array({choice});
  return Dump(body);
}

std::string UsageChunkBody(Endpoint endpoint, const ResponseIdentity& identity, const v1::Usage& usage) {
  json body = Envelope(endpoint, identity, true);
  body["choices"] = json::array();
  body["usage"] = UsageJson(usage);
  return Dump(body);
}

namespace {
json ModelJson(const std::string& model, int64_t created) {
  return {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "latentserve"}};
}
}  // namespace

std::string ModelsBody(const std::string& model, int64_t created) {
  return Dump({{"object", "list"}, {"data", json::array({ModelJson(model, created)})}});
}

std::string ModelBody(const std::string& model, int64_t created) { return Dump(ModelJson(model, created)); }

namespace {

// OpenAI's error code for an ErrorInfo reason.
std::string OpenAiCode(const std::string& reason) {
  if (reason == error_reason::kPromptTooLong || reason == error_reason::kContextLimitExceeded) {
    return "context_length_exceeded";
  }
  if (reason == error_reason::kStreamLimitExceeded) return "rate_limit_exceeded";
  return absl::AsciiStrToLower(reason);  // MODEL_NOT_FOUND -> model_not_found, as OpenAI's
}

HttpError MakeError(grpc::StatusCode code, const std::string& message, const ErrorDetails& details) {
  int status = 500;
  const char* type = "server_error";
  json error_code = nullptr;
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::FAILED_PRECONDITION:
      status = 400, type = "invalid_request_error";
      break;
    case grpc::StatusCode::UNIMPLEMENTED:
      status = 400, type = "invalid_request_error", error_code = "unsupported";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      status = 401, type = "authentication_error", error_code = "invalid_api_key";
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      status = 403, type = "permission_error";
      break;
    case grpc::StatusCode::NOT_FOUND:
      status = 404, type = "invalid_request_error", error_code = "model_not_found";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      status = 429, type = "rate_limit_error";
      break;
    case grpc::StatusCode::CANCELLED:
      status = 499, type = "cancelled";  // nginx's "client closed request": only logs see it
      break;
    case grpc::StatusCode::UNAVAILABLE:
      status = 503, type = "service_unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      status = 504, type = "timeout";
      break;
    default:
      break;
  }
  json param = nullptr;
  if (!details.reason.empty()) {
    error_code = OpenAiCode(details.reason);
    if (auto field = details.metadata.find("field"); field != details.metadata.end()) param = field->second;
  }
  HttpError error;
  error.http_status = status;
  error.body = Dump({{"error", {{"message", message}, {"type", type}, {"param", param}, {"code", error_code}}}});
  if (details.retry_delay) {
    error.retry_after_s = absl::ToInt64Seconds(absl::Ceil(*details.retry_delay, absl::Seconds(1)));
  }
  return error;
}

}  // namespace

HttpError ErrorFor(grpc::StatusCode code, const std::string& message) {
  ErrorDetails none;
  none.domain.clear();
  return MakeError(code, message, none);
}

HttpError ErrorFor(const grpc::Status& status) {
  if (status.ok()) return ErrorFor(grpc::StatusCode::INTERNAL, "stream ended without a finish event");
  return MakeError(status.error_code(), status.error_message(), DetailsOf(status));
}

}  // namespace latentserve::http
