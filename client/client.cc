#include "client/client.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
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
  if (!status.ok()) return FromGrpc(status);
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

const char* StatusCodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kUnknown: return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound: return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted: return "ABORTED";
    case absl::StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss: return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

const char* FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

std::string JsonString(const std::string& bytes) {
  std::string out = "\"";
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            out += absl::StrFormat("\\u%04x", c);
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    // Validate one UTF-8 sequence; copy it or emit U+FFFD.
    int len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    bool ok = len > 0 && i + len <= bytes.size();
    for (int k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(bytes[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  out += '"';
  return out;
}

}  // namespace latentserve::client
