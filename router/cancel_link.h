// Cancels a request's current downstream call when the client's call is cancelled (client
// gone, deadline passed) or when the downstream stream stops making progress.
//
// The synchronous server has no cancel callback (grpc::ServerContext::AsyncNotifyWhenDone is
// for the async API only), so cancellation is found by IsCancelled(). One watcher thread per
// process checks every live link every 10 ms, instead of a polling thread per call. Generate
// stays a synchronous method on purpose: each running call holds a thread of the server's
// quota, which is what --max-concurrent-calls bounds (serving/server_shell.cc); the callback
// API would take Generate out of that bound.
//
// Lock order: CancelWatcher::mu_ before CancelLink::mu_ (the watcher holds its own lock while
// it checks a link; a link takes only its own, and calls the watcher with no lock held).
#pragma once

#include <mutex>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"

namespace latentserve::router {

class CancelLink {
 public:
  explicit CancelLink(grpc::ServerContext* server);
  ~CancelLink();
  CancelLink(const CancelLink&) = delete;
  CancelLink& operator=(const CancelLink&) = delete;

  // progress_timeout > 0: the downstream call is also cancelled when Progress() has not been
  // called for that long (a live worker that stopped producing; keepalive only catches a
  // frozen or unreachable one). stalled() says whether that is what ended the call.
  void Attach(grpc::ClientContext* client, absl::Duration progress_timeout = absl::ZeroDuration());
  void Progress();
  void Detach();
  bool cancelled();
  bool stalled();

  // Called by the watcher: cancels the attached call when the client is gone or it stalled.
  void Check();

 private:
  grpc::ServerContext* const server_;
  std::mutex mu_;
  grpc::ClientContext* client_ = nullptr;
  absl::Duration progress_timeout_ = absl::ZeroDuration();
  absl::Time last_progress_;
  bool stalled_ = false;
  bool cancelled_ = false;
};

}  // namespace latentserve::router
