#include "transfer/prefix_stream.h"

#include <algorithm>

#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {

absl::Status SendPrefix(CacheSender& sender, const HandoffHeader& header, const cache::Sequence& prefix,
                        std::mutex& device_mu) {
  const cache::SequenceTable& table = prefix.table();
  const cache::PagePool& pool = table.pool();
  if (header.prompt_tokens <= 0 || header.prompt_tokens > prefix.cached_tokens() || header.row_bytes <= 0) {
    return absl::InternalError(absl::StrCat("prefix of ", header.prompt_tokens, " tokens from a sequence of ",
                                            prefix.cached_tokens()));
  }
  const int64_t rows_per_chunk = std::max<int64_t>(1, kMaxChunkBytes / header.row_bytes);
  int64_t chunks = 0, payload_bytes = 0;
  for (int64_t mla = 0; mla < pool.mla_layers(); ++mla) {
    for (int64_t first = 0; first < header.prompt_tokens; first += rows_per_chunk) {
      LatentRows chunk;
      chunk.mla_index = static_cast<int32_t>(mla);
      chunk.first_token = first;
      chunk.token_count = std::min(rows_per_chunk, header.prompt_tokens - first);
      {
        std::lock_guard<std::mutex> lock(device_mu);
        RETURN_IF_ERROR(pool.ExportRows(mla, prefix.pages(), first, chunk.token_count, &chunk.rows));
      }
      chunk.checksum = Xxh64(chunk.rows);
      payload_bytes += static_cast<int64_t>(chunk.rows.size());
      chunks++;
      RETURN_IF_ERROR(sender.SendLatentRows(std::move(chunk)));
    }
  }
  for (int64_t kda = 0; kda < static_cast<int64_t>(prefix.kda().size()); ++kda) {
    std::string state;
    {
      std::lock_guard<std::mutex> lock(device_mu);
      RETURN_IF_ERROR(table.ExportKdaState(prefix, kda, &state));
    }
    for (size_t offset = 0; offset < state.size(); offset += kMaxChunkBytes) {
      KdaStateBytes chunk;
      chunk.kda_index = static_cast<int32_t>(kda);
      chunk.offset = static_cast<int64_t>(offset);
      chunk.data = state.substr(offset, std::min<size_t>(kMaxChunkBytes, state.size() - offset));
      chunk.checksum = Xxh64(chunk.data);
      payload_bytes += static_cast<int64_t>(chunk.data.size());
      chunks++;
      RETURN_IF_ERROR(sender.SendKdaState(std::move(chunk)));
    }
  }
  return sender.Finish({0, chunks, payload_bytes}).status();
}

namespace {

class StreamSender : public CacheSender {
 public:
  explicit StreamSender(PrefixWrite write) : write_(std::move(write)) {}

  absl::Status Write(const internal::v1::ReadPrefixResponse& message) {
    if (!write_(message)) return absl::CancelledError("the prefix reader went away");
    return absl::OkStatus();
  }
  absl::Status SendLatentRows(LatentRows chunk) override {
    internal::v1::ReadPrefixResponse message;
    auto* p = message.mutable_latent();
    ToProto(chunk, p);
    bytes_ += static_cast<int64_t>(chunk.payload().size());
    *p->mutable_rows() = chunk.staged.owner ? std::string(chunk.payload()) : std::move(chunk.rows);
    return Write(message);
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    internal::v1::ReadPrefixResponse message;
    auto* p = message.mutable_kda();
    ToProto(chunk, p);
    bytes_ += static_cast<int64_t>(chunk.payload().size());
    *p->mutable_data() = chunk.staged.owner ? std::string(chunk.payload()) : std::move(chunk.data);
    return Write(message);
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    internal::v1::ReadPrefixResponse message;
    ToProto(end, message.mutable_end());
    RETURN_IF_ERROR(Write(message));
    return bytes_;
  }
  void Cancel() override {}
  std::string transport() const override { return "grpc"; }

 private:
  PrefixWrite write_;
  int64_t bytes_ = 0;
};

// The payloads of a ReadPrefixResponse moved into the ReceiveCacheRequest the handoff's
// receiving loop reads (same fields, no copy of the bytes).
void MoveToRequest(internal::v1::ReadPrefixResponse& from, internal::v1::ReceiveCacheRequest* to) {
  to->Clear();
  if (from.has_header()) {
    to->mutable_header()->Swap(from.mutable_header());
  } else if (from.has_latent()) {
    to->mutable_latent()->Swap(from.mutable_latent());
  } else if (from.has_kda()) {
    to->mutable_kda()->Swap(from.mutable_kda());
  } else if (from.has_end()) {
    to->mutable_end()->Swap(from.mutable_end());
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<CacheSender>> OpenStreamSender(const HandoffHeader& header, PrefixWrite write) {
  auto sender = std::make_unique<StreamSender>(std::move(write));
  internal::v1::ReadPrefixResponse message;
  ToProto(header, message.mutable_header());
  RETURN_IF_ERROR(sender->Write(message));
  return std::unique_ptr<CacheSender>(std::move(sender));
}

absl::Status GrpcPrefixReader::Read(const std::string& target, const PrefixReadRequest& request, CacheSink& sink,
                                    absl::Time deadline) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);  // chunks are <= 1 MiB of payload
  SetInternalKeepalive(args);
  auto credentials = credentials_ ? credentials_() : nullptr;
  auto channel = grpc::CreateCustomChannel(target, credentials ? credentials : grpc::InsecureChannelCredentials(), args);
  auto stub = internal::v1::DecodeWorker::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  if (decorate_call_) decorate_call_(context);
  internal::v1::ReadPrefixRequest message;
  message.set_request_id(request.request_id);
  message.set_lease_id(request.lease_id);
  message.set_model_fingerprint(request.model_fingerprint);
  auto reader = stub->ReadPrefix(&context, message);
  internal::v1::ReadPrefixResponse response;
  bool stream_ended = false;
  internal::v1::ReceiveCacheResponse received;
  const grpc::Status assembled = ReceiveCacheMessages(
      sink,
      [&](internal::v1::ReceiveCacheRequest* next) {
        if (!reader->Read(&response)) {
          stream_ended = true;
          return false;
        }
        MoveToRequest(response, next);
        return true;
      },
      [] { return false; }, &received);
  if (!assembled.ok()) {
    context.TryCancel();
    const grpc::Status finished = reader->Finish();
    // The decode worker's own error says more than "the stream ended early".
    if (stream_ended && !finished.ok()) return FromGrpc(finished);
    return FromGrpc(assembled);
  }
  // End arrived and was admitted: nothing more is read (a peer that kept sending would hold
  // this worker until the deadline), the call is ended here.
  context.TryCancel();
  (void)reader->Finish();
  return absl::OkStatus();
}

}  // namespace latentserve::transfer
