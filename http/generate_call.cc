#include "http/generate_call.h"

#include "serving/security.h"

namespace latentserve::http {

GenerateCall::GenerateCall(v1::Generation::Stub& stub, const v1::GenerateRequest& request, const std::string& client) {
  serving::AttachForwardedClient(context_, client);
  reader_ = std::thread(&GenerateCall::ReadAll, this, stub.Generate(&context_, request));
}

GenerateCall::~GenerateCall() {
  Cancel();
  reader_.join();
}

void GenerateCall::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    changed_.notify_all();
  }
  context_.TryCancel();
}

void GenerateCall::ReadAll(std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader) {
  v1::GenerateResponse event;
  while (reader->Read(&event)) {
    std::unique_lock<std::mutex> lock(mu_);
    events_.push_back(std::move(event));
    changed_.notify_all();
    // Back-pressure: a slow HTTP client slows the gRPC stream instead of growing the queue.
    changed_.wait(lock, [&] { return events_.size() < kMaxQueuedEvents || cancelled_; });
  }
  grpc::Status status = reader->Finish();
  std::lock_guard<std::mutex> lock(mu_);
  status_ = std::move(status);
  ended_ = true;
  changed_.notify_all();
}

GenerateCall::Wait GenerateCall::Next(absl::Duration timeout, v1::GenerateResponse* event) {
  std::unique_lock<std::mutex> lock(mu_);
  changed_.wait_for(lock, absl::ToChronoNanoseconds(timeout), [&] { return !events_.empty() || ended_; });
  if (!events_.empty()) {
    *event = std::move(events_.front());
    events_.pop_front();
    changed_.notify_all();
    return Wait::kEvent;
  }
  return ended_ ? Wait::kEnded : Wait::kTimeout;
}

}  // namespace latentserve::http
