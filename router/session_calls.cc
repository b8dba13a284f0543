// Document sessions on the router (docs/serving.md "Sessions"): CreateSession prefills the
// document once (a max_tokens 1 request through the usual path, so the decode worker keeps
// it in its prefix cache) and pins it there under the session id; Generate with session_id
// appends the suffix to the document's tokens and prefers that worker; a lost worker's
// document is prefilled again from the tokens kept here; Close and expiry drop the pin.
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/error_details.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "router/channels.h"
#include "router/generate_call.h"
#include "router/request_checks.h"
#include "router/worker_calls.h"
#include "serving/metrics.h"
#include "serving/security.h"

namespace latentserve::router {
namespace {

// Takes the events of an internal Generate (the document's prefill): only the summary counts.
class SummaryWriter : public grpc::ServerWriterInterface<v1::GenerateResponse> {
 public:
  void SendInitialMetadata() override {}
  bool Write(const v1::GenerateResponse& response, grpc::WriteOptions) override {
    if (response.has_finished()) finished = response.finished();
    return true;
  }
  v1::Finished finished;
};

int64_t UnixMillis(absl::Time t) { return absl::ToUnixMillis(t); }

void FillInfo(const Session& session, v1::SessionInfo* info) {
  info->set_session_id(session.id);
  info->set_document_tokens(static_cast<int64_t>(session.tokens->size()));
  info->set_pinned(session.pinned);
  info->set_created_unix_ms(UnixMillis(session.created));
  info->set_last_used_unix_ms(UnixMillis(session.last_used));
  info->set_expires_unix_ms(UnixMillis(session.expires()));
  info->set_decode_worker(session.worker);
  info->set_requests(session.requests);
  info->set_reprefills(session.reprefills);
}

absl::Status SessionLimit(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return status;
  return WithDetails(status, Details(error_reason::kSessionLimitExceeded));
}

// A router-to-worker control call: the internal credential and the control deadline.
void PrepareControlCall(const RouterState& state, grpc::ClientContext& context) {
  serving::AttachInternalCredential(context);
  SetDeadline(context, absl::Now() + state.options().control_timeout);
}

// Unpins session `session_id`'s document on `worker` ("" : nothing to do). Best effort: a
// worker that is gone took the document with it.
void DropPin(const RouterState& state, const std::string& worker, const std::string& session_id) {
  if (worker.empty()) return;
  auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(worker));
  grpc::ClientContext context;
  PrepareControlCall(state, context);
  internal::v1::DropSessionRequest request;
  request.set_session_id(session_id);
  internal::v1::DropSessionResponse response;
  grpc::Status status = stub->DropSession(&context, request, &response);
  if (!status.ok()) {
    serving::LogEvent(serving::LogLevel::kWarning, "router", "session_drop_failed", "",
                      {{"session", session_id}, {"decode_worker", worker}, {"error", status.error_message()}});
  }
}

void DropOnWorker(const RouterState& state, const Session& session) { DropPin(state, session.worker, session.id); }

// Prefills `session`'s document into a decode worker's prefix cache (pinned there when the
// session is) and returns that worker.
absl::StatusOr<std::string> PrefillDocument(RouterState& state, grpc::ServerContext* context, const Session& session,
                                            const std::string& request_id, double* prefill_ms) {
  v1::GenerateRequest read;
  *read.mutable_tokens()->mutable_ids() = {session.tokens->begin(), session.tokens->end()};
  read.mutable_stopping()->set_max_tokens(1);
  read.mutable_stopping()->set_ignore_eos(true);
  read.set_request_id(request_id);
  SummaryWriter summary;
  {
    GenerateCall call(state, context, read, &summary);
    grpc::Status status = call.Run();
    if (!status.ok()) return FromGrpcWithDetails(status);
  }  // the lease is released here: the worker keeps the document before this returns
  const std::string worker = summary.finished.decode_worker();
  if (prefill_ms) *prefill_ms = summary.finished.timings().ttft_ms();
  if (session.pinned) {
    auto stub = internal::v1::DecodeWorker::NewStub(ChannelTo(worker));
    grpc::ClientContext pin_context;
    PrepareControlCall(state, pin_context);
    internal::v1::PinSessionRequest pin;
    pin.set_session_id(session.id);
    *pin.mutable_token_ids() = {session.tokens->begin(), session.tokens->end()};
    internal::v1::PinSessionResponse pinned;
    grpc::Status status = stub->PinSession(&pin_context, pin, &pinned);
    if (!status.ok()) {
      DropPin(state, worker, session.id);  // a call that timed out may still have pinned
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("decode worker ", worker, " could not pin the session's document: ",
                                       status.error_message()));
    }
  }
  return worker;
}

}  // namespace

void RouterState::SessionReaperLoop() {
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!stopping_) {
    reaper_cv_.wait_for(lock, std::chrono::milliseconds(200));
    std::vector<Session> expired = sessions_.Expire(absl::Now());
    if (expired.empty()) continue;
    lock.unlock();
    for (const Session& session : expired) {
      serving::LogEvent("router", "session_expired", "", {{"session", session.id}, {"decode_worker", session.worker}});
      DropOnWorker(*this, session);
    }
    lock.lock();
  }
}

absl::StatusOr<std::vector<int32_t>> GenerateCall::SessionPrompt() {
  const std::string client = serving::ClientIdentity(*context_);
  absl::StatusOr<Session> session = state_.sessions().Use(request_.session_id(), client, absl::Now());
  if (!session.ok()) return WithDetails(session.status(), Details(error_reason::kSessionNotFound));
  ASSIGN_OR_RETURN(std::vector<int32_t> suffix, PromptTokens(state_, request_));
  if (suffix.empty()) {
    return WithDetails(absl::InvalidArgumentError("a session request's prompt (the suffix) has no tokens"),
                       Details(error_reason::kFieldInvalid, {{"field", "prompt"}}));
  }
  session_id_ = session->id;
  session_document_tokens_ = static_cast<int64_t>(session->tokens->size());
  session_worker_ = session->worker;
  if ((session_worker_.empty() || !state_.registry().IsAlive(session_worker_)) &&
      state_.sessions().TryStartRepair(session_id_)) {
    // The worker holding the document is gone: prefill it again from the kept tokens. Other
    // requests meanwhile compute the whole prompt where they land.
    serving::LogEvent(serving::LogLevel::kWarning, "router", "session_reprefill", request_.request_id(),
                      {{"session", session_id_}, {"lost_worker", session_worker_}});
    absl::StatusOr<std::string> worker = PrefillDocument(state_, context_, *session, request_.request_id(), nullptr);
    if (!worker.ok()) {
      state_.sessions().EndRepair(session_id_);
      return worker.status();
    }
    if (absl::Status placed = state_.sessions().SetWorker(session_id_, *worker, /*reprefill=*/true, absl::Now());
        !placed.ok()) {
      DropPin(state_, *worker, session_id_);  // closed or expired meanwhile: nobody would drop it
      return placed;
    }
    session_worker_ = *worker;
  }
  hints_.prefer_worker = session_worker_;
  hints_.skip_prefix_keep = true;  // the document is kept; the questions are not
  std::vector<int32_t> tokens;
  tokens.reserve(session->tokens->size() + suffix.size());
  tokens.insert(tokens.end(), session->tokens->begin(), session->tokens->end());
  tokens.insert(tokens.end(), suffix.begin(), suffix.end());
  return tokens;
}

grpc::Status GenerationService::CreateSession(grpc::ServerContext* context, const v1::CreateSessionRequest* request,
                                              v1::CreateSessionResponse* response) {
  if (state_.draining()) {
    return ErrorStatus(grpc::StatusCode::UNAVAILABLE, "router is draining; retry elsewhere",
                       Details(error_reason::kRouterDraining, {}, kRetryDelay));
  }
  const std::string client = serving::ClientIdentity(*context);
  auto model = state_.registry().Model();
  if (!model || !state_.registry().AnyAlive("decode") || !state_.registry().AnyAlive("prefill")) {
    return ErrorStatus(grpc::StatusCode::UNAVAILABLE, "no live prefill and decode workers are registered yet",
                       Details(error_reason::kNoWorkers, {}, kRetryDelay));
  }
  // The document through Generate's own checks (bytes, tokens, vocabulary, context limit).
  v1::GenerateRequest document;
  document.set_model(request->model());
  switch (request->document_case()) {
    case v1::CreateSessionRequest::kText: document.set_text(request->text()); break;
    case v1::CreateSessionRequest::kTokens: *document.mutable_tokens() = request->tokens(); break;
    case v1::CreateSessionRequest::kChat:
      *document.mutable_chat() = request->chat();
      // The suffix continues the conversation: no assistant header after the document's turns.
      if (!request->chat().has_add_generation_prompt()) document.mutable_chat()->set_add_generation_prompt(false);
      break;
    default:
      return ErrorStatus(grpc::StatusCode::INVALID_ARGUMENT, "the session has no document: set text, tokens or chat",
                         Details(error_reason::kFieldInvalid, {{"field", "document"}}));
  }
  document.mutable_stopping()->set_max_tokens(1);
  absl::StatusOr<std::vector<int32_t>> tokens = PromptTokens(state_, document);
  if (!tokens.ok()) return ToGrpcWithDetails(tokens.status());
  if (absl::Status valid = ValidateRequest(state_, document, *tokens, *model); !valid.ok()) {
    return ToGrpcWithDetails(valid);
  }
  absl::StatusOr<Session> session =
      state_.sessions().Begin(client, std::move(*tokens), request->pinned(), absl::Milliseconds(request->ttl_ms()),
                              absl::Milliseconds(request->idle_timeout_ms()), absl::Now());
  if (!session.ok()) return ToGrpcWithDetails(SessionLimit(session.status()));
  double prefill_ms = 0;
  const std::string request_id = request->request_id().empty() ? session->id : request->request_id();
  // The document's prefill is a Generate of its own: it counts against the client's stream limit.
  if (!stream_limiter_.TryAcquire(client)) {
    state_.sessions().Remove(session->id);
    return StreamLimitRejected(client, request_id);
  }
  absl::StatusOr<std::string> worker = PrefillDocument(state_, context, *session, request_id, &prefill_ms);
  stream_limiter_.Release(client);
  if (!worker.ok()) {
    // Nothing is pinned; a document kept unpinned is an ordinary cache entry.
    state_.sessions().Remove(session->id);
    return ToGrpcWithDetails(SessionLimit(worker.status()));
  }
  absl::Status placed = state_.sessions().SetWorker(session->id, *worker, /*reprefill=*/false, absl::Now());
  if (!placed.ok()) {
    DropPin(state_, *worker, session->id);  // closed or expired meanwhile: nobody would drop it
    return ToGrpcWithDetails(placed);
  }
  session->worker = *worker;
  session->ready = true;
  serving::LogEvent("router", "session_created", request_id,
                    {{"session", session->id}, {"client", client}, {"document_tokens", static_cast<int64_t>(session->tokens->size())},
                     {"pinned", session->pinned ? "true" : "false"}, {"decode_worker", *worker}});
  FillInfo(*session, response->mutable_session());
  response->set_prefill_ms(prefill_ms);
  return grpc::Status::OK;
}

grpc::Status GenerationService::ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest*,
                                             v1::ListSessionsResponse* response) {
  for (const Session& session : state_.sessions().List(serving::ClientIdentity(*context), absl::Now())) {
    FillInfo(session, response->add_sessions());
  }
  return grpc::Status::OK;
}

grpc::Status GenerationService::CloseSession(grpc::ServerContext* context, const v1::CloseSessionRequest* request,
                                             v1::CloseSessionResponse*) {
  absl::StatusOr<Session> closed = state_.sessions().Close(request->session_id(), serving::ClientIdentity(*context));
  if (!closed.ok()) return ToGrpcWithDetails(WithDetails(closed.status(), Details(error_reason::kSessionNotFound)));
  DropOnWorker(state_, *closed);
  serving::LogEvent("router", "session_closed", "", {{"session", closed->id}, {"requests", closed->requests}});
  return grpc::Status::OK;
}

}  // namespace latentserve::router
