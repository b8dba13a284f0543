// OpenAI response bodies: completion objects, streamed chunks, usage, model list, errors.
#pragma once

#include <cstdint>
#include <string>

#include <grpcpp/support/status.h>

#include "http/openai_request.h"
#include "latentserve/v1/generate.pb.h"

namespace latentserve::http {

// What one response (or one stream) says about itself in every object.
struct ResponseIdentity {
  std::string id;     // "cmpl-..." / "chatcmpl-..."
  std::string model;  // the served model's name
  int64_t created = 0;  // Unix seconds
};

// The whole answer of a non-streaming request.
std::string CompletionBody(Endpoint endpoint, const ResponseIdentity& identity, const std::string& text,
                           const v1::Finished& finished);

// One `data:` payload of a stream: text (and finish_reason when `finished` is given). Chat's
// first chunk carries the assistant role (`first`).
std::string ChunkBody(Endpoint endpoint, const ResponseIdentity& identity, const std::string& text, bool first,
                      const v1::Finished* finished);

// The usage-only last chunk of a stream with stream_options.include_usage (choices: []).
std::string UsageChunkBody(Endpoint endpoint, const ResponseIdentity& identity, const v1::Usage& usage);

// GET /v1/models (a list of the one served model) and GET /v1/models/{model}.
std::string ModelsBody(const std::string& model, int64_t created);
std::string ModelBody(const std::string& model, int64_t created);

// "stop" or "length" (OpenAI's names; a stop token or a stop string are both "stop").
const char* FinishReasonName(v1::FinishReason reason);

// An error in OpenAI's shape {"error": {"message", "type", "param", "code"}} and the HTTP
// status for a gRPC status code.
struct HttpError {
  int http_status = 500;
  std::string body;
  int64_t retry_after_s = -1;  // the Retry-After header's seconds; -1: none
};
HttpError ErrorFor(grpc::StatusCode code, const std::string& message);
// A failed gRPC call's status with its typed details (common/error_details.h): `code` from
// the ErrorInfo reason (OpenAI's names where it has one: context_length_exceeded,
// rate_limit_exceeded, model_not_found; else the reason in lower case), `param` from its
// "field", Retry-After (whole seconds, rounded up) from RetryInfo.
HttpError ErrorFor(const grpc::Status& status);

}  // namespace latentserve::http
