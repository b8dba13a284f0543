#include "router/worker_calls.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "router/channels.h"
#include "router/lease_keeper.h"
#include "serving/metrics.h"
#include "serving/security.h"
#include "common/error_details.h"
#include "common/grpc_status.h"

namespace latentserve::router {

grpc::Status RequestCancelled() {
  return ErrorStatus(grpc::StatusCode::CANCELLED, "request cancelled", Details(error_reason::kRequestCancelled));
}

void SetDeadline(grpc::ClientContext& context, absl::Time deadline) {
  context.set_deadline(absl::ToChronoTime(deadline));
}

void ReleaseLease(const std::string& decode_worker, const std::string& lease_id, absl::Duration timeout) {
  auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(decode_worker));
  grpc::ClientContext context;
  serving::AttachInternalCredential(context);
  SetDeadline(context, absl::Now() + timeout);
  internal::v1::ReleaseLeaseRequest request;
  request.set_lease_id(lease_id);
  internal::v1::ReleaseLeaseResponse response;
  stub->ReleaseLease(&context, request, &response);  // best effort: the lease also expires
}

// Reserves pages for `lease_tokens` on the best decode worker that accepts them. When every
// live worker is full (RESOURCE_EXHAUSTED), waits for pages to free up, polling with backoff,
// for up to the router's capacity_wait (and never past the request's deadline), as a queue
// would; any other refusal moves on to the next worker.
grpc::Status ReserveDecodeLease(RouterState& state, const internal::v1::ModelDescriptor& model, const std::string& request_id,
                                int64_t context_tokens, int64_t lease_tokens, absl::Time deadline,
                                const std::set<std::string>& exclude,
                                CancelLink& cancel, const std::function<bool()>& client_gone,
                                std::unique_ptr<DecodeLease>* lease, const LeaseHints& hints) {
  const absl::Time give_up = std::min(deadline, absl::Now() + state.options().capacity_wait);
  // Which limit ends the wait decides the status: the client's deadline -> DEADLINE_EXCEEDED,
  // --capacity-wait-ms -> RESOURCE_EXHAUSTED.
  const bool deadline_binds = give_up == deadline;
  absl::Duration backoff = absl::Milliseconds(20);
  bool waited = false;
  // latentserve_router_requests_waiting counts this request from its first wait to any return.
  struct WaitingGauge {
    bool counted = false;
    ~WaitingGauge() {
      if (counted) serving::Metrics::Get().router_requests_waiting.Decrement();
    }
  } waiting;
  const absl::Time started = absl::Now();
  for (;;) {
    absl::Status last_error = WithDetails(
        absl::ResourceExhaustedError(absl::StrCat("no decode worker has had room for ", lease_tokens,
                                                  " cache tokens within ",
                                                  absl::FormatDuration(state.options().capacity_wait),
                                                  "; retry later or add decode workers")),
        Details(error_reason::kDecodeCapacityExhausted, {{"cache_tokens", absl::StrCat(lease_tokens)}}, kRetryDelay));
    bool only_full = true;  // every refusal so far was RESOURCE_EXHAUSTED
    std::set<std::string> refused = exclude;
    // A session's worker, else the worker holding the longest prefix of the prompt (prefix-aware
    // placement); either wins only while it is not overloaded (ClaimDecode's kPreferSlack).
    std::string prefer = hints.prefer_worker;
    if (prefer.empty() && hints.prompt != nullptr && !hints.prompt->empty()) {
      prefer = state.registry().LongestPrefixWorker(*hints.prompt).first;
    }
    while (auto claimed = state.registry().ClaimDecode(context_tokens, refused, prefer)) {
      const std::string candidate = *claimed;
      auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(candidate));
      grpc::ClientContext lease_context;
      serving::AttachInternalCredential(lease_context);
      SetDeadline(lease_context, std::min(deadline, absl::Now() + state.options().control_timeout));
      internal::v1::ReserveLeaseRequest lease_request;
      lease_request.set_request_id(request_id);
      lease_request.set_tokens(lease_tokens);
      lease_request.set_ttl_ms(absl::ToInt64Milliseconds(state.options().lease_ttl));
      lease_request.set_model_fingerprint(model.fingerprint());
      if (hints.prompt) *lease_request.mutable_prompt_token_ids() = {hints.prompt->begin(), hints.prompt->end()};
      lease_request.set_skip_prefix_keep(hints.skip_prefix_keep);
      internal::v1::ReserveLeaseResponse lease_response;
      cancel.Attach(&lease_context);
      grpc::Status status = stub->ReserveLease(&lease_context, lease_request, &lease_response);
      cancel.Detach();
      if (status.ok()) {
        if (waited) serving::LogEvent("router", "capacity_wait_done", request_id, {{"decode_worker", candidate}});
        *lease = std::make_unique<DecodeLease>(state, candidate, lease_response.lease_id());
        (*lease)->cached_tokens = lease_response.cached_tokens();
        (*lease)->local_prefill = lease_response.local_prefill();
        (*lease)->checkpoint_interval_tokens = lease_response.checkpoint_interval_tokens();
        serving::Metrics::Get().queue_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - started));
        return grpc::Status::OK;
      }
      state.registry().ReleaseDecode(candidate);
      refused.insert(candidate);
      if (client_gone()) return RequestCancelled();
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) state.registry().MarkDead(candidate);
      if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        only_full = false;
        last_error = WithDetails(
            absl::UnavailableError(absl::StrCat("decode worker ", candidate, ": ", status.error_message())),
            Details(error_reason::kWorkerUnavailable, {{"role", "decode"}}, kRetryDelay));
      }
    }
    // Nothing to wait for when a worker failed for another reason, or none is registered.
    if (!only_full || refused.size() == exclude.size()) return ToGrpcWithDetails(last_error);
    const absl::Time now = absl::Now();
    if (now >= give_up || give_up - now < absl::Milliseconds(1)) {
      return deadline_binds ? ErrorStatus(grpc::StatusCode::DEADLINE_EXCEEDED,
                                          "the request's deadline passed while it waited for decode cache room "
                                          "(every decode worker was full)",
                                          Details(error_reason::kDeadlineExceeded, {{"stage", "capacity_wait"}}))
                            : ToGrpcWithDetails(last_error);
    }
    backoff = std::min(backoff, give_up - now);  // the last round ends at the limit, not before it
    if (!waited) {
      serving::LogEvent(serving::LogLevel::kWarning, "router", "capacity_wait", request_id, {{"tokens", lease_tokens}});
      serving::Metrics::Get().router_requests_waiting.Increment();
      waiting.counted = true;
    }
    waited = true;
    for (const absl::Time wake = now + backoff; absl::Now() < wake;) {  // stay responsive to cancellation
      if (client_gone()) return RequestCancelled();
      absl::SleepFor(std::min(absl::Milliseconds(10), wake - absl::Now()));
    }
    backoff = std::min(backoff * 2, absl::Milliseconds(500));
  }
}

// Prefills into `lease`, relaying progress; retries on another prefill worker when one
// fails before the first token. Fills `done` and `prefill_worker` on success.
PrefillOutcome RunPrefill(RouterState& state, const v1::GenerateRequest& request, const internal::v1::ModelDescriptor& model,
                          const std::string& request_id, const std::vector<int32_t>& tokens, const DecodeLease& lease,
                          absl::Time deadline, CancelLink& cancel, const std::function<bool()>& client_gone,
                          grpc::ServerWriterInterface<v1::GenerateResponse>* writer, bool relay_progress,
                          internal::v1::PrefillDone* done, std::string* prefill_worker) {
  // Attention work grows with the square of the prompt: the placement cost.
  const double cost = static_cast<double>(tokens.size()) * static_cast<double>(tokens.size());
  std::set<std::string> tried;
  absl::Status prefill_error =
      WithDetails(absl::UnavailableError(
                      absl::StrCat("no live prefill worker whose cache holds the ", tokens.size(), "-token prompt")),
                  Details(error_reason::kNoPrefillWorker, {}, kRetryDelay));
  const int64_t prompt_tokens = static_cast<int64_t>(tokens.size());
  while (auto pick = state.registry().ClaimPrefill(prompt_tokens, cost, tried)) {
    *prefill_worker = *pick;
    if (!tried.empty()) serving::Metrics::Get().CountFailover("prefill");  // another worker after a failure
    tried.insert(*prefill_worker);
    auto stub = internal::v1::PrefillWorker::NewStub(ChannelTo(*prefill_worker));
    grpc::ClientContext prefill_context;
    serving::AttachInternalCredential(prefill_context);
    SetDeadline(prefill_context, deadline);
    internal::v1::PrefillRequest prefill_request;
    prefill_request.set_request_id(request_id);
    prefill_request.set_lease_id(lease.id());
    prefill_request.set_decode_worker(lease.worker());
    *prefill_request.mutable_token_ids() = {tokens.begin(), tokens.end()};
    *prefill_request.mutable_sampling() = request.sampling();
    prefill_request.set_model_fingerprint(model.fingerprint());
    // A lease that resumed a cached prefix shares its pages with the prefix cache: a device
    // transport would be refused (it opens the whole pool), so its rest goes over gRPC.
    prefill_request.set_transport(lease.cached_tokens > 0 ? "grpc"
                                                          : state.registry().ChooseTransport(*prefill_worker, lease.worker()));
    prefill_request.set_cached_tokens(lease.cached_tokens);
    prefill_request.set_checkpoint_interval_tokens(lease.checkpoint_interval_tokens);
    cancel.Attach(&prefill_context);
    auto reader = stub->Prefill(&prefill_context, prefill_request);
    internal::v1::PrefillResponse event;
    bool have_first = false;
    bool client_write_failed = false;
    while (reader->Read(&event)) {
      if (event.has_progress()) {
        if (!relay_progress) continue;
        v1::GenerateResponse out;
        *out.mutable_progress() = event.progress();
        if (!writer->Write(out)) {
          client_write_failed = true;
          prefill_context.TryCancel();
        }
      } else if (event.has_done()) {
        *done = event.done();
        have_first = true;
      }
    }
    grpc::Status status = reader->Finish();
    cancel.Detach();
    state.registry().ReleasePrefill(*prefill_worker, cost);
    if (client_gone() || client_write_failed) return {RequestCancelled()};
    if (status.ok() && have_first) return {grpc::Status::OK};
    // The prefill worker says when its prefill ran but the handoff to the decode worker failed.
    if (!status.ok() && DetailsOf(status).reason == error_reason::kHandoffTransferFailed) {
      return {ErrorStatus(status.error_code(),
                          absl::StrCat("cache handoff to decode worker ", lease.worker(),
                                       " failed: ", status.error_message()),
                          Details(error_reason::kHandoffTransferFailed)),
              true};
    }
    prefill_error = WithDetails(
        absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                     absl::StrCat("prefill worker ", *prefill_worker, " failed: ", status.error_message())),
        status.error_code() == grpc::StatusCode::UNAVAILABLE
            ? Details(error_reason::kWorkerUnavailable, {{"role", "prefill"}}, kRetryDelay)
            : Details(error_reason::kPrefillFailed));
    if (absl::Now() >= deadline || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return {ErrorStatus(grpc::StatusCode::DEADLINE_EXCEEDED,
                          absl::StrCat("deadline passed during prefill (", status.error_message(), ")"),
                          Details(error_reason::kDeadlineExceeded, {{"stage", "prefill"}}))};
    }
    // A worker fault (process gone, internal error) or a limit of that worker (its cache,
    // between polls) is worth another worker; a verdict on the request itself is not.
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      state.registry().MarkDead(*prefill_worker);
    } else if (status.error_code() != grpc::StatusCode::INTERNAL && status.error_code() != grpc::StatusCode::UNKNOWN &&
               status.error_code() != grpc::StatusCode::FAILED_PRECONDITION) {
      return {ToGrpcWithDetails(prefill_error)};
    }
  }
  return {ToGrpcWithDetails(prefill_error)};
}

}  // namespace latentserve::router
