// gRPC face of the prefill worker: latentserve.internal.v1.PrefillWorker. When the cache
// handoff (not the prefill) failed, the status carries ErrorInfo reason
// HANDOFF_TRANSFER_FAILED (common/error_details.h), so the router knows a retry on another
// prefill worker would not help.
#pragma once

#include <grpcpp/grpcpp.h>

#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "prefill/prefill_worker.h"
#include "serving/security.h"

namespace latentserve::prefill {

class PrefillService final : public internal::v1::PrefillWorker::Service {
 public:
  // Prefill is internal: `auth` admits only cluster components (the router).
  PrefillService(PrefillWorker& worker, internal::v1::ModelDescriptor model, const serving::InternalAuthorizer& auth)
      : worker_(worker), model_(std::move(model)), auth_(auth) {}

  grpc::Status Prefill(grpc::ServerContext* context, const internal::v1::PrefillRequest* request,
                       grpc::ServerWriter<internal::v1::PrefillResponse>* writer) override;

  v1::WorkerInfo Info(const std::string& address) const;
  const internal::v1::ModelDescriptor& model() const { return model_; }

 private:
  PrefillWorker& worker_;
  internal::v1::ModelDescriptor model_;
  const serving::InternalAuthorizer& auth_;
};

}  // namespace latentserve::prefill
