#include "client/client.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/error_details.h"
#include "common/status.h"

namespace latentserve::client {

GenerationClient::GenerationClient(const std::string& target)
    : GenerationClient(target, grpc::InsecureChannelCredentials(), "") {}

GenerationClient::GenerationClient(const std::string& target, std::shared_ptr<grpc::ChannelCredentials> credentials,
                                   std::string bearer_token, std::vector<std::pair<std::string, std::string>> metadata)
    : bearer_token_(std::move(bearer_token)), metadata_(std::move(metadata)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(target, std::move(credentials), args);
  stub_ = v1::Generation::NewStub(channel);
}

void GenerationClient::Authorize(grpc::ClientContext& context) const {
  if (!bearer_token_.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", bearer_token_));
  for (const auto& [key, value] : metadata_) context.AddMetadata(key, value);
}

absl::StatusOr<GenerateResult> GenerationClient::Generate(const v1::GenerateRequest& request,
                                                          const GenerateCallbacks& callbacks, absl::Duration timeout) {
  grpc::ClientContext context;
  Authorize(context);
  if (timeout != absl::InfiniteDuration()) context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  auto reader = stub_->Generate(&context, request);
  GenerateResult result;
  bool finished = false;
  bool cancelled = false;
  v1::GenerateResponse event;
  while (reader->Read(&event)) {
    bool keep_going = true;
    if (event.has_progress()) {
      if (callbacks.on_progress) keep_going = callbacks.on_progress(event.progress());
    } else if (event.has_tokens()) {
      result.token_ids.insert(result.token_ids.end(), event.tokens().token_ids().begin(),
                              event.tokens().token_ids().end());
      result.text += event.tokens().text();
      if (callbacks.on_tokens) keep_going = callbacks.on_tokens(event.tokens());
    } else if (event.has_finished()) {
      result.finished = event.finished();
      finished = true;
    }
    if (!keep_going) {
      cancelled = true;
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (cancelled) return absl::CancelledError("cancelled by the client");
  if (!status.ok()) return FromGrpcWithDetails(status);
  if (!finished) return absl::InternalError("stream ended without a finished event");
  return result;
}

absl::StatusOr<v1::GetModelInfoResponse> GenerationClient::GetModelInfo(absl::Duration timeout) {
  v1::GetModelInfoResponse response;
  RETURN_IF_ERROR(Call(&v1::Generation::Stub::GetModelInfo, *stub_, v1::GetModelInfoRequest(), &response, timeout));
  return response;
}

absl::StatusOr<std::vector<int32_t>> GenerationClient::Tokenize(const v1::TokenizeRequest& request,
                                                                absl::Duration timeout) {
  v1::TokenizeResponse response;
  RETURN_IF_ERROR(Call(&v1::Generation::Stub::Tokenize, *stub_, request, &response, timeout));
  return std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end());
}

absl::StatusOr<v1::CreateSessionResponse> GenerationClient::CreateSession(const v1::CreateSessionRequest& request,
                                                                         absl::Duration timeout) {
  v1::CreateSessionResponse response;
  RETURN_IF_ERROR(Call(&v1::Generation::Stub::CreateSession, *stub_, request, &response, timeout));
  return response;
}

absl::StatusOr<v1::ListSessionsResponse> GenerationClient::ListSessions(absl::Duration timeout) {
  v1::ListSessionsResponse response;
  RETURN_IF_ERROR(Call(&v1::Generation::Stub::ListSessions, *stub_, v1::ListSessionsRequest(), &response, timeout));
  return response;
}

absl::Status GenerationClient::CloseSession(const std::string& session_id, absl::Duration timeout) {
  v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  v1::CloseSessionResponse response;
  return Call(&v1::Generation::Stub::CloseSession, *stub_, request, &response, timeout);
}

}  // namespace latentserve::client
