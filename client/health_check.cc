#include "client/health_check.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/grpc_status.h"

namespace latentserve::client {
namespace {

// HealthCheckRequest { string service = 1; }
std::string EncodeRequest(const std::string& service) {
  std::string out;
  if (service.empty()) return out;
  out.push_back(0x0a);  // field 1, length-delimited
  for (size_t n = service.size(); ; n >>= 7) {
    if (n < 0x80) {
      out.push_back(static_cast<char>(n));
      break;
    }
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return out + service;
}

// HealthCheckResponse { ServingStatus status = 1; }: the enum's value, 0 when absent.
absl::StatusOr<uint64_t> DecodeStatus(const std::string& bytes) {
  uint64_t status = 0;
  size_t i = 0;
  const auto varint = [&](uint64_t* value) {
    *value = 0;
    for (int shift = 0; i < bytes.size() && shift < 64; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(bytes[i++]);
      *value |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  while (i < bytes.size()) {
    uint64_t key = 0, value = 0;
    if (!varint(&key)) return absl::DataLossError("malformed health response");
    switch (key & 7) {
      case 0:
        if (!varint(&value)) return absl::DataLossError("malformed health response");
        if (key >> 3 == 1) status = value;
        break;
      case 2:
        if (!varint(&value) || value > bytes.size() - i) return absl::DataLossError("malformed health response");
        i += value;
        break;
      default:
        return absl::DataLossError("unexpected field in health response");
    }
  }
  return status;
}

}  // namespace

absl::StatusOr<std::string> CheckHealth(const std::string& target,
                                        std::shared_ptr<grpc::ChannelCredentials> credentials,
                                        const std::string& service, absl::Duration timeout) {
  grpc::GenericStub stub(grpc::CreateChannel(target, std::move(credentials)));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const std::string request_bytes = EncodeRequest(service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || !ok) return absl::UnavailableError("health check did not complete");
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return FromGrpc(status);
  grpc::Slice joined;
  std::string bytes;
  if (response.Length() > 0) {
    if (!response.TrySingleSlice(&joined).ok() && !response.DumpToSingleSlice(&joined).ok()) {
      return absl::DataLossError("unreadable health response");
    }
    bytes.assign(reinterpret_cast<const char*>(joined.begin()), joined.size());
  }
  ASSIGN_OR_RETURN(uint64_t code, DecodeStatus(bytes));
  switch (code) {
    case 1: return std::string("SERVING");
    case 2: return std::string("NOT_SERVING");
    case 3: return std::string("SERVICE_UNKNOWN");
    default: return std::string("UNKNOWN");
  }
}

}  // namespace latentserve::client
