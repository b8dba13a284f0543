#include "worker/announcer_set.h"

#include <netdb.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace latentserve::worker {

absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expected HOST:PORT, got '", host_port, "'"));
  }
  std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  int port_number = 0;
  if (!absl::SimpleAtoi(port, &port_number) || port_number <= 0 || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in '", host_port, "'"));
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (rc != 0) return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  std::set<std::string> out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof(text));
      out.insert(absl::StrCat(text, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, text, sizeof(text));
      out.insert(absl::StrCat("[", text, "]:", port));
    }
  }
  freeaddrinfo(found);
  return std::vector<std::string>(out.begin(), out.end());
}

AnnouncerSet::AnnouncerSet(std::vector<std::string> routers, std::string routers_dns, std::string worker_address,
                           std::string role, internal::v1::ModelDescriptor model, std::function<v1::WorkerInfo()> stats,
                           absl::Duration resolve_interval, internal::v1::WorkerTransports transports)
    : routers_dns_(std::move(routers_dns)), worker_address_(std::move(worker_address)), role_(std::move(role)),
      model_(std::move(model)), transports_(std::move(transports)), stats_(std::move(stats)),
      resolve_interval_(resolve_interval) {
  for (const std::string& router : routers) {
    if (!fixed_.count(router)) {
      fixed_[router] = std::make_unique<WorkerAnnouncer>(router, worker_address_, role_, model_, stats_, "", transports_);
    }
  }
  if (!routers_dns_.empty()) thread_ = std::thread([this] { ResolveLoop(); });
}

AnnouncerSet::~AnnouncerSet() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> AnnouncerSet::Targets() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [address, announcer] : fixed_) out.push_back(address);
  for (const auto& [address, announcer] : resolved_) out.push_back(address);
  return out;
}

void AnnouncerSet::Sync(const std::vector<std::string>& resolved) {
  // TLS: the certificate names the DNS name, not each replica's IP.
  const std::string tls_name = routers_dns_.substr(0, routers_dns_.rfind(':'));
  std::map<std::string, std::unique_ptr<WorkerAnnouncer>> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::set<std::string> want(resolved.begin(), resolved.end());
    for (auto it = resolved_.begin(); it != resolved_.end();) {
      if (want.count(it->first)) {
        ++it;
      } else {
        std::fprintf(stderr, "%s: router %s left %s\n", role_.c_str(), it->first.c_str(), routers_dns_.c_str());
        gone[it->first] = std::move(it->second);
        it = resolved_.erase(it);
      }
    }
    for (const std::string& address : resolved) {
      if (resolved_.count(address) || fixed_.count(address)) continue;
      resolved_[address] =
          std::make_unique<WorkerAnnouncer>(address, worker_address_, role_, model_, stats_, tls_name, transports_);
    }
  }
  // `gone` joins its announcers' threads here, outside the lock.
}

void AnnouncerSet::ResolveLoop() {
  std::string last_error;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    auto resolved = ResolveAll(routers_dns_);
    if (resolved.ok()) {
      Sync(*resolved);
      last_error.clear();
    } else if (std::string(resolved.status().message()) != last_error) {
      // Keep announcing to the replicas we know: DNS may be briefly unavailable.
      last_error = std::string(resolved.status().message());
      std::fprintf(stderr, "%s: --routers-dns %s: %s (retrying)\n", role_.c_str(), routers_dns_.c_str(),
                   last_error.c_str());
    }
    lock.lock();
    cv_.wait_for(lock, absl::ToChronoNanoseconds(resolve_interval_), [&] { return stopping_; });
  }
}

}  // namespace latentserve::worker
