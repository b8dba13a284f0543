// HandoffAssembler's KDA checkpoints inside the prompt (KdaStateBytes::position > 0): the
// receiver asked for the state at every multiple of its checkpoint interval past the lease's
// cached prefix, so that a later prompt sharing only part of this one can resume there.
// Every checkpoint is a full KDA state in device memory, so its position, order and count are
// checked before anything is allocated, and its bytes like the final state's (offsets, sizes,
// XXH64).
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "transfer/checksum.h"
#include "transfer/handoff_assembler.h"

namespace latentserve::transfer {

absl::Status HandoffAssembler::CheckCheckpointStart(int64_t position) const {
  const CheckpointPolicy& policy = target_.checkpoints;
  if (policy.interval_tokens <= 0 || kda_buffers_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", position,
                                                   " in a handoff whose receiver asked for none"));
  }
  if (pending_) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", position, " began while the one at ",
                                                   pending_->tokens(), " has ", pending_layer_, " of ",
                                                   kda_buffers_.size(), " layers"));
  }
  if (final_kda_started_) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", position, " after the final state began"));
  }
  if (position <= header_.cached_tokens || position >= header_.prompt_tokens || position % policy.interval_tokens != 0) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", position, ": not a multiple of ",
                                                   policy.interval_tokens, " inside (", header_.cached_tokens, ", ",
                                                   header_.prompt_tokens, ")"));
  }
  if (!checkpoints_.empty() && position <= checkpoints_.back()->tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", position, " after the one at ",
                                                   checkpoints_.back()->tokens(), " (ascending order)"));
  }
  if (static_cast<int64_t>(checkpoints_.size()) >= policy.max_checkpoints) {
    return absl::InvalidArgumentError(absl::StrCat("more than the ", policy.max_checkpoints,
                                                   " KDA checkpoints this handoff may carry"));
  }
  return absl::OkStatus();
}

absl::Status HandoffAssembler::OnCheckpointState(const KdaStateBytes& chunk) {
  if (!pending_ || pending_->tokens() != chunk.position) {
    RETURN_IF_ERROR(CheckCheckpointStart(chunk.position));
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    ASSIGN_OR_RETURN(pending_, target_.table->NewCheckpoint(chunk.position));
    pending_layer_ = 0;
    pending_buffer_.clear();
  }
  if (chunk.kda_index != pending_layer_) {
    return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", chunk.position, ": ordinal ", chunk.kda_index,
                                                   " where ", pending_layer_, " comes next"));
  }
  if (chunk.view) {
    if (chunk.offset != 0 || !pending_buffer_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint view of ordinal ", chunk.kda_index,
                                                     " is not the layer's whole state"));
    }
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    ASSIGN_OR_RETURN(int64_t host_bytes, cache::CopyKdaState(*chunk.view, cache::KdaOf(*pending_, pending_layer_)));
    stats_.host_bytes += host_bytes;
    stats_.chunks++;
    stats_.payload_bytes += header_.kda_state_bytes;
    pending_layer_++;
  } else {
    // Empty pieces are refused too: every chunk must move the layer forward (bounded count).
    const int64_t size = static_cast<int64_t>(chunk.payload().size());
    if (chunk.offset != static_cast<int64_t>(pending_buffer_.size()) || size <= 0 ||
        size > header_.kda_state_bytes - chunk.offset) {
      return absl::InvalidArgumentError(absl::StrCat("KDA checkpoint at ", chunk.position, ", ordinal ",
                                                     chunk.kda_index, ": bytes at ", chunk.offset, " (+", size,
                                                     ") do not continue ", pending_buffer_.size(), " of ",
                                                     header_.kda_state_bytes));
    }
    if (Xxh64(chunk.payload()) != chunk.checksum) {
      return absl::DataLossError(absl::StrCat("checksum mismatch in the KDA checkpoint at ", chunk.position,
                                              ", ordinal ", chunk.kda_index, ", offset ", chunk.offset));
    }
    pending_buffer_.append(chunk.payload());
    stats_.chunks++;
    stats_.payload_bytes += size;
    if (static_cast<int64_t>(pending_buffer_.size()) == header_.kda_state_bytes) {
      std::lock_guard<std::mutex> lock(*target_.device_mu);
      RETURN_IF_ERROR(hooks_.check_live());
      RETURN_IF_ERROR(target_.table->ImportKdaState(*pending_, pending_layer_, pending_buffer_));
      stats_.host_bytes += static_cast<int64_t>(pending_buffer_.size());
      std::string().swap(pending_buffer_);
      pending_layer_++;
    }
  }
  if (pending_layer_ == static_cast<int64_t>(kda_buffers_.size())) {
    checkpoints_.push_back(std::move(pending_));
    stats_.checkpoints++;
  }
  return absl::OkStatus();
}

void HandoffAssembler::DropCheckpoints() {
  if (checkpoints_.empty() && !pending_) return;
  std::lock_guard<std::mutex> lock(*target_.device_mu);
  checkpoints_.clear();
  pending_.reset();
  std::string().swap(pending_buffer_);
}

}  // namespace latentserve::transfer
