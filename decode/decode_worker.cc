#include "decode/decode_worker.h"

#include "decode/decode_slot.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/secure_random.h"
#include "common/status.h"
#include "serving/metrics.h"

namespace latentserve::decode {


DecodeWorker::DecodeWorker(const model::Model& model, model::LatentCache& cache, std::string fingerprint,
                           absl::Duration max_lease_ttl, const DecodePrefixOptions& prefix)
    : model_(model),
      cache_(cache),
      prefix_options_(prefix),
      fingerprint_(std::move(fingerprint)),
      max_lease_ttl_(max_lease_ttl) {
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
  std::lock_guard<std::mutex> lock(backend_mu_);
  prefix_.MakeRoom(cache_.total_pages());  // unpinned entries; pinned ones go with prefix_
}

namespace {

absl::Status NotOwner(const std::string& lease_id, const std::string& caller) {
  return absl::PermissionDeniedError(
      absl::StrCat("lease ", lease_id, " belongs to another caller than ", caller.empty() ? "this one" : caller));
}

}  // namespace

absl::StatusOr<std::string> DecodeWorker::ReserveLease(const std::string& request_id, int64_t tokens,
                                                       absl::Duration ttl, const std::string& fingerprint,
                                                       const std::string& owner, absl::Span<const int32_t> prompt,
                                                       LeaseReuse* reuse, bool keep_prompt) {
  if (fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat("model fingerprint ", fingerprint, " does not match this decode worker's ",
                                                      fingerprint_, ": it serves a different model file"));
  }
  if (tokens <= 0 || tokens > max_context_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("lease of ", tokens, " tokens; this worker holds at most ",
                                                   max_context_tokens()));
  }
  if (ttl <= absl::ZeroDuration()) return absl::InvalidArgumentError("lease ttl must be positive");
  if (static_cast<int64_t>(prompt.size()) > tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", prompt.size(), " tokens in a lease of ", tokens));
  }
  if (!prompt.empty()) RETURN_IF_ERROR(model_.ValidateTokens(prompt));
  ttl = std::min(ttl, max_lease_ttl_);  // a caller cannot hold pages past the configured bound
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("decode worker is draining");
  }
  auto slot = std::make_shared<Slot>();
  slot->keep_prompt = keep_prompt;
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    absl::Status status = StartFromPrefix(*slot, prompt, tokens, reuse);
    if (!status.ok()) {
      slot->sequence.reset();
      return absl::ResourceExhaustedError(absl::StrCat("decode worker cannot reserve ", cache_.PagesFor(tokens),
                                                       " cache pages (", cache_.free_pages(), " free): ", status.message()));
    }
  }
  absl::StatusOr<std::string> random = SecureRandomHex(16);
  if (!random.ok()) {
    std::lock_guard<std::mutex> lock(backend_mu_);
    slot->sequence.reset();
    slot->resume_prefix.reset();
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
    if (it->second->state == SlotState::kDecoding || it->second->state == SlotState::kPrefilling) {
      return absl::OkStatus();
    }
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
  bool arrived = false;  // a complete cache that Decode never took (a max_tokens 1 request): keep it
  std::shared_ptr<model::Sequence> resume_prefix;
  {
    std::lock_guard<std::mutex> lock(mu_);
    arrived = slot->state == SlotState::kReady && slot->local_from < 0;
    slot->state = SlotState::kDone;
    slot->finished = true;
    slots_.erase(slot->lease_id);
    resume_prefix = std::move(slot->resume_prefix);
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(backend_mu_);
  if (arrived && slot->sequence) KeepArrived(*slot);
  slot->arrived_checkpoints.clear();  // device memory: dropped under the backend lock
  slot->sequence.reset();  // its pages go back to the cache (those a kept prompt shares stay)
  resume_prefix.reset();   // unless a prefix read still streams it (it drops it under this lock)
}

absl::StatusOr<FinishReason> DecodeWorker::Decode(const DecodeParams& params,
                                                  const std::function<bool(const std::vector<int32_t>&)>& on_tokens,
                                                  const std::function<bool()>& cancelled) {
  if (params.max_new_tokens <= 0) return absl::InvalidArgumentError("max_new_tokens must be positive");
  std::shared_ptr<Slot> slot;
  const auto find_ready = [&]() -> absl::Status {
    auto it = slots_.find(params.lease_id);
    if (it == slots_.end()) {
      return absl::AbortedError(absl::StrCat("lease ", params.lease_id, " is unknown (expired or released)"));
    }
    slot = it->second;
    if (slot->owner != params.caller) return NotOwner(params.lease_id, params.caller);
    if (slot->state != SlotState::kReady) {
      return absl::FailedPreconditionError(absl::StrCat("the cache of lease ", params.lease_id, " has not fully arrived"));
    }
    return absl::OkStatus();
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(find_ready());
  }
  if (slot->local_from < 0) {
    // A cache that arrived by handoff is kept while it still ends at the prompt: once the
    // slot decodes, the scheduler appends to it at any moment.
    std::lock_guard<std::mutex> backend_lock(backend_mu_);
    KeepArrived(*slot);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(find_ready());  // expiry or a release may have come in between
    // The lease reserved the prompt (and some room); pages grow while decoding, up to the cache.
    if (slot->prompt_tokens + params.max_new_tokens > max_context_tokens()) {
      return absl::InvalidArgumentError(absl::StrCat("prompt of ", slot->prompt_tokens, " tokens + max_new_tokens ",
                                                     params.max_new_tokens, " exceeds this worker's ",
                                                     max_context_tokens(), "-token cache"));
    }
    slot->sampler = std::make_unique<model::Sampler>(params.sampling);
    if (slot->local_from >= 0) {
      slot->state = SlotState::kPrefilling;  // the prompt's rest is computed here, its first token sampled here
    } else if (params.sampling.temperature > 0.0f) {
      // The prefill worker drew the first token from a sampler with the same seed: advance
      // ours by that one draw so the sequence of draws matches a single-process run.
      const float two[2] = {0.0f, 0.0f};
      slot->sampler->Sample(absl::MakeConstSpan(two, 2));
    }
    slot->next_input = slot->first_token;
    slot->remaining = params.max_new_tokens;
    slot->stop_token_ids = params.stop_token_ids;
    if (slot->state != SlotState::kPrefilling) slot->state = SlotState::kDecoding;
    cv_.notify_all();
  }
  absl::StatusOr<FinishReason> result = absl::UnknownError("decode ended without a result");
  if (absl::Status prefilled = PrefillHere(*slot, params, cancelled); !prefilled.ok()) {
    FreeSlot(slot);
    return prefilled;
  }
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

bool DecodeWorker::ReleaseEndedSequences() {
  bool released = false;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, slot] : slots_) {
    if (slot->state == SlotState::kDecoding && slot->finished && slot->sequence) {
      slot->sequence.reset();
      released = true;
    }
  }
  return released;
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
    // Pages grow one token ahead of each sequence. When pages run out, the sequences that find
    // none this step (the later ones in slot order) stop here (kCacheFull) and their pages go
    // to the others at once: running out ends some requests early, never the whole batch.
    std::vector<std::shared_ptr<Slot>> out_of_pages;
    batch.erase(std::remove_if(batch.begin(), batch.end(),
                               [&](const std::shared_ptr<Slot>& slot) {
                                 if (sequences_.PrepareAppend(*slot->sequence, 1).ok()) return false;
                                 // Cached prefixes, then requests that already ended, give their
                                 // pages back before a request stops short.
                                 if (prefix_.MakeRoom(2) && sequences_.PrepareAppend(*slot->sequence, 1).ok()) {
                                   return false;
                                 }
                                 if (ReleaseEndedSequences() && sequences_.PrepareAppend(*slot->sequence, 1).ok()) {
                                   return false;
                                 }
                                 out_of_pages.push_back(slot);
                                 slot->sequence.reset();  // for the sequences after it, this step
                                 return true;
                               }),
                batch.end());
    if (!out_of_pages.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& slot : out_of_pages) {
        slot->reason = FinishReason::kCacheFull;
        slot->finished = true;
        cache_full_stops_++;
      }
      cv_.notify_all();
    }
    if (batch.empty()) continue;
    std::vector<model::BatchEntry> entries;
    entries.reserve(batch.size());
    for (auto& slot : batch) entries.push_back({slot->sequence.get(), absl::MakeConstSpan(&slot->next_input, 1), false});
    // A batch whose rows all decode greedily takes its tokens from the device (the logits stay
    // there); otherwise each row's token is drawn on the host, outside mu_ and in parallel: a
    // batch's sampler is the scheduler's alone once the slot decodes (set at admission, before
    // kDecoding). A slot cancelled meanwhile draws once for nothing; its token is dropped below.
    const bool greedy =
        std::all_of(batch.begin(), batch.end(), [](const auto& slot) { return slot->sampler->greedy(); });
    if (batch.size() > 1 && !sample_pool_) sample_pool_ = model::NewSamplingPool();
    std::vector<int32_t> tokens(batch.size(), 0);
    const absl::Time step_start = absl::Now();
    absl::Status stepped;
    absl::Span<const float> logits;
    if (greedy) {
      absl::StatusOr<absl::Span<const int32_t>> ids = graphs_.GreedyStep(entries, sample_pool_.get());
      stepped = ids.status();
      if (ids.ok()) std::copy(ids->begin(), ids->end(), tokens.begin());
    } else {
      absl::StatusOr<absl::Span<const float>> rows = graphs_.Step(entries);
      stepped = rows.status();
      if (rows.ok()) logits = *rows;
    }
    const absl::Time step_end = absl::Now();
    backend_lock.unlock();
    if (stepped.ok() && !greedy) {
      std::vector<model::Sampler*> samplers;
      for (auto& slot : batch) samplers.push_back(slot->sampler.get());
      model::SampleRows(logits, model_.vocab(), samplers, absl::MakeSpan(tokens), sample_pool_.get());
    }
    std::vector<std::pair<std::string, serving::LogValue>> step_log;
    {  // the slots, under mu_
      std::lock_guard<std::mutex> lock(mu_);
      steps_++;
      for (size_t i = 0; i < batch.size(); ++i) {
        Slot& slot = *batch[i];
        if (slot.state != SlotState::kDecoding || slot.finished) continue;
        if (!stepped.ok()) {
          slot.end_status = absl::InternalError(absl::StrCat("decode step failed: ", stepped.message()));
          slot.finished = true;
          continue;
        }
        const int32_t token = tokens[i];
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
      step_log = CountStep(step_start, step_end, absl::Now(), static_cast<int64_t>(batch.size()));
    }
    if (!step_log.empty()) serving::LogEvent("decode", "decode_steps", "", step_log);
  }
}

std::vector<std::pair<std::string, serving::LogValue>> DecodeWorker::CountStep(absl::Time start, absl::Time end,
                                                                              absl::Time sampled, int64_t batch) {
  const double forward = absl::ToDoubleSeconds(end - start), sampling = absl::ToDoubleSeconds(sampled - end);
  step_seconds_ += forward;
  sample_seconds_ += sampling;
  // Where a decode step's time goes, for an operator (and the batched-decode benchmark): the
  // sequences of the window's steps, a step's forward (its greedy tokens, or its logits, on the
  // host included) and the host's sampling. A window ends when the batch changes or after kStepLogInterval; one that
  // ends by a change before kStepLogMinWindow is not logged (requests joining and leaving every
  // step would otherwise log every step), so at most one line a kStepLogMinWindow.
  StepWindow& w = step_window_;
  const auto close = [&w](absl::Time until) {
    const double steps = static_cast<double>(w.steps);
    std::vector<std::pair<std::string, serving::LogValue>> fields = {
        {"batch", w.batch},
        {"steps", w.steps},
        {"seconds", absl::ToDoubleSeconds(until - w.since)},
        {"forward_ms_per_step", 1e3 * w.step_seconds / steps},
        {"sample_ms_per_step", 1e3 * w.sample_seconds / steps}};
    w = StepWindow{};
    return fields;
  };
  std::vector<std::pair<std::string, serving::LogValue>> fields;
  if (w.steps > 0 && batch != w.batch) {
    if (start - w.since >= kStepLogMinWindow) {
      fields = close(start);
    } else {
      w = StepWindow{};
    }
  }
  if (w.steps == 0) {
    w.since = start;
    w.batch = batch;
  }
  w.steps++;
  w.step_seconds += forward;
  w.sample_seconds += sampling;
  if (fields.empty() && sampled - w.since >= kStepLogInterval) fields = close(sampled);
  return fields;
}

void DecodeWorker::ReaperLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
    const absl::Time now = absl::Now();
    std::vector<std::shared_ptr<Slot>> expired;
    for (auto& [id, slot] : slots_) {
      if (slot->state != SlotState::kDecoding && slot->state != SlotState::kPrefilling &&
          slot->state != SlotState::kDone && now > slot->lease_deadline) {
        slot->end_status = absl::AbortedError(absl::StrCat("lease ", slot->lease_id, " for request ", slot->request_id,
                                                           " expired before decode started (cache not delivered in time)"));
        slot->state = SlotState::kDone;
        expired.push_back(slot);
        leases_expired_++;
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
  stats.prefix = prefix_.Stats();  // before mu_: its lock may wait for a device copy
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, slot] : slots_) {
    if (slot->state == SlotState::kDecoding || slot->state == SlotState::kPrefilling) {
      stats.sequences_active++;
    } else if (slot->state != SlotState::kDone) {
      stats.leases_active++;
    }
  }
  stats.steps = steps_;
  stats.step_seconds = step_seconds_;
  stats.sample_seconds = sample_seconds_;
  stats.leases_expired = leases_expired_;
  stats.cache_full_stops = cache_full_stops_;
  stats.handoffs_admitted = handoffs_admitted_;
  stats.handoff_host_bytes = handoff_host_bytes_;
  stats.draining = draining_;
  stats.local_prefills = local_prefills_;
  stats.prefix_reads = prefix_reads_;
  stats.prefix_read_bytes = prefix_read_bytes_;
  return stats;
}

void DecodeWorker::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

}  // namespace latentserve::decode
