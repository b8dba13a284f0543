#include "router/channels.h"

#include <map>
#include <mutex>

#include "serving/security.h"
#include "transfer/grpc_transport.h"

namespace latentserve::router {

std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address) {
  static std::mutex mu;
  static auto* channels = new std::map<std::string, std::shared_ptr<grpc::Channel>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& channel = (*channels)[address];
  if (!channel) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    transfer::SetInternalKeepalive(args);
    channel = grpc::CreateCustomChannel(address, serving::InternalChannelCredentials(), args);
  }
  return channel;
}

}  // namespace latentserve::router
