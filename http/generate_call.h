// One Generation.Generate stream read on its own thread, so the HTTP handler can wait for
// the next event with a timeout (and in between probe whether its client is still there).
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "latentserve/v1/generate.grpc.pb.h"

namespace latentserve::http {

class GenerateCall {
 public:
  // Starts the call. `client` names the HTTP client for the router's per-client limits.
  GenerateCall(v1::Generation::Stub& stub, const v1::GenerateRequest& request, const std::string& client);
  // Cancels the call if it is still running and waits for the reader thread.
  ~GenerateCall();
  GenerateCall(const GenerateCall&) = delete;
  GenerateCall& operator=(const GenerateCall&) = delete;

  enum class Wait { kEvent, kTimeout, kEnded };
  // The next event into `event`; kTimeout when none came within `timeout`; kEnded when the
  // stream is over (then status() is its final status).
  Wait Next(absl::Duration timeout, v1::GenerateResponse* event);
  // The final status; valid after Next returned kEnded.
  const grpc::Status& status() const { return status_; }
  // The client went away: the router (and every worker behind it) stops the request.
  void Cancel();

 private:
  void ReadAll(std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader);

  grpc::ClientContext context_;
  std::mutex mu_;
  std::condition_variable changed_;
  static constexpr size_t kMaxQueuedEvents = 64;
  std::deque<v1::GenerateResponse> events_;  // read, not yet taken by Next
  bool ended_ = false;
  bool cancelled_ = false;
  grpc::Status status_;
  std::thread reader_;
};

}  // namespace latentserve::http
