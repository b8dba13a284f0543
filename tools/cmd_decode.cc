// `latentserve decode`: a decode worker registered with the routers; it holds leased cache
// pages, receives handoffs and streams tokens.
#include <cstdio>

#include "absl/time/time.h"
#include "common/args.h"
#include "common/status.h"
#include "decode/decode_service.h"
#include "tools/cli.h"
#include "tools/worker_role.h"

namespace latentserve::cli {
namespace {

absl::Status RunDecode(int argc, char** argv) {
  sigset_t signals = serving::BlockShutdownSignals();
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, SplitWorkerFlags(/*prefill=*/false)));
  RETURN_IF_ERROR(args.Require("listen").status());
  RETURN_IF_ERROR(RoutersFromArgs(args).status());
  ASSIGN_OR_RETURN(serving::ProcessSecurity security, serving::SecurityFromArgs(args));
  ASSIGN_OR_RETURN(auto auth, serving::InternalAuthorizerFromArgs(args, "decode", false));
  ASSIGN_OR_RETURN(absl::Duration max_lease_ttl, MaxLeaseTtlFromArgs(args));
  RETURN_IF_ERROR(CheckTransportFlag(args));
  ASSIGN_OR_RETURN(LoadedEngine loaded, LoadEngine(args, "decode"));
  ASSIGN_OR_RETURN(transfer::TransportOffer offer, TransportFromArgs(args, *loaded.engine.backend));
  RETURN_IF_ERROR(KeepCudaIpcIfExportable(args, *loaded.engine.cache, &offer));
  ASSIGN_OR_RETURN(decode::DecodePrefixOptions prefix, PrefixOptionsFromArgs(args, loaded.engine.chunk_tokens));
  // NCCL handoffs (--transport nccl): communicators formed per prefill worker, outliving the worker below.
  std::unique_ptr<transfer::NcclDataPlane> nccl_plane;
  std::unique_ptr<transfer::NcclReceiveSide> nccl;
  if (Offers(offer, "nccl")) {
    nccl_plane = NcclDataPlaneFromArgs(args);
    nccl = std::make_unique<transfer::NcclReceiveSide>(*nccl_plane, transfer::NcclReceiveOptions{});
  }
  decode::DecodeWorker worker(*loaded.engine.model, *loaded.engine.cache,
                              loaded.descriptor.fingerprint(), max_lease_ttl, prefix);
  worker.EnableNccl(nccl.get());
  decode::DecodeService service(worker, loaded.descriptor, *auth);
  ASSIGN_OR_RETURN(int64_t stall_ms, args.GetInt("fault-stall-decode-ms", 0));
  if (stall_ms < 0) return absl::InvalidArgumentError("--fault-stall-decode-ms must be >= 0");
  if (stall_ms > 0) {
    std::fprintf(stderr,
                 "decode: TESTING ONLY: every token waits %lld ms before it is sent "
                 "(--fault-stall-decode-ms)\n",
                 static_cast<long long>(stall_ms));
    service.SetFaultStallTokens(absl::Milliseconds(stall_ms));
  }
  return ServeWorker(
      args, signals, loaded, security, *auth,
      {"decode", &service, [&](const std::string& address) { return service.Info(address); },
       [&] { worker.StartDrain(); }, [&] { return worker.Stats(); }, ToProto(offer),
       [&] {
         internal::v1::PrefixIndex index;
         index.set_block_tokens(loaded.engine.cache->page_tokens());
         // The router keeps at most 4,096 (router/worker_registry.h kMaxPrefixHashes).
         for (uint64_t h : worker.PrefixBlockHashes(4096)) index.add_block_hashes(h);
         return index;
       }});
}

Registrar decode_cmd("decode", "run a decode worker registered with a router",
                     StatusHandler("decode", RunDecode));

}  // namespace
}  // namespace latentserve::cli
