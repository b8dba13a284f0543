// The router's view of its workers: who is up, how loaded, which model; and placement.
//
// Liveness: a monitor thread polls every worker's WorkerStats.GetWorkerStats (the same
// path for registered and statically listed workers), all of them at once, each call under
// its own deadline; a failed poll or a failed call marks the worker dead until a poll succeeds
// again. Heartbeats refresh stats in between. A registered worker unheard-from for
// RegistryLimits::evict_after is forgotten (with it, its metric series: they are read from
// Snapshot() at each scrape).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "absl/time/time.h"
#include "latentserve/internal/v1/worker.pb.h"

namespace latentserve::router {

struct WorkerEntry {
  std::string address;
  std::string role;  // "prefill" | "decode"
  internal::v1::ModelDescriptor model;
  internal::v1::WorkerTransports transports;  // what it can move cache bytes by
  v1::WorkerInfo stats;
  bool alive = false;
  bool static_entry = false;
  double inflight_cost = 0;  // prefill: cost of jobs this router has running there
  int64_t inflight_requests = 0;  // decode: requests this router has placed there, not finished
  uint64_t last_placed = 0;  // the registry's placement counter when a request last went here
  absl::Time last_seen = absl::InfinitePast();
  // Decode: the prefixes its prefix cache holds (polled PrefixIndex; at most kMaxPrefixHashes).
  int64_t prefix_block_tokens = 0;
  absl::flat_hash_set<uint64_t> prefix_hashes;
};

// Prefix hashes the router keeps per decode worker (a poll answer is peer input: the rest is ignored).
inline constexpr int kMaxPrefixHashes = 4096;

// Bounds on what registrations may cost the router.
struct RegistryLimits {
  int64_t max_workers = 1024;                // registered (not static) workers; more -> RESOURCE_EXHAUSTED
  absl::Duration evict_after = absl::Seconds(60);  // a registered worker unheard-from this long is forgotten
};

class WorkerRegistry {
 public:
  explicit WorkerRegistry(absl::Duration poll_interval = absl::Milliseconds(250), RegistryLimits limits = {});
  ~WorkerRegistry();

  void AddStatic(const std::string& address, const std::string& role);
  // Accept only workers of this model fingerprint (the router's --model). Without a pin the
  // first worker heard from decides.
  void PinFingerprint(const std::string& fingerprint);
  // FailedPrecondition when the worker serves a different model than the others;
  // InvalidArgument for an address that is not HOST:PORT; ResourceExhausted for a new address
  // beyond limits.max_workers.
  absl::Status Register(const internal::v1::RegisterWorkerRequest& request);
  absl::Status Heartbeat(const internal::v1::HeartbeatRequest& request);
  void MarkDead(const std::string& address);

  // Placement picks and counts in one step, under the lock, so that concurrent requests see
  // each other's claims (a pick followed by a separate increment let them all pick the same
  // worker). Each claim is undone with the matching Release* call.
  //
  // Decode: among live workers whose context holds `tokens`, the fewest requests this router
  // has placed there, then the most free cache tokens (polled), then the least recently placed.
  // `prefer` (a session's worker, which holds its document) wins over that order while it
  // qualifies and has at most kPreferSlack more requests placed than the least loaded one.
  std::optional<std::string> ClaimDecode(int64_t tokens, const std::set<std::string>& exclude,
                                         const std::string& prefer = "");
  static constexpr int64_t kPreferSlack = 4;
  // Decode, prefix-aware placement: the live worker whose polled prefix index holds the
  // longest prefix of `prompt`, and that prefix's length in tokens (a lower bound, in whole
  // blocks); {"", 0} when no worker holds one. The caller passes it to ClaimDecode as `prefer`.
  std::pair<std::string, int64_t> LongestPrefixWorker(absl::Span<const int32_t> prompt) const;
  void ReleaseDecode(const std::string& address);
  // Prefill: among live workers whose cache holds `prompt_tokens`, the least outstanding cost
  // (sum of prompt_tokens^2 of running jobs: this router's, or the worker's polled total when
  // larger), then the least recently placed.
  std::optional<std::string> ClaimPrefill(int64_t prompt_tokens, double cost, const std::set<std::string>& exclude);
  void ReleasePrefill(const std::string& address, double cost);

  // The served model (from the first worker that reported one).
  std::optional<internal::v1::ModelDescriptor> Model() const;
  int64_t MaxContextTokens(const std::string& role = "decode") const;  // the largest cache of a live worker
  bool AnyAlive(const std::string& role) const;
  bool IsAlive(const std::string& address) const;
  std::vector<WorkerEntry> Snapshot() const;
  // The transport a handoff from `prefill` to `decode` takes (transfer::ChooseTransport over
  // what both advertised; "grpc" when either is unknown).
  std::string ChooseTransport(const std::string& prefill, const std::string& decode) const;

 private:
  void MonitorLoop();
  void PollAll(const std::vector<std::string>& addresses);  // concurrently; updates entries as answers come
  absl::Status AcceptModel(const internal::v1::ModelDescriptor& model, const std::string& address);

  const absl::Duration poll_interval_;
  const RegistryLimits limits_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, WorkerEntry> workers_;
  std::optional<internal::v1::ModelDescriptor> model_;
  std::string pinned_fingerprint_;
  uint64_t placements_ = 0;
  bool stopping_ = false;
  std::thread monitor_;
};

}  // namespace latentserve::router
