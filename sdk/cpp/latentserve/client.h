// latentserve C++ client: the public Generation API (proto/latentserve/v1/generate.proto)
// with nothing but gRPC and protobuf underneath. Installed by `cmake --install` with a
// latentserveConfig.cmake: find_package(latentserve) then link latentserve::client.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "latentserve/v1/generate.grpc.pb.h"

namespace latentserve {

struct ClientOptions {
  // Insecure when null; grpc::SslCredentials(...) for TLS (with a client certificate for mTLS).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Sent as `authorization: Bearer <token>` on every call when not empty (needs TLS).
  std::string bearer_token;
  // Deadline of a call that gives none.
  std::chrono::milliseconds default_timeout = std::chrono::minutes(30);
};

class Client {
 public:
  explicit Client(const std::string& target, ClientOptions options = {});

  // Streams one request. `on_event` sees every event (progress, tokens, finished) in order;
  // returning false cancels the request (the call then ends CANCELLED).
  grpc::Status Generate(const v1::GenerateRequest& request,
                        const std::function<bool(const v1::GenerateResponse&)>& on_event);
  grpc::Status Generate(const v1::GenerateRequest& request,
                        const std::function<bool(const v1::GenerateResponse&)>& on_event,
                        std::chrono::milliseconds timeout);
  grpc::Status Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response);
  grpc::Status GetModelInfo(v1::GetModelInfoResponse* response);

  // The generated stub, for anything the methods above do not cover.
  v1::Generation::Stub& stub() { return *stub_; }

 private:
  void Prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout) const;

  ClientOptions options_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

}  // namespace latentserve
