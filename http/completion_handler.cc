// POST /v1/completions and /v1/chat/completions: one Generate call per request.
//
// Until the call's first event nothing is sent, so every error the router finds in a
// request (validation, unknown model, no capacity, no workers) gets its own HTTP status.
// From the first event on the answer is committed (200, chunked): a stream writes SSE
// events, a non-streaming answer writes the JSON object at the end. While waiting either
// writes a probe (an SSE comment, a JSON space) every probe_interval, so a client that went
// away is noticed by a failed write and its call cancelled; prefill progress is written as
// SSE comments too.
#include <memory>
#include <string>

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/secure_random.h"
#include "http/generate_call.h"
#include "http/openai_front.h"
#include "http/openai_request.h"
#include "http/openai_response.h"

namespace latentserve::http {
namespace {

// Everything one answer needs after the handler has returned (httplib calls the content
// provider later, from the same connection thread).
struct Answer {
  OpenAiRequest request;
  ResponseIdentity identity;
  std::unique_ptr<GenerateCall> call;
  v1::GenerateResponse pending;  // the first event, taken before committing
  bool has_pending = false;
  bool first_chunk = true;  // chat: the first chunk carries role "assistant"
  std::string text;         // non-streaming: the answer so far
  absl::Time last_write = absl::Now();  // non-streaming: when the last probe space went out
  bool finished = false;
};

std::string SseData(const std::string& json) { return absl::StrCat("data: ", json, "\n\n"); }

// A stream's next write for one event; empty when the event has nothing to say.
std::string StreamEvent(Answer& answer, const v1::GenerateResponse& event) {
  const Endpoint endpoint = answer.request.endpoint;
  switch (event.event_case()) {
    case v1::GenerateResponse::kProgress:
      return absl::StrCat(": prefill ", event.progress().tokens_done(), "/", event.progress().tokens_total(), "\n\n");
    case v1::GenerateResponse::kTokens: {
      if (event.tokens().text().empty()) return "";
      std::string out = SseData(ChunkBody(endpoint, answer.identity, event.tokens().text(), answer.first_chunk, nullptr));
      answer.first_chunk = false;
      return out;
    }
    case v1::GenerateResponse::kFinished: {
      std::string out = SseData(ChunkBody(endpoint, answer.identity, "", answer.first_chunk, &event.finished()));
      if (answer.request.include_usage) {
        out += SseData(UsageChunkBody(endpoint, answer.identity, event.finished().usage()));
      }
      answer.finished = true;
      return out + "data: [DONE]\n\n";
    }
    default:
      return "";
  }
}

// The held first event if there is one, else the call's next (or a probe's timeout).
GenerateCall::Wait NextEvent(Answer& answer, absl::Duration probe, v1::GenerateResponse* event) {
  if (!answer.has_pending) return answer.call->Next(probe, event);
  *event = std::move(answer.pending);
  answer.has_pending = false;
  return GenerateCall::Wait::kEvent;
}

// The error body for a call that ended without a finish event (after the answer was committed).
std::string EndedError(const Answer& answer) { return ErrorFor(answer.call->status()).body; }

// One step of a streamed answer: waits for the next event (or a probe's time) and writes.
// Returns false when the client is gone or the stream is over.
bool StreamStep(Answer& answer, absl::Duration probe, httplib::DataSink& sink) {
  v1::GenerateResponse event;
  const GenerateCall::Wait wait = NextEvent(answer, probe, &event);
  std::string out;
  if (wait == GenerateCall::Wait::kTimeout) {
    out = ": keep-alive\n\n";
  } else if (wait == GenerateCall::Wait::kEnded) {
    // Ended without a finished event: the call failed after the answer was committed.
    out = SseData(EndedError(answer));
    answer.finished = true;
  } else {
    out = StreamEvent(answer, event);
  }
  if (!out.empty() && !sink.write(out.data(), out.size())) return false;
  if (answer.finished) {
    sink.done();
    return false;
  }
  return true;
}

// One step of a non-streaming answer: collects text; writes a space while waiting, the
// whole object at the end.
bool CollectStep(Answer& answer, absl::Duration probe, httplib::DataSink& sink) {
  v1::GenerateResponse event;
  const GenerateCall::Wait wait = NextEvent(answer, probe, &event);
  std::string out;
  if (wait == GenerateCall::Wait::kTimeout) {
    out = " ";
  } else if (wait == GenerateCall::Wait::kEnded) {
    out = EndedError(answer);
    answer.finished = true;
  } else if (event.has_tokens()) {
    answer.text += event.tokens().text();
  } else if (event.has_finished()) {
    out = CompletionBody(answer.request.endpoint, answer.identity, answer.text, event.finished());
    answer.finished = true;
  }
  // Tokens arrive without a write; a space every `probe` (JSON allows leading whitespace)
  // is what finds out that the connection is closed.
  const absl::Time now = absl::Now();
  if (out.empty() && now - answer.last_write >= probe) out = " ";
  if (!out.empty()) answer.last_write = now;
  if (!out.empty() && !sink.write(out.data(), out.size())) return false;
  if (answer.finished) {
    sink.done();
    return false;
  }
  return true;
}

}  // namespace

void OpenAiFront::Completion(const httplib::Request& request, httplib::Response& response, bool chat) {
  auto parsed = ParseOpenAiRequest(chat ? Endpoint::kChatCompletions : Endpoint::kCompletions, request.body);
  if (!parsed.ok()) {
    return SendError(response, ErrorFor(grpc::StatusCode::INVALID_ARGUMENT, std::string(parsed.status().message())));
  }
  auto answer = std::make_shared<Answer>();
  answer->request = std::move(*parsed);
  auto random = SecureRandomHex(12);
  if (!random.ok()) {
    return SendError(response, ErrorFor(grpc::StatusCode::INTERNAL, std::string(random.status().message())));
  }
  answer->identity.id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", *random);
  answer->identity.created = absl::ToUnixSeconds(absl::Now());
  answer->request.generate.set_request_id(answer->identity.id);
  answer->call = std::make_unique<GenerateCall>(*stub_, answer->request.generate, request.remote_addr);

  // Nothing is committed until the first event: errors keep their HTTP status.
  GenerateCall::Wait wait;
  while ((wait = answer->call->Next(absl::Seconds(1), &answer->pending)) == GenerateCall::Wait::kTimeout) {
  }
  if (wait == GenerateCall::Wait::kEnded) {
    return SendError(response, ErrorFor(answer->call->status()));
  }
  answer->has_pending = true;
  // The served model's name as the router reports it (a request may leave model empty).
  answer->identity.model = answer->request.generate.model();
  if (answer->identity.model.empty()) answer->identity.model = ServedModelName();

  const absl::Duration probe = options_.probe_interval;
  // A released provider whose answer is unfinished means the client is gone: cancel.
  const auto release = [answer](bool) {
    if (!answer->finished) answer->call->Cancel();
  };
  if (answer->request.stream) {
    response.set_header("Cache-Control", "no-cache");
    response.set_chunked_content_provider(
        "text/event-stream",
        [answer, probe](size_t, httplib::DataSink& sink) { return StreamStep(*answer, probe, sink) || answer->finished; },
        release);
  } else {
    // "; charset=utf-8": httplib gzips exactly "application/json" for clients that accept
    // it, and a compressor would hold back the probe spaces that notice a vanished client.
    response.set_chunked_content_provider(
        "application/json; charset=utf-8",
        [answer, probe](size_t, httplib::DataSink& sink) { return CollectStep(*answer, probe, sink) || answer->finished; },
        release);
  }
}

}  // namespace latentserve::http
