// Watches that a server's listening port still accepts connections, and says NOT_SERVING
// when it does not.
//
// grpc 1.51's listener gives up for good on an accept() error other than EAGAIN (EMFILE when
// the process runs out of file descriptors): the port keeps its kernel backlog, connections
// complete their TCP handshake and are never served, while the health service, which knows
// nothing of it, keeps saying SERVING (issue 17, 5). The watch connects to its own port every
// interval and reads the port's accept backlog from /proc/self/net/tcp{,6}: a listener that
// accepts empties it within milliseconds; one that stopped leaves the probe there. Two rounds
// in a row with a non-empty backlog set every given health service NOT_SERVING for the rest
// of the process's life (the listener cannot come back), so an orchestrator restarts it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latentserve::serving {

// The accept backlog of the listening TCP socket(s) on `port` in this process's network
// namespace, summed over IPv4 and IPv6; an error when /proc cannot be read (no descriptor
// left) or no socket listens there.
absl::StatusOr<int64_t> ListenBacklog(int port);

class ListenerWatch {
 public:
  // `address`: HOST:PORT the server listens on (0.0.0.0 / [::] are probed on loopback);
  // `servers`: whose health services turn NOT_SERVING.
  ListenerWatch(const std::string& address, std::vector<grpc::Server*> servers,
                absl::Duration interval = absl::Seconds(2));
  ~ListenerWatch();  // stops the thread; leaves the health status as it is
  ListenerWatch(const ListenerWatch&) = delete;
  ListenerWatch& operator=(const ListenerWatch&) = delete;

 private:
  void Loop();
  // One round: true when the probe connection was still waiting in the backlog.
  bool ProbeStuck();

  std::string host_;
  int port_ = 0;
  std::vector<grpc::Server*> servers_;
  absl::Duration interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace latentserve::serving
