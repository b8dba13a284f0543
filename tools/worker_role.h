// What the worker subcommands (prefill, decode, serve) share: flags, the engine and the model
// descriptor it serves, and serving one worker role (its service, WorkerStats, registration
// with the routers, metrics) in the server shell until SIGTERM.
#pragma once

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/args.h"
#include "decode/decode_worker.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "serving/server_shell.h"
#include "tools/lib/engine_setup.h"
#include "transfer/nccl_transport.h"
#include "transfer/transport_choice.h"

namespace latentserve::cli {

// This binary's version and git revision (latentserve_build_info).
extern const serving::BuildInfo kBuildInfo;

// The flags of every worker engine (prefill, decode and serve); tools/usage_text.cc documents them.
extern const std::set<std::string> kWorkerFlags;
// A split worker's flags: kWorkerFlags, how it registers, and its fault injection.
std::set<std::string> SplitWorkerFlags(bool prefill);
// --prefix-read-max-mib default (prefill): the largest cached prefix a prefill worker reads.
inline constexpr int64_t kDefaultPrefixReadMib = 8192;

// --max-lease-ttl-ms (decode): the longest a lease may live without Decode.
absl::StatusOr<absl::Duration> MaxLeaseTtlFromArgs(const Args& args);

// --prefix-cache-mib, --checkpoint-interval, --local-prefill-max-tokens (decode): prefix reuse.
absl::StatusOr<decode::DecodePrefixOptions> PrefixOptionsFromArgs(const Args& args, int64_t chunk_tokens);

struct LoadedEngine {
  Engine engine;
  internal::v1::ModelDescriptor descriptor;
};

// The engine from flags (logging its memory plan) and the descriptor workers report.
absl::StatusOr<LoadedEngine> LoadEngine(const Args& args, const char* role);

// What differs between the two worker roles; ServeWorker does the rest.
struct WorkerRole {
  const char* name;                                        // "prefill" or "decode"
  grpc::Service* service;                                  // the role's gRPC service
  std::function<v1::WorkerInfo(const std::string&)> info;  // stats, given the advertised address
  std::function<void()> start_drain;                       // stop taking work (SIGTERM)
  std::function<decode::DecodeStats()> decode_stats;       // decode only
  internal::v1::WorkerTransports transports;               // advertised to the routers
  std::function<internal::v1::PrefixIndex()> prefix_index;  // decode only: prefixes held
};

// --transport auto|grpc|cuda-ipc|nccl (prefill, decode): what this worker offers on `backend`
// (transfer::OfferFor; an impossible choice is an error before the worker serves).
absl::StatusOr<transfer::TransportOffer> TransportFromArgs(const Args& args, kernels::Backend& backend);
internal::v1::WorkerTransports ToProto(const transfer::TransportOffer& offer);
// The --transport value alone, before a model loads: InvalidArgument for an unknown value,
// FailedPrecondition for nccl on a build without NCCL or with --backend other than cuda.
absl::Status CheckTransportFlag(const Args& args);
// Whether `offer` includes `transport`.
bool Offers(const transfer::TransportOffer& offer, const std::string& transport);
// NCCL itself on the --device of a CUDA build (transfer/nccl_comm.h); null on a build without
// NCCL (whose offer never holds "nccl").
std::unique_ptr<transfer::NcclDataPlane> NcclDataPlaneFromArgs(const Args& args);
// A decode worker offers CUDA IPC only when its page pools export (--transport cuda-ipc:
// FailedPrecondition otherwise; auto: drops the offer).
absl::Status KeepCudaIpcIfExportable(const Args& args, const cache::PagePool& cache, transfer::TransportOffer* offer);

// --router A[,B...] and/or --routers-dns HOST:PORT (at least one).
absl::StatusOr<std::vector<std::string>> RoutersFromArgs(const Args& args);

// Serves a worker role until SIGTERM/SIGINT: its service and WorkerStats on --listen, metrics,
// and registration + heartbeats with the routers.
absl::Status ServeWorker(const Args& args, sigset_t signals, const LoadedEngine& loaded,
                         const serving::ProcessSecurity& security,
                         const serving::InternalAuthorizer& auth, const WorkerRole& role);

// latentserve_decode_lease_expired_total and latentserve_decode_cache_full_stops_total, read
// from the decode worker at scrape time. No-op when `metrics` is null.
void AddDecodeCounters(serving::MetricsServer* metrics, std::function<decode::DecodeStats()> stats);

}  // namespace latentserve::cli
