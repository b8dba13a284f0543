// In-process transport: the prefill and decode workers share one process (`serve`), so
// chunks are handed to the decode worker's CacheSink directly, without serialisation, as
// views of the prefill worker's cache: the receiver copies them device to device.
#pragma once

#include <map>
#include <mutex>

#include "transfer/transport.h"

namespace latentserve::transfer {

class InProcTransport : public CacheTransport {
 public:
  // `sinks`: decode workers of this process by the address they serve on.
  void AddSink(const std::string& address, CacheSink* sink);
  bool HasSink(const std::string& address) const;

  std::string name() const override { return "inproc"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

 private:
  mutable std::mutex mu_;
  std::map<std::string, CacheSink*> sinks_;
};

// Picks in-process delivery for local decode workers and a fallback (gRPC) for the rest.
class RoutingTransport : public CacheTransport {
 public:
  RoutingTransport(InProcTransport* local, CacheTransport* remote) : local_(local), remote_(remote) {}
  std::string name() const override { return "inproc+" + remote_->name(); }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override {
    if (local_ && local_->HasSink(target)) return local_->Open(target, header, deadline);
    return remote_->Open(target, header, deadline);
  }

 private:
  InProcTransport* local_;
  CacheTransport* remote_;
};

}  // namespace latentserve::transfer
