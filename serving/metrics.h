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
#include <type_traits>
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
  // Router: one per request that produced tokens, by finish reason ("length", "stop_token", ...).
  void CountFinishReason(const std::string& reason);
  // Router: a stage retried on another worker ("prefill", "handoff", "decode").
  void CountFailover(const std::string& stage);
  prometheus::Histogram& ttft_seconds;         // request start -> first token sent
  prometheus::Histogram& inter_token_seconds;  // between consecutive tokens sent
  prometheus::Histogram& e2e_seconds;          // request start -> finished (successful requests)
  prometheus::Histogram& queue_seconds;        // asking for decode cache pages -> reserved (capacity wait)
  prometheus::Histogram& prompt_tokens;        // prompt length of admitted requests
  prometheus::Histogram& generation_tokens;    // tokens generated per successful request
  prometheus::Gauge& router_requests_in_flight;
  prometheus::Gauge& router_requests_waiting;  // waiting for decode cache pages
  prometheus::Counter& router_auth_failures_total;
  prometheus::Counter& router_stream_limit_rejections_total;
  // Any server: internal RPCs refused because the caller is not a cluster component.
  prometheus::Counter& internal_auth_failures_total;
  // Prefill.
  prometheus::Counter& prefill_tokens_total;
  prometheus::Counter& prefill_compute_seconds_total;  // rate(tokens)/rate(seconds) = tokens/s
  prometheus::Histogram& prefill_seconds;              // one prefill job, start to last chunk
  // Cache transfer (sender side, prefill -> decode).
  prometheus::Counter& transfer_bytes_total;
  prometheus::Histogram& transfer_tail_seconds;  // last chunk computed -> decode acknowledged
  prometheus::Counter& transfer_failures_total;
  // Handoffs by transport ("grpc", "cuda-ipc"), and rows written device to device.
  prometheus::Family<prometheus::Counter>& transfer_handoffs_total;
  prometheus::Counter& transfer_device_bytes_total;
  // Decode.
  prometheus::Counter& decode_tokens_total;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  Metrics(std::shared_ptr<prometheus::Registry> registry);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& router_requests_;
  prometheus::Family<prometheus::Counter>& finish_reasons_;
  prometheus::Family<prometheus::Counter>& failovers_;
  std::mutex mu_;
  std::map<grpc::StatusCode, prometheus::Counter*> by_code_;
};

// The families a process of each role exports (a router has no prefill histograms, a decode
// worker no router TTFT): name prefixes, besides the process-wide ones (process_*, build info,
// cache gauges, internal auth).
std::vector<std::string> RoleMetricPrefixes(const std::vector<std::string>& roles);

std::string GrpcCodeName(grpc::StatusCode code);

// Receives one scrape's gauge values.
class GaugeWriter {
 public:
  virtual ~GaugeWriter() = default;
  // `counter`: a monotonic total read from elsewhere (e.g. process_cpu_seconds_total).
  virtual void Set(const std::string& name, const std::string& help,
                   const std::vector<std::pair<std::string, std::string>>& labels, double value,
                   bool counter = false) = 0;
};
using GaugeSource = std::function<void(GaugeWriter&)>;

// The HTTP endpoint. Destroy it before whatever its gauge sources read.
class MetricsServer {
 public:
  // `listen` is HOST:PORT (port 0: any free port). Only families whose names start with one
  // of `prefixes` are exported (RoleMetricPrefixes); every sample carries model="<model()>".
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              std::vector<std::string> prefixes,
                                                              std::function<std::string()> model);
  ~MetricsServer();
  void AddGaugeSource(GaugeSource source);
  const std::string& address() const { return address_; }  // host:port actually bound

 private:
  class Gauges;
  class Exported;
  MetricsServer() = default;
  std::shared_ptr<Gauges> gauges_;
  std::shared_ptr<Exported> exported_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

// A log field's value, written as a JSON string, number or boolean.
class LogValue {
 public:
  LogValue(std::string text) : json_(Quote(text)) {}
  LogValue(const char* text) : json_(Quote(text)) {}
  LogValue(bool flag) : json_(flag ? "true" : "false") {}
  LogValue(double number);
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  LogValue(T number) : json_(std::to_string(number)) {}
  const std::string& json() const { return json_; }

 private:
  static std::string Quote(const std::string& text);
  std::string json_;
};

enum class LogLevel { kInfo, kWarning, kError };

// One structured log line (JSON, stderr) for a request event: ts, level, component, event,
// request_id, then `fields`, already safe to log (never tokens, prompts or credentials).
void LogEvent(LogLevel level, const std::string& component, const std::string& event, const std::string& request_id,
              const std::vector<std::pair<std::string, LogValue>>& fields);
inline void LogEvent(const std::string& component, const std::string& event, const std::string& request_id,
                     const std::vector<std::pair<std::string, LogValue>>& fields) {
  LogEvent(LogLevel::kInfo, component, event, request_id, fields);
}

}  // namespace latentserve::serving
