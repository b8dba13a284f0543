#include "router/generation_service.h"

#include <unistd.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/error_details.h"
#include "common/grpc_status.h"
#include "common/secure_random.h"
#include "router/generate_call.h"
#include "router/lease_keeper.h"
#include "router/request_checks.h"
#include "router/text_codec.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::router {

RouterState::RouterState(RouterOptions options)
    : options_(std::move(options)),
      request_id_prefix_(SecureRandomHex(4).value_or(absl::StrCat(getpid()))),
      registry_(absl::Milliseconds(250), options_.registry),
      lease_keeper_(std::make_unique<LeaseKeeper>(options_.lease_ttl, options_.control_timeout)) {
  session_reaper_ = std::thread([this] { SessionReaperLoop(); });
}

RouterState::~RouterState() {
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  session_reaper_.join();
}

const TextCodec* RouterState::codec() {
  std::lock_guard<std::mutex> lock(codec_mu_);
  if (codec_ || codec_tried_) return codec_.get();
  std::string path = options_.model_path;
  if (path.empty()) {
    auto model = registry_.Model();
    if (!model) return nullptr;  // try again once a worker has registered
    path = model->path();
  }
  codec_tried_ = true;
  auto codec = TextCodec::Load(path);
  if (codec.ok()) {
    codec_ = std::move(*codec);
  } else {
    std::fprintf(stderr, "router: no tokenizer (%s): text prompts are refused\n",
                 std::string(codec.status().message()).c_str());
  }
  return codec_.get();
}

grpc::Status GenerationService::StreamLimitRejected(const std::string& client, const std::string& request_id) {
  serving::Metrics& metrics = serving::Metrics::Get();
  metrics.router_stream_limit_rejections_total.Increment();
  metrics.CountRouterRequest(grpc::StatusCode::RESOURCE_EXHAUSTED);
  serving::LogEvent(serving::LogLevel::kWarning, "router", "request_rejected", request_id,
                    {{"client", client}, {"code", "RESOURCE_EXHAUSTED"}, {"reason", "stream limit"}});
  return ErrorStatus(grpc::StatusCode::RESOURCE_EXHAUSTED,
                     absl::StrCat("this client already has ", stream_limiter_.max_per_client(),
                                  " Generate streams open (the per-client limit); retry when one ends"),
                     Details(error_reason::kStreamLimitExceeded,
                             {{"limit", absl::StrCat(stream_limiter_.max_per_client())}}, kRetryDelay));
}

grpc::Status GenerationService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  serving::Metrics& metrics = serving::Metrics::Get();
  const absl::Time start = absl::Now();
  const std::string client = serving::ClientIdentity(*context);
  std::string request_id = request->request_id();
  if (!stream_limiter_.TryAcquire(client)) return StreamLimitRejected(client, request_id);
  metrics.router_requests_in_flight.Increment();
  grpc::Status status;
  {
    GenerateCall call(state_, context, *request, writer);
    status = call.Run();
    request_id = call.request_id();
  }
  metrics.router_requests_in_flight.Decrement();
  stream_limiter_.Release(client);
  metrics.CountRouterRequest(status.error_code());
  const bool server_fault = status.error_code() == grpc::StatusCode::INTERNAL ||
                            status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                            status.error_code() == grpc::StatusCode::UNKNOWN;
  serving::LogEvent(status.ok() ? serving::LogLevel::kInfo
                                : server_fault ? serving::LogLevel::kError : serving::LogLevel::kWarning,
                    "router", "request_finished", request_id,
                    {{"client", client},
                     {"code", serving::GrpcCodeName(status.error_code())},
                     {"duration_ms", absl::ToDoubleMilliseconds(absl::Now() - start)},
                     {"message", status.ok() ? "" : status.error_message()}});
  return status;
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  v1::GenerateRequest as_generate;
  if (request->has_chat()) {
    *as_generate.mutable_chat() = request->chat();
  } else {
    as_generate.set_text(request->text());
  }
  auto tokens = PromptTokens(state_, as_generate);  // --max-prompt-bytes, as for Generate
  if (!tokens.ok()) return ToGrpcWithDetails(tokens.status());
  if (absl::Status length = CheckPromptTokens(state_, *tokens); !length.ok()) return ToGrpcWithDetails(length);
  for (int32_t id : *tokens) response->add_token_ids(id);
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                                             v1::GetModelInfoResponse* response) {
  if (auto model = state_.registry().Model()) {
    response->set_model_name(model->name());
    response->set_model_fingerprint(model->fingerprint());
    response->set_vocab_size(model->vocab_size());
  }
  response->set_max_context_tokens(state_.registry().MaxContextTokens());
  response->set_has_tokenizer(state_.codec() != nullptr);
  for (const WorkerEntry& entry : state_.registry().Snapshot()) {
    v1::WorkerInfo* info = response->add_workers();
    *info = entry.stats;
    info->set_address(entry.address);
    info->set_role(entry.role);
    info->set_alive(entry.alive);
  }
  response->set_router_leases_active(state_.leases_active.load());
  return grpc::Status::OK;
}

grpc::Status RegistryService::RegisterWorker(grpc::ServerContext* context, const internal::v1::RegisterWorkerRequest* request,
                                             internal::v1::RegisterWorkerResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "WorkerRegistry.RegisterWorker"); !denied.ok()) return denied;
  absl::Status status = state_.registry().Register(*request);
  if (!status.ok()) return ToGrpc(status);
  serving::LogEvent("router", "worker_registered", "", {{"worker", request->address()}, {"role", request->role()}});
  response->set_heartbeat_interval_ms(1000);
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeat(grpc::ServerContext* context, const internal::v1::HeartbeatRequest* request,
                                        internal::v1::HeartbeatResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "WorkerRegistry.Heartbeat"); !denied.ok()) return denied;
  return ToGrpc(state_.registry().Heartbeat(*request));
}

}  // namespace latentserve::router
