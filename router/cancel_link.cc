#include "router/cancel_link.h"

#include <condition_variable>
#include <set>
#include <thread>

namespace latentserve::router {
namespace {

// The one thread that checks every live CancelLink.
class CancelWatcher {
 public:
  static CancelWatcher& Get() {
    static auto* watcher = new CancelWatcher();  // lives as long as the process
    return *watcher;
  }
  void Add(CancelLink* link) {
    std::lock_guard<std::mutex> lock(mu_);
    links_.insert(link);
    if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
    cv_.notify_all();
  }
  // On return the watcher no longer touches `link`.
  void Remove(CancelLink* link) {
    std::lock_guard<std::mutex> lock(mu_);
    links_.erase(link);
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return !links_.empty(); });  // idle while no call is running
      for (CancelLink* link : links_) link->Check();
      cv_.wait_for(lock, std::chrono::milliseconds(10));
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<CancelLink*> links_;
  std::thread thread_;
};

}  // namespace

CancelLink::CancelLink(grpc::ServerContext* server) : server_(server) { CancelWatcher::Get().Add(this); }

CancelLink::~CancelLink() { CancelWatcher::Get().Remove(this); }

void CancelLink::Attach(grpc::ClientContext* client, absl::Duration progress_timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  client_ = client;
  progress_timeout_ = progress_timeout;
  last_progress_ = absl::Now();
  stalled_ = false;
  if (cancelled_) client_->TryCancel();
}

void CancelLink::Progress() {
  std::lock_guard<std::mutex> lock(mu_);
  last_progress_ = absl::Now();
}

void CancelLink::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  client_ = nullptr;
}

bool CancelLink::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

bool CancelLink::stalled() {
  std::lock_guard<std::mutex> lock(mu_);
  return stalled_;
}

void CancelLink::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!cancelled_ && server_->IsCancelled()) {
    cancelled_ = true;
    if (client_) client_->TryCancel();
  }
  if (client_ && !stalled_ && progress_timeout_ > absl::ZeroDuration() &&
      absl::Now() - last_progress_ > progress_timeout_) {
    stalled_ = true;
    client_->TryCancel();
  }
}

}  // namespace latentserve::router
