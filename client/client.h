// C++ client of latentserve.v1.Generation (what `latentserve client` and the tests use). It
// links gRPC, protobuf and the public proto only (client/CMakeLists.txt checks that).
//
// A failed call's absl::Status carries the server's typed details: latentserve::DetailsOf
// (common/error_details.h) gives the ErrorInfo reason and metadata and the RetryInfo delay.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/error_details.h"
#include "latentserve/v1/generate.grpc.pb.h"

namespace latentserve::client {

struct GenerateCallbacks {
  // Return false to cancel the request (the call then ends CANCELLED).
  std::function<bool(const v1::PrefillProgress&)> on_progress;
  std::function<bool(const v1::TokenChunk&)> on_tokens;
};

struct GenerateResult {
  std::vector<int32_t> token_ids;
  std::string text;
  v1::Finished finished;
};

class GenerationClient {
 public:
  explicit GenerationClient(const std::string& target);
  // `credentials`: TLS or insecure; `bearer_token` (may be empty) is sent as
  // `authorization: Bearer <token>` on every call, and `metadata` (key, value) pairs too.
  GenerationClient(const std::string& target, std::shared_ptr<grpc::ChannelCredentials> credentials,
                   std::string bearer_token, std::vector<std::pair<std::string, std::string>> metadata = {});

  // Streams one request to its end. timeout: the call's deadline (InfiniteDuration: none).
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request, const GenerateCallbacks& callbacks,
                                          absl::Duration timeout);
  absl::StatusOr<v1::GetModelInfoResponse> GetModelInfo(absl::Duration timeout = absl::Seconds(5));
  absl::StatusOr<std::vector<int32_t>> Tokenize(const v1::TokenizeRequest& request,
                                                absl::Duration timeout = absl::Seconds(30));
  // Sessions: CreateSession returns once the document is prefilled (its timeout covers that).
  absl::StatusOr<v1::CreateSessionResponse> CreateSession(const v1::CreateSessionRequest& request,
                                                          absl::Duration timeout = absl::Minutes(30));
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(absl::Duration timeout = absl::Seconds(10));
  absl::Status CloseSession(const std::string& session_id, absl::Duration timeout = absl::Seconds(10));

 private:
  void Authorize(grpc::ClientContext& context) const;
  // One unary call with the token and a deadline `timeout` from now.
  template <typename Stub, typename Request, typename Response>
  absl::Status Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*), Stub& stub,
                    const Request& request, Response* response, absl::Duration timeout) const {
    grpc::ClientContext context;
    Authorize(context);
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    grpc::Status status = (stub.*method)(&context, request, response);
    return FromGrpcWithDetails(status);
  }
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::string bearer_token_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace latentserve::client
