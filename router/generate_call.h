// One Generate call on the router, as explicit steps:
//
//   Validate  the prompt (tokens, limits, model) and the request id
//   Place     reserve pages on a decode worker (a lease), then
//   Prefill   on a prefill worker into that lease, relaying progress; a handoff lost to the
//             decode worker is placed again on another one (before the client has a token)
//   Relay     the first token, then the decode worker's stream, detokenised, with stops
//   Resume    a decode worker lost mid-answer: place prompt + generated tokens elsewhere and
//             relay again from there
//   Finish    the summary event and the request's metrics
//
// Client cancellation and the deadline reach every downstream call through one CancelLink
// (router/worker_calls.h); the lease is released on every path that does not end in Decode.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "latentserve/v1/generate.grpc.pb.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "router/generation_service.h"
#include "router/text_codec.h"
#include "router/worker_calls.h"

namespace latentserve::router {

class GenerateCall {
 public:
  GenerateCall(RouterState& state, grpc::ServerContext* context, const v1::GenerateRequest& request,
               grpc::ServerWriterInterface<v1::GenerateResponse>* writer);
  GenerateCall(const GenerateCall&) = delete;
  GenerateCall& operator=(const GenerateCall&) = delete;

  // Runs the steps to the end; the status the client gets.
  grpc::Status Run();
  // The request's id (the client's, or one made up), once Validate has passed; else the client's.
  const std::string& request_id() const { return request_id_; }

 private:
  grpc::Status Validate();
  // A session request's prompt: the session's document + the request's suffix, the document
  // prefilled again first when its worker was lost (router/session_calls.cc).
  absl::StatusOr<std::vector<int32_t>> SessionPrompt();
  // Places `context` (the prompt, plus what was generated when resuming) with room for
  // `remaining` more tokens: Reserve + Prefill, again on another decode worker when the
  // handoff is lost. Relays prefill progress only the first time.
  grpc::Status Place(const std::vector<int32_t>& context, int64_t remaining, bool relay_progress);
  // Relays the decode worker's stream of the current lease until a finish reason. On a
  // failure *resumable says whether another decode worker may take over.
  grpc::Status Relay(bool* resumable);
  // Replaces the lost decode worker of the current lease (after `failed`).
  grpc::Status Resume(const grpc::Status& failed);
  grpc::Status Finish();
  // Sends tokens to the client (detokenised, stops applied); false when the client is gone.
  bool Emit(const std::vector<int32_t>& ids);
  bool ClientGone() { return cancel_.cancelled() || context_->IsCancelled(); }

  RouterState& state_;
  grpc::ServerContext* const context_;
  const v1::GenerateRequest& request_;
  grpc::ServerWriterInterface<v1::GenerateResponse>* const writer_;
  const absl::Time start_;
  CancelLink cancel_;

  // Validate
  std::string request_id_;
  std::optional<internal::v1::ModelDescriptor> model_;
  std::vector<int32_t> tokens_;
  int64_t max_tokens_ = 0;
  absl::Time deadline_;
  std::set<int32_t> stop_ids_;
  // Sessions
  std::string session_id_;
  std::string session_worker_;  // where the document is held ("" none)
  int64_t session_document_tokens_ = 0;
  // Place / Prefill
  LeaseHints hints_;  // prompt filled in by Place
  std::set<std::string> decode_refused_;
  std::unique_ptr<DecodeLease> lease_;
  internal::v1::PrefillDone prefill_done_;
  std::string prefill_worker_;
  int64_t cache_bytes_ = 0;
  std::string cache_transport_;  // what moved the last cache ("grpc", "cuda-ipc", "inproc")
  int64_t cached_tokens_ = 0;  // prompt tokens the decode worker resumed from its prefix cache
  bool local_first_ = false;   // the decode worker prefilled here and its stream brings the first token
  // Relay / Resume
  std::unique_ptr<TextCodec::Stream> detok_;
  std::unique_ptr<StopMatcher> stop_matcher_;
  int64_t completion_tokens_ = 0;
  std::vector<int32_t> generated_;  // every token sent to the client, for a resume
  v1::FinishReason reason_ = v1::FINISH_REASON_UNSPECIFIED;
  absl::Time first_token_at_ = absl::InfinitePast(), last_token_at_;
  int resumes_ = 0;
};

}  // namespace latentserve::router
