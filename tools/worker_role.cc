// What the worker subcommands (prefill, decode, serve) share: the engine from flags, its
// descriptor, and serving one worker role in the server shell (tools/worker_role.h).
#include "tools/worker_role.h"

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "common/status.h"
#include "latentserve_version.h"  // generated (tools/version.cmake)
#include "transfer/fingerprint.h"
#include "transfer/grpc_transport.h"
#include "worker/announcer_set.h"
#include "worker/stats_service.h"
#ifdef LATENTSERVE_HAVE_NCCL
#include "transfer/nccl_comm.h"
#endif

namespace latentserve::cli {

const serving::BuildInfo kBuildInfo = {LATENTSERVE_VERSION, LATENTSERVE_GIT_REVISION};

namespace {

#ifdef LATENTSERVE_HAVE_NCCL
constexpr bool kNcclBuilt = true;
#else
constexpr bool kNcclBuilt = false;
#endif

// One startup line per engine: the context it holds and the memory that costs (DESIGN.md §2),
// so an operator sees the plan of a 1,048,576-token deployment before the first request.
void LogMemoryPlan(const char* role, const Engine& engine) {
  const model::LatentCache& cache = *engine.cache;
  const int64_t context = cache.total_pages() * cache.page_tokens();
  const auto gib = [](double bytes) { return bytes / (1 << 30); };
  serving::LogEvent(role, "memory_plan", "",
                    {{"context_tokens", context},
                     {"page_tokens", cache.page_tokens()},
                     {"cache_type", DTypeName(cache.dtype())},
                     {"chunk_tokens", engine.chunk_tokens},
                     {"backend", engine.backend->name()},
                     {"latent_cache_gib", gib(static_cast<double>(cache.total_bytes()))},
                     {"weights_gib", gib(static_cast<double>(engine.model->weights().bytes))},
                     {"kda_state_mib_per_sequence", engine.model->KdaStateBytes() / 1048576.0}});
}

}  // namespace

// The flags of every worker engine (prefill, decode and serve); a split worker adds how it
// registers, prefill its fault injection. Each list is what tools/usage_text.cc documents.
const std::set<std::string> kWorkerFlags = serving::WithCommonFlags(
    {"listen", "model", "port-file", "threads", "cache-type", "page-tokens", "cache-tokens",
     "chunk", "backend", "device", "drain-ms", "max-lease-ttl-ms", "prefix-cache-mib", "checkpoint-interval",
     "local-prefill-max-tokens", "random-weights", "weight-type", "weights-seed"});

std::set<std::string> SplitWorkerFlags(bool prefill) {
  std::set<std::string> flags = kWorkerFlags;
  flags.insert({"router", "routers-dns", "advertise", "transport"});
  flags.insert(prefill ? "fault-stall-transfer-ms" : "fault-stall-decode-ms");
  if (prefill) flags.insert("prefix-read-max-mib");
  return flags;
}

absl::StatusOr<transfer::TransportOffer> TransportFromArgs(const Args& args, kernels::Backend& backend) {
  return transfer::OfferFor(args.Get("transport", "auto"), backend, kNcclBuilt);
}

absl::Status CheckTransportFlag(const Args& args) {
  const std::string flag = args.Get("transport", "auto");
  if (flag == "nccl") {
    if (!kNcclBuilt) {
      return absl::FailedPreconditionError("--transport nccl: this binary is built without NCCL (build with "
                                           "-DLATENTSERVE_CUDA=ON); use auto, grpc or cuda-ipc");
    }
    if (args.Get("backend", "cpu") != "cuda") {
      return absl::FailedPreconditionError(absl::StrCat("--transport nccl moves the cache between CUDA devices: it needs "
                                                        "--backend cuda, not ", args.Get("backend", "cpu")));
    }
    return absl::OkStatus();
  }
  if (flag != "auto" && flag != "grpc" && flag != "cuda-ipc") {
    return absl::InvalidArgumentError(absl::StrCat("--transport must be one of ", transfer::kTransportFlagValues,
                                                   ", got '", flag, "'"));
  }
  return absl::OkStatus();
}

absl::Status KeepCudaIpcIfExportable(const Args& args, const cache::PagePool& cache, transfer::TransportOffer* offer) {
  auto it = std::find(offer->transports.begin(), offer->transports.end(), "cuda-ipc");
  if (it == offer->transports.end() || cache.mla_layers() == 0) return absl::OkStatus();
  auto handle = cache.backend().ExportMemory(cache.pool(0));
  if (handle.ok() && handle->kind == "cuda-ipc") return absl::OkStatus();
  if (args.Get("transport", "auto") == "cuda-ipc") {
    return absl::FailedPreconditionError(absl::StrCat("--transport cuda-ipc: the cache cannot be exported (",
                                                      handle.ok() ? "host memory" : handle.status().message(), ")"));
  }
  offer->transports.erase(it);
  return absl::OkStatus();
}

bool Offers(const transfer::TransportOffer& offer, const std::string& transport) {
  return std::find(offer.transports.begin(), offer.transports.end(), transport) != offer.transports.end();
}

std::unique_ptr<transfer::NcclDataPlane> NcclDataPlaneFromArgs(const Args& args) {
#ifdef LATENTSERVE_HAVE_NCCL
  transfer::KeepNvlsOff();  // before the first communicator of this process
  absl::StatusOr<int64_t> device = args.GetInt("device", 0);  // checked when the engine loaded
  return transfer::NewCudaNcclDataPlane(device.ok() ? static_cast<int>(*device) : 0);
#else
  return nullptr;
#endif
}

internal::v1::WorkerTransports ToProto(const transfer::TransportOffer& offer) {
  internal::v1::WorkerTransports out;
  for (const std::string& name : offer.transports) out.add_transports(name);
  out.set_host_id(offer.host_id);
  out.set_gpu_uuid(offer.gpu_uuid);
  return out;
}

// --max-lease-ttl-ms (decode): the longest a lease may live without Decode, whatever a
// caller's ReserveLease/RenewLease asks for.
absl::StatusOr<absl::Duration> MaxLeaseTtlFromArgs(const Args& args) {
  ASSIGN_OR_RETURN(int64_t max_lease_ttl_ms, args.GetInt("max-lease-ttl-ms", 300000));
  if (max_lease_ttl_ms <= 0 || max_lease_ttl_ms > 86400000) {
    return absl::InvalidArgumentError("--max-lease-ttl-ms must be in [1, 86400000] (one day)");
  }
  return absl::Milliseconds(max_lease_ttl_ms);
}

absl::StatusOr<decode::DecodePrefixOptions> PrefixOptionsFromArgs(const Args& args, int64_t chunk_tokens) {
  decode::DecodePrefixOptions options;
  ASSIGN_OR_RETURN(int64_t budget_mib, args.GetInt("prefix-cache-mib", 0));
  // By default every 4,096 tokens, or every chunk where chunks are longer (65,536 on the GPU):
  // handed-off prompts end their prefill chunks at checkpoints, so a shorter interval would cut
  // every GPU chunk into pieces.
  ASSIGN_OR_RETURN(options.checkpoint_interval_tokens,
                   args.GetInt("checkpoint-interval", std::max<int64_t>(4096, chunk_tokens)));
  ASSIGN_OR_RETURN(options.local_prefill_max_tokens, args.GetInt("local-prefill-max-tokens", 2048));
  if (budget_mib < 0 || budget_mib > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError("--prefix-cache-mib must be in [0, 2^30]");
  }
  if (options.checkpoint_interval_tokens != 0 && options.checkpoint_interval_tokens < 16) {
    return absl::InvalidArgumentError("--checkpoint-interval must be 0 (prompt ends only) or at least 16 tokens");
  }
  if (options.local_prefill_max_tokens < 0) {
    return absl::InvalidArgumentError("--local-prefill-max-tokens must be >= 0");
  }
  options.budget_bytes = budget_mib << 20;
  options.chunk_tokens = chunk_tokens;
  return options;
}

absl::StatusOr<LoadedEngine> LoadEngine(const Args& args, const char* role) {
  ASSIGN_OR_RETURN(int64_t cache_tokens, args.GetInt("cache-tokens", 65536));
  if (cache_tokens <= 0) return absl::InvalidArgumentError("--cache-tokens must be positive");
  // --random-weights (GPU benchmarks of the full-size shape without a 27 GB file): every
  // process given the same shape, weight type and seed makes the same weights, so that
  // triple is the fingerprint the router and the cache handoff compare.
  const bool random_weights = args.Has("random-weights");
  if (random_weights == args.Has("model")) {
    return absl::InvalidArgumentError("give --model PATH or --random-weights CONFIG (one of them)");
  }
  const std::string path =
      random_weights ? absl::StrCat("random:", args.Get("random-weights"), ":", args.Get("weight-type", "q4_0"), ":",
                                    args.Get("weights-seed", "1"))
                     : args.Get("model");
  LoadedEngine loaded;
  ASSIGN_OR_RETURN(loaded.engine, EngineFromArgs(args, cache_tokens));
  LogMemoryPlan(role, loaded.engine);
  std::string fingerprint = path;
  if (!random_weights) {
    ASSIGN_OR_RETURN(fingerprint, transfer::ModelFingerprint(path));
  }
  char resolved[PATH_MAX];
  loaded.descriptor.set_path(!random_weights && realpath(path.c_str(), resolved) ? resolved : path);
  const gguf::File* file = loaded.engine.model->file();  // null with --random-weights
  auto name =
      file ? file->GetString("general.name") : absl::StatusOr<std::string>(absl::NotFoundError(""));
  loaded.descriptor.set_name(name.ok() ? *name : path.substr(path.rfind('/') + 1));
  loaded.descriptor.set_fingerprint(fingerprint);
  loaded.descriptor.set_vocab_size(loaded.engine.model->vocab());
  loaded.descriptor.set_cache_dtype(transfer::ToProtoDType(loaded.engine.cache->dtype()));
  loaded.descriptor.set_max_context_tokens(loaded.engine.cache->total_pages() *
                                           loaded.engine.cache->page_tokens());
  return loaded;
}

// --router A[,B...] (each router replica by address) and/or --routers-dns HOST:PORT (every
// address HOST resolves to: a headless Service of router replicas). At least one is needed.
absl::StatusOr<std::vector<std::string>> RoutersFromArgs(const Args& args) {
  std::vector<std::string> routers;
  for (absl::string_view r : absl::StrSplit(args.Get("router"), ',', absl::SkipWhitespace())) {
    routers.emplace_back(absl::StripAsciiWhitespace(r));
  }
  if (args.Has("routers-dns")) {
    const std::string dns = args.Get("routers-dns");
    const size_t colon = dns.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == dns.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--routers-dns must be HOST:PORT, got '", dns, "'"));
    }
  }
  if (routers.empty() && !args.Has("routers-dns")) {
    return absl::InvalidArgumentError(
        "--router HOST:PORT[,HOST:PORT...] or --routers-dns HOST:PORT is required");
  }
  return routers;
}

// Serves a worker role until SIGTERM/SIGINT: its service and WorkerStats on --listen, metrics,
// and registration + heartbeats with the router.
absl::Status ServeWorker(const Args& args, sigset_t signals, const LoadedEngine& loaded,
                         const serving::ProcessSecurity& security,
                         const serving::InternalAuthorizer& auth, const WorkerRole& role) {
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(std::vector<std::string> routers, RoutersFromArgs(args));
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  std::string address;
  auto info = [&] { return role.info(address); };
  worker::WorkerStatsService stats(role.name, loaded.descriptor, info, auth, role.transports);
  if (role.prefix_index) stats.SetPrefixIndex(role.prefix_index);
  ASSIGN_OR_RETURN(serving::Listening server,
                   serving::StartServer(listen, {role.service, &stats}, security));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, serving::StartHealth(args));
  const std::string model_name = loaded.descriptor.name();
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics,
                   serving::StartMetrics(
                       args, {role.name}, [model_name] { return model_name; }, kBuildInfo));
  worker::AddWorkerGauges(metrics.get(), role.name, info);
  if (role.decode_stats) AddDecodeCounters(metrics.get(), role.decode_stats);
  address = args.Get("advertise", server.address);
  RETURN_IF_ERROR(serving::Announce(args, server.address));
  worker::AnnouncerSet announcers(routers, args.Get("routers-dns"), address, role.name,
                                  loaded.descriptor, info, absl::Seconds(5), role.transports);
  serving::ServeUntilSignal(signals, server.address,
                            serving::WithHealth({server.server.get()}, health), role.start_drain,
                            absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

void AddDecodeCounters(serving::MetricsServer* metrics,
                       std::function<decode::DecodeStats()> stats) {
  if (!metrics) return;
  metrics->AddGaugeSource([stats](serving::GaugeWriter& out) {
    const decode::DecodeStats s = stats();
    out.Set("latentserve_decode_lease_expired_total",
            "Decode: page reservations that expired before their cache arrived", {},
            static_cast<double>(s.leases_expired), /*counter=*/true);
    out.Set("latentserve_decode_cache_full_stops_total",
            "Decode: sequences stopped early (finish_reason length) because no cache page was free "
            "for their next token",
            {}, static_cast<double>(s.cache_full_stops), /*counter=*/true);
    out.Set("latentserve_decode_handoffs_admitted_total", "Decode: cache handoffs that arrived complete", {},
            static_cast<double>(s.handoffs_admitted), /*counter=*/true);
    out.Set("latentserve_decode_handoff_host_bytes_total",
            "Decode: bytes of admitted handoffs that were copied through host memory on this worker "
            "(0 for an in-process handoff between device caches)",
            {}, static_cast<double>(s.handoff_host_bytes), /*counter=*/true);
    // Prefix reuse (docs/serving.md "Prefix reuse"): hit ratio = hits / lookups.
    out.Set("latentserve_decode_prefix_lookups_total", "Decode: prompts looked up in the prefix cache", {},
            static_cast<double>(s.prefix.lookups), /*counter=*/true);
    out.Set("latentserve_decode_prefix_hits_total", "Decode: prompts resumed from a cached prefix", {},
            static_cast<double>(s.prefix.hits), /*counter=*/true);
    out.Set("latentserve_decode_prefix_cached_tokens_total",
            "Decode: prompt tokens resumed from cached prefixes instead of being computed", {},
            static_cast<double>(s.prefix.hit_tokens), /*counter=*/true);
    out.Set("latentserve_decode_prefix_evictions_total", "Decode: cached prefixes evicted for room", {},
            static_cast<double>(s.prefix.evictions), /*counter=*/true);
    out.Set("latentserve_decode_prefix_pages", "Decode: cache pages the kept prefixes hold", {},
            static_cast<double>(s.prefix.pages));
    out.Set("latentserve_decode_prefix_checkpoint_bytes", "Decode: memory of the kept KDA checkpoints", {},
            static_cast<double>(s.prefix.checkpoint_bytes));
    out.Set("latentserve_decode_local_prefills_total",
            "Decode: prompts (or their uncached rest) prefilled on the decode worker, without a handoff", {},
            static_cast<double>(s.local_prefills), /*counter=*/true);
    out.Set("latentserve_decode_prefix_reads_total",
            "Decode: cached prefixes read by prefill workers that computed a long rest (ReadPrefix)", {},
            static_cast<double>(s.prefix_reads), /*counter=*/true);
    out.Set("latentserve_decode_prefix_read_bytes_total", "Decode: payload bytes of those prefix reads", {},
            static_cast<double>(s.prefix_read_bytes), /*counter=*/true);
    // tokens_total / steps_total over an interval: the sequences one step decodes (batch size).
    out.Set("latentserve_decode_steps_total", "Decode: batched forward steps (one token for every decoding sequence)",
            {}, static_cast<double>(s.steps), /*counter=*/true);
    // Over an interval, each / steps_total: the time of one step's forward and of its sampling.
    out.Set("latentserve_decode_step_seconds_total",
            "Decode: time in the steps' forwards (their tokens or logits on the host included)", {}, s.step_seconds,
            /*counter=*/true);
    out.Set("latentserve_decode_sample_seconds_total", "Decode: time sampling the steps' logits on the host (near 0 when every row is greedy)", {},
            s.sample_seconds, /*counter=*/true);
  });
}

}  // namespace latentserve::cli
