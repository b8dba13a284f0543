// Worker side: registration with every router replica.
//
// A worker announces itself (WorkerAnnouncer) to each address in --router, and, with
// --routers-dns HOST:PORT, to every address HOST resolves to, re-resolved every few seconds:
// the pods of a headless Service of router replicas, so that each replica knows every worker
// and any one of them can serve while another restarts.
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "worker/worker_announcer.h"

namespace latentserve::worker {

// Every address `host_port`'s host resolves to, as "ip:port" / "[ip6]:port", sorted, unique.
absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& host_port);

class AnnouncerSet {
 public:
  AnnouncerSet(std::vector<std::string> routers, std::string routers_dns, std::string worker_address,
               std::string role, internal::v1::ModelDescriptor model, std::function<v1::WorkerInfo()> stats,
               absl::Duration resolve_interval = absl::Seconds(5), internal::v1::WorkerTransports transports = {});
  ~AnnouncerSet();
  std::vector<std::string> Targets() const;  // routers announced to right now

 private:
  void Sync(const std::vector<std::string>& resolved);
  void ResolveLoop();

  const std::string routers_dns_, worker_address_, role_;
  const internal::v1::ModelDescriptor model_;
  const internal::v1::WorkerTransports transports_;
  const std::function<v1::WorkerInfo()> stats_;
  const absl::Duration resolve_interval_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<WorkerAnnouncer>> fixed_, resolved_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace latentserve::worker
