// A grpc.health.v1.Health/Check client, for `latentserve client health` (probes, scripts),
// over the stubs generated from proto/grpc/health/v1/health.proto.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latentserve::client {

// "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"; an error when the call fails
// (e.g. NOT_FOUND for a service the server does not know).
absl::StatusOr<std::string> CheckHealth(const std::string& target,
                                        std::shared_ptr<grpc::ChannelCredentials> credentials,
                                        const std::string& service, absl::Duration timeout);

}  // namespace latentserve::client
