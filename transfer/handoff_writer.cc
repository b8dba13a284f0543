#include "transfer/handoff_writer.h"

#include <algorithm>

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

HandoffWriter::HandoffWriter(CacheSender& sender, const HandoffHeader& header)
    : sender_(sender), header_(header), views_(sender.MovesViews()) {}

absl::Status HandoffWriter::SendRows(const cache::Sequence& sequence, int64_t first_token, int64_t count) {
  if (first_token != next_token_ || count < 0 || count > header_.prompt_tokens - first_token) {
    return absl::FailedPreconditionError(absl::StrCat("rows [", first_token, ", +", count, ") do not continue the ",
                                                      next_token_, " rows sent of ", header_.prompt_tokens));
  }
  const cache::PagePool& pool = sequence.table().pool();
  const int64_t rows_per_chunk = std::max<int64_t>(1, kMaxChunkBytes / header_.row_bytes);
  for (int64_t mla = 0; mla < pool.mla_layers(); ++mla) {
    for (int64_t t = first_token; t < first_token + count; t += rows_per_chunk) {
      LatentRows chunk;
      chunk.mla_index = static_cast<int32_t>(mla);
      chunk.first_token = t;
      chunk.token_count = std::min(rows_per_chunk, first_token + count - t);
      const int64_t bytes = chunk.token_count * header_.row_bytes;
      if (views_) {
        chunk.view = cache::RowsOf(sequence, mla, t, chunk.token_count);
      } else {
        RETURN_IF_ERROR(pool.ExportRows(mla, sequence.pages(), t, chunk.token_count, &chunk.rows));
        chunk.checksum = Xxh64(chunk.rows);
        host_bytes_ += bytes;
      }
      payload_bytes_ += bytes;
      chunks_++;
      RETURN_IF_ERROR(sender_.SendLatentRows(std::move(chunk)));
    }
  }
  next_token_ += count;
  return absl::OkStatus();
}

absl::Status HandoffWriter::SendKdaState(const cache::Sequence& sequence) {
  const cache::SequenceTable& table = sequence.table();
  for (int64_t kda = 0; kda < static_cast<int64_t>(sequence.kda().size()); ++kda) {
    if (views_) {
      KdaStateBytes chunk;
      chunk.kda_index = static_cast<int32_t>(kda);
      chunk.view = cache::KdaOf(sequence, kda);
      payload_bytes_ += header_.kda_state_bytes;
      chunks_++;
      RETURN_IF_ERROR(sender_.SendKdaState(std::move(chunk)));
      continue;
    }
    std::string state;
    RETURN_IF_ERROR(table.ExportKdaState(sequence, kda, &state));
    host_bytes_ += static_cast<int64_t>(state.size());
    for (int64_t offset = 0; offset < static_cast<int64_t>(state.size()); offset += kMaxChunkBytes) {
      KdaStateBytes chunk;
      chunk.kda_index = static_cast<int32_t>(kda);
      chunk.offset = offset;
      chunk.data = state.substr(offset, kMaxChunkBytes);
      chunk.checksum = Xxh64(chunk.data);
      payload_bytes_ += static_cast<int64_t>(chunk.data.size());
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
