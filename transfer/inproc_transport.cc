#include "transfer/inproc_transport.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::transfer {
namespace {

class InProcSender : public CacheSender {
 public:
  InProcSender(std::unique_ptr<CacheReceiver> receiver, absl::Time deadline)
      : receiver_(std::move(receiver)), deadline_(deadline) {}
  std::string transport() const override { return "inproc"; }
  ~InProcSender() override {
    if (receiver_) receiver_->Abort(absl::CancelledError("sender dropped the handoff"));
  }

  bool MovesViews() const override { return true; }
  absl::Status SendLatentRows(LatentRows chunk) override {
    RETURN_IF_ERROR(Check());
    return Fail(receiver_->OnLatentRows(chunk));
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    RETURN_IF_ERROR(Check());
    return Fail(receiver_->OnKdaState(chunk));
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    RETURN_IF_ERROR(Check());
    absl::Status status = receiver_->Finish(end);
    if (!status.ok()) return Fail(status);
    receiver_.reset();
    return end.payload_bytes;
  }
  void Cancel() override {
    if (receiver_) receiver_->Abort(absl::CancelledError("prefill cancelled"));
    receiver_.reset();
  }

 private:
  absl::Status Check() {
    if (!receiver_) return absl::FailedPreconditionError("handoff already ended");
    if (absl::Now() > deadline_) return Fail(absl::DeadlineExceededError("cache handoff passed its deadline"));
    return absl::OkStatus();
  }
  absl::Status Fail(absl::Status status) {
    if (!status.ok() && receiver_) {
      receiver_->Abort(status);
      receiver_.reset();
    }
    return status;
  }
  std::unique_ptr<CacheReceiver> receiver_;
  absl::Time deadline_;
};

}  // namespace

void InProcTransport::AddSink(const std::string& address, CacheSink* sink) {
  std::lock_guard<std::mutex> lock(mu_);
  sinks_[address] = sink;
}

bool InProcTransport::HasSink(const std::string& address) const {
  std::lock_guard<std::mutex> lock(mu_);
  return sinks_.count(address) > 0;
}

absl::StatusOr<std::unique_ptr<CacheSender>> InProcTransport::Open(const std::string& target,
                                                                   const HandoffHeader& header,
                                                                   absl::Time deadline) {
  CacheSink* sink = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sinks_.find(target);
    if (it == sinks_.end()) return absl::UnavailableError(absl::StrCat("no in-process decode worker at ", target));
    sink = it->second;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<CacheReceiver> receiver, sink->BeginHandoff(header));
  return std::unique_ptr<CacheSender>(new InProcSender(std::move(receiver), deadline));
}

}  // namespace latentserve::transfer
