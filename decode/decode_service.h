// gRPC face of the decode worker: latentserve.internal.v1.DecodeWorker and WorkerStats.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"

#include "decode/decode_worker.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "serving/security.h"

namespace latentserve::decode {

// Every method is internal: `auth` admits only cluster components (the router; a prefill
// worker for ReceiveCache).
class DecodeService final : public internal::v1::DecodeWorker::Service {
 public:
  DecodeService(DecodeWorker& worker, internal::v1::ModelDescriptor model, const serving::InternalAuthorizer& auth)
      : worker_(worker), model_(std::move(model)), auth_(auth) {}

  grpc::Status ReserveLease(grpc::ServerContext* context, const internal::v1::ReserveLeaseRequest* request,
                            internal::v1::ReserveLeaseResponse* response) override;
  grpc::Status ReleaseLease(grpc::ServerContext* context, const internal::v1::ReleaseLeaseRequest* request,
                            internal::v1::ReleaseLeaseResponse* response) override;
  grpc::Status RenewLease(grpc::ServerContext* context, const internal::v1::RenewLeaseRequest* request,
                          internal::v1::RenewLeaseResponse* response) override;
  // Session pins are keyed by the calling router's identity and the session id.
  grpc::Status PinSession(grpc::ServerContext* context, const internal::v1::PinSessionRequest* request,
                          internal::v1::PinSessionResponse* response) override;
  grpc::Status DropSession(grpc::ServerContext* context, const internal::v1::DropSessionRequest* request,
                           internal::v1::DropSessionResponse* response) override;
  // Internal credential plus the lease id (its 128 random bits are the capability), as for
  // ReceiveCache. The handles open the whole pool: only cluster components may ask.
  grpc::Status OpenDeviceHandoff(grpc::ServerContext* context, const internal::v1::OpenDeviceHandoffRequest* request,
                                 internal::v1::OpenDeviceHandoffResponse* response) override;
  grpc::Status ReceiveCache(grpc::ServerContext* context, grpc::ServerReader<internal::v1::ReceiveCacheRequest>* reader,
                            internal::v1::ReceiveCacheResponse* response) override;
  // A lease's cached prefix for the prefill worker computing its long rest (internal, like
  // ReceiveCache: the lease id and the internal credential admit it).
  grpc::Status ReadPrefix(grpc::ServerContext* context, const internal::v1::ReadPrefixRequest* request,
                          grpc::ServerWriter<internal::v1::ReadPrefixResponse>* writer) override;
  grpc::Status Decode(grpc::ServerContext* context, const internal::v1::DecodeRequest* request,
                      grpc::ServerWriter<internal::v1::DecodeResponse>* writer) override;

  // This worker's stats as the router reports them.
  v1::WorkerInfo Info(const std::string& address) const;
  const internal::v1::ModelDescriptor& model() const { return model_; }
  // Testing only (--fault-stall-decode-ms): each token event waits this long before it is
  // written, while the process keeps answering pings: a live worker that stopped producing.
  void SetFaultStallTokens(absl::Duration stall) { fault_stall_tokens_ = stall; }

 private:
  DecodeWorker& worker_;
  internal::v1::ModelDescriptor model_;
  const serving::InternalAuthorizer& auth_;
  absl::Duration fault_stall_tokens_ = absl::ZeroDuration();
};

}  // namespace latentserve::decode
