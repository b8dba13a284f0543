#include "transfer/grpc_transport.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "latentserve/v1/worker.grpc.pb.h"
#include "transfer/grpc_status.h"

namespace latentserve::transfer {

v1::CacheDType ToProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return v1::CACHE_D_TYPE_F32;
    case DType::kF16: return v1::CACHE_D_TYPE_F16;
    case DType::kBF16: return v1::CACHE_D_TYPE_BF16;
    case DType::kQ8_0: return v1::CACHE_D_TYPE_Q8_0;
    case DType::kQ4_0: return v1::CACHE_D_TYPE_Q4_0;
    default: return v1::CACHE_D_TYPE_UNSPECIFIED;
  }
}

absl::StatusOr<DType> FromProtoDType(v1::CacheDType dtype) {
  switch (dtype) {
    case v1::CACHE_D_TYPE_F32: return DType::kF32;
    case v1::CACHE_D_TYPE_F16: return DType::kF16;
    case v1::CACHE_D_TYPE_BF16: return DType::kBF16;
    case v1::CACHE_D_TYPE_Q8_0: return DType::kQ8_0;
    case v1::CACHE_D_TYPE_Q4_0: return DType::kQ4_0;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown cache dtype ", static_cast<int>(dtype)));
  }
}

namespace {

void ToProto(const HandoffHeader& h, v1::CacheHandoffHeader* p) {
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
}

absl::StatusOr<HandoffHeader> FromProto(const v1::CacheHandoffHeader& p) {
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
  return h;
}

class GrpcSender : public CacheSender {
 public:
  GrpcSender(std::shared_ptr<grpc::Channel> channel, absl::Time deadline, int64_t max_queued_bytes)
      : stub_(v1::DecodeWorker::NewStub(channel)), max_queued_bytes_(max_queued_bytes) {
    context_.set_deadline(absl::ToChronoTime(deadline));
    writer_ = stub_->ReceiveCache(&context_, &response_);
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

  absl::Status Enqueue(v1::ReceiveCacheRequest message, int64_t bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ || queued_bytes_ < max_queued_bytes_; });
    if (done_) return final_status_.ok() ? absl::FailedPreconditionError("handoff already ended") : final_status_;
    queued_bytes_ += bytes;
    queue_.push_back({std::move(message), bytes});
    cv_.notify_all();
    return absl::OkStatus();
  }

  absl::Status SendHeader(const HandoffHeader& header) {
    v1::ReceiveCacheRequest message;
    ToProto(header, message.mutable_header());
    return Enqueue(std::move(message), 0);
  }
  absl::Status SendLatentRows(LatentRows chunk) override {
    v1::ReceiveCacheRequest message;
    auto* p = message.mutable_latent();
    p->set_mla_index(chunk.mla_index);
    p->set_first_token(chunk.first_token);
    p->set_token_count(chunk.token_count);
    p->set_checksum(chunk.checksum);
    const int64_t bytes = static_cast<int64_t>(chunk.rows.size());
    p->set_rows(std::move(chunk.rows));
    return Enqueue(std::move(message), bytes);
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    v1::ReceiveCacheRequest message;
    auto* p = message.mutable_kda();
    p->set_kda_index(chunk.kda_index);
    p->set_offset(chunk.offset);
    p->set_checksum(chunk.checksum);
    const int64_t bytes = static_cast<int64_t>(chunk.data.size());
    p->set_data(std::move(chunk.data));
    return Enqueue(std::move(message), bytes);
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    v1::ReceiveCacheRequest message;
    auto* p = message.mutable_end();
    p->set_first_token(end.first_token);
    p->set_chunks(end.chunks);
    p->set_payload_bytes(end.payload_bytes);
    RETURN_IF_ERROR(Enqueue(std::move(message), 0));
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
    v1::ReceiveCacheRequest message;
    int64_t bytes;
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
        item = std::move(queue_.front());
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
    if (!final_status.ok()) {
      final_status = absl::Status(final_status.code(),
                                  absl::StrCat("cache transfer to decode worker failed: ", final_status.message()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = final_status;
    done_ = true;
    cv_.notify_all();
  }

  std::unique_ptr<v1::DecodeWorker::Stub> stub_;
  grpc::ClientContext context_;
  v1::ReceiveCacheResponse response_;
  std::unique_ptr<grpc::ClientWriter<v1::ReceiveCacheRequest>> writer_;
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

absl::StatusOr<std::unique_ptr<CacheSender>> GrpcTransport::Open(const std::string& target,
                                                                 const HandoffHeader& header, absl::Time deadline) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(8 << 20);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  auto sender = std::make_unique<GrpcSender>(channel, deadline, max_queued_bytes_);
  RETURN_IF_ERROR(sender->SendHeader(header));
  return std::unique_ptr<CacheSender>(std::move(sender));
}

grpc::Status ServeReceiveCache(CacheSink& sink, grpc::ServerContext* context,
                               grpc::ServerReader<v1::ReceiveCacheRequest>* reader,
                               v1::ReceiveCacheResponse* response) {
  v1::ReceiveCacheRequest message;
  if (!reader->Read(&message)) return grpc::Status(grpc::StatusCode::CANCELLED, "cache stream ended before its header");
  if (!message.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first ReceiveCache message must be a header");
  }
  auto header = FromProto(message.header());
  if (!header.ok()) return ToGrpc(header.status());
  auto receiver = sink.BeginHandoff(*header);
  if (!receiver.ok()) return ToGrpc(receiver.status());
  int64_t payload_bytes = 0;
  while (reader->Read(&message)) {
    absl::Status status;
    if (message.has_latent()) {
      auto* p = message.mutable_latent();
      LatentRows chunk{p->mla_index(), p->first_token(), p->token_count(), std::move(*p->mutable_rows()), p->checksum()};
      payload_bytes += static_cast<int64_t>(chunk.rows.size());
      status = (*receiver)->OnLatentRows(chunk);
    } else if (message.has_kda()) {
      auto* p = message.mutable_kda();
      KdaStateBytes chunk{p->kda_index(), p->offset(), std::move(*p->mutable_data()), p->checksum()};
      payload_bytes += static_cast<int64_t>(chunk.data.size());
      status = (*receiver)->OnKdaState(chunk);
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
  const absl::Status why = context->IsCancelled() ? absl::CancelledError("the prefill worker cancelled the handoff")
                                                  : absl::CancelledError("cache stream ended before its end message");
  (*receiver)->Abort(why);
  return ToGrpc(why);
}

}  // namespace latentserve::transfer
