// Worker side of registration: registers with the router, then sends heartbeats with fresh
// stats; re-registers when the router forgets the worker (router restart).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "latentserve/internal/v1/worker.pb.h"

namespace latentserve::worker {

class WorkerAnnouncer {
 public:
  // `stats` is called from the announcer's thread. `tls_name` (may be empty): the name the
  // router's certificate must carry when `router_address` is a bare IP.
  WorkerAnnouncer(std::string router_address, std::string worker_address, std::string role,
                  internal::v1::ModelDescriptor model, std::function<v1::WorkerInfo()> stats, std::string tls_name = "",
                  internal::v1::WorkerTransports transports = {});
  ~WorkerAnnouncer();

 private:
  void Loop();
  const std::string router_address_, worker_address_, role_, tls_name_;
  const internal::v1::ModelDescriptor model_;
  const internal::v1::WorkerTransports transports_;  // what it can move cache bytes by
  const std::function<v1::WorkerInfo()> stats_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace latentserve::worker
