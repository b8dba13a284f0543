#include "serving/metrics.h"

#include <cstdio>
#include <exception>

#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace latentserve::serving {
namespace {

// Latency buckets from 1 ms to ~100 s: TTFT spans short prompts to long prefills.
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100};
}

prometheus::Counter& NewCounter(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& NewHistogram(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, LatencyBuckets());
}

std::string JsonEscape(const std::string& in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

Metrics& Metrics::Get() {
  static Metrics* metrics = new Metrics(std::make_shared<prometheus::Registry>());
  return *metrics;
}

Metrics::Metrics(std::shared_ptr<prometheus::Registry> registry)
    : ttft_seconds(NewHistogram(*registry, "latentserve_router_time_to_first_token_seconds",
                                "Router: Generate start to the first token sent to the client")),
      inter_token_seconds(NewHistogram(*registry, "latentserve_router_inter_token_seconds",
                                       "Router: time between consecutive tokens sent to the client")),
      router_requests_in_flight(prometheus::BuildGauge()
                                    .Name("latentserve_router_requests_in_flight")
                                    .Help("Router: Generate calls running now")
                                    .Register(*registry)
                                    .Add({})),
      router_auth_failures_total(NewCounter(*registry, "latentserve_router_auth_failures_total",
                                            "Router: calls refused for a missing or wrong bearer token")),
      router_stream_limit_rejections_total(
          NewCounter(*registry, "latentserve_router_stream_limit_rejections_total",
                     "Router: Generate calls refused by the per-client concurrent stream limit")),
      internal_auth_failures_total(
          NewCounter(*registry, "latentserve_internal_auth_failures_total",
                     "Internal RPCs refused: the caller did not prove to be a cluster component")),
      prefill_tokens_total(NewCounter(*registry, "latentserve_prefill_tokens_total", "Prefill: prompt tokens prefilled")),
      prefill_compute_seconds_total(NewCounter(*registry, "latentserve_prefill_compute_seconds_total",
                                               "Prefill: seconds spent computing prefills")),
      transfer_bytes_total(NewCounter(*registry, "latentserve_transfer_bytes_total",
                                      "Cache transfer: payload bytes accepted by decode workers")),
      transfer_tail_seconds(NewHistogram(*registry, "latentserve_transfer_tail_seconds",
                                         "Cache transfer: last chunk computed -> decode worker acknowledged")),
      transfer_failures_total(NewCounter(*registry, "latentserve_transfer_failures_total",
                                         "Cache transfer: handoffs that failed (receiver gone, lease lost, deadline)")),
      decode_tokens_total(NewCounter(*registry, "latentserve_decode_tokens_total", "Decode: tokens generated")),
      registry_(std::move(registry)),
      router_requests_(prometheus::BuildCounter()
                           .Name("latentserve_router_requests_total")
                           .Help("Router: finished Generate calls by gRPC status code")
                           .Register(*registry_)) {}

void Metrics::CountRouterRequest(grpc::StatusCode code) {
  std::lock_guard<std::mutex> lock(mu_);
  prometheus::Counter*& counter = by_code_[code];
  if (!counter) counter = &router_requests_.Add({{"code", GrpcCodeName(code)}});
  counter->Increment();
}

// Scrape-time gauges: every source writes into one map of families, merged by name.
class MetricsServer::Gauges : public prometheus::Collectable {
 public:
  void Add(GaugeSource source) {
    std::lock_guard<std::mutex> lock(mu_);
    sources_.push_back(std::move(source));
  }
  std::vector<prometheus::MetricFamily> Collect() const override {
    class Writer : public GaugeWriter {
     public:
      void Set(const std::string& name, const std::string& help,
               const std::vector<std::pair<std::string, std::string>>& labels, double value) override {
        prometheus::MetricFamily& family = families[name];
        family.name = name;
        family.help = help;
        family.type = prometheus::MetricType::Gauge;
        prometheus::ClientMetric metric;
        for (const auto& [key, label_value] : labels) metric.label.push_back({key, label_value});
        metric.gauge.value = value;
        family.metric.push_back(std::move(metric));
      }
      std::map<std::string, prometheus::MetricFamily> families;
    } writer;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const GaugeSource& source : sources_) source(writer);
    }
    std::vector<prometheus::MetricFamily> out;
    for (auto& [name, family] : writer.families) out.push_back(std::move(family));
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<GaugeSource> sources_;
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon + 1 == listen.size()) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen must be HOST:PORT, got '", listen, "'"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  try {
    // civetweb serves one connection per thread: with its defaults (2 threads, 30 s read
    // timeout) two idle connections blocked every scrape. More threads, and a connection
    // that sends no request within 5 s is dropped.
    server->exposer_ = std::make_unique<prometheus::Exposer>(std::vector<std::string>{
        "listening_ports", listen, "num_threads", "8", "request_timeout_ms", "5000"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", listen, ": ", e.what()));
  }
  server->gauges_ = std::make_shared<Gauges>();
  server->exposer_->RegisterCollectable(Metrics::Get().registry());
  server->exposer_->RegisterCollectable(server->gauges_);
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  std::string host = listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  server->address_ = absl::StrCat(host, ":", ports.empty() ? 0 : ports.front());
  return server;
}

MetricsServer::~MetricsServer() {
  exposer_.reset();  // no scrape runs past this point
}

void MetricsServer::AddGaugeSource(GaugeSource source) { gauges_->Add(std::move(source)); }

void LogEvent(const std::string& component, const std::string& event, const std::string& request_id,
              const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string line = absl::StrCat("{\"ts\":\"", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
                                  "\",\"component\":\"", JsonEscape(component), "\",\"event\":\"", JsonEscape(event),
                                  "\",\"request_id\":\"", JsonEscape(request_id), "\"");
  for (const auto& [key, value] : fields) absl::StrAppend(&line, ",\"", JsonEscape(key), "\":\"", JsonEscape(value), "\"");
  line += "}\n";
  std::fputs(line.c_str(), stderr);  // one write per line: lines from threads do not interleave
}

}  // namespace latentserve::serving
