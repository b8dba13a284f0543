// DecodeWorker's prefix reuse (docs/serving.md "Prefix reuse"): where a lease starts (a
// cached prefix, or nothing), the local prefill of a prompt's uncached rest, and keeping each
// finished prompt in the prefix cache (cache/prefix_cache.h).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "decode/decode_slot.h"
#include "decode/decode_worker.h"
#include "decode/local_prefill.h"
#include "serving/metrics.h"

namespace latentserve::decode {

absl::Status DecodeWorker::StartFromPrefix(Slot& slot, absl::Span<const int32_t> prompt, int64_t tokens,
                                           LeaseReuse* reuse) {
  LeaseReuse start;
  int64_t prompt_tokens = 0;
  if (prefix_.enabled() && !prompt.empty()) {
    slot.prompt_ids.assign(prompt.begin(), prompt.end());
    prompt_tokens = static_cast<int64_t>(prompt.size());
    cache::PrefixMatch match = prefix_.Find(prompt);
    if (match.entry >= 0) {
      absl::StatusOr<std::unique_ptr<model::Sequence>> resumed = prefix_.Resume(match);
      if (resumed.ok()) {
        slot.sequence = std::move(*resumed);
        start.cached_tokens = match.resume_tokens;
      }
    } else {
      prefix_.CountMiss();
    }
    if (prompt_tokens - start.cached_tokens <= prefix_options_.local_prefill_max_tokens) {
      // A short prompt with no usable prefix is prefilled here too (its checkpoints then serve later prompts).
      if (start.cached_tokens > 0 || prompt_tokens <= prefix_options_.local_prefill_max_tokens) {
        start.local_prefill = true;
        slot.local_from = start.cached_tokens;
        slot.prompt_tokens = prompt_tokens;
      }
    } else if (start.cached_tokens > 0) {
      // A long rest goes through a prefill worker that reads this prefix (ReadPrefix) and
      // hands off only the rest: keep the prefix as it is for that read.
      absl::StatusOr<std::unique_ptr<model::Sequence>> share = sequences_.Fork(*slot.sequence);
      if (share.ok()) {
        slot.resumed_tokens = start.cached_tokens;
        slot.resume_prefix = std::move(*share);
      } else {
        slot.sequence.reset();  // no room for the copy of its KDA state: computed whole
        start.cached_tokens = 0;
      }
    }
  }
  if (!slot.sequence) {
    ASSIGN_OR_RETURN(slot.sequence, sequences_.New());
  }
  if (!start.local_prefill && prompt_tokens > 0 && slot.keep_prompt) {
    PlanHandoffCheckpoints(slot, prompt_tokens, start);
  }
  // The lease's pages; a handoff after a cached prefix writes its rows from the prefix's end,
  // so the partial page it shares with the prefix cache is copied now (copy-on-write).
  const auto reserve = [&]() -> absl::Status {
    RETURN_IF_ERROR(sequences_.Reserve(*slot.sequence, tokens));
    if (slot.resumed_tokens > 0) {
      RETURN_IF_ERROR(sequences_.PrepareAppend(*slot.sequence, prompt_tokens - slot.resumed_tokens));
    }
    return absl::OkStatus();
  };
  absl::Status reserved = reserve();
  // Cached prefixes give way to a request (MakeRoom is false at once when none can go).
  if (!reserved.ok() && prefix_.MakeRoom(cache_.PagesFor(tokens))) {
    reserved = reserve();
  }
  if (!reserved.ok()) {
    slot.resume_prefix.reset();
    return reserved;
  }
  if (start.local_prefill) slot.state = SlotState::kReady;  // nothing to hand off: Decode computes the rest
  if (reuse) *reuse = start;
  return absl::OkStatus();
}

absl::Status DecodeWorker::PrefillHere(Slot& slot, const DecodeParams& params, const std::function<bool()>& cancelled) {
  if (slot.local_from < 0) return absl::OkStatus();  // arrived by handoff (kept in Decode)
  LocalPrefillParams local;
  local.chunk_tokens = prefix_options_.chunk_tokens;
  local.checkpoint_interval_tokens = prefix_options_.checkpoint_interval_tokens;
  local.backend_mu = &backend_mu_;
  local.cancelled = cancelled;
  const auto rest = absl::MakeConstSpan(slot.prompt_ids).subspan(slot.local_from);
  ASSIGN_OR_RETURN(LocalPrefillResult prefilled,
                   PrefillWithCheckpoints(model_, cache_, *slot.sequence, rest, local));
  const int32_t first = slot.sampler->Sample(prefilled.last_logits);
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    KeepPrompt(slot, std::move(prefilled.checkpoints));
  }
  std::lock_guard<std::mutex> lock(mu_);
  local_prefills_++;
  if (slot.state != SlotState::kPrefilling) return LostLease(slot);
  slot.first_token = first;
  slot.next_input = first;
  slot.out.push_back(first);
  slot.remaining = params.max_new_tokens - 1;  // the first token counts: no prefill worker sampled it
  if (std::find(slot.stop_token_ids.begin(), slot.stop_token_ids.end(), first) != slot.stop_token_ids.end()) {
    slot.reason = FinishReason::kStopToken;
    slot.finished = true;
  } else if (slot.remaining <= 0) {
    slot.reason = FinishReason::kLength;
    slot.finished = true;
  }
  slot.state = SlotState::kDecoding;
  cv_.notify_all();
  return absl::OkStatus();
}

void DecodeWorker::PlanHandoffCheckpoints(Slot& slot, int64_t prompt_tokens, LeaseReuse& start) {
  // Each checkpoint is a full KDA state (~43 MiB for the full-size model). The budget must hold
  // the prompt's pages, its end checkpoint and the interior ones: the interval is doubled until
  // they fit (and kMaxHandoffCheckpoints bounds one handoff's allocations whatever the budget).
  constexpr int64_t kMaxHandoffCheckpoints = 1024;
  const cache::KdaLayout& kda = sequences_.kda_layout();
  const int64_t checkpoint_bytes = kda.layers > 0 ? kda.layer_bytes() * kda.layers : 0;
  int64_t interval = prefix_options_.checkpoint_interval_tokens;
  if (!prefix_.enabled() || interval <= 0 || checkpoint_bytes <= 0) return;
  const int64_t page_bytes = static_cast<int64_t>(cache_.page_bytes_per_layer()) * cache_.mla_layers();
  // Other leases' checkpoints still to arrive count against the budget too (planned under the
  // backend lock, so one plan at a time).
  const int64_t room = prefix_options_.budget_bytes - cache_.PagesFor(prompt_tokens) * page_bytes - checkpoint_bytes -
                       handoff_checkpoint_bytes_->load();
  const int64_t fit = std::min(room / checkpoint_bytes, kMaxHandoffCheckpoints);
  const int64_t resumed = start.cached_tokens;
  const auto interior = [&](int64_t every) { return (prompt_tokens - 1) / every - resumed / every; };
  if (fit <= 0 || interior(interval) <= 0) return;
  while (interior(interval) > fit) interval *= 2;  // ends once interval >= prompt_tokens (none inside)
  if (interior(interval) <= 0) return;
  slot.handoff_checkpoint_interval = interval;
  slot.handoff_max_checkpoints = interior(interval);
  start.checkpoint_interval_tokens = interval;
  const int64_t reserved = slot.handoff_max_checkpoints * checkpoint_bytes;
  handoff_checkpoint_bytes_->fetch_add(reserved);
  slot.handoff_checkpoint_reservation = std::shared_ptr<void>(
      nullptr, [counter = handoff_checkpoint_bytes_, reserved](void*) { counter->fetch_sub(reserved); });
}

void DecodeWorker::KeepArrived(Slot& slot) {
  // The cache came by handoff: its KDA state is the prompt's end; keep it with that checkpoint
  // and the interior ones that came with it (dropped here, under the backend lock, if not kept).
  std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints = std::move(slot.arrived_checkpoints);
  if (!prefix_.enabled() || !slot.keep_prompt || !slot.sequence || static_cast<int64_t>(slot.prompt_ids.size()) != slot.prompt_tokens ||
      slot.sequence->cached_tokens() != slot.prompt_tokens) {
    return;
  }
  absl::StatusOr<std::unique_ptr<cache::KdaCheckpoint>> end = sequences_.Checkpoint(*slot.sequence);
  if (!end.ok()) return;  // the answer does not need it
  const bool interior = !checkpoints.empty();
  checkpoints.push_back(std::move(*end));
  if (!interior) {
    KeepPrompt(slot, std::move(checkpoints));
    return;
  }
  if (InsertPrompt(slot, std::move(checkpoints)).ok()) return;
  // No room for the interior checkpoints next to the pinned prefixes: the end alone may fit.
  end = sequences_.Checkpoint(*slot.sequence);
  if (!end.ok()) return;
  std::vector<std::unique_ptr<cache::KdaCheckpoint>> end_only;
  end_only.push_back(std::move(*end));
  KeepPrompt(slot, std::move(end_only));
}

absl::Status DecodeWorker::InsertPrompt(Slot& slot, std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints) {
  if (!prefix_.enabled() || slot.prompt_ids.empty() || !slot.keep_prompt) return absl::OkStatus();
  return prefix_.Insert(slot.prompt_ids, *slot.sequence, std::move(checkpoints)).status();
}

void DecodeWorker::KeepPrompt(Slot& slot, std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints) {
  // A prompt that does not fit next to the pinned prefixes is simply not kept.
  absl::Status kept = InsertPrompt(slot, std::move(checkpoints));
  if (!kept.ok()) {
    serving::LogEvent(serving::LogLevel::kWarning, "decode", "prefix_not_kept", slot.request_id,
                      {{"tokens", static_cast<int64_t>(slot.prompt_ids.size())}, {"error", std::string(kept.message())}});
  }
}

absl::StatusOr<int64_t> DecodeWorker::PinSession(const std::string& session_id, absl::Span<const int32_t> tokens) {
  if (session_id.empty()) return absl::InvalidArgumentError("a session pin needs a session id");
  if (!prefix_.enabled()) {
    return absl::FailedPreconditionError("this decode worker has no prefix cache (start it with --prefix-cache-mib)");
  }
  std::lock_guard<std::mutex> backend_lock(backend_mu_);
  const int64_t entry = prefix_.FindExact(tokens);
  if (entry < 0) {
    return absl::NotFoundError(absl::StrCat("no cached prefix holds the session's ", tokens.size(),
                                            " tokens (not kept: see prefix_not_kept in this worker's log)"));
  }
  if (session_pins_.size() >= kMaxSessionPins && !session_pins_.count(session_id)) {
    return absl::ResourceExhaustedError(absl::StrCat("this decode worker already pins ", kMaxSessionPins,
                                                     " sessions; close sessions first"));
  }
  RETURN_IF_ERROR(prefix_.SetPinned(entry, true));
  int64_t previous = -1;
  {
    auto [it, inserted] = session_pins_.emplace(session_id, entry);
    if (!inserted) previous = std::exchange(it->second, entry);
  }
  if (previous >= 0 && previous != entry) ReleasePinLocked(previous);
  return prefix_.EntryBytes(entry);
}

void DecodeWorker::DropSession(const std::string& session_id) {
  std::lock_guard<std::mutex> backend_lock(backend_mu_);
  auto it = session_pins_.find(session_id);
  if (it == session_pins_.end()) return;
  const int64_t entry = it->second;
  session_pins_.erase(it);
  ReleasePinLocked(entry);
}

void DecodeWorker::ReleasePinLocked(int64_t entry) {
  for (const auto& [id, pinned] : session_pins_) {
    if (pinned == entry) return;  // another session still pins it
  }
  // Its pages go back once no lease forked from it holds them.
  prefix_.Erase(entry);
}

std::vector<uint64_t> DecodeWorker::PrefixBlockHashes(int64_t max_hashes) const {
  return prefix_.BlockHashes(cache_.page_tokens(), max_hashes);
}

}  // namespace latentserve::decode
