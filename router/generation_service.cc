#include "router/generation_service.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <memory>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "router/channels.h"
#include "router/lease_keeper.h"
#include "router/text_codec.h"
#include "serving/metrics.h"
#include "serving/security.h"
#include "transfer/grpc_status.h"

namespace latentserve::router {
namespace {

using transfer::FromGrpc;
using transfer::ToGrpc;

constexpr const char* kFailedStageKey = "latentserve-failed-stage";  // prefill/prefill_service.h

// Cancels the attached downstream call when the client's call is cancelled (client gone,
// deadline passed). The sync server has no cancel callback, so one thread polls.
class CancelLink {
 public:
  explicit CancelLink(grpc::ServerContext* server) : server_(server), thread_([this] { Loop(); }) {}
  ~CancelLink() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Attach(grpc::ClientContext* client) {
    std::lock_guard<std::mutex> lock(mu_);
    client_ = client;
    if (cancelled_) client_->TryCancel();
  }
  void Detach() {
    std::lock_guard<std::mutex> lock(mu_);
    client_ = nullptr;
  }
  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      if (!cancelled_ && server_->IsCancelled()) {
        cancelled_ = true;
        if (client_) client_->TryCancel();
      }
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }
  grpc::ServerContext* server_;
  std::mutex mu_;
  std::condition_variable cv_;
  grpc::ClientContext* client_ = nullptr;
  bool cancelled_ = false;
  bool stopping_ = false;
  std::thread thread_;
};


void SetDeadline(grpc::ClientContext& context, absl::Time deadline) {
  context.set_deadline(absl::ToChronoTime(deadline));
}

// Holds back text that may be the start of a stop string; reports a match.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    for (const auto& s : stops_) hold_ = std::max(hold_, s.empty() ? size_t{0} : s.size() - 1);
  }
  // Appends text; returns what can be emitted now. *matched when a stop string appeared
  // (the text before it is returned, nothing after).
  std::string Push(const std::string& text, bool* matched) {
    pending_ += text;
    for (const auto& s : stops_) {
      if (s.empty()) continue;
      const size_t at = pending_.find(s);
      if (at != std::string::npos) {
        *matched = true;
        std::string out = pending_.substr(0, at);
        pending_.clear();
        return out;
      }
    }
    if (pending_.size() <= hold_) return "";
    std::string out = pending_.substr(0, pending_.size() - hold_);
    pending_.erase(0, pending_.size() - hold_);
    return out;
  }
  std::string Flush() { return std::exchange(pending_, std::string()); }

 private:
  std::vector<std::string> stops_;
  size_t hold_ = 0;
  std::string pending_;
};

// Proto3 strings must be UTF-8; the detokeniser passes bytes that can never become valid
// through (a model may emit them), so they become U+FFFD here.
std::string ValidUtf8(const std::string& bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    int len = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    bool ok = len > 0 && i + len <= bytes.size();
    for (int k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(bytes[i + k]) & 0xC0) == 0x80;
    if (ok && len == 3) {
      const unsigned char c1 = static_cast<unsigned char>(bytes[i + 1]);
      ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
    } else if (ok && len == 4) {
      const unsigned char c1 = static_cast<unsigned char>(bytes[i + 1]);
      ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

void ReleaseLease(const std::string& decode_worker, const std::string& lease_id, absl::Duration timeout) {
  auto stub = v1::DecodeWorker::NewStub(ChannelTo(decode_worker));
  grpc::ClientContext context;
  serving::AttachInternalCredential(context);
  SetDeadline(context, absl::Now() + timeout);
  v1::ReleaseLeaseRequest request;
  request.set_lease_id(lease_id);
  v1::ReleaseLeaseResponse response;
  stub->ReleaseLease(&context, request, &response);  // best effort: the lease also expires
}

// A decode lease held by one request: counted by the router, renewed by the LeaseKeeper
// until Decode takes it over, released on every other path.
class DecodeLease {
 public:
  DecodeLease(RouterState& state, std::string worker, std::string id)
      : state_(state), worker_(std::move(worker)), id_(std::move(id)) {
    state_.leases_active++;
    state_.lease_keeper().Add(worker_, id_);
  }
  ~DecodeLease() {
    state_.lease_keeper().Remove(id_);
    if (open_) ReleaseLease(worker_, id_, state_.options().control_timeout);
    state_.leases_active--;
    state_.registry().ReleaseDecode(worker_);  // the claim ClaimDecode made
  }
  DecodeLease(const DecodeLease&) = delete;
  DecodeLease& operator=(const DecodeLease&) = delete;

  // From here Decode owns the pages (it frees them on every path) and the deadline.
  void HandToDecode() {
    open_ = false;
    state_.lease_keeper().Remove(id_);
  }
  const std::string& worker() const { return worker_; }
  const std::string& id() const { return id_; }

 private:
  RouterState& state_;
  const std::string worker_;
  const std::string id_;
  bool open_ = true;
};

constexpr int kMaxDecodeAttempts = 3;  // decode workers tried for one request's handoff

// Reserves pages for `lease_tokens` on the best decode worker that accepts them. When every
// live worker is full (RESOURCE_EXHAUSTED), waits for pages to free up, polling with backoff,
// for up to the router's capacity_wait (and never past the request's deadline), as a queue
// would; any other refusal moves on to the next worker.
grpc::Status ReserveDecodeLease(RouterState& state, const v1::ModelDescriptor& model, const std::string& request_id,
                                int64_t lease_tokens, absl::Time deadline, const std::set<std::string>& exclude,
                                CancelLink& cancel, const std::function<bool()>& client_gone,
                                std::unique_ptr<DecodeLease>* lease) {
  const absl::Time give_up = std::min(deadline, absl::Now() + state.options().capacity_wait);
  // Which limit ends the wait decides the status: the client's deadline -> DEADLINE_EXCEEDED,
  // --capacity-wait-ms -> RESOURCE_EXHAUSTED.
  const bool deadline_binds = give_up == deadline;
  absl::Duration backoff = absl::Milliseconds(20);
  bool waited = false;
  for (;;) {
    absl::Status last_error = absl::ResourceExhaustedError(
        absl::StrCat("no decode worker has had room for ", lease_tokens, " cache tokens within ",
                     absl::FormatDuration(state.options().capacity_wait), "; retry later or add decode workers"));
    bool only_full = true;  // every refusal so far was RESOURCE_EXHAUSTED
    std::set<std::string> refused = exclude;
    while (auto claimed = state.registry().ClaimDecode(lease_tokens, refused)) {
      const std::string candidate = *claimed;
      auto stub = v1::DecodeWorker::NewStub(ChannelTo(candidate));
      grpc::ClientContext lease_context;
      serving::AttachInternalCredential(lease_context);
      SetDeadline(lease_context, std::min(deadline, absl::Now() + state.options().control_timeout));
      v1::ReserveLeaseRequest lease_request;
      lease_request.set_request_id(request_id);
      lease_request.set_tokens(lease_tokens);
      lease_request.set_ttl_ms(absl::ToInt64Milliseconds(state.options().lease_ttl));
      lease_request.set_model_fingerprint(model.fingerprint());
      v1::ReserveLeaseResponse lease_response;
      cancel.Attach(&lease_context);
      grpc::Status status = stub->ReserveLease(&lease_context, lease_request, &lease_response);
      cancel.Detach();
      if (status.ok()) {
        if (waited) serving::LogEvent("router", "capacity_wait_done", request_id, {{"decode_worker", candidate}});
        *lease = std::make_unique<DecodeLease>(state, candidate, lease_response.lease_id());
        return grpc::Status::OK;
      }
      state.registry().ReleaseDecode(candidate);
      refused.insert(candidate);
      if (client_gone()) return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) state.registry().MarkDead(candidate);
      if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
        only_full = false;
        last_error = absl::UnavailableError(absl::StrCat("decode worker ", candidate, ": ", status.error_message()));
      }
    }
    // Nothing to wait for when a worker failed for another reason, or none is registered.
    if (!only_full || refused.size() == exclude.size()) return ToGrpc(last_error);
    const absl::Time now = absl::Now();
    if (now >= give_up || give_up - now < absl::Milliseconds(1)) {
      return deadline_binds ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                           "the request's deadline passed while it waited for decode cache room "
                                           "(every decode worker was full)")
                            : ToGrpc(last_error);
    }
    backoff = std::min(backoff, give_up - now);  // the last round ends at the limit, not before it
    if (!waited) serving::LogEvent("router", "capacity_wait", request_id, {{"tokens", absl::StrCat(lease_tokens)}});
    waited = true;
    for (const absl::Time wake = now + backoff; absl::Now() < wake;) {  // stay responsive to cancellation
      if (client_gone()) return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
      absl::SleepFor(std::min(absl::Milliseconds(10), wake - absl::Now()));
    }
    backoff = std::min(backoff * 2, absl::Milliseconds(500));
  }
}

struct PrefillOutcome {
  grpc::Status status;
  bool handoff_lost = false;  // the cache did not reach the decode worker (status says why)
};

// Prefills into `lease`, relaying progress; retries on another prefill worker when one
// fails before the first token. Fills `done` and `prefill_worker` on success.
PrefillOutcome RunPrefill(RouterState& state, const v1::GenerateRequest& request, const v1::ModelDescriptor& model,
                          const std::string& request_id, const std::vector<int32_t>& tokens, const DecodeLease& lease,
                          absl::Time deadline, CancelLink& cancel, const std::function<bool()>& client_gone,
                          grpc::ServerWriter<v1::GenerateResponse>* writer, bool relay_progress,
                          v1::PrefillDone* done, std::string* prefill_worker) {
  // Attention work grows with the square of the prompt: the placement cost.
  const double cost = static_cast<double>(tokens.size()) * static_cast<double>(tokens.size());
  std::set<std::string> tried;
  absl::Status prefill_error = absl::UnavailableError("no live prefill worker");
  while (auto pick = state.registry().ClaimPrefill(cost, tried)) {
    *prefill_worker = *pick;
    tried.insert(*prefill_worker);
    auto stub = v1::PrefillWorker::NewStub(ChannelTo(*prefill_worker));
    grpc::ClientContext prefill_context;
    serving::AttachInternalCredential(prefill_context);
    SetDeadline(prefill_context, deadline);
    v1::PrefillRequest prefill_request;
    prefill_request.set_request_id(request_id);
    prefill_request.set_lease_id(lease.id());
    prefill_request.set_decode_worker(lease.worker());
    *prefill_request.mutable_token_ids() = {tokens.begin(), tokens.end()};
    *prefill_request.mutable_sampling() = request.sampling();
    prefill_request.set_model_fingerprint(model.fingerprint());
    cancel.Attach(&prefill_context);
    auto reader = stub->Prefill(&prefill_context, prefill_request);
    v1::PrefillResponse event;
    bool have_first = false;
    bool client_write_failed = false;
    while (reader->Read(&event)) {
      if (event.has_progress()) {
        if (!relay_progress) continue;
        v1::GenerateResponse out;
        *out.mutable_progress() = event.progress();
        if (!writer->Write(out)) {
          client_write_failed = true;
          prefill_context.TryCancel();
        }
      } else if (event.has_done()) {
        *done = event.done();
        have_first = true;
      }
    }
    grpc::Status status = reader->Finish();
    cancel.Detach();
    state.registry().ReleasePrefill(*prefill_worker, cost);
    if (client_gone() || client_write_failed) return {grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled")};
    if (status.ok() && have_first) return {grpc::Status::OK};
    const auto& trailers = prefill_context.GetServerTrailingMetadata();
    if (trailers.find(kFailedStageKey) != trailers.end()) {
      return {grpc::Status(status.error_code(), absl::StrCat("cache handoff to decode worker ", lease.worker(),
                                                             " failed: ", status.error_message())),
              true};
    }
    prefill_error = absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                 absl::StrCat("prefill worker ", *prefill_worker, " failed: ", status.error_message()));
    if (absl::Now() >= deadline || status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      return {grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                           absl::StrCat("deadline passed during prefill (", status.error_message(), ")"))};
    }
    // A worker fault (process gone, internal error) is worth another worker; a verdict on
    // the request itself is not.
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      state.registry().MarkDead(*prefill_worker);
    } else if (status.error_code() != grpc::StatusCode::INTERNAL && status.error_code() != grpc::StatusCode::UNKNOWN) {
      return {ToGrpc(prefill_error)};
    }
  }
  return {ToGrpc(prefill_error)};
}

}  // namespace

RouterState::RouterState(RouterOptions options)
    : options_(std::move(options)),
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

namespace {

// Text and chat prompts are measured before the tokenizer sees them: tokenising is the
// expensive, memory-hungry step a limit must come before.
absl::Status CheckPromptBytes(const RouterState& state, const v1::GenerateRequest& request) {
  const int64_t limit = state.options().max_prompt_bytes;
  if (limit <= 0) return absl::OkStatus();
  int64_t bytes = 0;
  if (request.prompt_case() == v1::GenerateRequest::kText) bytes = static_cast<int64_t>(request.text().size());
  if (request.prompt_case() == v1::GenerateRequest::kChat) {
    for (const v1::ChatMessage& m : request.chat().messages()) {
      bytes += static_cast<int64_t>(m.role().size() + m.content().size());
    }
  }
  if (bytes > limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", bytes, " bytes exceeds this router's limit of ", limit,
                                                   " bytes (--max-prompt-bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> PromptTokens(RouterState& state, const v1::GenerateRequest& request) {
  RETURN_IF_ERROR(CheckPromptBytes(state, request));
  switch (request.prompt_case()) {
    case v1::GenerateRequest::kTokens:
      return std::vector<int32_t>(request.tokens().ids().begin(), request.tokens().ids().end());
    case v1::GenerateRequest::kText:
    case v1::GenerateRequest::kChat: {
      const TextCodec* codec = state.codec();
      if (!codec) {
        return absl::UnimplementedError(
            "this deployment has no tokenizer, so text and chat prompts cannot be encoded; send token ids instead");
      }
      if (request.prompt_case() == v1::GenerateRequest::kText) return codec->EncodeText(request.text());
      if (request.chat().messages().empty()) return absl::InvalidArgumentError("chat prompt has no messages");
      return codec->EncodeChat(request.chat());
    }
    default:
      return absl::InvalidArgumentError("the request has no prompt: set text, tokens or chat");
  }
}

absl::Status ValidateRequest(RouterState& state, const v1::GenerateRequest& request,
                             const std::vector<int32_t>& tokens, const v1::ModelDescriptor& model) {
  if (!request.model().empty() && request.model() != model.name()) {
    return absl::NotFoundError(absl::StrCat("unknown model '", request.model(), "'; this router serves '", model.name(),
                                            "' (or leave model empty)"));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt is empty: it has no tokens");
  const int64_t max_prompt = state.options().max_prompt_tokens;
  if (max_prompt > 0 && static_cast<int64_t>(tokens.size()) > max_prompt) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", tokens.size(), " tokens exceeds this router's limit of ",
                                                   max_prompt, " tokens (--max-prompt-tokens)"));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= model.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", tokens[i],
                                                     ", outside the vocabulary [0, ", model.vocab_size(), ")"));
    }
  }
  const int64_t max_tokens = request.stopping().max_tokens();
  if (max_tokens <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("stopping.max_tokens must be positive, got ", max_tokens));
  }
  const int64_t limit = state.registry().MaxContextTokens();
  if (static_cast<int64_t>(tokens.size()) + max_tokens > limit) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", tokens.size(), " tokens) + max_tokens (", max_tokens,
                                                   ") = ", tokens.size() + max_tokens, " exceeds the context limit of ",
                                                   limit, " tokens"));
  }
  const auto& s = request.sampling();
  // Written so that NaN fails every comparison (NaN < 0 and NaN > 1 are both false).
  const bool sampling_ok = std::isfinite(s.temperature()) && s.temperature() >= 0 && s.top_k() >= 0 &&
                           s.top_p() >= 0 && s.top_p() <= 1 && s.min_p() >= 0 && s.min_p() <= 1;
  if (!sampling_ok) {
    return absl::InvalidArgumentError("sampling: temperature finite and >= 0, top_k >= 0, top_p and min_p in [0, 1]");
  }
  for (int32_t id : request.stopping().stop_token_ids()) {
    if (id < 0 || id >= model.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("stop token id ", id, " is outside the vocabulary"));
    }
  }
  if (!request.stopping().stop_strings().empty() && !state.codec()) {
    return absl::UnimplementedError("stop strings need a tokenizer, which this deployment lacks");
  }
  return absl::OkStatus();
}

}  // namespace

grpc::Status GenerationService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  serving::Metrics& metrics = serving::Metrics::Get();
  const absl::Time start = absl::Now();
  const std::string client = serving::ClientIdentity(*context);
  std::string request_id = request->request_id();
  if (!stream_limiter_.TryAcquire(client)) {
    metrics.router_stream_limit_rejections_total.Increment();
    metrics.CountRouterRequest(grpc::StatusCode::RESOURCE_EXHAUSTED);
    serving::LogEvent("router", "request_rejected", request_id,
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
  serving::LogEvent("router", "request_finished", request_id,
                    {{"client", client},
                     {"code", serving::GrpcCodeName(status.error_code())},
                     {"duration_ms", absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(absl::Now() - start))},
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
      request->request_id().empty() ? absl::StrCat("req-", state_.next_request++) : request->request_id();
  *request_id_out = request_id;
  serving::LogEvent("router", "request_started", request_id,
                    {{"prompt_tokens", absl::StrCat(tokens.size())}, {"max_tokens", absl::StrCat(max_tokens)}});
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
    for (int decode_attempt = 1;; ++decode_attempt) {
      grpc::Status reserved =
          ReserveDecodeLease(state_, *model, request_id, static_cast<int64_t>(context.size()) + remaining, deadline,
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
      serving::LogEvent("router", "handoff_retry", request_id,
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
    cancel.Attach(&decode_context);
    lease->HandToDecode();  // Decode frees the pages on every path from here
    auto reader = stub->Decode(&decode_context, decode_request);
    v1::DecodeResponse event;
    bool client_write_failed = false;
    while (reason == v1::FINISH_REASON_UNSPECIFIED && reader->Read(&event)) {
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
    cancel.Detach();
    if (client_gone() || client_write_failed) return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
    if (reason != v1::FINISH_REASON_UNSPECIFIED) break;
    if (status.ok()) status = grpc::Status(grpc::StatusCode::INTERNAL, "decode stream ended without a finish reason");
    const grpc::Status failed(status.error_code(),
                              absl::StrCat("decode worker ", decode_worker, " failed: ", status.error_message()));
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return failed;
    state_.registry().MarkDead(decode_worker);
    if (++resumes > kMaxDecodeAttempts || absl::Now() >= deadline) return failed;
    serving::LogEvent("router", "decode_resume", request_id,
                      {{"decode_worker", decode_worker}, {"generated", absl::StrCat(completion_tokens)}});
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
