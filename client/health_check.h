// A grpc.health.v1.Health/Check client, for `latentserve client health` (probes, scripts).
// The health protocol's two messages are encoded here by hand (one optional string in, one
// enum out) rather than generating the grpc.health.v1 protos, which the Debian packages do
// not ship.
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
