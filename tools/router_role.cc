// What the router subcommands (router, serve) share (tools/router_role.h).
#include "tools/router_role.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace latentserve::cli {

absl::Status AddStaticWorkers(router::WorkerRegistry& registry, const Args& args) {
  for (const char* role : {"prefill", "decode"}) {
    const std::string list = args.Get(absl::StrCat(role, "-workers"));
    for (absl::string_view address : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
      registry.AddStatic(std::string(address), role);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<router::RouterOptions> RouterOptionsFromArgs(const Args& args) {
  router::RouterOptions options;
  ASSIGN_OR_RETURN(int64_t lease_ttl_ms, args.GetInt("lease-ttl-ms", 30000));
  ASSIGN_OR_RETURN(int64_t request_timeout_ms, args.GetInt("request-timeout-ms", 1800000));
  if (lease_ttl_ms <= 0 || request_timeout_ms <= 0) {
    return absl::InvalidArgumentError("--lease-ttl-ms and --request-timeout-ms must be positive");
  }
  options.lease_ttl = absl::Milliseconds(lease_ttl_ms);
  options.request_timeout = absl::Milliseconds(request_timeout_ms);
  ASSIGN_OR_RETURN(int64_t capacity_wait_ms, args.GetInt("capacity-wait-ms", 30000));
  if (capacity_wait_ms < 0) return absl::InvalidArgumentError("--capacity-wait-ms must be >= 0");
  options.capacity_wait = absl::Milliseconds(capacity_wait_ms);
  ASSIGN_OR_RETURN(int64_t progress_timeout_ms, args.GetInt("decode-progress-timeout-ms", 10000));
  if (progress_timeout_ms < 0 || progress_timeout_ms > 86400000) {
    return absl::InvalidArgumentError(
        "--decode-progress-timeout-ms must be in 0..86400000 (0: no limit)");
  }
  options.decode_progress_timeout = absl::Milliseconds(progress_timeout_ms);
  options.model_path = args.Get("model");
  ASSIGN_OR_RETURN(options.max_prompt_tokens, args.GetInt("max-prompt-tokens", 0));
  ASSIGN_OR_RETURN(options.max_streams_per_client, args.GetInt("max-streams-per-client", 0));
  ASSIGN_OR_RETURN(options.max_prompt_bytes, args.GetInt("max-prompt-bytes", 8 << 20));
  ASSIGN_OR_RETURN(options.registry.max_workers, args.GetInt("max-workers", 1024));
  const std::string decode_pages = args.Get("decode-pages", "grow");
  if (decode_pages != "grow" && decode_pages != "upfront") {
    return absl::InvalidArgumentError(
        absl::StrCat("--decode-pages must be grow or upfront, got '", decode_pages, "'"));
  }
  options.reserve_max_tokens = decode_pages == "upfront";
  ASSIGN_OR_RETURN(int64_t evict_ms, args.GetInt("worker-evict-ms", 60000));
  if (options.registry.max_workers <= 0 || evict_ms <= 0) {
    return absl::InvalidArgumentError("--max-workers and --worker-evict-ms must be positive");
  }
  options.registry.evict_after = absl::Milliseconds(evict_ms);
  ASSIGN_OR_RETURN(int64_t session_ttl_ms, args.GetInt("session-ttl-ms", 3600000));
  ASSIGN_OR_RETURN(int64_t session_idle_ms, args.GetInt("session-idle-ms", 600000));
  ASSIGN_OR_RETURN(options.sessions.max_per_client, args.GetInt("max-sessions-per-client", 16));
  ASSIGN_OR_RETURN(options.sessions.max_total, args.GetInt("max-sessions", 1024));
  ASSIGN_OR_RETURN(options.sessions.max_pinned_tokens, args.GetInt("session-max-pinned-tokens", int64_t{1} << 22));
  if (session_ttl_ms <= 0 || session_idle_ms <= 0 || session_ttl_ms > int64_t{1} << 40 ||
      session_idle_ms > int64_t{1} << 40 || options.sessions.max_per_client < 0 || options.sessions.max_total < 0 ||
      options.sessions.max_pinned_tokens < 0) {
    return absl::InvalidArgumentError(
        "--session-ttl-ms and --session-idle-ms must be positive; --max-sessions-per-client, --max-sessions and "
        "--session-max-pinned-tokens must be >= 0 (0: no sessions / no pinned sessions)");
  }
  options.sessions.default_ttl = absl::Milliseconds(session_ttl_ms);
  options.sessions.default_idle = absl::Milliseconds(session_idle_ms);
  if (options.max_prompt_tokens < 0 || options.max_streams_per_client < 0 ||
      options.max_prompt_bytes < 0) {
    return absl::InvalidArgumentError(
        "--max-prompt-tokens, --max-prompt-bytes and --max-streams-per-client must be >= 0 (0: no "
        "limit)");
  }
  return options;
}

const std::set<std::string> kRouterFlags = {
    "lease-ttl-ms",    "request-timeout-ms",  "capacity-wait-ms", "decode-progress-timeout-ms",
    "auth-token-file", "max-prompt-tokens",   "max-prompt-bytes", "max-streams-per-client",
    "max-workers",     "worker-evict-ms",     "decode-pages",     "http-listen",
    "http-port-file",  "http-max-body-bytes", "http-threads",     "session-ttl-ms",
    "session-idle-ms", "max-sessions-per-client", "max-sessions", "session-max-pinned-tokens"};

// The router's public API checks a bearer token when --auth-token-file is given; the
// worker registry and health service are left to mutual TLS.
absl::Status AddAuth(const Args& args, serving::ProcessSecurity& security) {
  if (!args.Has("auth-token-file")) return absl::OkStatus();
  if (!args.Has("tls-cert")) {
    // Also: grpc 1.51's insecure server credentials cannot carry an AuthMetadataProcessor.
    return absl::InvalidArgumentError(
        "--auth-token-file needs --tls-cert/--tls-key: a bearer token sent in plaintext can be "
        "read off the wire");
  }
  ASSIGN_OR_RETURN(std::string token, serving::ReadTokenFile(args.Get("auth-token-file")));
  security.auth = std::make_shared<serving::BearerTokenProcessor>(
      std::move(token),
      std::set<std::string>{"latentserve.internal.v1.WorkerRegistry", "grpc.health.v1.Health"});
  return absl::OkStatus();
}

void AddRouterGauges(serving::MetricsServer* metrics, router::RouterState& state) {
  if (!metrics) return;
  metrics->AddGaugeSource([&state](serving::GaugeWriter& out) {
    out.Set("latentserve_router_leases_active", "Router: decode leases held by requests in flight",
            {}, static_cast<double>(state.leases_active.load()));
    for (const router::WorkerEntry& w : state.registry().Snapshot()) {
      out.Set("latentserve_router_worker_up", "Router: 1 when the worker answered its last poll",
              {{"worker", w.address}, {"role", w.role}}, w.alive ? 1.0 : 0.0);
      out.Set("latentserve_router_worker_cache_pages_free",
              "Router: the worker's free cache pages, as last polled",
              {{"worker", w.address}, {"role", w.role}},
              static_cast<double>(w.stats.cache_pages_free()));
    }
  });
}

}  // namespace latentserve::cli
