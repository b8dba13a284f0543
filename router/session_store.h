// The router's document sessions (docs/serving.md "Sessions"): who owns each session, the
// document's tokens (kept here so a lost decode worker's document can be prefilled again),
// the decode worker holding it, and the limits: sessions per client and in all, pinned
// document tokens in all, a lifetime (TTL) and an idle timeout.
//
// No gRPC and no clock of its own: callers pass `now`, so tests drive time. Threads: one lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latentserve::router {

struct SessionLimits {
  absl::Duration default_ttl = absl::Hours(1);         // lifetime when the caller asks none; also the cap
  absl::Duration default_idle = absl::Minutes(10);     // idle timeout when the caller asks none; also the cap
  int64_t max_per_client = 16;                         // sessions one client identity holds at once
  int64_t max_total = 1024;                            // sessions this router holds at once
  int64_t max_pinned_tokens = int64_t{1} << 22;        // document tokens of pinned sessions, all clients
};

struct Session {
  std::string id;     // "sess-" + 128 random bits
  std::string owner;  // serving::ClientIdentity of the creator; only it sees the session
  std::shared_ptr<const std::vector<int32_t>> tokens;  // the document
  bool pinned = false;
  bool ready = false;       // the document's prefill finished (a session being created is not usable yet)
  absl::Time created;
  absl::Time last_used;
  absl::Time ttl_deadline;  // created + ttl
  absl::Duration idle;
  std::string worker;       // decode worker holding the document ("" while created)
  int64_t requests = 0;
  int64_t reprefills = 0;   // document prefilled again after its worker was lost
  bool repairing = false;   // a request is prefilling the document again

  absl::Time expires() const { return std::min(ttl_deadline, last_used + idle); }
};

class SessionStore {
 public:
  explicit SessionStore(SessionLimits limits) : limits_(limits) {}

  const SessionLimits& limits() const { return limits_; }
  // A new session (not ready) after the limits: ResourceExhausted naming the limit hit.
  // `ttl` / `idle` zero take the defaults; longer ones are capped at them.
  absl::StatusOr<Session> Begin(const std::string& owner, std::vector<int32_t> tokens, bool pinned,
                                absl::Duration ttl, absl::Duration idle, absl::Time now);
  // The document is held by `worker` (after creation, or again after a re-prefill).
  absl::Status SetWorker(const std::string& id, const std::string& worker, bool reprefill, absl::Time now);
  // The document is no longer held on `worker` (the session's next request prefills it again).
  void MarkLost(const std::string& id, const std::string& worker);
  // One request at a time prefills a lost document again: true for the one that should.
  bool TryStartRepair(const std::string& id);
  void EndRepair(const std::string& id);
  // A ready session of `owner` for one request (counts it, refreshes the idle timer). NotFound
  // for an unknown, expired, not yet ready or other client's session (one message for all).
  absl::StatusOr<Session> Use(const std::string& id, const std::string& owner, absl::Time now);
  std::vector<Session> List(const std::string& owner, absl::Time now) const;
  // Removes `owner`'s session; NotFound as for Use. Returns it (its worker drops the document).
  absl::StatusOr<Session> Close(const std::string& id, const std::string& owner);
  // Removes a session whatever its state (a failed creation).
  void Remove(const std::string& id);
  // Removes and returns the sessions past their TTL or idle timeout.
  std::vector<Session> Expire(absl::Time now);
  int64_t size() const;
  int64_t pinned_tokens() const;

 private:
  const SessionLimits limits_;
  mutable std::mutex mu_;
  std::map<std::string, Session> sessions_;
  int64_t pinned_tokens_ = 0;
};

}  // namespace latentserve::router
