// Keeps the decode leases of the router's requests alive while they queue and prefill.
//
// A lease's TTL guards against a router that dies mid-request: its pages return to the
// decode worker when nobody renews it. A live router renews every lease it holds each
// ttl/3, so a request that waits behind other prefills keeps its reservation for as long
// as the router still wants it (the request's own deadline bounds that).
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace latentserve::router {

class LeaseKeeper {
 public:
  // `ttl`: what each renewal grants; `call_timeout`: the limit on one RenewLease call.
  LeaseKeeper(absl::Duration ttl, absl::Duration call_timeout);
  ~LeaseKeeper();
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  void Add(const std::string& decode_worker, const std::string& lease_id);
  void Remove(const std::string& lease_id);
  int64_t renewals() const;  // successful RenewLease calls so far

 private:
  void Loop();

  const absl::Duration ttl_;
  const absl::Duration call_timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> leases_;  // lease id -> decode worker address
  int64_t renewals_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace latentserve::router
