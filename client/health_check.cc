#include "client/health_check.h"

#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace latentserve::client {

absl::StatusOr<std::string> CheckHealth(const std::string& target,
                                        std::shared_ptr<grpc::ChannelCredentials> credentials,
                                        const std::string& service, absl::Duration timeout) {
  using grpc::health::v1::HealthCheckResponse;
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateChannel(target, std::move(credentials)));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  const std::string& name = HealthCheckResponse::ServingStatus_Name(response.status());
  return name.empty() ? std::string("UNKNOWN") : name;  // a value newer than this proto
}

}  // namespace latentserve::client
