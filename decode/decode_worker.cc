#include "decode/decode_worker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/secure_random.h"
#include "common/status.h"
#include "transfer/checksum.h"

namespace latentserve::decode {

enum class SlotState { kLeased, kReceiving, kReady, kDecoding, kDone };

struct DecodeWorker::Slot {
  std::string lease_id;
  std::string owner;  // the reserving caller's identity
  std::string request_id;
  std::unique_ptr<model::Sequence> sequence;
  int64_t reserved_tokens = 0;
  absl::Time lease_deadline;
  SlotState state = SlotState::kLeased;
  absl::Status end_status;  // why the slot ended early (expiry, cancel)
  // Handoff in progress (a retried handoff bumps the generation and starts over).
  int64_t handoff_generation = 0;
  int64_t prompt_tokens = 0;
  int32_t first_token = -1;
  // Decoding.
  std::unique_ptr<model::Sampler> sampler;
  int32_t next_input = -1;
  int64_t remaining = 0;
  std::vector<int32_t> stop_token_ids;
  std::vector<int32_t> out;  // sampled, not yet streamed
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
};

// One handoff into one lease's slot.
class DecodeWorker::Receiver : public transfer::CacheReceiver {
 public:
  Receiver(DecodeWorker* worker, std::shared_ptr<Slot> slot, transfer::HandoffHeader header, int64_t generation)
      : worker_(worker), slot_(std::move(slot)), header_(std::move(header)), generation_(generation),
        latent_next_(header_.mla_layers.size(), 0), kda_buffers_(header_.kda_layers.size()) {}
  ~Receiver() override {
    if (!finished_) Abort(absl::CancelledError("handoff dropped"));
  }

  absl::Status OnLatentRows(const transfer::LatentRows& chunk) override {
    RETURN_IF_ERROR(CheckLive());
    if (chunk.mla_index < 0 || chunk.mla_index >= static_cast<int64_t>(latent_next_.size())) {
      return absl::InvalidArgumentError(absl::StrCat("latent chunk for MLA ordinal ", chunk.mla_index, " of ",
                                                     latent_next_.size()));
    }
    if (chunk.first_token != latent_next_[chunk.mla_index] || chunk.token_count <= 0 ||
        chunk.token_count > header_.prompt_tokens - chunk.first_token) {
      return absl::InvalidArgumentError(absl::StrCat("latent chunk of MLA ordinal ", chunk.mla_index, " covers [",
                                                     chunk.first_token, ", +", chunk.token_count, "), expected to start at ",
                                                     latent_next_[chunk.mla_index], " within ", header_.prompt_tokens,
                                                     " prompt tokens"));
    }
    if (static_cast<int64_t>(chunk.rows.size()) != chunk.token_count * header_.row_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("latent chunk has ", chunk.rows.size(), " bytes, expected ",
                                                     chunk.token_count * header_.row_bytes));
    }
    if (transfer::Xxh64(chunk.rows) != chunk.checksum) {
      return absl::DataLossError(absl::StrCat("checksum mismatch in latent rows [", chunk.first_token, ", +",
                                              chunk.token_count, ") of MLA ordinal ", chunk.mla_index));
    }
    {
      std::lock_guard<std::mutex> lock(worker_->backend_mu_);
      RETURN_IF_ERROR(CheckLive());
      RETURN_IF_ERROR(worker_->cache_.ImportRows(worker_->model_.backend(), chunk.mla_index, slot_->sequence->pages,
                                                 chunk.first_token, chunk.token_count, chunk.rows));
    }
    latent_next_[chunk.mla_index] += chunk.token_count;
    chunks_++;
    payload_bytes_ += static_cast<int64_t>(chunk.rows.size());
    return absl::OkStatus();
  }

  absl::Status OnKdaState(const transfer::KdaStateBytes& chunk) override {
    RETURN_IF_ERROR(CheckLive());
    if (chunk.kda_index < 0 || chunk.kda_index >= static_cast<int64_t>(kda_buffers_.size())) {
      return absl::InvalidArgumentError(absl::StrCat("KDA chunk for ordinal ", chunk.kda_index, " of ",
                                                     kda_buffers_.size()));
    }
    std::string& buffer = kda_buffers_[chunk.kda_index];
    if (chunk.offset != static_cast<int64_t>(buffer.size()) ||
        static_cast<int64_t>(chunk.data.size()) > header_.kda_state_bytes - chunk.offset) {
      return absl::InvalidArgumentError(absl::StrCat("KDA chunk of ordinal ", chunk.kda_index, " at offset ",
                                                     chunk.offset, " (+", chunk.data.size(), ") does not continue ",
                                                     buffer.size(), " of ", header_.kda_state_bytes, " bytes"));
    }
    if (transfer::Xxh64(chunk.data) != chunk.checksum) {
      return absl::DataLossError(absl::StrCat("checksum mismatch in KDA state ", chunk.kda_index, " at offset ",
                                              chunk.offset));
    }
    buffer.append(chunk.data);
    chunks_++;
    payload_bytes_ += static_cast<int64_t>(chunk.data.size());
    if (static_cast<int64_t>(buffer.size()) == header_.kda_state_bytes) {
      std::lock_guard<std::mutex> lock(worker_->backend_mu_);
      RETURN_IF_ERROR(CheckLive());
      RETURN_IF_ERROR(worker_->model_.ImportKdaState(*slot_->sequence, chunk.kda_index, buffer));
      std::string().swap(buffer);
      kda_done_++;
    }
    return absl::OkStatus();
  }

  absl::Status Finish(const transfer::HandoffEnd& end) override {
    RETURN_IF_ERROR(CheckLive());
    for (size_t i = 0; i < latent_next_.size(); ++i) {
      if (latent_next_[i] != header_.prompt_tokens) {
        return absl::DataLossError(absl::StrCat("handoff ended with ", latent_next_[i], " of ", header_.prompt_tokens,
                                                " latent rows for MLA ordinal ", i));
      }
    }
    if (kda_done_ != static_cast<int64_t>(kda_buffers_.size())) {
      return absl::DataLossError(absl::StrCat("handoff ended with ", kda_done_, " of ", kda_buffers_.size(),
                                              " KDA states"));
    }
    if (end.chunks != chunks_ || end.payload_bytes != payload_bytes_) {
      return absl::DataLossError(absl::StrCat("handoff ended after ", chunks_, " chunks / ", payload_bytes_,
                                              " bytes, sender sent ", end.chunks, " / ", end.payload_bytes));
    }
    if (end.first_token < 0 || end.first_token >= worker_->model_.vocab()) {
      return absl::InvalidArgumentError(absl::StrCat("first token ", end.first_token, " out of range"));
    }
    std::lock_guard<std::mutex> lock(worker_->mu_);
    if (slot_->state != SlotState::kReceiving || slot_->handoff_generation != generation_) {
      return LostLease();
    }
    slot_->sequence->cached_tokens = header_.prompt_tokens;
    slot_->prompt_tokens = header_.prompt_tokens;
    slot_->first_token = end.first_token;
    slot_->state = SlotState::kReady;
    finished_ = true;
    worker_->cv_.notify_all();
    return absl::OkStatus();
  }

  void Abort(const absl::Status& why) override {
    finished_ = true;
    std::lock_guard<std::mutex> lock(worker_->mu_);
    if (slot_->state == SlotState::kReceiving && slot_->handoff_generation == generation_) {
      slot_->state = SlotState::kLeased;  // a retried handoff may still fill the lease
    }
  }

 private:
  absl::Status CheckLive() {
    std::lock_guard<std::mutex> lock(worker_->mu_);
    if (slot_->state != SlotState::kReceiving || slot_->handoff_generation != generation_) return LostLease();
    return absl::OkStatus();
  }
  absl::Status LostLease() {
    if (slot_->state == SlotState::kDone && !slot_->end_status.ok()) return slot_->end_status;
    return absl::AbortedError(absl::StrCat("lease ", slot_->lease_id, " was taken over by another handoff"));
  }

  DecodeWorker* worker_;
  std::shared_ptr<Slot> slot_;
  transfer::HandoffHeader header_;
  int64_t generation_;
  std::vector<int64_t> latent_next_;      // per MLA ordinal: next expected token
  std::vector<std::string> kda_buffers_;  // per KDA ordinal: bytes so far
  int64_t kda_done_ = 0;
  int64_t chunks_ = 0;
  int64_t payload_bytes_ = 0;
  bool finished_ = false;
};

DecodeWorker::DecodeWorker(const model::Model& model, model::LatentCache& cache, std::string fingerprint,
                           absl::Duration max_lease_ttl)
    : model_(model), cache_(cache), fingerprint_(std::move(fingerprint)), max_lease_ttl_(max_lease_ttl) {
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  reaper_ = std::thread([this] { ReaperLoop(); });
}

DecodeWorker::~DecodeWorker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  scheduler_.join();
  reaper_.join();
  std::vector<std::shared_ptr<Slot>> slots;
  for (auto& [id, slot] : slots_) slots.push_back(slot);
  for (auto& slot : slots) FreeSlot(slot);
}

namespace {

absl::Status NotOwner(const std::string& lease_id, const std::string& caller) {
  return absl::PermissionDeniedError(
      absl::StrCat("lease ", lease_id, " belongs to another caller than ", caller.empty() ? "this one" : caller));
}

}  // namespace

absl::StatusOr<std::string> DecodeWorker::ReserveLease(const std::string& request_id, int64_t tokens,
                                                       absl::Duration ttl, const std::string& fingerprint,
                                                       const std::string& owner) {
  if (fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat("model fingerprint ", fingerprint, " does not match this decode worker's ",
                                                      fingerprint_, ": it serves a different model file"));
  }
  if (tokens <= 0 || tokens > max_context_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("lease of ", tokens, " tokens; this worker holds at most ",
                                                   max_context_tokens()));
  }
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("lease ttl must be positive");
  ttl = std::min(ttl, max_lease_ttl_);  // a caller cannot hold pages past the configured bound
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("decode worker is draining");
  }
  auto slot = std::make_shared<Slot>();
  ASSIGN_OR_RETURN(slot->sequence, model_.NewSequence());
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    absl::Status status = model_.Reserve(*slot->sequence, cache_, tokens);
    if (!status.ok()) {
      model_.ResetSequence(*slot->sequence, cache_);
      return absl::ResourceExhaustedError(absl::StrCat("decode worker cannot reserve ", cache_.PagesFor(tokens),
                                                       " cache pages (", cache_.free_pages(), " free): ", status.message()));
    }
  }
  absl::StatusOr<std::string> random = SecureRandomHex(16);
  if (!random.ok()) {
    std::lock_guard<std::mutex> lock(backend_mu_);
    model_.ResetSequence(*slot->sequence, cache_);
    return random.status();
  }
  slot->lease_id = absl::StrCat("lease-", *random);
  slot->owner = owner;
  slot->request_id = request_id;
  slot->reserved_tokens = tokens;
  slot->lease_deadline = absl::Now() + ttl;
  std::lock_guard<std::mutex> lock(mu_);
  if (!slots_.emplace(slot->lease_id, slot).second) {  // 2^-128: a broken random source
    return absl::InternalError("lease id collision: the kernel's random source repeats");
  }
  cv_.notify_all();
  return slot->lease_id;
}

absl::Status DecodeWorker::ReleaseLease(const std::string& lease_id, const std::string& caller) {
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(lease_id);
    if (it == slots_.end()) return absl::NotFoundError(absl::StrCat("lease ", lease_id, " is not held"));
    if (it->second->owner != caller) return NotOwner(lease_id, caller);
    if (it->second->state == SlotState::kDecoding) return absl::OkStatus();
    slot = it->second;
    // ABORTED, like expiry: whoever still streams into the lease lost it (retryable), it
    // did not cancel anything itself.
    slot->end_status = absl::AbortedError(absl::StrCat("lease ", lease_id, " was released"));
  }
  FreeSlot(slot);
  return absl::OkStatus();
}

absl::Status DecodeWorker::RenewLease(const std::string& lease_id, absl::Duration ttl, const std::string& caller) {
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("lease ttl must be positive");
  ttl = std::min(ttl, max_lease_ttl_);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(lease_id);
  if (it == slots_.end() || it->second->state == SlotState::kDone) {
    return absl::AbortedError(absl::StrCat("lease ", lease_id, " is no longer held (expired or released)"));
  }
  if (it->second->owner != caller) return NotOwner(lease_id, caller);
  Slot& slot = *it->second;
  slot.lease_deadline = std::max(slot.lease_deadline, absl::Now() + ttl);
  return absl::OkStatus();
}

void DecodeWorker::FreeSlot(const std::shared_ptr<Slot>& slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot->state = SlotState::kDone;
    slot->finished = true;
    slots_.erase(slot->lease_id);
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(backend_mu_);
  if (slot->sequence) {
    model_.ResetSequence(*slot->sequence, cache_);
    slot->sequence.reset();
  }
}

absl::StatusOr<std::unique_ptr<transfer::CacheReceiver>> DecodeWorker::BeginHandoff(
    const transfer::HandoffHeader& header) {
  if (header.model_fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat("cache built by model ", header.model_fingerprint,
                                                      " cannot be imported by this decode worker (model ", fingerprint_, ")"));
  }
  if (header.cache_dtype != cache_.dtype() || header.latent_width != cache_.latent_width() ||
      header.row_bytes != static_cast<int64_t>(cache_.row_bytes()) ||
      static_cast<int64_t>(header.mla_layers.size()) != cache_.mla_layers()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cache layout mismatch: sender ", DTypeName(header.cache_dtype), " width ", header.latent_width, " x ",
        header.mla_layers.size(), " MLA layers; receiver ", DTypeName(cache_.dtype()), " width ", cache_.latent_width(),
        " x ", cache_.mla_layers(), " (start both workers with the same --cache-type)"));
  }
  // Sizes from the wire are compared without multiplying them (a negative or huge
  // kda_state_bytes must not pass by overflow).
  const int64_t kda_layers = model_.config().kda_layer_count();
  const int64_t kda_total = model_.KdaStateBytes();
  const bool kda_bytes_match = kda_layers == 0 ? header.kda_state_bytes == 0
                                               : header.kda_state_bytes >= 0 && kda_total % kda_layers == 0 &&
                                                     header.kda_state_bytes == kda_total / kda_layers;
  if (static_cast<int64_t>(header.kda_layers.size()) != kda_layers || !kda_bytes_match) {
    return absl::FailedPreconditionError(absl::StrCat("KDA state layout mismatch between prefill and decode workers: ",
                                                      header.kda_layers.size(), " layers of ", header.kda_state_bytes,
                                                      " bytes, expected ", kda_layers, " layers of ", kda_total,
                                                      " bytes in all"));
  }
  for (const std::vector<int32_t>* layers : {&header.mla_layers, &header.kda_layers}) {
    for (int32_t layer : *layers) {
      if (layer < 0 || layer >= model_.config().n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("handoff names layer ", layer, " of a ",
                                                       model_.config().n_layers, "-layer model"));
      }
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(header.lease_id);
  if (it == slots_.end()) {
    // The router made this lease; unknown now means it expired (or was released) before the
    // handoff: ABORTED, like the reaper, so clients see one retryable code for it.
    return absl::AbortedError(absl::StrCat("lease ", header.lease_id, " is unknown to this decode worker (expired or released)"));
  }
  std::shared_ptr<Slot> slot = it->second;
  if (slot->state != SlotState::kLeased && slot->state != SlotState::kReceiving) {
    return absl::FailedPreconditionError(absl::StrCat("lease ", header.lease_id, " already holds a complete cache"));
  }
  if (header.prompt_tokens <= 0 || header.prompt_tokens >= slot->reserved_tokens + 1) {
    return absl::InvalidArgumentError(absl::StrCat("handoff of ", header.prompt_tokens, " tokens does not fit lease ",
                                                   header.lease_id, " of ", slot->reserved_tokens, " tokens"));
  }
  slot->state = SlotState::kReceiving;
  const int64_t generation = ++slot->handoff_generation;
  return std::unique_ptr<transfer::CacheReceiver>(new Receiver(this, slot, header, generation));
}

absl::StatusOr<FinishReason> DecodeWorker::Decode(const DecodeParams& params,
                                                  const std::function<bool(const std::vector<int32_t>&)>& on_tokens,
                                                  const std::function<bool()>& cancelled) {
  if (params.max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens must be positive");
  std::shared_ptr<Slot> slot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(params.lease_id);
    if (it == slots_.end()) {
      return absl::AbortedError(absl::StrCat("lease ", params.lease_id, " is unknown (expired or released)"));
    }
    slot = it->second;
    if (slot->owner != params.caller) return NotOwner(params.lease_id, params.caller);
    if (slot->state != SlotState::kReady) {
      return absl::FailedPreconditionError(absl::StrCat("the cache of lease ", params.lease_id, " has not fully arrived"));
    }
    if (slot->prompt_tokens + 1 + params.max_new_tokens > slot->reserved_tokens + 1) {
      return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ", params.max_new_tokens, " exceeds lease ",
                                                     params.lease_id));
    }
    slot->sampler = std::make_unique<model::Sampler>(params.sampling);
    if (params.sampling.temperature > 0.0f) {
      // The prefill worker drew the first token from a sampler with the same seed: advance
      // ours by that one draw so the sequence of draws matches a single-process run.
      const float two[2] = {0.0f, 0.0f};
      slot->sampler->Sample(absl::MakeConstSpan(two, 2));
    }
    slot->next_input = slot->first_token;
    slot->remaining = params.max_new_tokens;
    slot->stop_token_ids = params.stop_token_ids;
    slot->state = SlotState::kDecoding;
    cv_.notify_all();
  }
  absl::StatusOr<FinishReason> result = absl::UnknownError("decode ended without a result");
  for (;;) {
    std::vector<int32_t> tokens;
    bool finished = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return !slot->out.empty() || slot->finished; });
      tokens.swap(slot->out);
      finished = slot->finished;
      if (finished) result = slot->end_status.ok() ? absl::StatusOr<FinishReason>(slot->reason) : slot->end_status;
    }
    if (!tokens.empty() && !on_tokens(tokens)) {
      result = absl::CancelledError("the decode stream's reader went away");
      break;
    }
    if (finished) break;
    if (cancelled()) {
      result = absl::CancelledError("request cancelled during decode");
      break;
    }
  }
  FreeSlot(slot);
  return result;
}

void DecodeWorker::SchedulerLoop() {
  for (;;) {
    std::unique_lock<std::mutex> backend_lock(backend_mu_, std::defer_lock);
    std::vector<std::shared_ptr<Slot>> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] {
        if (stopping_) return true;
        for (auto& [id, slot] : slots_) {
          if (slot->state == SlotState::kDecoding && !slot->finished) return true;
        }
        return false;
      });
      if (stopping_) return;
    }
    // Take the backend first, then collect: a slot freed after collection waits for this step.
    backend_lock.lock();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, slot] : slots_) {
        if (slot->state == SlotState::kDecoding && !slot->finished && slot->sequence) batch.push_back(slot);
      }
    }
    if (batch.empty()) continue;
    std::vector<model::BatchEntry> entries;
    entries.reserve(batch.size());
    for (auto& slot : batch) entries.push_back({slot->sequence.get(), absl::MakeConstSpan(&slot->next_input, 1), false});
    absl::StatusOr<std::vector<float>> logits = model_.Forward(entries, cache_);
    backend_lock.unlock();
    std::lock_guard<std::mutex> lock(mu_);
    steps_++;
    const int64_t vocab = model_.vocab();
    for (size_t i = 0; i < batch.size(); ++i) {
      Slot& slot = *batch[i];
      if (slot.state != SlotState::kDecoding || slot.finished) continue;
      if (!logits.ok()) {
        slot.end_status = absl::InternalError(absl::StrCat("decode step failed: ", logits.status().message()));
        slot.finished = true;
        continue;
      }
      const int32_t token = slot.sampler->Sample(absl::MakeConstSpan(logits->data() + i * vocab, vocab));
      slot.out.push_back(token);
      slot.next_input = token;
      slot.remaining--;
      if (std::find(slot.stop_token_ids.begin(), slot.stop_token_ids.end(), token) != slot.stop_token_ids.end()) {
        slot.reason = FinishReason::kStopToken;
        slot.finished = true;
      } else if (slot.remaining <= 0) {
        slot.reason = FinishReason::kLength;
        slot.finished = true;
      }
    }
    cv_.notify_all();
  }
}

void DecodeWorker::ReaperLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
    const absl::Time now = absl::Now();
    std::vector<std::shared_ptr<Slot>> expired;
    for (auto& [id, slot] : slots_) {
      if (slot->state != SlotState::kDecoding && slot->state != SlotState::kDone && now > slot->lease_deadline) {
        slot->end_status = absl::AbortedError(absl::StrCat("lease ", slot->lease_id, " for request ", slot->request_id,
                                                           " expired before decode started (cache not delivered in time)"));
        slot->state = SlotState::kDone;
        expired.push_back(slot);
      }
    }
    if (expired.empty()) continue;
    lock.unlock();
    for (auto& slot : expired) FreeSlot(slot);
    lock.lock();
  }
}

DecodeStats DecodeWorker::Stats() const {
  DecodeStats stats;
  stats.pages_free = cache_.free_pages();
  stats.pages_total = cache_.total_pages();
  stats.page_tokens = cache_.page_tokens();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, slot] : slots_) {
    if (slot->state == SlotState::kDecoding) {
      stats.sequences_active++;
    } else if (slot->state != SlotState::kDone) {
      stats.leases_active++;
    }
  }
  stats.steps = steps_;
  stats.draining = draining_;
  return stats;
}

void DecodeWorker::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

}  // namespace latentserve::decode
