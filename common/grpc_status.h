// absl::Status <-> grpc::Status (the codes share numbering). Header-only and the one gRPC
// header in common/: the services, transfer/ and the client library include it; model/ and
// kernels/ never do.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace latentserve {

inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace latentserve
