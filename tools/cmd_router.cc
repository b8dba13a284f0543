// `latentserve router`: the public Generation API (and the HTTP front) placing requests on
// the workers that registered.
#include <memory>

#include "common/args.h"
#include "common/status.h"
#include "http/openai_front.h"
#include "router/generation_service.h"
#include "tools/cli.h"
#include "tools/router_role.h"
#include "tools/worker_role.h"
#include "transfer/fingerprint.h"

namespace latentserve::cli {
namespace {

absl::Status RunRouter(int argc, char** argv) {
  sigset_t signals = serving::BlockShutdownSignals();
  std::set<std::string> known = serving::WithCommonFlags(
      {"listen", "port-file", "model", "prefill-workers", "decode-workers", "drain-ms"});
  known.insert(kRouterFlags.begin(), kRouterFlags.end());
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known));
  ASSIGN_OR_RETURN(std::string listen, args.Require("listen"));
  ASSIGN_OR_RETURN(serving::ProcessSecurity security, serving::SecurityFromArgs(args));
  RETURN_IF_ERROR(AddAuth(args, security));
  ASSIGN_OR_RETURN(auto auth, serving::InternalAuthorizerFromArgs(args, "router", false));
  ASSIGN_OR_RETURN(int64_t drain_ms, args.GetInt("drain-ms", 10000));
  ASSIGN_OR_RETURN(router::RouterOptions options, RouterOptionsFromArgs(args));
  router::RouterState state(options);
  if (!options.model_path.empty()) {  // only workers of this model, whoever registers first
    ASSIGN_OR_RETURN(std::string fingerprint, transfer::ModelFingerprint(options.model_path));
    state.registry().PinFingerprint(fingerprint);
  }
  RETURN_IF_ERROR(AddStaticWorkers(state.registry(), args));
  router::GenerationService generation(state);
  router::RegistryService registry(state, *auth);
  ASSIGN_OR_RETURN(serving::Listening server,
                   serving::StartServer(listen, {&generation, &registry}, security));
  ASSIGN_OR_RETURN(auto http_front, http::StartOpenAiFrontFromArgs(args, *server.server));
  ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> health, serving::StartHealth(args));
  // The model is known once a worker has reported it.
  ASSIGN_OR_RETURN(std::unique_ptr<serving::MetricsServer> metrics,
                   serving::StartMetrics(
                       args, {"router"},
                       [&state] {
                         const auto model = state.registry().Model();
                         return model ? model->name() : std::string();
                       },
                       kBuildInfo));
  AddRouterGauges(metrics.get(), state);
  RETURN_IF_ERROR(serving::Announce(args, server.address));
  serving::ServeUntilSignal(
      signals, server.address, serving::WithHealth({server.server.get()}, health),
      [&] { state.StartDrain(); }, absl::Milliseconds(drain_ms));
  return absl::OkStatus();
}

Registrar router_cmd("router", "serve the public Generation API and place requests on workers",
                     StatusHandler("router", RunRouter));

}  // namespace
}  // namespace latentserve::cli
