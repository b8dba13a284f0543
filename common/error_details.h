// Typed error details: the standard gRPC rich error model. A failed call carries, besides
// its code and message, a serialised google.rpc.Status in the `grpc-status-details-bin`
// trailer whose details are a google.rpc.ErrorInfo {reason, domain "latentserve.ai",
// metadata} and, where waiting helps, a google.rpc.RetryInfo {retry_delay}
// (proto/google/rpc). Any gRPC client's standard decoder reads them; docs/serving.md
// ("Errors") lists the reasons, their codes and which carry RetryInfo.
//
// Engine-side checks return absl::Status: there the same details ride as payloads keyed by
// their type URL (WithDetails), and ToGrpcWithDetails / FromGrpcWithDetails carry them
// across the gRPC boundary. The C++ client links this (gRPC, protobuf and the public proto
// only), never serving/.
#pragma once

#include <map>
#include <optional>
#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace latentserve {

inline constexpr char kErrorDomain[] = "latentserve.ai";

// ErrorInfo.reason values latentserve sends (docs/serving.md, "Errors").
namespace error_reason {
inline constexpr char kStreamLimitExceeded[] = "STREAM_LIMIT_EXCEEDED";          // RESOURCE_EXHAUSTED, retry
inline constexpr char kDecodeCapacityExhausted[] = "DECODE_CAPACITY_EXHAUSTED";  // RESOURCE_EXHAUSTED, retry
inline constexpr char kNoWorkers[] = "NO_WORKERS";                              // UNAVAILABLE, retry
inline constexpr char kRouterDraining[] = "ROUTER_DRAINING";                    // UNAVAILABLE, retry
inline constexpr char kNoPrefillWorker[] = "NO_PREFILL_WORKER";                 // UNAVAILABLE, retry
inline constexpr char kWorkerUnavailable[] = "WORKER_UNAVAILABLE";              // UNAVAILABLE, retry
inline constexpr char kPrefillFailed[] = "PREFILL_FAILED";                      // the prefill worker's code
inline constexpr char kDecodeFailed[] = "DECODE_FAILED";                        // the decode worker's code
inline constexpr char kHandoffTransferFailed[] = "HANDOFF_TRANSFER_FAILED";     // the transfer's code
inline constexpr char kPromptTooLong[] = "PROMPT_TOO_LONG";                     // INVALID_ARGUMENT
inline constexpr char kContextLimitExceeded[] = "CONTEXT_LIMIT_EXCEEDED";       // INVALID_ARGUMENT
inline constexpr char kFieldInvalid[] = "FIELD_INVALID";                        // INVALID_ARGUMENT
inline constexpr char kModelNotFound[] = "MODEL_NOT_FOUND";                     // NOT_FOUND
inline constexpr char kTokenizerMissing[] = "TOKENIZER_MISSING";                // UNIMPLEMENTED
inline constexpr char kPrefillCacheTooSmall[] = "PREFILL_CACHE_TOO_SMALL";      // FAILED_PRECONDITION
inline constexpr char kDeadlineExceeded[] = "DEADLINE_EXCEEDED";                // DEADLINE_EXCEEDED
inline constexpr char kRequestCancelled[] = "REQUEST_CANCELLED";                // CANCELLED
inline constexpr char kSessionNotFound[] = "SESSION_NOT_FOUND";                 // NOT_FOUND
inline constexpr char kSessionLimitExceeded[] = "SESSION_LIMIT_EXCEEDED";       // RESOURCE_EXHAUSTED
}  // namespace error_reason

// What a google.rpc.Status's details say, as far as latentserve reads them.
struct ErrorDetails {
  std::string reason;                            // ErrorInfo.reason; empty: no ErrorInfo
  std::string domain = kErrorDomain;             // ErrorInfo.domain
  std::map<std::string, std::string> metadata;   // ErrorInfo.metadata
  std::optional<absl::Duration> retry_delay;     // RetryInfo.retry_delay; unset: no RetryInfo
  bool empty() const { return reason.empty() && !retry_delay.has_value(); }
};

// A details object with reason, metadata and an optional retry delay (the common case).
ErrorDetails Details(std::string reason, std::map<std::string, std::string> metadata = {},
                     std::optional<absl::Duration> retry_delay = std::nullopt);

// A grpc::Status `code` / `message` whose error_details() is google.rpc.Status {code, message,
// [ErrorInfo, RetryInfo]} (an empty `details` adds nothing). `code` must not be OK.
grpc::Status ErrorStatus(grpc::StatusCode code, std::string message, const ErrorDetails& details);

// `status` with the details attached as absl payloads (replacing any it had). OK stays OK.
absl::Status WithDetails(absl::Status status, const ErrorDetails& details);

// absl::Status -> grpc::Status, its payloads becoming google.rpc.Status details (as ToGrpc
// in common/grpc_status.h otherwise), and back.
grpc::Status ToGrpcWithDetails(const absl::Status& status);
absl::Status FromGrpcWithDetails(const grpc::Status& status);

// The details a status carries. Missing, malformed or out-of-spec bytes read as no details
// (a reason that is not [A-Z0-9_]{1,63}, a negative or absurd retry delay): the trailer
// comes from the peer and is not trusted.
ErrorDetails DetailsOf(const grpc::Status& status);
ErrorDetails DetailsOf(const absl::Status& status);

}  // namespace latentserve
