#include "router/lease_keeper.h"

#include <algorithm>
#include <set>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "router/channels.h"
#include "serving/security.h"

namespace latentserve::router {

LeaseKeeper::LeaseKeeper(absl::Duration ttl, absl::Duration call_timeout)
    : ttl_(ttl), call_timeout_(call_timeout), thread_([this] { Loop(); }) {}

LeaseKeeper::~LeaseKeeper() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void LeaseKeeper::Add(const std::string& decode_worker, const std::string& lease_id) {
  std::lock_guard<std::mutex> lock(mu_);
  leases_[lease_id] = decode_worker;
}

void LeaseKeeper::Remove(const std::string& lease_id) {
  std::lock_guard<std::mutex> lock(mu_);
  leases_.erase(lease_id);
}

int64_t LeaseKeeper::renewals() const {
  std::lock_guard<std::mutex> lock(mu_);
  return renewals_;
}

void LeaseKeeper::Loop() {
  const absl::Duration period = ttl_ / 3;
  // One call's limit: short enough that a round finishes well inside the period.
  const absl::Duration call_limit = std::min(call_timeout_, period);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, absl::ToChronoNanoseconds(period), [this] { return stopping_; });
    if (stopping_) break;
    std::vector<std::pair<std::string, std::string>> round(leases_.begin(), leases_.end());
    lock.unlock();
    std::set<std::string> unreachable;  // one timeout per worker per round, not one per lease
    int64_t renewed = 0;
    for (const auto& [lease_id, worker] : round) {
      if (unreachable.count(worker)) continue;
      auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(worker));
      grpc::ClientContext context;
      serving::AttachInternalCredential(context);
      context.set_deadline(absl::ToChronoTime(absl::Now() + call_limit));
      internal::v1::RenewLeaseRequest request;
      request.set_lease_id(lease_id);
      request.set_ttl_ms(absl::ToInt64Milliseconds(ttl_));
      internal::v1::RenewLeaseResponse response;
      grpc::Status status = stub->RenewLease(&context, request, &response);
      if (status.ok()) {
        renewed++;
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                 status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        unreachable.insert(worker);
      }
      // ABORTED: the lease is gone; the request finds out at its handoff.
    }
    lock.lock();
    renewals_ += renewed;
  }
}

}  // namespace latentserve::router
