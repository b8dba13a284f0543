// The router's calls to its workers for one request: reserving decode pages (waiting for
// room), holding and releasing the lease, and running the prefill with retries on another
// worker. GenerationService (generation_service.cc) strings them together.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "latentserve/v1/generate.grpc.pb.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "router/cancel_link.h"
#include "router/generation_service.h"
#include "router/lease_keeper.h"

namespace latentserve::router {

void SetDeadline(grpc::ClientContext& context, absl::Time deadline);

// CANCELLED "request cancelled" with ErrorInfo reason REQUEST_CANCELLED.
grpc::Status RequestCancelled();

void ReleaseLease(const std::string& decode_worker, const std::string& lease_id, absl::Duration timeout);

// A decode lease held by one request: counted by the router, renewed by the LeaseKeeper
// until Decode takes it over, released on every other path.
class DecodeLease {
 public:
  DecodeLease(RouterState& state, std::string worker, std::string id)
      : state_(state), worker_(std::move(worker)), id_(std::move(id)) {
    state_.leases_active++;
    state_.lease_keeper().Add(worker_, id_);
  }
  ~DecodeLease() {
    state_.lease_keeper().Remove(id_);
    if (open_) ReleaseLease(worker_, id_, state_.options().control_timeout);
    state_.leases_active--;
    state_.registry().ReleaseDecode(worker_);  // the claim ClaimDecode made
  }
  DecodeLease(const DecodeLease&) = delete;
  DecodeLease& operator=(const DecodeLease&) = delete;

  // From here Decode owns the pages (it frees them on every path) and the deadline.
  void HandToDecode() {
    open_ = false;
    state_.lease_keeper().Remove(id_);
  }
  const std::string& worker() const { return worker_; }
  const std::string& id() const { return id_; }
  // What the decode worker said on reserve: prompt tokens it resumes from its prefix cache, and
  // whether it prefills the rest itself (no Prefill call; Decode streams the first token).
  int64_t cached_tokens = 0;
  bool local_prefill = false;
  // KDA checkpoints the decode worker keeps inside the prompt: forwarded to the prefill worker.
  int64_t checkpoint_interval_tokens = 0;

 private:
  RouterState& state_;
  const std::string worker_;
  const std::string id_;
  bool open_ = true;
};

constexpr int kMaxDecodeAttempts = 3;  // decode workers tried for one request's handoff

// What a lease request carries besides its size.
struct LeaseHints {
  const std::vector<int32_t>* prompt = nullptr;  // for the worker's prefix cache (optional)
  std::string prefer_worker;                     // tried first (a session's worker); "" none
  bool skip_prefix_keep = false;                 // the worker does not keep this prompt (a session's question)
};

// Reserves pages for `lease_tokens` on the best decode worker that accepts them and whose
// cache can hold `context_tokens` (prompt + max_tokens: what the sequence may grow to). When every
// live worker is full (RESOURCE_EXHAUSTED), waits for pages to free up, polling with backoff,
// for up to the router's capacity_wait (and never past the request's deadline), as a queue
// would; any other refusal moves on to the next worker. `hints`: the prompt for the worker's
// prefix cache, a preferred worker, no keeping.
grpc::Status ReserveDecodeLease(RouterState& state, const internal::v1::ModelDescriptor& model, const std::string& request_id,
                                int64_t context_tokens, int64_t lease_tokens, absl::Time deadline,
                                const std::set<std::string>& exclude,
                                CancelLink& cancel, const std::function<bool()>& client_gone,
                                std::unique_ptr<DecodeLease>* lease, const LeaseHints& hints = {});

struct PrefillOutcome {
  grpc::Status status;
  bool handoff_lost = false;  // the cache did not reach the decode worker (status says why)
};

// Prefills into `lease`, relaying progress; retries on another prefill worker when one
// fails before the first token. Fills `done` and `prefill_worker` on success.
PrefillOutcome RunPrefill(RouterState& state, const v1::GenerateRequest& request, const internal::v1::ModelDescriptor& model,
                          const std::string& request_id, const std::vector<int32_t>& tokens, const DecodeLease& lease,
                          absl::Time deadline, CancelLink& cancel, const std::function<bool()>& client_gone,
                          grpc::ServerWriterInterface<v1::GenerateResponse>* writer, bool relay_progress,
                          internal::v1::PrefillDone* done, std::string* prefill_worker);

}  // namespace latentserve::router
