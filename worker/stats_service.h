// WorkerStats: a worker's own view of itself (live cache and queue numbers plus the model it
// serves), for the router's polls and `latentserve client stats`; and the same numbers as
// Prometheus gauges.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::worker {

// WorkerStats.GetWorkerStats for one worker role: its live info plus the model it serves.
class WorkerStatsService final : public internal::v1::WorkerStats::Service {
 public:
  WorkerStatsService(std::string role, const internal::v1::ModelDescriptor& model,
                     std::function<v1::WorkerInfo()> info, const serving::InternalAuthorizer& auth,
                     internal::v1::WorkerTransports transports = {})
      : role_(std::move(role)), model_(model), transports_(std::move(transports)), info_(std::move(info)), auth_(auth) {}
  // A decode worker's prefix index, sent to verified components only.
  void SetPrefixIndex(std::function<internal::v1::PrefixIndex()> source) { prefix_index_ = std::move(source); }
  grpc::Status GetWorkerStats(grpc::ServerContext* context, const internal::v1::GetWorkerStatsRequest*,
                              internal::v1::GetWorkerStatsResponse* response) override;

 private:
  std::string role_;
  const internal::v1::ModelDescriptor& model_;
  const internal::v1::WorkerTransports transports_;
  std::function<v1::WorkerInfo()> info_;
  std::function<internal::v1::PrefixIndex()> prefix_index_;
  const serving::InternalAuthorizer& auth_;
};

// Calls WorkerStats.GetWorkerStats on `target` with `metadata` (e.g. the internal token) on
// the call; a deadline `timeout` from now.
absl::StatusOr<internal::v1::GetWorkerStatsResponse> GetWorkerStats(
    const std::string& target, std::shared_ptr<grpc::ChannelCredentials> credentials,
    const std::vector<std::pair<std::string, std::string>>& metadata, absl::Duration timeout);

// latentserve_cache_pages_{free,used}, latentserve_worker_draining and the role's queue gauges,
// read from `info` at scrape time. No-op when `metrics` is null (no --metrics-listen).
void AddWorkerGauges(serving::MetricsServer* metrics, const std::string& role,
                     std::function<v1::WorkerInfo()> info);

}  // namespace latentserve::worker
