#include "router/generate_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/error_details.h"
#include "router/channels.h"
#include "router/request_checks.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::router {
namespace {

// The finish reason as the metrics label (and the OpenAI-style name).
const char* FinishReasonLabel(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

grpc::Status ClientWentAway() {
  return ErrorStatus(grpc::StatusCode::CANCELLED, "client went away", Details(error_reason::kRequestCancelled));
}

}  // namespace

GenerateCall::GenerateCall(RouterState& state, grpc::ServerContext* context, const v1::GenerateRequest& request,
                           grpc::ServerWriterInterface<v1::GenerateResponse>* writer)
    : state_(state),
      context_(context),
      request_(request),
      writer_(writer),
      start_(absl::Now()),
      cancel_(context),
      request_id_(request.request_id()) {}

grpc::Status GenerateCall::Run() {
  if (grpc::Status valid = Validate(); !valid.ok()) return valid;
  if (grpc::Status placed = Place(tokens_, max_tokens_, /*relay_progress=*/true); !placed.ok()) return placed;
  if (!local_first_ && !Emit({prefill_done_.first_token()})) return ClientWentAway();
  while (reason_ == v1::FINISH_REASON_UNSPECIFIED) {
    bool resumable = false;
    grpc::Status relayed = Relay(&resumable);
    if (relayed.ok()) break;
    if (!resumable) return relayed;
    if (grpc::Status resumed = Resume(relayed); !resumed.ok()) return resumed;
  }
  return Finish();
}

grpc::Status GenerateCall::Validate() {
  if (state_.draining()) {
    return ErrorStatus(grpc::StatusCode::UNAVAILABLE, "router is draining; retry elsewhere",
                       Details(error_reason::kRouterDraining, {}, kRetryDelay));
  }
  model_ = state_.registry().Model();
  if (!model_ || !state_.registry().AnyAlive("decode") || !state_.registry().AnyAlive("prefill")) {
    return ErrorStatus(grpc::StatusCode::UNAVAILABLE,
                       "no live prefill and decode workers are registered with this router yet",
                       Details(error_reason::kNoWorkers, {}, kRetryDelay));
  }
  auto tokens = request_.session_id().empty() ? PromptTokens(state_, request_) : SessionPrompt();
  if (!tokens.ok()) return ToGrpcWithDetails(tokens.status());
  tokens_ = std::move(*tokens);
  if (absl::Status status = ValidateRequest(state_, request_, tokens_, *model_); !status.ok()) {
    return ToGrpcWithDetails(status);
  }

  max_tokens_ = request_.stopping().max_tokens();
  if (request_id_.empty()) request_id_ = absl::StrCat("req-", state_.request_id_prefix(), "-", state_.next_request++);
  serving::LogEvent("router", "request_started", request_id_,
                    {{"prompt_tokens", tokens_.size()}, {"max_tokens", max_tokens_}});
  serving::Metrics::Get().prompt_tokens.Observe(static_cast<double>(tokens_.size()));
  deadline_ = start_ + state_.options().request_timeout;
  if (context_->deadline() != std::chrono::system_clock::time_point::max()) {
    deadline_ = std::min(deadline_, absl::FromChrono(context_->deadline()));
  }
  stop_ids_.insert(request_.stopping().stop_token_ids().begin(), request_.stopping().stop_token_ids().end());
  const TextCodec* codec = state_.codec();
  if (!request_.stopping().ignore_eos() && codec && codec->eos_id() >= 0) stop_ids_.insert(codec->eos_id());
  if (codec) detok_ = codec->NewStream();
  stop_matcher_ = std::make_unique<StopMatcher>(
      std::vector<std::string>(request_.stopping().stop_strings().begin(), request_.stopping().stop_strings().end()));
  return grpc::Status::OK;
}

grpc::Status GenerateCall::Place(const std::vector<int32_t>& context, int64_t remaining, bool relay_progress) {
  const int64_t context_tokens = static_cast<int64_t>(context.size()) + remaining;
  const int64_t lease_tokens =
      state_.options().reserve_max_tokens
          ? context_tokens
          : std::min(context_tokens, static_cast<int64_t>(context.size()) + kDecodeHeadroomTokens);
  const auto client_gone = [this] { return ClientGone(); };
  for (int decode_attempt = 1;; ++decode_attempt) {
    LeaseHints hints = hints_;
    hints.prompt = &context;
    grpc::Status reserved = ReserveDecodeLease(state_, *model_, request_id_, context_tokens, lease_tokens, deadline_,
                                               decode_refused_, cancel_, client_gone, &lease_, hints);
    if (!reserved.ok()) return reserved;
    local_first_ = lease_->local_prefill;
    if (relay_progress) cached_tokens_ = lease_->cached_tokens;
    if (!session_id_.empty() && lease_->worker() == session_worker_ && lease_->cached_tokens < session_document_tokens_) {
      // The worker no longer holds the document (restarted, or an unpinned one evicted): this
      // request computes it; the session's next request prefills it again first.
      state_.sessions().MarkLost(session_id_, session_worker_);
    }
    if (local_first_) return grpc::Status::OK;  // the decode worker prefills the rest itself
    PrefillOutcome outcome = RunPrefill(state_, request_, *model_, request_id_, context, *lease_, deadline_, cancel_,
                                        client_gone, writer_, relay_progress, &prefill_done_, &prefill_worker_);
    if (!outcome.handoff_lost) {
      if (outcome.status.ok()) {
        cache_bytes_ += prefill_done_.cache_bytes();
        cache_transport_ = prefill_done_.transport();
        // What was not computed: the prefix the prefill worker read (less when the read failed).
        if (relay_progress) cached_tokens_ = prefill_done_.resumed_tokens();
      }
      return outcome.status;
    }
    // The cache did not reach the decode worker: before the client has any token, so the
    // handoff is tried again on another decode worker.
    const grpc::StatusCode code = outcome.status.error_code();
    if (code == grpc::StatusCode::UNAVAILABLE) state_.registry().MarkDead(lease_->worker());
    const bool retryable = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::ABORTED;
    if (!retryable || decode_attempt >= kMaxDecodeAttempts || absl::Now() >= deadline_) return outcome.status;
    serving::Metrics::Get().CountFailover("handoff");
    serving::LogEvent(serving::LogLevel::kWarning, "router", "handoff_retry", request_id_,
                      {{"decode_worker", lease_->worker()}, {"error", outcome.status.error_message()}});
    decode_refused_.insert(lease_->worker());
    lease_.reset();  // best-effort release; the worker may be gone
  }
}

bool GenerateCall::Emit(const std::vector<int32_t>& ids) {
  const int64_t completion_tokens_before = completion_tokens_;
  v1::GenerateResponse out;
  auto* chunk = out.mutable_tokens();
  for (int32_t id : ids) {
    if (reason_ != v1::FINISH_REASON_UNSPECIFIED) break;
    chunk->add_token_ids(id);
    generated_.push_back(id);
    completion_tokens_++;
    if (detok_) {
      bool matched = false;
      chunk->mutable_text()->append(stop_matcher_->Push(detok_->Push(id), &matched));
      if (matched) reason_ = v1::FINISH_REASON_STOP_STRING;
    }
    if (reason_ == v1::FINISH_REASON_UNSPECIFIED && stop_ids_.count(id)) reason_ = v1::FINISH_REASON_STOP_TOKEN;
    if (reason_ == v1::FINISH_REASON_UNSPECIFIED && completion_tokens_ >= max_tokens_) {
      reason_ = v1::FINISH_REASON_LENGTH;
    }
  }
  if (detok_ && reason_ != v1::FINISH_REASON_UNSPECIFIED && reason_ != v1::FINISH_REASON_STOP_STRING) {
    bool flushed_match = false;
    chunk->mutable_text()->append(stop_matcher_->Push(detok_->Flush(), &flushed_match));
    chunk->mutable_text()->append(stop_matcher_->Flush());
  }
  if (!chunk->text().empty()) *chunk->mutable_text() = ValidUtf8(chunk->text());
  const absl::Time now = absl::Now();
  if (first_token_at_ == absl::InfinitePast() && chunk->token_ids_size() > 0) {
    first_token_at_ = now;
    serving::Metrics::Get().ttft_seconds.Observe(absl::ToDoubleSeconds(first_token_at_ - start_));
  }
  if (completion_tokens_before > 0 && chunk->token_ids_size() > 0) {
    const double gap = absl::ToDoubleSeconds(now - last_token_at_) / chunk->token_ids_size();
    for (int i = 0; i < chunk->token_ids_size(); ++i) serving::Metrics::Get().inter_token_seconds.Observe(gap);
  }
  last_token_at_ = now;
  return writer_->Write(out);
}

grpc::Status GenerateCall::Relay(bool* resumable) {
  *resumable = false;
  const std::string decode_worker = lease_->worker();
  auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(decode_worker));
  grpc::ClientContext decode_context;
  serving::AttachInternalCredential(decode_context);
  SetDeadline(decode_context, deadline_);
  internal::v1::DecodeRequest decode_request;
  decode_request.set_request_id(request_id_);
  decode_request.set_lease_id(lease_->id());
  *decode_request.mutable_sampling() = request_.sampling();
  decode_request.set_max_new_tokens(static_cast<int32_t>(max_tokens_ - completion_tokens_));
  for (int32_t id : stop_ids_) decode_request.add_stop_token_ids(id);
  cancel_.Attach(&decode_context, state_.options().decode_progress_timeout);
  lease_->HandToDecode();  // Decode frees the pages on every path from here
  auto reader = stub->Decode(&decode_context, decode_request);
  internal::v1::DecodeResponse event;
  bool client_write_failed = false;
  while (reason_ == v1::FINISH_REASON_UNSPECIFIED && reader->Read(&event)) {
    cancel_.Progress();
    if (event.token_ids_size() > 0 &&
        !Emit(std::vector<int32_t>(event.token_ids().begin(), event.token_ids().end()))) {
      client_write_failed = true;
    }
    if (reason_ == v1::FINISH_REASON_UNSPECIFIED && event.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      reason_ = event.finish_reason();
    }
    if (client_write_failed) break;
  }
  if (reason_ != v1::FINISH_REASON_UNSPECIFIED || client_write_failed) decode_context.TryCancel();
  grpc::Status status = reader->Finish();
  const bool stalled = cancel_.stalled();
  cancel_.Detach();
  if (ClientGone() || client_write_failed) return RequestCancelled();
  if (reason_ != v1::FINISH_REASON_UNSPECIFIED) return grpc::Status::OK;
  if (stalled) {
    status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                          absl::StrCat("no token for ", absl::FormatDuration(state_.options().decode_progress_timeout),
                                       " (--decode-progress-timeout-ms)"));
  }
  if (status.ok()) status = grpc::Status(grpc::StatusCode::INTERNAL, "decode stream ended without a finish reason");
  // Only a worker that is gone (or stopped producing) is replaced; other errors are the request's.
  *resumable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
  return ErrorStatus(status.error_code(),
                     absl::StrCat("decode worker ", decode_worker, " failed: ", status.error_message()),
                     Details(error_reason::kDecodeFailed));
}

// A decode worker lost mid-stream is replaced: the prompt plus every token already sent is
// prefilled again into a lease on another decode worker, whose first token is the next one,
// and decoding goes on there (greedy output is unchanged; seeded sampling restarts its random
// stream at the resume point).
grpc::Status GenerateCall::Resume(const grpc::Status& failed) {
  const std::string decode_worker = lease_->worker();
  state_.registry().MarkDead(decode_worker);
  if (++resumes_ > kMaxDecodeAttempts || absl::Now() >= deadline_) return failed;
  serving::Metrics::Get().CountFailover("decode");
  serving::LogEvent(serving::LogLevel::kWarning, "router", "decode_resume", request_id_,
                    {{"decode_worker", decode_worker}, {"generated", completion_tokens_}});
  decode_refused_.insert(decode_worker);
  lease_.reset();
  std::vector<int32_t> context = tokens_;
  context.insert(context.end(), generated_.begin(), generated_.end());
  if (grpc::Status placed = Place(context, max_tokens_ - completion_tokens_, false); !placed.ok()) {
    // The reason is the last failure's (why resuming failed).
    return ErrorStatus(placed.error_code(),
                       absl::StrCat(failed.error_message(), "; resuming elsewhere failed: ", placed.error_message()),
                       DetailsOf(placed));
  }
  if (!local_first_ && !Emit({prefill_done_.first_token()})) return ClientWentAway();
  return grpc::Status::OK;
}

grpc::Status GenerateCall::Finish() {
  v1::GenerateResponse out;
  auto* finished = out.mutable_finished();
  finished->set_reason(reason_);
  finished->mutable_usage()->set_prompt_tokens(static_cast<int64_t>(tokens_.size()));
  finished->mutable_usage()->set_completion_tokens(completion_tokens_);
  finished->mutable_usage()->set_cache_bytes_transferred(cache_bytes_);
  finished->mutable_usage()->set_cache_transport(cache_transport_);
  finished->mutable_usage()->set_cached_tokens(cached_tokens_);
  finished->mutable_timings()->set_ttft_ms(absl::ToDoubleMilliseconds(first_token_at_ - start_));
  const double decode_s = absl::ToDoubleSeconds(last_token_at_ - first_token_at_);
  finished->mutable_timings()->set_decode_tokens_per_s(
      completion_tokens_ > 1 && decode_s > 0 ? (completion_tokens_ - 1) / decode_s : 0.0);
  finished->mutable_timings()->set_prefill_ms(prefill_done_.prefill_ms());
  finished->mutable_timings()->set_transfer_tail_ms(prefill_done_.transfer_tail_ms());
  finished->set_prefill_worker(prefill_worker_);
  finished->set_decode_worker(lease_->worker());
  finished->set_request_id(request_id_);
  writer_->Write(out);
  serving::Metrics& metrics = serving::Metrics::Get();
  metrics.e2e_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start_));
  metrics.generation_tokens.Observe(static_cast<double>(completion_tokens_));
  metrics.CountFinishReason(FinishReasonLabel(reason_));
  return grpc::Status::OK;
}

}  // namespace latentserve::router
