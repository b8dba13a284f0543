#include "transfer/handoff_writer.h"

#include <algorithm>
#include <deque>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {

void DescribeLayout(const cache::SequenceTable& table, HandoffHeader* header) {
  const cache::PagePool& pool = table.pool();
  header->cache_dtype = pool.dtype();
  header->page_tokens = pool.page_tokens();
  header->latent_width = pool.latent_width();
  header->row_bytes = static_cast<int64_t>(pool.row_bytes());
  header->kda_state_bytes = table.kda_layout().layers > 0 ? table.kda_layout().layer_bytes() : 0;
}

HandoffWriter::HandoffWriter(CacheSender& sender, const HandoffHeader& header, StagingPool* staging)
    : sender_(sender), staging_(staging), header_(header), views_(sender.MovesViews()),
      next_token_(header.cached_tokens) {}

StagingPool& HandoffWriter::Staging(kernels::Backend& backend) {
  if (staging_ == nullptr) {
    StagingOptions options;
    options.blocks = 16;  // a handoff of its own: enough to keep kDownloadsAhead chunks and the queue moving
    own_staging_ = std::make_unique<StagingPool>(backend, options);
    staging_ = own_staging_.get();
  }
  return *staging_;
}

absl::Status HandoffWriter::SendRows(const cache::Sequence& sequence, int64_t first_token, int64_t count) {
  if (first_token != next_token_ || count < 0 || count > header_.prompt_tokens - first_token) {
    return absl::FailedPreconditionError(absl::StrCat("rows [", first_token, ", +", count, ") do not continue the ",
                                                      next_token_, " rows sent of ", header_.prompt_tokens));
  }
  const cache::PagePool& pool = sequence.table().pool();
  const int64_t rows_per_chunk = std::max<int64_t>(1, kMaxChunkBytes / header_.row_bytes);
  // Every chunk of this range, in the order they are sent (layer by layer, token order).
  std::vector<LatentRows> chunks;
  for (int64_t mla = 0; mla < pool.mla_layers(); ++mla) {
    for (int64_t t = first_token; t < first_token + count; t += rows_per_chunk) {
      LatentRows chunk;
      chunk.mla_index = static_cast<int32_t>(mla);
      chunk.first_token = t;
      chunk.token_count = std::min(rows_per_chunk, first_token + count - t);
      chunks.push_back(std::move(chunk));
    }
  }
  if (views_) {
    for (LatentRows& chunk : chunks) {
      chunk.view = cache::RowsOf(sequence, chunk.mla_index, chunk.first_token, chunk.token_count);
      payload_bytes_ += chunk.token_count * header_.row_bytes;
      chunks_++;
      RETURN_IF_ERROR(sender_.SendLatentRows(std::move(chunk)));
    }
    next_token_ += count;
    return absl::OkStatus();
  }
  kernels::Backend& backend = pool.backend();
  StagingPool& staging = Staging(backend);
  // Downloads run kDownloadsAhead chunks ahead of the one handed over; each has its event.
  std::deque<std::unique_ptr<kernels::Backend::Event>> ready;
  size_t enqueued = 0;
  auto enqueue_next = [&]() -> absl::Status {
    LatentRows& chunk = chunks[enqueued];
    ASSIGN_OR_RETURN(chunk.staged, staging.Acquire(static_cast<size_t>(chunk.token_count * header_.row_bytes)));
    RETURN_IF_ERROR(pool.ExportRowsAsync(chunk.mla_index, sequence.pages(), chunk.first_token, chunk.token_count,
                                         chunk.staged.data));
    ASSIGN_OR_RETURN(auto event, backend.RecordEvent());
    ready.push_back(std::move(event));
    enqueued++;
    return absl::OkStatus();
  };
  // On an early return the blocks of downloads still in flight must not be reused before they
  // land: wait for every event recorded so far.
  struct Drain {
    kernels::Backend& backend;
    std::deque<std::unique_ptr<kernels::Backend::Event>>& ready;
    ~Drain() {
      for (auto& event : ready) (void)backend.WaitEvent(*event);
    }
  } drain{backend, ready};
  for (size_t i = 0; i < chunks.size(); ++i) {
    while (enqueued < chunks.size() && enqueued < i + kDownloadsAhead) RETURN_IF_ERROR(enqueue_next());
    RETURN_IF_ERROR(backend.WaitEvent(*ready.front()));
    ready.pop_front();
    LatentRows& chunk = chunks[i];
    chunk.checksum = Xxh64(chunk.payload());
    const int64_t bytes = chunk.token_count * header_.row_bytes;
    host_bytes_ += bytes;
    payload_bytes_ += bytes;
    chunks_++;
    RETURN_IF_ERROR(sender_.SendLatentRows(std::move(chunk)));
  }
  next_token_ += count;
  return absl::OkStatus();
}

absl::Status HandoffWriter::SendKdaState(const cache::Sequence& sequence, int64_t position) {
  if (position != 0 && (position != sequence.cached_tokens() || position <= header_.cached_tokens ||
                        position >= header_.prompt_tokens)) {
    return absl::FailedPreconditionError(absl::StrCat("KDA checkpoint at ", position, " of a sequence at ",
                                                      sequence.cached_tokens(), " tokens, handing off (",
                                                      header_.cached_tokens, ", ", header_.prompt_tokens, ")"));
  }
  const cache::SequenceTable& table = sequence.table();
  for (int64_t kda = 0; kda < static_cast<int64_t>(sequence.kda().size()); ++kda) {
    if (views_) {
      KdaStateBytes chunk;
      chunk.kda_index = static_cast<int32_t>(kda);
      chunk.view = cache::KdaOf(sequence, kda);
      chunk.position = position;
      payload_bytes_ += header_.kda_state_bytes;
      chunks_++;
      RETURN_IF_ERROR(sender_.SendKdaState(std::move(chunk)));
      continue;
    }
    // One layer's state in one host buffer; its chunks are slices of it (no copy per chunk).
    const kernels::KdaStateView& view = sequence.kda()[kda];
    const size_t recurrent = view.recurrent.nbytes(), conv = view.conv.nbytes();
    ASSIGN_OR_RETURN(HostBytes state, Staging(table.backend()).Acquire(recurrent + conv));
    table.backend().DownloadAsync(view.recurrent, state.data, recurrent);
    table.backend().DownloadAsync(view.conv, state.data + recurrent, conv);
    ASSIGN_OR_RETURN(auto event, table.backend().RecordEvent());
    RETURN_IF_ERROR(table.backend().WaitEvent(*event));
    host_bytes_ += static_cast<int64_t>(state.size);
    for (size_t offset = 0; offset < state.size; offset += kMaxChunkBytes) {
      KdaStateBytes chunk;
      chunk.kda_index = static_cast<int32_t>(kda);
      chunk.offset = static_cast<int64_t>(offset);
      chunk.position = position;
      chunk.staged = {state.owner, state.data + offset, std::min<size_t>(kMaxChunkBytes, state.size - offset)};
      chunk.checksum = Xxh64(chunk.payload());
      payload_bytes_ += static_cast<int64_t>(chunk.staged.size);
      chunks_++;
      RETURN_IF_ERROR(sender_.SendKdaState(std::move(chunk)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> HandoffWriter::Finish(int32_t first_token) {
  return sender_.Finish({first_token, chunks_, payload_bytes_});
}

}  // namespace latentserve::transfer
