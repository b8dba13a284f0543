// common/error_details.h: google.rpc.Status details on gRPC and absl statuses, read back as a
// standard decoder would, and hostile trailer bytes read as "no details".
#include "common/error_details.h"

#include <string>

#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace latentserve {
namespace {

grpc::Status WithRawDetails(const std::string& bytes) {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down", bytes);
}

// A google.rpc.Status with one detail of `type_url` holding `value`.
constexpr char kErrorInfo[] = "type.googleapis.com/google.rpc.ErrorInfo";

std::string OneDetail(const std::string& type_url, const std::string& value) {
  google::rpc::Status status;
  status.set_code(static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  google::protobuf::Any* any = status.add_details();
  any->set_type_url(type_url);
  any->set_value(value);
  return status.SerializeAsString();
}

TEST(ErrorDetails, GrpcRoundTrip) {
  const grpc::Status status =
      ErrorStatus(grpc::StatusCode::RESOURCE_EXHAUSTED, "too many streams",
                  Details(error_reason::kStreamLimitExceeded, {{"limit", "2"}}, absl::Milliseconds(1500)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "too many streams");
  const ErrorDetails details = DetailsOf(status);
  EXPECT_EQ(details.reason, "STREAM_LIMIT_EXCEEDED");
  EXPECT_EQ(details.domain, "latentserve.ai");
  EXPECT_EQ(details.metadata.at("limit"), "2");
  ASSERT_TRUE(details.retry_delay.has_value());
  EXPECT_EQ(*details.retry_delay, absl::Milliseconds(1500));
}

// What any client's standard decoder sees: google.rpc.Status with Any-packed ErrorInfo and
// RetryInfo under their googleapis type URLs, code and message as the status's.
TEST(ErrorDetails, StandardDecoderReadsThem) {
  const grpc::Status status = ErrorStatus(grpc::StatusCode::UNAVAILABLE, "no workers",
                                          Details(error_reason::kNoWorkers, {}, absl::Seconds(2)));
  google::rpc::Status decoded;
  ASSERT_TRUE(decoded.ParseFromString(status.error_details()));
  EXPECT_EQ(decoded.code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  EXPECT_EQ(decoded.message(), "no workers");
  ASSERT_EQ(decoded.details_size(), 2);
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(decoded.details(0).Is<google::rpc::ErrorInfo>());
  ASSERT_TRUE(decoded.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "NO_WORKERS");
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(decoded.details(1).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds(), 2);
  EXPECT_EQ(retry.retry_delay().nanos(), 0);
}

TEST(ErrorDetails, NoRetryInfoUnlessGiven) {
  const grpc::Status status = ErrorStatus(grpc::StatusCode::INVALID_ARGUMENT, "bad",
                                          Details(error_reason::kFieldInvalid, {{"field", "sampling"}}));
  const ErrorDetails details = DetailsOf(status);
  EXPECT_EQ(details.reason, "FIELD_INVALID");
  EXPECT_FALSE(details.retry_delay.has_value());
  // Without details the status is a plain one: no trailer at all.
  EXPECT_TRUE(ErrorStatus(grpc::StatusCode::INTERNAL, "x", ErrorDetails{}).error_details().empty());
  EXPECT_TRUE(DetailsOf(grpc::Status(grpc::StatusCode::INTERNAL, "x")).empty());
}

TEST(ErrorDetails, AbslPayloadsCrossTheGrpcBoundary) {
  const absl::Status engine = WithDetails(absl::InvalidArgumentError("prompt of 9 tokens exceeds 8"),
                                          Details(error_reason::kPromptTooLong, {{"limit_tokens", "8"}}));
  EXPECT_EQ(DetailsOf(engine).reason, "PROMPT_TOO_LONG");
  const grpc::Status wire = ToGrpcWithDetails(engine);
  EXPECT_EQ(wire.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(wire.error_message(), "prompt of 9 tokens exceeds 8");
  EXPECT_EQ(DetailsOf(wire).metadata.at("limit_tokens"), "8");
  const absl::Status back = FromGrpcWithDetails(wire);
  EXPECT_EQ(back.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DetailsOf(back).reason, "PROMPT_TOO_LONG");
  EXPECT_FALSE(DetailsOf(back).retry_delay.has_value());
  // OK stays OK, without payloads.
  EXPECT_TRUE(WithDetails(absl::OkStatus(), Details(error_reason::kNoWorkers)).ok());
  EXPECT_TRUE(ToGrpcWithDetails(absl::OkStatus()).ok());
}

TEST(ErrorDetails, MalformedBytesReadAsNoDetails) {
  for (const std::string& bytes : {std::string("\xff\xff\xff\xff", 4), std::string("\x1a\x80\x80\x80\x80\x10", 6),
                                  std::string("garbage trailer"), std::string(1, '\0')}) {
    const ErrorDetails details = DetailsOf(WithRawDetails(bytes));
    EXPECT_TRUE(details.empty()) << details.reason;
  }
  // A truncated real one.
  const std::string good =
      ErrorStatus(grpc::StatusCode::UNAVAILABLE, "m", Details(error_reason::kNoWorkers, {}, absl::Seconds(1)))
          .error_details();
  for (size_t cut = 0; cut < good.size(); ++cut) {
    const ErrorDetails details = DetailsOf(WithRawDetails(good.substr(0, cut)));
    if (!details.reason.empty()) {
      EXPECT_EQ(details.reason, "NO_WORKERS");  // a whole ErrorInfo survived the cut
    }
  }
  // A detail whose bytes do not parse as the type its URL names.
  EXPECT_TRUE(DetailsOf(WithRawDetails(OneDetail("type.googleapis.com/google.rpc.ErrorInfo", "\xff\xff"))).empty());
}

TEST(ErrorDetails, OutOfSpecDetailsAreIgnored) {
  google::rpc::ErrorInfo info;
  info.set_reason("lower case; not a reason");
  EXPECT_TRUE(DetailsOf(WithRawDetails(OneDetail(kErrorInfo, info.SerializeAsString()))).empty());
  info.set_reason(std::string(64, 'A'));  // longer than 63
  EXPECT_TRUE(DetailsOf(WithRawDetails(OneDetail(kErrorInfo, info.SerializeAsString()))).empty());
  for (const auto& [seconds, nanos] : {std::pair<int64_t, int32_t>{-1, 0}, {0, -5}, {0, 1000000000},
                                       {INT64_MAX, 0}, {INT64_MIN, 0}, {100 * 86400, 0}}) {
    google::rpc::RetryInfo retry;
    retry.mutable_retry_delay()->set_seconds(seconds);
    retry.mutable_retry_delay()->set_nanos(nanos);
    const ErrorDetails details =
        DetailsOf(WithRawDetails(OneDetail("type.googleapis.com/google.rpc.RetryInfo", retry.SerializeAsString())));
    EXPECT_FALSE(details.retry_delay.has_value()) << seconds << "s " << nanos << "ns";
  }
  // Unknown detail types are skipped, and the known ones after them still read.
  google::rpc::Status status;
  status.add_details()->set_type_url("type.googleapis.com/google.rpc.DebugInfo");
  google::protobuf::Any* any = status.add_details();
  info.set_reason("NO_WORKERS");
  any->PackFrom(info);
  EXPECT_EQ(DetailsOf(WithRawDetails(status.SerializeAsString())).reason, "NO_WORKERS");
}

}  // namespace
}  // namespace latentserve
