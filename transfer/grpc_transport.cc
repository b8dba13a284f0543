#include "transfer/grpc_transport.h"

#include <malloc.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "common/grpc_status.h"

namespace latentserve::transfer {

internal::v1::CacheDType ToProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return internal::v1::CACHE_D_TYPE_F32;
    case DType::kF16: return internal::v1::CACHE_D_TYPE_F16;
    case DType::kBF16: return internal::v1::CACHE_D_TYPE_BF16;
    case DType::kQ8_0: return internal::v1::CACHE_D_TYPE_Q8_0;
    case DType::kQ4_0: return internal::v1::CACHE_D_TYPE_Q4_0;
    default: return internal::v1::CACHE_D_TYPE_UNSPECIFIED;
  }
}

absl::StatusOr<DType> FromProtoDType(internal::v1::CacheDType dtype) {
  switch (dtype) {
    case internal::v1::CACHE_D_TYPE_F32: return DType::kF32;
    case internal::v1::CACHE_D_TYPE_F16: return DType::kF16;
    case internal::v1::CACHE_D_TYPE_BF16: return DType::kBF16;
    case internal::v1::CACHE_D_TYPE_Q8_0: return DType::kQ8_0;
    case internal::v1::CACHE_D_TYPE_Q4_0: return DType::kQ4_0;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown cache dtype ", static_cast<int>(dtype)));
  }
}

void ToProto(const HandoffHeader& h, internal::v1::CacheHandoffHeader* p) {
  p->set_request_id(h.request_id);
  p->set_lease_id(h.lease_id);
  p->set_model_fingerprint(h.model_fingerprint);
  p->set_cache_dtype(ToProtoDType(h.cache_dtype));
  p->set_page_tokens(h.page_tokens);
  p->set_latent_width(h.latent_width);
  p->set_row_bytes(h.row_bytes);
  for (int32_t l : h.mla_layers) p->add_mla_layers(l);
  for (int32_t l : h.kda_layers) p->add_kda_layers(l);
  p->set_kda_state_bytes(h.kda_state_bytes);
  p->set_prompt_tokens(h.prompt_tokens);
  p->set_transport(h.transport);
  p->set_cached_tokens(h.cached_tokens);
}

void ToProto(const LatentRows& chunk, internal::v1::LatentRowsChunk* p) {
  p->set_mla_index(chunk.mla_index);
  p->set_first_token(chunk.first_token);
  p->set_token_count(chunk.token_count);
  p->set_checksum(chunk.checksum);
}

void ToProto(const KdaStateBytes& chunk, internal::v1::KdaStateChunk* p) {
  p->set_kda_index(chunk.kda_index);
  p->set_offset(chunk.offset);
  p->set_position(chunk.position);
  p->set_checksum(chunk.checksum);
}

void ToProto(const RowsWritten& written, internal::v1::LatentRowsWritten* p) {
  p->set_mla_index(written.mla_index);
  p->set_first_token(written.first_token);
  p->set_token_count(written.token_count);
  p->set_checksum(written.checksum);
}

void ToProto(const HandoffEnd& end, internal::v1::CacheHandoffEnd* p) {
  p->set_first_token(end.first_token);
  p->set_chunks(end.chunks);
  p->set_payload_bytes(end.payload_bytes);
}

absl::StatusOr<HandoffHeader> FromProto(const internal::v1::CacheHandoffHeader& p) {
  HandoffHeader h;
  h.request_id = p.request_id();
  h.lease_id = p.lease_id();
  h.model_fingerprint = p.model_fingerprint();
  ASSIGN_OR_RETURN(h.cache_dtype, FromProtoDType(p.cache_dtype()));
  h.page_tokens = p.page_tokens();
  h.latent_width = p.latent_width();
  h.row_bytes = p.row_bytes();
  h.mla_layers.assign(p.mla_layers().begin(), p.mla_layers().end());
  h.kda_layers.assign(p.kda_layers().begin(), p.kda_layers().end());
  h.kda_state_bytes = p.kda_state_bytes();
  h.prompt_tokens = p.prompt_tokens();
  h.transport = p.transport();
  h.cached_tokens = p.cached_tokens();
  if (!h.transport.empty() && h.transport != "grpc" && h.transport != "cuda-ipc" && h.transport != "nccl") {
    return absl::InvalidArgumentError(absl::StrCat("unknown handoff transport '", h.transport.substr(0, 32), "'"));
  }
  return h;
}

namespace {

void DeleteString(void* p) { delete static_cast<std::string*>(p); }

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Wire tags (field number << 3 | wire type) of the fields written by hand below; they must
// match worker.proto (the unit tests parse the result with the generated code).
constexpr char kTagLatent = (2 << 3) | 2;     // ReceiveCacheRequest.latent
constexpr char kTagKda = (3 << 3) | 2;        // ReceiveCacheRequest.kda
constexpr char kTagRows = (4 << 3) | 2;       // LatentRowsChunk.rows
constexpr char kTagRowsSum = (5 << 3) | 1;    // LatentRowsChunk.checksum (fixed64)
constexpr char kTagKdaData = (3 << 3) | 2;    // KdaStateChunk.data
constexpr char kTagKdaSum = (4 << 3) | 1;     // KdaStateChunk.checksum (fixed64)

// One ReceiveCacheRequest whose payload field is `payload`, as three slices: the envelope
// and small fields (serialised by protobuf), the payload itself (not copied: the slice owns
// the string and frees it once gRPC has written it), and the checksum. The bytes are exactly
// what ReceiveCacheRequest::SerializeAsString would produce for the same message.
void DeleteHostBytes(void* p) { delete static_cast<std::shared_ptr<const uint8_t>*>(p); }

grpc::ByteBuffer EncodeWithPayload(char outer_tag, const google::protobuf::MessageLite& small_fields, char payload_tag,
                                   std::string payload, HostBytes staged, char checksum_tag, uint64_t checksum) {
  const std::string fields = small_fields.SerializeAsString();
  const size_t n = staged.owner ? staged.size : payload.size();
  const size_t payload_field = n == 0 ? 0 : 1 + VarintSize(n) + n;
  const size_t checksum_field = checksum == 0 ? 0 : 9;
  const size_t inner = fields.size() + payload_field + checksum_field;
  std::string head;
  head.reserve(1 + 10 + fields.size() + 1 + 10);
  head.push_back(outer_tag);
  AppendVarint(&head, inner);
  head += fields;
  if (n > 0) {
    head.push_back(payload_tag);
    AppendVarint(&head, n);
  }
  std::string tail;
  if (checksum != 0) {
    tail.push_back(checksum_tag);
    for (int i = 0; i < 8; ++i) tail.push_back(static_cast<char>(checksum >> (8 * i)));
  }
  grpc::Slice slices[3];
  size_t count = 0;
  slices[count++] = grpc::Slice(head);
  if (n > 0 && staged.owner) {
    // The slice holds a reference to the staging block; gRPC drops it once written.
    auto* owner = new std::shared_ptr<const uint8_t>(std::move(staged.owner));
    slices[count++] = grpc::Slice(staged.data, n, &DeleteHostBytes, owner);
  } else if (n > 0) {
    auto* owned = new std::string(std::move(payload));
    slices[count++] = grpc::Slice(owned->data(), owned->size(), &DeleteString, owned);
  }
  if (!tail.empty()) slices[count++] = grpc::Slice(tail);
  return grpc::ByteBuffer(slices, count);
}

grpc::ByteBuffer EncodeSmall(const internal::v1::ReceiveCacheRequest& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

const char* ReceiveCacheMethodName() {
  static const std::string* name =
      new std::string(std::string("/") + internal::v1::DecodeWorker::service_full_name() + "/ReceiveCache");
  return name->c_str();
}

class GrpcSender : public CacheSender {
 public:
  GrpcSender(std::shared_ptr<grpc::Channel> channel, absl::Time deadline, int64_t max_queued_bytes,
             const GrpcTransport::CallDecorator& decorate_call)
      : channel_(std::move(channel)),
        method_(ReceiveCacheMethodName(), grpc::internal::RpcMethod::CLIENT_STREAMING, channel_),
        max_queued_bytes_(max_queued_bytes) {
    context_.set_deadline(absl::ToChronoTime(deadline));
    if (decorate_call) decorate_call(context_);
    // The generated stub would serialise each ReceiveCacheRequest into a fresh buffer (a full
    // copy of every chunk); writing ByteBuffers on the same method sends the same bytes with
    // the payload referenced in place.
    writer_.reset(grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel_.get(), method_, &context_,
                                                                               &response_buffer_));
    thread_ = std::thread([this] { WriteLoop(); });
  }
  ~GrpcSender() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!done_) context_.TryCancel();
      closing_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  absl::Status Enqueue(grpc::ByteBuffer message, int64_t bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ || queued_bytes_ < max_queued_bytes_; });
    if (done_) return final_status_.ok() ? absl::FailedPreconditionError("handoff already ended") : final_status_;
    queued_bytes_ += bytes;
    queue_.emplace_back();
    queue_.back().message.Swap(&message);
    queue_.back().bytes = bytes;
    cv_.notify_all();
    return absl::OkStatus();
  }

  absl::Status SendHeader(const HandoffHeader& header) {
    internal::v1::ReceiveCacheRequest message;
    ToProto(header, message.mutable_header());
    return Enqueue(EncodeSmall(message), 0);
  }
  absl::Status SendLatentRows(LatentRows chunk) override {
    if (chunk.view) return absl::InternalError("a gRPC handoff carries bytes, not views of the cache");
    const int64_t bytes = static_cast<int64_t>(chunk.payload().size());
    return Enqueue(EncodeLatentRows(std::move(chunk)), bytes);
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    if (chunk.view) return absl::InternalError("a gRPC handoff carries bytes, not views of the cache");
    const int64_t bytes = static_cast<int64_t>(chunk.payload().size());
    return Enqueue(EncodeKdaState(std::move(chunk)), bytes);
  }
  std::string transport() const override { return "grpc"; }
  absl::Status SendRowsWritten(const RowsWritten& written) override {
    internal::v1::ReceiveCacheRequest message;
    ToProto(written, message.mutable_written());
    return Enqueue(EncodeSmall(message), 0);
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    internal::v1::ReceiveCacheRequest message;
    ToProto(end, message.mutable_end());
    RETURN_IF_ERROR(Enqueue(EncodeSmall(message), 0));
    {
      std::lock_guard<std::mutex> lock(mu_);
      finishing_ = true;
    }
    cv_.notify_all();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    if (!final_status_.ok()) return final_status_;
    return response_.payload_bytes();
  }
  void Cancel() override {
    context_.TryCancel();
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
  }

 private:
  struct Item {
    grpc::ByteBuffer message;
    int64_t bytes = 0;
  };

  void WriteLoop() {
    bool broken = false;
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || finishing_ || closing_; });
        if (queue_.empty()) break;  // finishing (all written) or closing
        if (closing_ && !finishing_) break;
        item.message.Swap(&queue_.front().message);
        item.bytes = queue_.front().bytes;
        queue_.pop_front();
      }
      const bool ok = writer_->Write(item.message);
      {
        std::lock_guard<std::mutex> lock(mu_);
        queued_bytes_ -= item.bytes;
      }
      cv_.notify_all();
      if (!ok) {
        broken = true;
        break;
      }
    }
    if (!broken) writer_->WritesDone();
    grpc::Status status = writer_->Finish();
    absl::Status final_status = FromGrpc(status);
    if (broken && final_status.ok()) final_status = absl::UnavailableError("cache stream closed by the decode worker");
    if (final_status.ok() && !grpc::SerializationTraits<internal::v1::ReceiveCacheResponse>::Deserialize(&response_buffer_, &response_).ok()) {
      final_status = absl::InternalError("unparsable ReceiveCache response");
    }
    if (!final_status.ok()) {
      final_status = absl::Status(final_status.code(),
                                  absl::StrCat("cache transfer to decode worker failed: ", final_status.message()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = final_status;
    done_ = true;
    cv_.notify_all();
  }

  std::shared_ptr<grpc::Channel> channel_;
  const grpc::internal::RpcMethod method_;
  grpc::ClientContext context_;
  grpc::ByteBuffer response_buffer_;
  internal::v1::ReceiveCacheResponse response_;
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer_;
  const int64_t max_queued_bytes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  int64_t queued_bytes_ = 0;
  bool finishing_ = false;
  bool closing_ = false;
  bool done_ = false;
  absl::Status final_status_;
  std::thread thread_;
};

}  // namespace

grpc::ByteBuffer EncodeLatentRows(LatentRows chunk) {
  internal::v1::LatentRowsChunk fields;
  fields.set_mla_index(chunk.mla_index);
  fields.set_first_token(chunk.first_token);
  fields.set_token_count(chunk.token_count);
  return EncodeWithPayload(kTagLatent, fields, kTagRows, std::move(chunk.rows), std::move(chunk.staged), kTagRowsSum, chunk.checksum);
}

grpc::ByteBuffer EncodeKdaState(KdaStateBytes chunk) {
  internal::v1::KdaStateChunk fields;
  fields.set_kda_index(chunk.kda_index);
  fields.set_offset(chunk.offset);
  fields.set_position(chunk.position);
  return EncodeWithPayload(kTagKda, fields, kTagKdaData, std::move(chunk.data), std::move(chunk.staged), kTagKdaSum, chunk.checksum);
}

void TuneAllocatorForCacheStreaming() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) return;  // the operator's choice
#if defined(__GLIBC__)
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
  });
}

void SetInternalKeepalive(grpc::ChannelArguments& args) {
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // server-streaming calls send no data upstream
}

void AllowInternalKeepalivePings(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);  // never GOAWAY a pinging peer
}

absl::StatusOr<std::unique_ptr<CacheSender>> GrpcTransport::Open(const std::string& target,
                                                                 const HandoffHeader& header, absl::Time deadline) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(8 << 20);
  SetInternalKeepalive(args);
  auto credentials = credentials_ ? credentials_() : nullptr;
  auto channel = grpc::CreateCustomChannel(target, credentials ? credentials : grpc::InsecureChannelCredentials(), args);
  auto sender = std::make_unique<GrpcSender>(channel, deadline, max_queued_bytes_, decorate_call_);
  RETURN_IF_ERROR(sender->SendHeader(header));
  return std::unique_ptr<CacheSender>(std::move(sender));
}

grpc::Status ServeReceiveCache(CacheSink& sink, grpc::ServerContext* context,
                               grpc::ServerReader<internal::v1::ReceiveCacheRequest>* reader,
                               internal::v1::ReceiveCacheResponse* response) {
  return ReceiveCacheMessages(
      sink, [reader](internal::v1::ReceiveCacheRequest* message) { return reader->Read(message); },
      [context] { return context->IsCancelled(); }, response);
}

grpc::Status ReceiveCacheMessages(CacheSink& sink, const std::function<bool(internal::v1::ReceiveCacheRequest*)>& read,
                                  const std::function<bool()>& cancelled, internal::v1::ReceiveCacheResponse* response) {
  internal::v1::ReceiveCacheRequest message;
  if (!read(&message)) return grpc::Status(grpc::StatusCode::CANCELLED, "cache stream ended before its header");
  if (!message.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first ReceiveCache message must be a header");
  }
  TuneAllocatorForCacheStreaming();
  auto header = FromProto(message.header());
  if (!header.ok()) return ToGrpc(header.status());
  auto receiver = sink.BeginHandoff(*header);
  if (!receiver.ok()) return ToGrpc(receiver.status());
  (*receiver)->WatchCancelled(cancelled);
  int64_t payload_bytes = 0;
  while (read(&message)) {
    absl::Status status;
    if (message.has_latent()) {
      auto* p = message.mutable_latent();
      LatentRows chunk{p->mla_index(), p->first_token(), p->token_count(), std::move(*p->mutable_rows()), p->checksum()};
      payload_bytes += static_cast<int64_t>(chunk.rows.size());
      status = (*receiver)->OnLatentRows(chunk);
    } else if (message.has_kda()) {
      auto* p = message.mutable_kda();
      KdaStateBytes chunk{p->kda_index(), p->offset(), std::move(*p->mutable_data()), p->checksum()};
      chunk.position = p->position();
      payload_bytes += static_cast<int64_t>(chunk.data.size());
      status = (*receiver)->OnKdaState(chunk);
    } else if (message.has_written()) {
      const auto& p = message.written();
      status = (*receiver)->OnRowsWritten(RowsWritten{p.mla_index(), p.first_token(), p.token_count(), p.checksum()});
    } else if (message.has_end()) {
      const auto& p = message.end();
      status = (*receiver)->Finish(HandoffEnd{p.first_token(), p.chunks(), p.payload_bytes()});
      if (!status.ok()) return ToGrpc(status);
      response->set_payload_bytes(payload_bytes);
      return grpc::Status::OK;
    } else {
      status = absl::InvalidArgumentError("ReceiveCache message without a payload");
    }
    if (!status.ok()) {
      (*receiver)->Abort(status);
      return ToGrpc(status);
    }
  }
  const absl::Status why = cancelled() ? absl::CancelledError("the prefill worker cancelled the handoff")
                                                  : absl::CancelledError("cache stream ended before its end message");
  (*receiver)->Abort(why);
  return ToGrpc(why);
}

}  // namespace latentserve::transfer
