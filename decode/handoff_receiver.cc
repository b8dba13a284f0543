// DecodeWorker's side of the cache handoff: BeginHandoff checks the header
// (transfer::CheckHeader) and admits the handoff into a leased slot; a
// transfer::HandoffAssembler checks order, completeness and checksums and writes into the
// slot's sequence; the hooks here tie it to the lease (live while the slot is receiving this
// generation, ready on admission, back to leased on abort).
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "decode/decode_slot.h"
#include "decode/decode_worker.h"
#include "transfer/handoff_assembler.h"

namespace latentserve::decode {

absl::Status DecodeWorker::LostLease(const Slot& slot) {
  if (slot.state == SlotState::kDone && !slot.end_status.ok()) return slot.end_status;
  return absl::AbortedError(absl::StrCat("lease ", slot.lease_id, " was taken over by another handoff"));
}

absl::StatusOr<std::unique_ptr<transfer::CacheReceiver>> DecodeWorker::BeginHandoff(
    const transfer::HandoffHeader& header) {
  RETURN_IF_ERROR(transfer::CheckHeader(header, {fingerprint_, &sequences_, model_.config().n_layers}));
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
  // Rows before the lease's resumed prefix end are its cached pages' (read-only): the handoff
  // starts exactly there (its partial page was copied when the lease was made).
  if (header.cached_tokens != slot->resumed_tokens) {
    return absl::FailedPreconditionError(absl::StrCat("handoff starts at token ", header.cached_tokens, "; lease ",
                                                      header.lease_id, " resumed ", slot->resumed_tokens,
                                                      " cached prompt tokens and takes rows from there"));
  }
  std::string nccl_comm_key;
  if (header.transport == "nccl") {
    if (nccl_ == nullptr || slot->nccl_comm_key.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("an NCCL handoff for lease ", header.lease_id,
                                                        " without its OpenDeviceHandoff (or on a worker without NCCL)"));
    }
    nccl_comm_key = slot->nccl_comm_key;
  }
  slot->state = SlotState::kReceiving;
  const int64_t generation = ++slot->handoff_generation;
  const int64_t prompt_tokens = header.prompt_tokens;
  const int64_t new_tokens = header.prompt_tokens - header.cached_tokens;  // CheckHeader: 0 <= cached < prompt
  transfer::AssemblyHooks hooks;
  // Whether this handoff still owns the slot (a retried handoff bumps the generation).
  hooks.check_live = [this, slot, generation]() -> absl::Status {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot->state != SlotState::kReceiving || slot->handoff_generation != generation) return LostLease(*slot);
    return absl::OkStatus();
  };
  hooks.admit = [this, slot, generation, prompt_tokens, new_tokens](
                    const transfer::HandoffEnd& end, const transfer::AssemblyStats& stats,
                    transfer::ArrivedCheckpoints& checkpoints) -> absl::Status {
    if (end.first_token < 0 || end.first_token >= model_.vocab()) {
      return absl::InvalidArgumentError(absl::StrCat("first token ", end.first_token, " out of range"));
    }
    std::shared_ptr<model::Sequence> resume_prefix;  // no longer read: the cache is complete
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (slot->state != SlotState::kReceiving || slot->handoff_generation != generation) return LostLease(*slot);
      RETURN_IF_ERROR(sequences_.Advance(*slot->sequence, new_tokens));
      slot->prompt_tokens = prompt_tokens;
      slot->first_token = end.first_token;
      slot->state = SlotState::kReady;
      slot->arrived_checkpoints = std::move(checkpoints);  // kept with the prompt (KeepArrived)
      resume_prefix = std::move(slot->resume_prefix);
      handoffs_admitted_++;
      handoff_host_bytes_ += stats.host_bytes;
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> backend_lock(backend_mu_);
    resume_prefix.reset();
    return absl::OkStatus();
  };
  hooks.aborted = [this, slot, generation](const absl::Status&) {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot->state == SlotState::kReceiving && slot->handoff_generation == generation) {
      slot->state = SlotState::kLeased;  // a retried handoff may still fill the lease
    }
  };
  transfer::AssemblyTarget target{&sequences_, slot->sequence.get(), &backend_mu_};
  target.checkpoints = {slot->handoff_checkpoint_interval, slot->handoff_max_checkpoints};
  std::function<absl::Status()> check_live = hooks.check_live;
  auto assembler = std::make_unique<transfer::HandoffAssembler>(header, target, std::move(hooks));
  if (nccl_comm_key.empty()) return std::unique_ptr<transfer::CacheReceiver>(std::move(assembler));
  // The rows arrive over NCCL into the same pages; the assembler verifies them as they land.
  return nccl_->Wrap(std::move(assembler), header, target, std::move(check_live), std::move(nccl_comm_key));
}

}  // namespace latentserve::decode
