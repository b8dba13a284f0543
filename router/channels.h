// One shared channel per worker address for the router's internal calls.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

namespace latentserve::router {

// The router's channel to a worker (internal credentials; created on first use, then reused).
std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);

}  // namespace latentserve::router
