#include "router/generation_service.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <memory>
#include <set>
#include <thread>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/secure_random.h"
#include "common/status.h"
#include "router/channels.h"
#include "router/lease_keeper.h"
#include "router/request_checks.h"
#include "router/text_codec.h"
#include "router/worker_calls.h"
#include "serving/metrics.h"
#include "serving/security.h"
#include "common/grpc_status.h"

namespace latentserve::router {
namespace {

// The finish reason as the metrics label (and the OpenAI-style name).
const char* FinishReasonLabel(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_STOP_TOKEN: return "stop_token";
    case v1::FINISH_REASON_STOP_STRING: return "stop_string";
    default: return "unspecified";
  }
}

}  // namespace


RouterState::RouterState(RouterOptions options)
    : options_(std::move(options)),
      request_id_prefix_(SecureRandomHex(4).value_or(absl::StrCat(getpid()))),
      registry_(absl::Milliseconds(250), options_.registry),
      lease_keeper_(std::make_unique<LeaseKeeper>(options_.lease_ttl, options_.control_timeout)) {}
RouterState::~RouterState() = default;

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

grpc::Status GenerationService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  serving::Metrics& metrics = serving::Metrics::Get();
  const absl::Time start = absl::Now();
  const std::string client = serving::ClientIdentity(*context);
  std::string request_id = request->request_id();
  if (!stream_limiter_.TryAcquire(client)) {
    metrics.router_stream_limit_rejections_total.Increment();
    metrics.CountRouterRequest(grpc::StatusCode::RESOURCE_EXHAUSTED);
    serving::LogEvent(serving::LogLevel::kWarning, "router", "request_rejected", request_id,
                      {{"client", client}, {"code", "RESOURCE_EXHAUSTED"}, {"reason", "stream limit"}});
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("this client already has ", stream_limiter_.max_per_client(),
                                     " Generate streams open (the per-client limit); retry when one ends"));
  }
  metrics.router_requests_in_flight.Increment();
  grpc::Status status = GenerateStream(context, request, writer, &request_id);
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

grpc::Status GenerationService::GenerateStream(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                               grpc::ServerWriter<v1::GenerateResponse>* writer,
                                               std::string* request_id_out) {
  serving::Metrics& metrics = serving::Metrics::Get();
  const absl::Time start = absl::Now();
  if (state_.draining()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "router is draining; retry elsewhere");
  auto model = state_.registry().Model();
  if (!model || !state_.registry().AnyAlive("decode") || !state_.registry().AnyAlive("prefill")) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "no live prefill and decode workers are registered with this router yet");
  }
  auto tokens_or = PromptTokens(state_, *request);
  if (!tokens_or.ok()) return ToGrpc(tokens_or.status());
  const std::vector<int32_t>& tokens = *tokens_or;
  if (absl::Status status = ValidateRequest(state_, *request, tokens, *model); !status.ok()) return ToGrpc(status);

  const int64_t max_tokens = request->stopping().max_tokens();
  const std::string request_id =
      request->request_id().empty() ? absl::StrCat("req-", state_.request_id_prefix(), "-", state_.next_request++)
                                    : request->request_id();
  *request_id_out = request_id;
  serving::LogEvent("router", "request_started", request_id,
                    {{"prompt_tokens", tokens.size()}, {"max_tokens", max_tokens}});
  metrics.prompt_tokens.Observe(static_cast<double>(tokens.size()));
  absl::Time deadline = start + state_.options().request_timeout;
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    deadline = std::min(deadline, absl::FromChrono(context->deadline()));
  }
  std::set<int32_t> stop_ids(request->stopping().stop_token_ids().begin(), request->stopping().stop_token_ids().end());
  const TextCodec* codec = state_.codec();
  if (!request->stopping().ignore_eos() && codec && codec->eos_id() >= 0) stop_ids.insert(codec->eos_id());

  CancelLink cancel(context);
  const auto client_gone = [&] { return cancel.cancelled() || context->IsCancelled(); };

  // 1. Reserve pages on a decode worker for the whole prompt + max_tokens; 2. prefill into
  // that lease. A handoff lost to the decode worker (process gone, lease lost) happens
  // before the client has any token, so it is retried on another decode worker.
  std::set<std::string> decode_refused;
  std::unique_ptr<DecodeLease> lease;
  v1::PrefillDone prefill_done;
  std::string prefill_worker;
  int64_t cache_bytes = 0;
  // Places `context` (the prompt, plus what was generated when resuming) with room for
  // `remaining` more tokens and prefills it; relays prefill progress only the first time.
  const auto place = [&](const std::vector<int32_t>& context, int64_t remaining, bool relay_progress) {
    const int64_t context_tokens = static_cast<int64_t>(context.size()) + remaining;
    const int64_t lease_tokens =
        state_.options().reserve_max_tokens
            ? context_tokens
            : std::min(context_tokens, static_cast<int64_t>(context.size()) + kDecodeHeadroomTokens);
    for (int decode_attempt = 1;; ++decode_attempt) {
      grpc::Status reserved = ReserveDecodeLease(state_, *model, request_id, context_tokens, lease_tokens, deadline,
                                                 decode_refused, cancel, client_gone, &lease);
      if (!reserved.ok()) return reserved;
      PrefillOutcome outcome = RunPrefill(state_, *request, *model, request_id, context, *lease, deadline, cancel,
                                          client_gone, writer, relay_progress, &prefill_done, &prefill_worker);
      if (!outcome.handoff_lost) {
        if (outcome.status.ok()) cache_bytes += prefill_done.cache_bytes();
        return outcome.status;
      }
      const grpc::StatusCode code = outcome.status.error_code();
      if (code == grpc::StatusCode::UNAVAILABLE) state_.registry().MarkDead(lease->worker());
      const bool retryable = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::ABORTED;
      if (!retryable || decode_attempt >= kMaxDecodeAttempts || absl::Now() >= deadline) return outcome.status;
      metrics.CountFailover("handoff");
      serving::LogEvent(serving::LogLevel::kWarning, "router", "handoff_retry", request_id,
                        {{"decode_worker", lease->worker()}, {"error", outcome.status.error_message()}});
      decode_refused.insert(lease->worker());
      lease.reset();  // best-effort release; the worker may be gone
    }
  };
  if (grpc::Status placed = place(tokens, max_tokens, true); !placed.ok()) return placed;

  // 3. The first token, then the decode worker's stream.
  std::unique_ptr<TextCodec::Stream> detok = codec ? codec->NewStream() : nullptr;
  StopMatcher stop_matcher({request->stopping().stop_strings().begin(), request->stopping().stop_strings().end()});
  int64_t completion_tokens = 0;
  std::vector<int32_t> generated;  // every token sent to the client, for a resume
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  absl::Time first_token_at, last_token_at;
  // Emits tokens to the client; returns false when the client is gone.
  const auto emit = [&](const std::vector<int32_t>& ids) {
    const int64_t completion_tokens_before = completion_tokens;
    v1::GenerateResponse out;
    auto* chunk = out.mutable_tokens();
    for (int32_t id : ids) {
      if (reason != v1::FINISH_REASON_UNSPECIFIED) break;
      chunk->add_token_ids(id);
      generated.push_back(id);
      completion_tokens++;
      if (detok) {
        bool matched = false;
        chunk->mutable_text()->append(stop_matcher.Push(detok->Push(id), &matched));
        if (matched) reason = v1::FINISH_REASON_STOP_STRING;
      }
      if (reason == v1::FINISH_REASON_UNSPECIFIED && stop_ids.count(id)) reason = v1::FINISH_REASON_STOP_TOKEN;
      if (reason == v1::FINISH_REASON_UNSPECIFIED && completion_tokens >= max_tokens) reason = v1::FINISH_REASON_LENGTH;
    }
    if (detok && reason != v1::FINISH_REASON_UNSPECIFIED && reason != v1::FINISH_REASON_STOP_STRING) {
      bool flushed_match = false;
      chunk->mutable_text()->append(stop_matcher.Push(detok->Flush(), &flushed_match));
      chunk->mutable_text()->append(stop_matcher.Flush());
    }
    if (!chunk->text().empty()) *chunk->mutable_text() = ValidUtf8(chunk->text());
    const absl::Time now = absl::Now();
    if (completion_tokens_before > 0 && chunk->token_ids_size() > 0) {
      const double gap = absl::ToDoubleSeconds(now - last_token_at) / chunk->token_ids_size();
      for (int i = 0; i < chunk->token_ids_size(); ++i) metrics.inter_token_seconds.Observe(gap);
    }
    last_token_at = now;
    return writer->Write(out);
  };
  first_token_at = absl::Now();
  metrics.ttft_seconds.Observe(absl::ToDoubleSeconds(first_token_at - start));
  if (!emit({prefill_done.first_token()})) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");

  // A decode worker lost mid-stream is replaced: the prompt plus every token already sent is
  // prefilled again into a lease on another decode worker, whose first token is the next
  // one, and decoding goes on there (greedy output is unchanged; seeded sampling restarts
  // its random stream at the resume point).
  int resumes = 0;
  while (reason == v1::FINISH_REASON_UNSPECIFIED) {
    const std::string decode_worker = lease->worker();
    auto stub = v1::DecodeWorker::NewStub(ChannelTo(decode_worker));
    grpc::ClientContext decode_context;
    serving::AttachInternalCredential(decode_context);
    SetDeadline(decode_context, deadline);
    v1::DecodeRequest decode_request;
    decode_request.set_request_id(request_id);
    decode_request.set_lease_id(lease->id());
    *decode_request.mutable_sampling() = request->sampling();
    decode_request.set_max_new_tokens(static_cast<int32_t>(max_tokens - completion_tokens));
    for (int32_t id : stop_ids) decode_request.add_stop_token_ids(id);
    cancel.Attach(&decode_context, state_.options().decode_progress_timeout);
    lease->HandToDecode();  // Decode frees the pages on every path from here
    auto reader = stub->Decode(&decode_context, decode_request);
    v1::DecodeResponse event;
    bool client_write_failed = false;
    while (reason == v1::FINISH_REASON_UNSPECIFIED && reader->Read(&event)) {
      cancel.Progress();
      if (event.token_ids_size() > 0 &&
          !emit(std::vector<int32_t>(event.token_ids().begin(), event.token_ids().end()))) {
        client_write_failed = true;
      }
      if (reason == v1::FINISH_REASON_UNSPECIFIED && event.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        reason = event.finish_reason();
      }
      if (client_write_failed) break;
    }
    if (reason != v1::FINISH_REASON_UNSPECIFIED || client_write_failed) decode_context.TryCancel();
    grpc::Status status = reader->Finish();
    const bool stalled = cancel.stalled();
    cancel.Detach();
    if (client_gone() || client_write_failed) return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    if (reason != v1::FINISH_REASON_UNSPECIFIED) break;
    if (stalled) {
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            absl::StrCat("no token for ", absl::FormatDuration(state_.options().decode_progress_timeout),
                                         " (--decode-progress-timeout-ms)"));
    }
    if (status.ok()) status = grpc::Status(grpc::StatusCode::INTERNAL, "decode stream ended without a finish reason");
    const grpc::Status failed(status.error_code(),
                              absl::StrCat("decode worker ", decode_worker, " failed: ", status.error_message()));
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return failed;
    state_.registry().MarkDead(decode_worker);
    if (++resumes > kMaxDecodeAttempts || absl::Now() >= deadline) return failed;
    metrics.CountFailover("decode");
    serving::LogEvent(serving::LogLevel::kWarning, "router", "decode_resume", request_id,
                      {{"decode_worker", decode_worker}, {"generated", completion_tokens}});
    decode_refused.insert(decode_worker);
    lease.reset();
    std::vector<int32_t> context = tokens;
    context.insert(context.end(), generated.begin(), generated.end());
    if (grpc::Status placed = place(context, max_tokens - completion_tokens, false); !placed.ok()) {
      return grpc::Status(placed.error_code(), absl::StrCat(failed.error_message(), "; resuming elsewhere failed: ",
                                                            placed.error_message()));
    }
    if (!emit({prefill_done.first_token()})) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  const std::string decode_worker = lease->worker();

  v1::GenerateResponse out;
  auto* finished = out.mutable_finished();
  finished->set_reason(reason);
  finished->mutable_usage()->set_prompt_tokens(static_cast<int64_t>(tokens.size()));
  finished->mutable_usage()->set_completion_tokens(completion_tokens);
  finished->mutable_usage()->set_cache_bytes_transferred(cache_bytes);
  finished->mutable_timings()->set_ttft_ms(absl::ToDoubleMilliseconds(first_token_at - start));
  const double decode_s = absl::ToDoubleSeconds(last_token_at - first_token_at);
  finished->mutable_timings()->set_decode_tokens_per_s(completion_tokens > 1 && decode_s > 0
                                                           ? (completion_tokens - 1) / decode_s : 0.0);
  finished->mutable_timings()->set_prefill_ms(prefill_done.prefill_ms());
  finished->mutable_timings()->set_transfer_tail_ms(prefill_done.transfer_tail_ms());
  finished->set_prefill_worker(prefill_worker);
  finished->set_decode_worker(decode_worker);
  finished->set_request_id(request_id);
  writer->Write(out);
  metrics.e2e_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
  metrics.generation_tokens.Observe(static_cast<double>(completion_tokens));
  metrics.CountFinishReason(FinishReasonLabel(reason));
  return grpc::Status::OK;
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
  if (!tokens.ok()) return ToGrpc(tokens.status());
  const int64_t max_prompt = state_.options().max_prompt_tokens;
  if (max_prompt > 0 && static_cast<int64_t>(tokens->size()) > max_prompt) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("prompt of ", tokens->size(), " tokens exceeds this router's limit of ", max_prompt,
                                     " tokens (--max-prompt-tokens)"));
  }
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

grpc::Status RegistryService::RegisterWorker(grpc::ServerContext* context, const v1::RegisterWorkerRequest* request,
                                             v1::RegisterWorkerResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "WorkerRegistry.RegisterWorker"); !denied.ok()) return denied;
  absl::Status status = state_.registry().Register(*request);
  if (!status.ok()) return ToGrpc(status);
  serving::LogEvent("router", "worker_registered", "", {{"worker", request->address()}, {"role", request->role()}});
  response->set_heartbeat_interval_ms(1000);
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                                        v1::HeartbeatResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "WorkerRegistry.Heartbeat"); !denied.ok()) return denied;
  return ToGrpc(state_.registry().Heartbeat(*request));
}

}  // namespace latentserve::router
