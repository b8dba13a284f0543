// What the router subcommands (router, serve) share: the router's flags and options, the
// public API's bearer token, static workers, and the router's gauges.
#pragma once

#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/args.h"
#include "router/generation_service.h"
#include "serving/metrics.h"
#include "serving/server_shell.h"

namespace latentserve::cli {

// --prefill-workers / --decode-workers: workers the router polls without registration.
absl::Status AddStaticWorkers(router::WorkerRegistry& registry, const Args& args);

absl::StatusOr<router::RouterOptions> RouterOptionsFromArgs(const Args& args);

// The router's own flags (router and serve); tools/usage_text.cc documents them.
extern const std::set<std::string> kRouterFlags;

// The router's public API checks a bearer token when --auth-token-file is given; the worker
// registry and health service are left to mutual TLS.
absl::Status AddAuth(const Args& args, serving::ProcessSecurity& security);

// latentserve_router_leases_active and, per worker, up and free cache pages (as last polled).
void AddRouterGauges(serving::MetricsServer* metrics, router::RouterState& state);

}  // namespace latentserve::cli
