// `latentserve serve`: router + prefill + decode in one process; the cache moves in process.
#include <memory>

#include "absl/time/clock.h"
#include "common/args.h"
#include "common/status.h"
#include "decode/decode_service.h"
#include "http/openai_front.h"
#include "prefill/prefill_service.h"
#include "router/generation_service.h"
#include "tools/cli.h"
#include "tools/router_role.h"
#include "tools/worker_role.h"
#include "transfer/grpc_transport.h"
#include "transfer/prefix_stream.h"
#include "transfer/inproc_transport.h"
#include "worker/stats_service.h"

namespace latentserve::cli {
namespace {

// All roles in one process: the router on --listen, one prefill and one decode worker on
// private loopback ports; the cache moves in process (InProcTransport), not over gRPC.
absl::Status RunServe(int argc, char** argv) {
  sigset_t signals = serving::BlockShutdownSignals();
  std::set<std::string> known = kWorkerFlags;
  known.insert(kRouterFlags.begin(), kRouterFlags.end());
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known));
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(serving::ProcessSecurity security, serving::SecurityFromArgs(args));
  ASSIGN_OR_RETURN(serving::ProcessSecurity public_security, serving::SecurityFromArgs(args));
  RETURN_IF_ERROR(AddAuth(args, public_security));
  ASSIGN_OR_RETURN(auto auth, serving::InternalAuthorizerFromArgs(args, "serve", true));
  ASSIGN_OR_RETURN(absl::Duration max_lease_ttl, MaxLeaseTtlFromArgs(args));
  // The in-process workers listen on loopback; they keep the TLS settings (the router
  // reaches them over its internal channels).
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  // Two engines (each with its own backend): prefill and decode compute concurrently.
  ASSIGN_OR_RETURN(LoadedEngine prefill_engine, LoadEngine(args, "prefill"));
  ASSIGN_OR_RETURN(LoadedEngine decode_engine, LoadEngine(args, "decode"));
  const internal::v1::ModelDescriptor& descriptor = decode_engine.descriptor;

  ASSIGN_OR_RETURN(decode::DecodePrefixOptions prefix,
                   PrefixOptionsFromArgs(args, decode_engine.engine.chunk_tokens));
  decode::DecodeWorker decode_worker(*decode_engine.engine.model, *decode_engine.engine.cache,
                                     descriptor.fingerprint(), max_lease_ttl, prefix);
  decode::DecodeService decode_service(decode_worker, descriptor, *auth);
  std::string decode_address;
  worker::WorkerStatsService decode_stats(
      "decode", descriptor, [&] { return decode_service.Info(decode_address); }, *auth);
  ASSIGN_OR_RETURN(serving::Listening decode_server,
                   serving::StartServer("127.0.0.1:0", {&decode_service, &decode_stats}, security));
  decode_address = decode_server.address;

  transfer::InProcTransport inproc;
  inproc.AddSink(decode_address, &decode_worker);
  transfer::GrpcTransport grpc_transport(
      32 << 20, [] { return serving::InternalChannelCredentials(); },
      [](grpc::ClientContext& context) { serving::AttachInternalCredential(context); });
  transfer::RoutingTransport transport(&inproc, &grpc_transport);
  prefill::PrefillWorker prefill_worker(*prefill_engine.engine.model, *prefill_engine.engine.cache,
                                        transport, descriptor.fingerprint(),
                                        prefill_engine.engine.chunk_tokens);
  // A long rest after a cached prefix: the prefill side reads the prefix over loopback gRPC.
  transfer::GrpcPrefixReader prefix_reader([] { return serving::InternalChannelCredentials(); },
                                           [](grpc::ClientContext& context) { serving::AttachInternalCredential(context); });
  prefill_worker.SetPrefixReader(&prefix_reader, kDefaultPrefixReadMib << 20);
  prefill::PrefillService prefill_service(prefill_worker, descriptor, *auth);
  std::string prefill_address;
  worker::WorkerStatsService prefill_stats(
      "prefill", descriptor, [&] { return prefill_service.Info(prefill_address); }, *auth);
  ASSIGN_OR_RETURN(
      serving::Listening prefill_server,
      serving::StartServer("127.0.0.1:0", {&prefill_service, &prefill_stats}, security));
  prefill_address = prefill_server.address;

  ASSIGN_OR_RETURN(router::RouterOptions options, RouterOptionsFromArgs(args));
  if (options.lease_ttl > max_lease_ttl) {
    return absl::InvalidArgumentError(
        "--lease-ttl-ms must not exceed --max-lease-ttl-ms (the decode worker would cut it)");
  }
  router::RouterState state(options);
  state.registry().PinFingerprint(descriptor.fingerprint());
  state.registry().AddStatic(prefill_address, "prefill");
  state.registry().AddStatic(decode_address, "decode");
  router::GenerationService generation(state);
  router::RegistryService registry(state, *auth);
  ASSIGN_OR_RETURN(serving::Listening server,
                   serving::StartServer(listen, {&generation, &registry}, public_security));
  ASSIGN_OR_RETURN(auto http_front, http::StartOpenAiFrontFromArgs(args, *server.server));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, serving::StartHealth(args));
  const std::string model_name = descriptor.name();
  ASSIGN_OR_RETURN(
      std::unique_ptr<serving::MetricsServer> metrics,
      serving::StartMetrics(
          args, {"router", "prefill", "decode"}, [model_name] { return model_name; }, kBuildInfo));
  AddRouterGauges(metrics.get(), state);
  worker::AddWorkerGauges(metrics.get(), "prefill",
                          [&] { return prefill_service.Info(prefill_address); });
  worker::AddWorkerGauges(metrics.get(), "decode",
                          [&] { return decode_service.Info(decode_address); });
  AddDecodeCounters(metrics.get(), [&] { return decode_worker.Stats(); });
  // Ready once the router has seen both workers (its first poll).
  const absl::Time ready_by = absl::Now() + absl::Seconds(10);
  while (!(state.registry().AnyAlive("prefill") && state.registry().AnyAlive("decode")) &&
         absl::Now() < ready_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  RETURN_IF_ERROR(serving::Announce(args, server.address));
  serving::ServeUntilSignal(
      signals, server.address,
      serving::WithHealth(
          {server.server.get(), prefill_server.server.get(), decode_server.server.get()}, health),
      [&] {
        state.StartDrain();
        prefill_worker.StartDrain();
        decode_worker.StartDrain();
      },
      absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

Registrar serve_cmd("serve", "router + prefill + decode in one process (in-process cache handoff)",
                    StatusHandler("serve", RunServe));

}  // namespace
}  // namespace latentserve::cli
