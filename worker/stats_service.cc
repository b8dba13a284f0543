#include "worker/stats_service.h"

#include "absl/time/clock.h"
#include "common/grpc_status.h"

namespace latentserve::worker {

grpc::Status WorkerStatsService::GetWorkerStats(grpc::ServerContext* context,
                                                const internal::v1::GetWorkerStatsRequest*,
                                                internal::v1::GetWorkerStatsResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "WorkerStats.GetWorkerStats"); !denied.ok())
    return denied;
  *response->mutable_stats() = info_();
  *response->mutable_model() = model_;
  // The absolute path says where the host keeps its files: only a verified component (the
  // router's polls with the internal credential) gets it; anyone else the file name.
  if (!auth_.Verified(*context)) {
    const std::string& path = model_.path();
    response->mutable_model()->set_path(path.substr(path.rfind('/') + 1));
  }
  response->set_role(role_);
  *response->mutable_transports() = transports_;
  // Which prefixes are cached says something about other clients' prompts: cluster components
  // only (a verified internal credential; without internal auth every caller is one).
  if (prefix_index_ && (auth_.open() || auth_.Verified(*context))) {
    *response->mutable_prefix_index() = prefix_index_();
  }
  return grpc::Status::OK;
}

absl::StatusOr<internal::v1::GetWorkerStatsResponse> GetWorkerStats(
    const std::string& target, std::shared_ptr<grpc::ChannelCredentials> credentials,
    const std::vector<std::pair<std::string, std::string>>& metadata, absl::Duration timeout) {
  auto stub = internal::v1::WorkerStats::NewStub(grpc::CreateChannel(target, std::move(credentials)));
  grpc::ClientContext context;
  for (const auto& [key, value] : metadata) context.AddMetadata(key, value);
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  internal::v1::GetWorkerStatsResponse response;
  grpc::Status status = stub->GetWorkerStats(&context, internal::v1::GetWorkerStatsRequest(), &response);
  if (!status.ok()) return FromGrpc(status);
  return response;
}

void AddWorkerGauges(serving::MetricsServer* metrics, const std::string& role,
                     std::function<v1::WorkerInfo()> info) {
  if (!metrics) return;
  metrics->AddGaugeSource([role, info](serving::GaugeWriter& out) {
    const v1::WorkerInfo w = info();
    out.Set("latentserve_cache_pages_free", "Cache pages free on this worker", {{"role", role}},
            static_cast<double>(w.cache_pages_free()));
    out.Set("latentserve_cache_pages_used", "Cache pages in use on this worker", {{"role", role}},
            static_cast<double>(w.cache_pages_total() - w.cache_pages_free()));
    out.Set("latentserve_worker_draining", "1 while this worker drains", {{"role", role}},
            w.draining() ? 1.0 : 0.0);
    if (role == "decode") {
      out.Set("latentserve_decode_leases_active", "Decode: leases reserved, not yet decoding", {},
              static_cast<double>(w.leases_active()));
      out.Set("latentserve_decode_sequences_active", "Decode: sequences in the continuous batch",
              {}, static_cast<double>(w.sequences_active()));
    } else {
      out.Set("latentserve_prefill_queue_depth", "Prefill: jobs running or queued", {},
              static_cast<double>(w.sequences_active()));
      out.Set("latentserve_prefill_outstanding_cost",
              "Prefill: sum of prompt_tokens^2 over queued and running jobs", {},
              w.outstanding_cost());
    }
  });
}

}  // namespace latentserve::worker
