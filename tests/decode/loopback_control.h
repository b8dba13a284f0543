// A CacheTransport whose stream stays in process: the sender's messages queue for a reader
// thread that runs the server's ReceiveCacheMessages against a CacheSink (a DecodeWorker), as
// the gRPC service does, with the stream's cancellation settable (CancelStreams). The NCCL
// handoff tests use it as the control path.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"
#include "transfer/grpc_transport.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// One ReceiveCache stream in process: the sender's messages queue for a reader thread that
// runs the server's ReceiveCacheMessages against the sink, as the gRPC service does.
class LoopbackControl : public CacheTransport {
 public:
  explicit LoopbackControl(CacheSink& sink) : sink_(sink) {}
  std::string name() const override { return "loopback"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string&, const HandoffHeader& header,
                                                    absl::Time) override;
  // The stream's context reads cancelled from now on (the peer went away), queue open or not.
  void CancelStreams() { cancelled_ = true; }
  absl::Status last_stream_status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_status_;
  }

 private:
  friend class LoopbackSender;
  CacheSink& sink_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  absl::Status last_status_;
};

class LoopbackSender : public CacheSender {
 public:
  LoopbackSender(LoopbackControl& control, internal::v1::ReceiveCacheRequest header) : control_(control) {
    (void)Push(std::move(header));
    reader_ = std::thread([this] {
      internal::v1::ReceiveCacheResponse response;
      grpc::Status status = ReceiveCacheMessages(
          control_.sink_,
          [this](internal::v1::ReceiveCacheRequest* message) {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return !queue_.empty() || closed_; });
            if (queue_.empty()) return false;
            *message = std::move(queue_.front());
            queue_.pop_front();
            return true;
          },
          [this] { return control_.cancelled_.load(); }, &response);
      std::lock_guard<std::mutex> lock(mu_);
      result_ = absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
      done_ = true;
      cv_.notify_all();
    });
  }
  ~LoopbackSender() override { (void)Close(); }

  absl::Status SendLatentRows(LatentRows) override { return absl::InternalError("rows go over NCCL"); }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    internal::v1::ReceiveCacheRequest message;
    ToProto(chunk, message.mutable_kda());
    message.mutable_kda()->set_data(std::string(chunk.payload()));
    return Push(std::move(message));
  }
  absl::Status SendRowsWritten(const RowsWritten& written) override {
    internal::v1::ReceiveCacheRequest message;
    ToProto(written, message.mutable_written());
    return Push(std::move(message));
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    internal::v1::ReceiveCacheRequest message;
    ToProto(end, message.mutable_end());
    RETURN_IF_ERROR(Push(std::move(message)));
    RETURN_IF_ERROR(Close());
    return end.payload_bytes;
  }
  void Cancel() override { (void)Close(); }

 private:
  absl::Status Push(internal::v1::ReceiveCacheRequest message) {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return result_.ok() ? absl::AbortedError("stream ended") : result_;
    queue_.push_back(std::move(message));
    cv_.notify_all();
    return absl::OkStatus();
  }
  absl::Status Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      cv_.notify_all();
    }
    if (reader_.joinable()) reader_.join();
    std::lock_guard<std::mutex> control_lock(control_.mu_);
    control_.last_status_ = result_;
    return result_;
  }

  LoopbackControl& control_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<internal::v1::ReceiveCacheRequest> queue_;
  bool closed_ = false, done_ = false;
  absl::Status result_;
  std::thread reader_;
};

inline absl::StatusOr<std::unique_ptr<CacheSender>> LoopbackControl::Open(const std::string&, const HandoffHeader& h,
                                                                   absl::Time) {
  internal::v1::ReceiveCacheRequest message;
  ToProto(h, message.mutable_header());  // the gRPC transport's own wire form
  return std::unique_ptr<CacheSender>(new LoopbackSender(*this, std::move(message)));
}

}  // namespace latentserve::transfer
