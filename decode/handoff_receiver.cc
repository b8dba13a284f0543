// DecodeWorker's side of the cache handoff: BeginHandoff admits a handoff into a leased slot
// and its Receiver checks order, completeness and checksums of the rows and KDA state.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "decode/decode_slot.h"
#include "decode/decode_worker.h"
#include "transfer/checksum.h"

namespace latentserve::decode {

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
      RETURN_IF_ERROR(worker_->cache_.ImportRows(chunk.mla_index, slot_->sequence->pages(),
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
      RETURN_IF_ERROR(worker_->sequences_.ImportKdaState(*slot_->sequence, chunk.kda_index, buffer));
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
    RETURN_IF_ERROR(worker_->sequences_.Advance(*slot_->sequence, header_.prompt_tokens));
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

}  // namespace latentserve::decode
