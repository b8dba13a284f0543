#include "latentserve/client.h"

namespace latentserve {

Client::Client(const std::string& target, ClientOptions options) : options_(std::move(options)) {
  auto credentials = options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
  stub_ = v1::Generation::NewStub(grpc::CreateChannel(target, credentials));
}

void Client::Prepare(grpc::ClientContext& context, std::chrono::milliseconds timeout) const {
  if (!options_.bearer_token.empty()) context.AddMetadata("authorization", "Bearer " + options_.bearer_token);
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

grpc::Status Client::Generate(const v1::GenerateRequest& request,
                              const std::function<bool(const v1::GenerateResponse&)>& on_event) {
  return Generate(request, on_event, options_.default_timeout);
}

grpc::Status Client::Generate(const v1::GenerateRequest& request,
                              const std::function<bool(const v1::GenerateResponse&)>& on_event,
                              std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  Prepare(context, timeout);
  auto reader = stub_->Generate(&context, request);
  v1::GenerateResponse event;
  while (reader->Read(&event)) {
    if (!on_event(event)) {
      context.TryCancel();
      break;
    }
  }
  return reader->Finish();
}

grpc::Status Client::Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response) {
  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(30));
  return stub_->Tokenize(&context, request, response);
}

grpc::Status Client::GetModelInfo(v1::GetModelInfoResponse* response) {
  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(10));
  return stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), response);
}

}  // namespace latentserve
