#include "serving/metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>
#include <prometheus/exposer.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace latentserve::serving {
namespace {

// Latency buckets from 1 ms to 1 hour: a 1M-token prefill takes minutes (DESIGN.md §6).
prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,   2.5,
          5,     10,     25,    50,   100,   250,  500, 1000, 1800, 3600};
}

// Token counts from 16 to 2M (prompt and generation lengths).
prometheus::Histogram::BucketBoundaries TokenBuckets() {
  return {16, 64, 256, 1024, 4096, 16384, 65536, 131072, 262144, 524288, 1048576, 2097152};
}

prometheus::Counter& NewCounter(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& NewHistogram(prometheus::Registry& registry, const std::string& name, const std::string& help,
                                    prometheus::Histogram::BucketBoundaries buckets = LatencyBuckets()) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, std::move(buckets));
}

prometheus::Gauge& NewGauge(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

// A JSON string literal (quotes included); bytes that are not UTF-8 become U+FFFD.
std::string JsonQuote(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string GrpcCodeName(grpc::StatusCode code) {
  const std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? "UNKNOWN" : name;
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
      e2e_seconds(NewHistogram(*registry, "latentserve_router_e2e_request_seconds",
                               "Router: Generate start to finished, successful requests")),
      queue_seconds(NewHistogram(*registry, "latentserve_router_queue_seconds",
                                 "Router: asking for decode cache pages to having them (waiting for capacity)")),
      prompt_tokens(NewHistogram(*registry, "latentserve_router_prompt_tokens", "Router: prompt tokens per request",
                                 TokenBuckets())),
      generation_tokens(NewHistogram(*registry, "latentserve_router_generation_tokens",
                                     "Router: tokens generated per successful request", TokenBuckets())),
      router_requests_in_flight(
          NewGauge(*registry, "latentserve_router_requests_in_flight", "Router: Generate calls running now")),
      router_requests_waiting(NewGauge(*registry, "latentserve_router_requests_waiting",
                                       "Router: Generate calls waiting for decode cache pages")),
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
      prefill_seconds(NewHistogram(*registry, "latentserve_prefill_seconds", "Prefill: one prompt's prefill")),
      transfer_bytes_total(NewCounter(*registry, "latentserve_transfer_bytes_total",
                                      "Cache transfer: payload bytes accepted by decode workers")),
      transfer_tail_seconds(NewHistogram(*registry, "latentserve_transfer_tail_seconds",
                                         "Cache transfer: last chunk computed -> decode worker acknowledged")),
      transfer_failures_total(NewCounter(*registry, "latentserve_transfer_failures_total",
                                         "Cache transfer: handoffs that failed (receiver gone, lease lost, deadline)")),
      transfer_handoffs_total(prometheus::BuildCounter()
                                  .Name("latentserve_transfer_handoffs_total")
                                  .Help("Cache transfer: handoffs accepted by decode workers, by transport")
                                  .Register(*registry)),
      transfer_device_bytes_total(NewCounter(*registry, "latentserve_transfer_device_bytes_total",
                                             "Cache transfer: latent rows written device to device (CUDA IPC)")),
      decode_tokens_total(NewCounter(*registry, "latentserve_decode_tokens_total", "Decode: tokens generated")),
      registry_(std::move(registry)),
      router_requests_(prometheus::BuildCounter()
                           .Name("latentserve_router_requests_total")
                           .Help("Router: finished Generate calls by gRPC status code")
                           .Register(*registry_)),
      finish_reasons_(prometheus::BuildCounter()
                          .Name("latentserve_router_finished_total")
                          .Help("Router: requests that produced tokens, by finish reason")
                          .Register(*registry_)),
      failovers_(prometheus::BuildCounter()
                     .Name("latentserve_router_failovers_total")
                     .Help("Router: a stage retried on another worker after one failed (prefill, handoff, decode)")
                     .Register(*registry_)) {
  // Every label value exists from the start (at 0), so rate() and alerts see the series.
  for (const char* reason : {"length", "stop_token", "stop_string"}) finish_reasons_.Add({{"reason", reason}});
  for (const char* stage : {"prefill", "handoff", "decode"}) failovers_.Add({{"stage", stage}});
}

void Metrics::CountFinishReason(const std::string& reason) {
  finish_reasons_.Add({{"reason", reason}}).Increment();  // Add returns the existing child
}

void Metrics::CountFailover(const std::string& stage) { failovers_.Add({{"stage", stage}}).Increment(); }

std::vector<std::string> RoleMetricPrefixes(const std::vector<std::string>& roles) {
  std::vector<std::string> out = {"process_", "latentserve_build_info", "latentserve_cache_", "latentserve_worker_",
                                  "latentserve_internal_"};
  for (const std::string& role : roles) {
    if (role == "router") out.push_back("latentserve_router_");
    if (role == "prefill") out.insert(out.end(), {"latentserve_prefill_", "latentserve_transfer_"});
    if (role == "decode") out.push_back("latentserve_decode_");
  }
  return out;
}

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
               const std::vector<std::pair<std::string, std::string>>& labels, double value, bool counter) override {
        prometheus::MetricFamily& family = families[name];
        family.name = name;
        family.help = help;
        family.type = counter ? prometheus::MetricType::Counter : prometheus::MetricType::Gauge;
        prometheus::ClientMetric metric;
        for (const auto& [key, label_value] : labels) metric.label.push_back({key, label_value});
        (counter ? metric.counter.value : metric.gauge.value) = value;
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

// What the endpoint serves: the event registry and the scrape-time gauges, only this role's
// families, each sample labelled with the served model.
class MetricsServer::Exported : public prometheus::Collectable {
 public:
  Exported(std::vector<std::shared_ptr<prometheus::Collectable>> sources, std::vector<std::string> prefixes,
           std::function<std::string()> model)
      : sources_(std::move(sources)), prefixes_(std::move(prefixes)), model_(std::move(model)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    const std::string model = model_ ? model_() : "";
    std::vector<prometheus::MetricFamily> out;
    for (const auto& source : sources_) {
      for (prometheus::MetricFamily& family : source->Collect()) {
        const bool exported = std::any_of(prefixes_.begin(), prefixes_.end(),
                                          [&](const std::string& p) { return family.name.rfind(p, 0) == 0; });
        if (!exported) continue;
        for (prometheus::ClientMetric& metric : family.metric) metric.label.push_back({"model", model});
        out.push_back(std::move(family));
      }
    }
    return out;
  }

 private:
  std::vector<std::shared_ptr<prometheus::Collectable>> sources_;
  std::vector<std::string> prefixes_;
  std::function<std::string()> model_;
};

// process_* as the Prometheus client libraries export them, from /proc/self.
static void WriteProcessMetrics(GaugeWriter& out) {
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces) start at field 3 (state).
  const size_t close = stat.rfind(')');
  std::vector<std::string> fields;
  if (close != std::string::npos) fields = absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const auto field = [&](size_t number) {  // 1-based field number of proc(5)
    double value = 0;
    return number >= 3 && number - 3 < fields.size() && absl::SimpleAtod(fields[number - 3], &value) ? value : 0.0;
  };
  out.Set("process_cpu_seconds_total", "User and system CPU time spent in seconds", {},
          (field(14) + field(15)) / ticks, /*counter=*/true);
  out.Set("process_virtual_memory_bytes", "Virtual memory size in bytes", {}, field(23));
  out.Set("process_resident_memory_bytes", "Resident memory size in bytes", {}, field(24) * page);
  static const double boot_time = [] {
    std::ifstream in("/proc/stat");
    std::string key;
    double value = 0;
    while (in >> key) {
      if (key == "btime" && in >> value) return value;
    }
    return 0.0;
  }();
  out.Set("process_start_time_seconds", "Start time of the process since unix epoch in seconds", {},
          boot_time + field(22) / ticks);
  int64_t fds = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir)) ++fds;
    closedir(dir);
    fds -= 3;  // ".", ".." and the directory's own descriptor
  }
  out.Set("process_open_fds", "Number of open file descriptors", {}, static_cast<double>(fds));
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    std::vector<std::string> prefixes,
                                                                    std::function<std::string()> model) {
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
  server->gauges_->Add(WriteProcessMetrics);
  server->exported_ = std::make_shared<Exported>(
      std::vector<std::shared_ptr<prometheus::Collectable>>{Metrics::Get().registry(), server->gauges_},
      std::move(prefixes), std::move(model));
  server->exposer_->RegisterCollectable(server->exported_);
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

LogValue::LogValue(double number) {
  json_ = std::isfinite(number) ? absl::StrFormat("%.6g", number) : "null";
}

std::string LogValue::Quote(const std::string& text) { return JsonQuote(text); }

void LogEvent(LogLevel level, const std::string& component, const std::string& event, const std::string& request_id,
              const std::vector<std::pair<std::string, LogValue>>& fields) {
  const char* level_name = level == LogLevel::kError ? "error" : level == LogLevel::kWarning ? "warning" : "info";
  std::string line = absl::StrCat("{\"ts\":\"", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()),
                                  "\",\"level\":\"", level_name, "\",\"component\":", JsonQuote(component),
                                  ",\"event\":", JsonQuote(event), ",\"request_id\":", JsonQuote(request_id));
  for (const auto& [key, value] : fields) absl::StrAppend(&line, ",", JsonQuote(key), ":", value.json());
  line += "}\n";
  std::fputs(line.c_str(), stderr);  // one write per line: lines from threads do not interleave
}

}  // namespace latentserve::serving
