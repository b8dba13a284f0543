#include "transfer/handoff_assembler.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {

absl::Status CheckHeader(const HandoffHeader& header, const LocalLayout& local) {
  const cache::PagePool& pool = local.table->pool();
  if (header.model_fingerprint != local.fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("cache built by model ", header.model_fingerprint,
                                                      " cannot be imported by this decode worker (model ",
                                                      local.fingerprint, ")"));
  }
  if (header.cache_dtype != pool.dtype() || header.latent_width != pool.latent_width() ||
      header.row_bytes != static_cast<int64_t>(pool.row_bytes()) ||
      static_cast<int64_t>(header.mla_layers.size()) != pool.mla_layers()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cache layout mismatch: sender ", DTypeName(header.cache_dtype), " width ", header.latent_width, " x ",
        header.mla_layers.size(), " MLA layers; receiver ", DTypeName(pool.dtype()), " width ", pool.latent_width(),
        " x ", pool.mla_layers(), " (start both workers with the same --cache-type)"));
  }
  // Sizes from the wire are compared without multiplying them (a negative or huge
  // kda_state_bytes must not pass by overflow).
  const int64_t kda_layers = local.table->kda_layout().layers;
  const int64_t kda_layer_bytes = local.table->kda_layout().layer_bytes();
  const bool kda_bytes_match =
      kda_layers == 0 ? header.kda_state_bytes == 0 : header.kda_state_bytes == kda_layer_bytes;
  if (static_cast<int64_t>(header.kda_layers.size()) != kda_layers || !kda_bytes_match) {
    return absl::FailedPreconditionError(absl::StrCat("KDA state layout mismatch between prefill and decode workers: ",
                                                      header.kda_layers.size(), " layers of ", header.kda_state_bytes,
                                                      " bytes, expected ", kda_layers, " layers of ",
                                                      kda_layer_bytes * kda_layers, " bytes in all"));
  }
  if (header.prompt_tokens <= 0 || header.cached_tokens < 0 || header.cached_tokens >= header.prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("handoff of ", header.prompt_tokens, " prompt tokens from cached token ",
                                                   header.cached_tokens, " (0 <= cached < prompt)"));
  }
  for (const std::vector<int32_t>* layers : {&header.mla_layers, &header.kda_layers}) {
    for (int32_t layer : *layers) {
      if (layer < 0 || layer >= local.model_layers) {
        return absl::InvalidArgumentError(absl::StrCat("handoff names layer ", layer, " of a ", local.model_layers,
                                                       "-layer model"));
      }
    }
  }
  return absl::OkStatus();
}

HandoffAssembler::HandoffAssembler(HandoffHeader header, AssemblyTarget target, AssemblyHooks hooks)
    : header_(std::move(header)), target_(target), hooks_(std::move(hooks)),
      latent_next_(header_.mla_layers.size(), header_.cached_tokens), kda_buffers_(header_.kda_layers.size()) {}

HandoffAssembler::~HandoffAssembler() {
  if (!finished_) Abort(absl::CancelledError("handoff dropped"));
  DropCheckpoints();  // those the receiver did not take on admission
}

absl::Status HandoffAssembler::CheckOrder(int64_t mla_index, int64_t first_token, int64_t token_count) const {
  if (mla_index < 0 || mla_index >= static_cast<int64_t>(latent_next_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("latent chunk for MLA ordinal ", mla_index, " of ",
                                                   latent_next_.size()));
  }
  if (first_token != latent_next_[mla_index] || token_count <= 0 ||
      token_count > header_.prompt_tokens - first_token) {
    return absl::InvalidArgumentError(absl::StrCat("latent chunk of MLA ordinal ", mla_index, " covers [",
                                                   first_token, ", +", token_count,
                                                   "), expected to start at ", latent_next_[mla_index],
                                                   " within ", header_.prompt_tokens, " prompt tokens"));
  }
  return absl::OkStatus();
}

absl::Status HandoffAssembler::CheckLatentChunk(const LatentRows& chunk) const {
  RETURN_IF_ERROR(CheckOrder(chunk.mla_index, chunk.first_token, chunk.token_count));
  if (chunk.view) {
    // A view of the sender's cache in this process: its layout was checked with the header.
    if (chunk.view->mla_index != chunk.mla_index || chunk.view->first_token != chunk.first_token ||
        chunk.view->token_count != chunk.token_count) {
      return absl::InvalidArgumentError("latent chunk's view does not match its header fields");
    }
    return absl::OkStatus();
  }
  if (static_cast<int64_t>(chunk.payload().size()) != chunk.token_count * header_.row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("latent chunk has ", chunk.payload().size(), " bytes, expected ",
                                                   chunk.token_count * header_.row_bytes));
  }
  if (Xxh64(chunk.payload()) != chunk.checksum) {
    return absl::DataLossError(absl::StrCat("checksum mismatch in latent rows [", chunk.first_token, ", +",
                                            chunk.token_count, ") of MLA ordinal ", chunk.mla_index));
  }
  return absl::OkStatus();
}

absl::Status HandoffAssembler::OnLatentRows(const LatentRows& chunk) {
  RETURN_IF_ERROR(hooks_.check_live());
  RETURN_IF_ERROR(CheckLatentChunk(chunk));
  const int64_t bytes = chunk.token_count * header_.row_bytes;
  {
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    const cache::Sequence& sequence = *target_.sequence;
    if (chunk.view) {
      ASSIGN_OR_RETURN(int64_t host_bytes,
                       cache::CopyRows(*chunk.view, cache::RowsOf(sequence, chunk.mla_index, chunk.first_token,
                                                                  chunk.token_count)));
      stats_.host_bytes += host_bytes;
    } else {
      RETURN_IF_ERROR(target_.table->pool().ImportRows(chunk.mla_index, sequence.pages(), chunk.first_token,
                                                       chunk.token_count, chunk.payload()));
      stats_.host_bytes += bytes;
    }
  }
  latent_next_[chunk.mla_index] += chunk.token_count;
  stats_.chunks++;
  stats_.payload_bytes += bytes;
  return absl::OkStatus();
}

absl::Status HandoffAssembler::OnRowsWritten(const RowsWritten& written) {
  RETURN_IF_ERROR(hooks_.check_live());
  if (header_.transport != "cuda-ipc" && header_.transport != "nccl") {
    return absl::InvalidArgumentError("rows written out of band in a handoff whose header named no device transport");
  }
  RETURN_IF_ERROR(CheckOrder(written.mla_index, written.first_token, written.token_count));
  const int64_t bytes = written.token_count * header_.row_bytes;  // <= prompt_tokens * row_bytes, checked
  {
    // The sender's copy (CUDA IPC) or our receives (NCCL, transfer/nccl_receiver.h) completed
    // before this is called; hash what landed in our pages.
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    ASSIGN_OR_RETURN(uint64_t checksum, PagedRowsChecksum(target_.table->pool(), written.mla_index,
                                                          target_.sequence->pages(), written.first_token,
                                                          written.token_count));
    if (checksum != written.checksum) {
      return absl::DataLossError(absl::StrCat("checksum mismatch in device-written rows [", written.first_token, ", +",
                                              written.token_count, ") of MLA ordinal ", written.mla_index));
    }
  }
  latent_next_[written.mla_index] += written.token_count;
  stats_.chunks++;
  stats_.payload_bytes += bytes;
  stats_.device_bytes += bytes;
  return absl::OkStatus();
}

absl::Status HandoffAssembler::OnKdaState(const KdaStateBytes& chunk) {
  RETURN_IF_ERROR(hooks_.check_live());
  if (chunk.position != 0) return OnCheckpointState(chunk);
  if (pending_) {
    return absl::InvalidArgumentError(absl::StrCat("final KDA state began while the checkpoint at ",
                                                   pending_->tokens(), " has ", pending_layer_, " of ",
                                                   kda_buffers_.size(), " layers"));
  }
  if (chunk.kda_index < 0 || chunk.kda_index >= static_cast<int64_t>(kda_buffers_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("KDA chunk for ordinal ", chunk.kda_index, " of ",
                                                   kda_buffers_.size()));
  }
  std::string& buffer = kda_buffers_[chunk.kda_index];
  if (chunk.view) {
    if (chunk.offset != 0 || !buffer.empty() || kda_done_ > chunk.kda_index) {
      return absl::InvalidArgumentError(absl::StrCat("KDA view chunk of ordinal ", chunk.kda_index,
                                                     " is not the layer's whole state, once"));
    }
    final_kda_started_ = true;
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    ASSIGN_OR_RETURN(int64_t host_bytes, cache::CopyKdaState(*chunk.view, cache::KdaOf(*target_.sequence,
                                                                                        chunk.kda_index)));
    stats_.host_bytes += host_bytes;
    stats_.chunks++;
    stats_.payload_bytes += header_.kda_state_bytes;
    kda_done_++;
    return absl::OkStatus();
  }
  if (chunk.offset != static_cast<int64_t>(buffer.size()) ||
      static_cast<int64_t>(chunk.payload().size()) > header_.kda_state_bytes - chunk.offset) {
    return absl::InvalidArgumentError(absl::StrCat("KDA chunk of ordinal ", chunk.kda_index, " at offset ",
                                                   chunk.offset, " (+", chunk.payload().size(), ") does not continue ",
                                                   buffer.size(), " of ", header_.kda_state_bytes, " bytes"));
  }
  if (Xxh64(chunk.payload()) != chunk.checksum) {
    return absl::DataLossError(absl::StrCat("checksum mismatch in KDA state ", chunk.kda_index, " at offset ",
                                            chunk.offset));
  }
  final_kda_started_ = true;
  buffer.append(chunk.payload());
  stats_.chunks++;
  stats_.payload_bytes += static_cast<int64_t>(chunk.payload().size());
  if (static_cast<int64_t>(buffer.size()) == header_.kda_state_bytes) {
    std::lock_guard<std::mutex> lock(*target_.device_mu);
    RETURN_IF_ERROR(hooks_.check_live());
    RETURN_IF_ERROR(target_.table->ImportKdaState(*target_.sequence, chunk.kda_index, buffer));
    stats_.host_bytes += static_cast<int64_t>(buffer.size());
    std::string().swap(buffer);
    kda_done_++;
  }
  return absl::OkStatus();
}

absl::Status HandoffAssembler::Finish(const HandoffEnd& end) {
  RETURN_IF_ERROR(hooks_.check_live());
  if (pending_) {
    return absl::DataLossError(absl::StrCat("handoff ended with the KDA checkpoint at ", pending_->tokens(),
                                            " incomplete (", pending_layer_, " of ", kda_buffers_.size(), " layers)"));
  }
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
  if (end.chunks != stats_.chunks || end.payload_bytes != stats_.payload_bytes) {
    return absl::DataLossError(absl::StrCat("handoff ended after ", stats_.chunks, " chunks / ",
                                            stats_.payload_bytes, " bytes, sender sent ", end.chunks, " / ",
                                            end.payload_bytes));
  }
  RETURN_IF_ERROR(hooks_.admit(end, stats_, checkpoints_));
  finished_ = true;
  return absl::OkStatus();
}

void HandoffAssembler::Abort(const absl::Status& why) {
  finished_ = true;
  hooks_.aborted(why);
  DropCheckpoints();
}

}  // namespace latentserve::transfer
