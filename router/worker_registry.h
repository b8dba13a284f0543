// The router's view of its workers: who is up, how loaded, which model; and placement.
//
// Liveness: a monitor thread polls every worker's WorkerStats.GetWorkerStats (the same
// path for registered and statically listed workers); a failed poll or a failed call marks
// the worker dead until a poll succeeds again. Heartbeats refresh stats in between.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "latentserve/v1/worker.pb.h"

namespace latentserve::router {

struct WorkerEntry {
  std::string address;
  std::string role;  // "prefill" | "decode"
  v1::ModelDescriptor model;
  v1::WorkerInfo stats;
  bool alive = false;
  bool static_entry = false;
  double inflight_cost = 0;  // prefill: cost of jobs this router has running there
  int64_t inflight_requests = 0;  // decode: requests this router has placed there, not finished
  absl::Time last_seen = absl::InfinitePast();
};

class WorkerRegistry {
 public:
  explicit WorkerRegistry(absl::Duration poll_interval = absl::Milliseconds(250));
  ~WorkerRegistry();

  void AddStatic(const std::string& address, const std::string& role);
  // FailedPrecondition when the worker serves a different model than the others.
  absl::Status Register(const v1::RegisterWorkerRequest& request);
  absl::Status Heartbeat(const v1::HeartbeatRequest& request);
  void MarkDead(const std::string& address);

  // Decode workers that may hold `tokens`, most free pages first.
  std::vector<std::string> DecodeCandidates(int64_t tokens, const std::set<std::string>& exclude) const;
  // The live prefill worker with the least outstanding work, or nullopt.
  std::optional<std::string> PickPrefill(const std::set<std::string>& exclude) const;
  void AddPrefillCost(const std::string& address, double cost);
  void AddDecodeRequests(const std::string& address, int64_t delta);

  // The served model (from the first worker that reported one).
  std::optional<v1::ModelDescriptor> Model() const;
  int64_t MaxContextTokens() const;  // over live decode workers
  bool AnyAlive(const std::string& role) const;
  std::vector<WorkerEntry> Snapshot() const;

 private:
  void MonitorLoop();
  absl::Status AcceptModel(const v1::ModelDescriptor& model, const std::string& address);

  const absl::Duration poll_interval_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, WorkerEntry> workers_;
  std::optional<v1::ModelDescriptor> model_;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace latentserve::router
