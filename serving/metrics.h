// Process metrics in Prometheus text format, served on GET /metrics by an embedded HTTP
// server (--metrics-listen HOST:PORT on every serving subcommand).
//
// Counters and histograms live in one process-wide registry (Metrics::Get()) and are
// recorded where the event happens. Gauges that mirror live state (cache pages, leases,
// queue depth, worker health) are read at scrape time from sources the process registers
// with its MetricsServer, so they can never drift from the state they describe.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/support/status.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
}

namespace latentserve::serving {

// Event metrics (names follow Prometheus conventions: base units in the name, _total counters).
class Metrics {
 public:
  static Metrics& Get();

  // Router: one per finished Generate call, by gRPC status code name ("OK", "CANCELLED", ...).
  void CountRouterRequest(grpc::StatusCode code);
  prometheus::Histogram& ttft_seconds;         // request start -> first token sent
  prometheus::Histogram& inter_token_seconds;  // between consecutive tokens sent
  prometheus::Gauge& router_requests_in_flight;
  prometheus::Counter& router_auth_failures_total;
  prometheus::Counter& router_stream_limit_rejections_total;
  // Any server: internal RPCs refused because the caller is not a cluster component.
  prometheus::Counter& internal_auth_failures_total;
  // Prefill.
  prometheus::Counter& prefill_tokens_total;
  prometheus::Counter& prefill_compute_seconds_total;  // rate(tokens)/rate(seconds) = tokens/s
  // Cache transfer (sender side, prefill -> decode).
  prometheus::Counter& transfer_bytes_total;
  prometheus::Histogram& transfer_tail_seconds;  // last chunk computed -> decode acknowledged
  prometheus::Counter& transfer_failures_total;
  // Decode.
  prometheus::Counter& decode_tokens_total;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  Metrics(std::shared_ptr<prometheus::Registry> registry);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& router_requests_;
  std::mutex mu_;
  std::map<grpc::StatusCode, prometheus::Counter*> by_code_;
};

const char* GrpcCodeName(grpc::StatusCode code);

// Receives one scrape's gauge values.
class GaugeWriter {
 public:
  virtual ~GaugeWriter() = default;
  virtual void Set(const std::string& name, const std::string& help,
                   const std::vector<std::pair<std::string, std::string>>& labels, double value) = 0;
};
using GaugeSource = std::function<void(GaugeWriter&)>;

// The HTTP endpoint. Destroy it before whatever its gauge sources read.
class MetricsServer {
 public:
  // `listen` is HOST:PORT (port 0: any free port).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen);
  ~MetricsServer();
  void AddGaugeSource(GaugeSource source);
  const std::string& address() const { return address_; }  // host:port actually bound

 private:
  class Gauges;
  MetricsServer() = default;
  std::shared_ptr<Gauges> gauges_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

// One structured log line (JSON, stderr) for a request event. `fields` are key/value
// pairs already safe to log (never tokens, prompts or credentials).
void LogEvent(const std::string& component, const std::string& event, const std::string& request_id,
              const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace latentserve::serving
