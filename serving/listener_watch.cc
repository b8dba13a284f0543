// ListenerWatch (serving/listener_watch.h).
#include "serving/listener_watch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "serving/metrics.h"

namespace latentserve::serving {

absl::StatusOr<int64_t> ListenBacklog(int port) {
  int64_t backlog = 0;
  bool found = false;
  bool read_any = false;
  for (const char* table : {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
    std::ifstream in(table);
    if (!in) continue;
    read_any = true;
    std::string line;
    std::getline(in, line);  // header
    // "sl local_address rem_address st tx_queue:rx_queue ...": for a LISTEN socket (st 0A)
    // rx_queue is the number of connections waiting for accept().
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues;
      if (!(fields >> slot >> local >> remote >> state >> queues)) continue;
      if (state != "0A") continue;
      const size_t colon = local.rfind(':');
      uint32_t local_port = 0;
      if (colon == std::string::npos || !absl::SimpleHexAtoi(local.substr(colon + 1), &local_port))
        continue;
      if (static_cast<int>(local_port) != port) continue;
      const size_t queue_colon = queues.find(':');
      uint64_t rx_queue = 0;
      if (queue_colon == std::string::npos ||
          !absl::SimpleHexAtoi(queues.substr(queue_colon + 1), &rx_queue))
        continue;
      backlog += static_cast<int64_t>(rx_queue);
      found = true;
    }
  }
  if (!read_any)
    return absl::UnavailableError("cannot read /proc/self/net/tcp (no file descriptor left?)");
  if (!found) return absl::NotFoundError(absl::StrCat("no socket listens on port ", port));
  return backlog;
}

ListenerWatch::ListenerWatch(const std::string& address, std::vector<grpc::Server*> servers,
                             absl::Duration interval)
    : servers_(std::move(servers)), interval_(interval) {
  const size_t colon = address.rfind(':');
  host_ = address.substr(0, colon);
  if (host_.size() >= 2 && host_.front() == '[') host_ = host_.substr(1, host_.size() - 2);
  if (host_.empty() || host_ == "0.0.0.0" || host_ == "localhost") host_ = "127.0.0.1";
  if (host_ == "::") host_ = "::1";
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port_)) port_ = 0;
  if (port_ > 0) thread_ = std::thread([this] { Loop(); });
}

ListenerWatch::~ListenerWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool ListenerWatch::ProbeStuck() {
  sockaddr_storage target{};
  socklen_t length = 0;
  if (host_.find(':') != std::string::npos) {
    auto* six = reinterpret_cast<sockaddr_in6*>(&target);
    six->sin6_family = AF_INET6;
    six->sin6_port = htons(static_cast<uint16_t>(port_));
    if (inet_pton(AF_INET6, host_.c_str(), &six->sin6_addr) != 1) return false;
    length = sizeof(*six);
  } else {
    auto* four = reinterpret_cast<sockaddr_in*>(&target);
    four->sin_family = AF_INET;
    four->sin_port = htons(static_cast<uint16_t>(port_));
    if (inet_pton(AF_INET, host_.c_str(), &four->sin_addr) != 1) return false;
    length = sizeof(*four);
  }
  // Out of descriptors: nothing can be probed this round (not a verdict on the listener).
  const int probe = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return false;
  bool stuck = false;
  if (connect(probe, reinterpret_cast<sockaddr*>(&target), length) == 0) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stopping_; });
    lock.unlock();
    auto backlog = ListenBacklog(port_);
    stuck = backlog.ok() && *backlog > 0;
  }
  close(probe);
  return stuck;
}

void ListenerWatch::Loop() {
  int stuck_rounds = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    stuck_rounds = ProbeStuck() ? stuck_rounds + 1 : 0;
    lock.lock();
    if (stuck_rounds >= 2 && !stopping_) {
      serving::LogEvent(serving::LogLevel::kError, "server", "listener_stopped", "",
                        {{"port", static_cast<int64_t>(port_)},
                         {"action",
                          "health NOT_SERVING: the port no longer accepts connections (out of file "
                          "descriptors?); restart the process"}});
      for (grpc::Server* server : servers_) {
        if (auto* health = server->GetHealthCheckService()) health->SetServingStatus(false);
      }
      return;  // the listener does not come back
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(interval_), [this] { return stopping_; });
  }
}

}  // namespace latentserve::serving

