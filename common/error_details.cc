#include "common/error_details.h"

#include <algorithm>
#include <utility>

#include "absl/strings/cord.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace latentserve {
namespace {

constexpr char kErrorInfoUrl[] = "type.googleapis.com/google.rpc.ErrorInfo";
constexpr char kRetryInfoUrl[] = "type.googleapis.com/google.rpc.RetryInfo";
// A peer's trailer is bounded by gRPC's metadata limit already; these bound the work on it.
constexpr int kMaxDetails = 16;
constexpr int kMaxMetadataEntries = 64;
constexpr absl::Duration kMaxRetryDelay = absl::Hours(24);

bool ValidReason(const std::string& reason) {
  if (reason.empty() || reason.size() > 63) return false;
  for (char c : reason) {
    if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

std::string SerializedErrorInfo(const ErrorDetails& details) {
  google::rpc::ErrorInfo info;
  info.set_reason(details.reason);
  info.set_domain(details.domain);
  for (const auto& [key, value] : details.metadata) (*info.mutable_metadata())[key] = value;
  return info.SerializeAsString();
}

std::string SerializedRetryInfo(absl::Duration delay) {
  google::rpc::RetryInfo info;
  delay = std::max(delay, absl::ZeroDuration());
  const int64_t seconds = absl::IDivDuration(delay, absl::Seconds(1), &delay);
  info.mutable_retry_delay()->set_seconds(seconds);
  info.mutable_retry_delay()->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(delay)));
  return info.SerializeAsString();
}

// Reads one detail (type URL + bytes) into `out`; unknown types and bad bytes are skipped.
void ReadDetail(const std::string& type_url, const std::string& value, ErrorDetails* out) {
  if (type_url == kErrorInfoUrl && out->reason.empty()) {
    google::rpc::ErrorInfo info;
    if (!info.ParseFromString(value) || !ValidReason(info.reason())) return;
    if (info.metadata_size() > kMaxMetadataEntries) return;
    out->reason = info.reason();
    out->domain = info.domain();
    out->metadata.insert(info.metadata().begin(), info.metadata().end());
  } else if (type_url == kRetryInfoUrl && !out->retry_delay) {
    google::rpc::RetryInfo info;
    if (!info.ParseFromString(value)) return;
    const int64_t seconds = info.retry_delay().seconds();
    const int32_t nanos = info.retry_delay().nanos();
    // Checked before any arithmetic: seconds is the peer's int64.
    if (seconds < 0 || seconds > absl::ToInt64Seconds(kMaxRetryDelay) || nanos < 0 || nanos > 999999999) return;
    const absl::Duration delay = absl::Seconds(seconds) + absl::Nanoseconds(nanos);
    if (delay > kMaxRetryDelay) return;
    out->retry_delay = delay;
  }
}

}  // namespace

ErrorDetails Details(std::string reason, std::map<std::string, std::string> metadata,
                     std::optional<absl::Duration> retry_delay) {
  ErrorDetails details;
  details.reason = std::move(reason);
  details.metadata = std::move(metadata);
  details.retry_delay = retry_delay;
  return details;
}

grpc::Status ErrorStatus(grpc::StatusCode code, std::string message, const ErrorDetails& details) {
  if (code == grpc::StatusCode::OK || details.empty()) return grpc::Status(code, std::move(message));
  google::rpc::Status status;
  status.set_code(static_cast<int32_t>(code));
  status.set_message(message);
  if (!details.reason.empty()) {
    google::protobuf::Any* any = status.add_details();
    any->set_type_url(kErrorInfoUrl);
    any->set_value(SerializedErrorInfo(details));
  }
  if (details.retry_delay) {
    google::protobuf::Any* any = status.add_details();
    any->set_type_url(kRetryInfoUrl);
    any->set_value(SerializedRetryInfo(*details.retry_delay));
  }
  return grpc::Status(code, std::move(message), status.SerializeAsString());
}

absl::Status WithDetails(absl::Status status, const ErrorDetails& details) {
  if (status.ok()) return status;
  status.ErasePayload(kErrorInfoUrl);
  status.ErasePayload(kRetryInfoUrl);
  if (!details.reason.empty()) status.SetPayload(kErrorInfoUrl, absl::Cord(SerializedErrorInfo(details)));
  if (details.retry_delay) status.SetPayload(kRetryInfoUrl, absl::Cord(SerializedRetryInfo(*details.retry_delay)));
  return status;
}

grpc::Status ToGrpcWithDetails(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return ErrorStatus(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()), DetailsOf(status));
}

absl::Status FromGrpcWithDetails(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return WithDetails(absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message()),
                     DetailsOf(status));
}

ErrorDetails DetailsOf(const grpc::Status& status) {
  ErrorDetails details;
  details.domain.clear();
  if (status.ok() || status.error_details().empty()) return details;
  google::rpc::Status parsed;
  if (!parsed.ParseFromString(status.error_details())) return details;
  for (int i = 0; i < parsed.details_size() && i < kMaxDetails; ++i) {
    ReadDetail(parsed.details(i).type_url(), parsed.details(i).value(), &details);
  }
  return details;
}

ErrorDetails DetailsOf(const absl::Status& status) {
  ErrorDetails details;
  details.domain.clear();
  for (const char* url : {kErrorInfoUrl, kRetryInfoUrl}) {
    if (auto payload = status.GetPayload(url)) ReadDetail(url, std::string(*payload), &details);
  }
  return details;
}

}  // namespace latentserve
