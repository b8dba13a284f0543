// gRPC transport: one DecodeWorker.ReceiveCache client stream per handoff.
//
// The sender queues chunks for a writer thread, so the prefill keeps computing while bytes
// move; when more than `max_queued_bytes` are queued, Send* blocks (backpressure) instead of
// buffering an unbounded cache in memory. The call carries the handoff deadline.
#pragma once

#include <memory>

#include <grpcpp/server_context.h>
#include <grpcpp/support/sync_stream.h>

#include "latentserve/v1/worker.pb.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

class GrpcTransport : public CacheTransport {
 public:
  explicit GrpcTransport(int64_t max_queued_bytes = 32 << 20) : max_queued_bytes_(max_queued_bytes) {}
  std::string name() const override { return "grpc"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

 private:
  int64_t max_queued_bytes_;
};

// Server side of DecodeWorker.ReceiveCache: reads the stream and feeds `sink`.
grpc::Status ServeReceiveCache(CacheSink& sink, grpc::ServerContext* context,
                               grpc::ServerReader<v1::ReceiveCacheRequest>* reader, v1::ReceiveCacheResponse* response);

v1::CacheDType ToProtoDType(DType dtype);
absl::StatusOr<DType> FromProtoDType(v1::CacheDType dtype);

}  // namespace latentserve::transfer
