// `latentserve prefill`: a prefill worker registered with the routers; it streams each
// request's cache to the decode worker the router chose.
#include <cstdio>
#include <memory>

#include "absl/time/time.h"
#include "common/args.h"
#include "common/status.h"
#include "prefill/prefill_service.h"
#include "serving/security.h"
#include "tools/cli.h"
#include "tools/worker_role.h"
#include "transfer/cuda_ipc_transport.h"
#include "transfer/grpc_transport.h"
#include "transfer/nccl_sender.h"
#include "transfer/prefix_stream.h"

namespace latentserve::cli {
namespace {

absl::Status RunPrefill(int argc, char** argv) {
  sigset_t signals = serving::BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, SplitWorkerFlags(/*prefill=*/true)));
  RETURN_IF_ERROR(args.Require("listen").status());  // flag errors before the model loads
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(serving::ProcessSecurity security, serving::SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, serving::InternalAuthorizerFromArgs(args, "prefill", false));
  ASSIGN_OR_RETURN(int64_t stall_ms, args.GetInt("fault-stall-transfer-ms", 0));
  ASSIGN_OR_RETURN(int64_t prefix_read_mib, args.GetInt("prefix-read-max-mib", kDefaultPrefixReadMib));
  if (prefix_read_mib < 0 || prefix_read_mib > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError("--prefix-read-max-mib must be in 0..2^40");
  }
  RETURN_IF_ERROR(CheckTransportFlag(args));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args, "prefill"));
  ASSIGN_OR_RETURN(transfer::TransportOffer offer, TransportFromArgs(args, *loaded.engine.backend));
  auto credentials = [] { return serving::InternalChannelCredentials(); };
  auto decorate = [](grpc::ClientContext& context) { serving::AttachInternalCredential(context); };
  transfer::GrpcTransport grpc_transport(32 << 20, credentials, decorate);
  // CUDA IPC / NCCL when this worker offers them (the router asks per handoff), gRPC otherwise.
  std::unique_ptr<transfer::CudaIpcTransport> ipc;
  if (Offers(offer, "cuda-ipc")) {
    ipc = std::make_unique<transfer::CudaIpcTransport>(*loaded.engine.backend, grpc_transport, offer, credentials,
                                                       decorate);
  }
  std::unique_ptr<transfer::NcclDataPlane> nccl_plane;
  std::unique_ptr<transfer::NcclTransport> nccl;
  if (Offers(offer, "nccl")) {
    nccl_plane = NcclDataPlaneFromArgs(args);
    nccl = std::make_unique<transfer::NcclTransport>(grpc_transport, offer, *nccl_plane,
                                                     transfer::OpenDeviceHandoffRpc(credentials, decorate));
  }
  transfer::SelectingTransport transport(&grpc_transport, ipc.get(), nccl.get());
  prefill::PrefillWorker worker(*loaded.engine.model, *loaded.engine.cache, transport,
                                loaded.descriptor.fingerprint(), loaded.engine.chunk_tokens);
  if (stall_ms > 0) {
    std::fprintf(
        stderr,
        "prefill: TESTING ONLY: every cache transfer stalls %lld ms (--fault-stall-transfer-ms)\n",
        static_cast<long long>(stall_ms));
    worker.SetFaultStallTransfer(absl::Milliseconds(stall_ms));
  }
  transfer::GrpcPrefixReader prefix_reader(credentials, decorate);
  worker.SetPrefixReader(&prefix_reader, prefix_read_mib << 20);
  prefill::PrefillService service(worker, loaded.descriptor, *auth);
  return ServeWorker(
      args, signals, loaded, security, *auth,
      {"prefill", &service, [&](const std::string& address) { return service.Info(address); },
       [&] { worker.StartDrain(); }, nullptr, ToProto(offer), {}});
}

Registrar prefill_cmd("prefill", "run a prefill worker registered with a router",
                      StatusHandler("prefill", RunPrefill));

}  // namespace
}  // namespace latentserve::cli
