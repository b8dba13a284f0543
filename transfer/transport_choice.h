// Which transport moves one handoff's cache: what each worker can do (advertised when it
// registers: WorkerTransports in worker.proto) and the router's choice per handoff.
//
//   cuda-ipc  both workers offer it and run on the same host (equal host ids): the prefill
//             worker writes rows straight into the decode worker's exported pages
//   nccl      both offer it (only workers started with --transport nccl do, on a CUDA build
//             with the CUDA backend; typically across hosts, or two GPUs of one host)
//   grpc      otherwise: the universal fallback, always offered
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace latentserve::transfer {

struct TransportOffer {
  std::vector<std::string> transports;  // "grpc" always, then "cuda-ipc" / "nccl" as allowed
  std::string host_id;                  // HostId()
  std::string gpu_uuid;                 // Backend::DeviceUuid(); empty on the CPU
};

// Names --transport accepts.
inline constexpr const char* kTransportFlagValues = "auto|grpc|cuda-ipc|nccl";

// What a worker started with `--transport flag` on `backend` offers. "auto": gRPC plus CUDA
// IPC where the backend exports memory (not NCCL: it is offered only when asked for);
// "grpc": only gRPC; "cuda-ipc": FailedPrecondition when the backend cannot export device
// memory (a CPU backend or build); "nccl": gRPC plus NCCL, FailedPrecondition unless
// `nccl_built` (the binary links NCCL: a LATENTSERVE_CUDA build) and the backend is "cuda".
// InvalidArgument for any other value.
absl::StatusOr<TransportOffer> OfferFor(const std::string& flag, kernels::Backend& backend, bool nccl_built = false);

// This host's identity: /proc/sys/kernel/random/boot_id (changes on reboot, differs between
// hosts) plus the host name (which tells apart containers on one kernel). Empty when neither
// can be read: such a worker never gets CUDA IPC.
std::string HostId();

// The router's choice for a handoff from `prefill` to `decode`: "cuda-ipc", "nccl" or "grpc".
std::string ChooseTransport(const TransportOffer& prefill, const TransportOffer& decode);

}  // namespace latentserve::transfer
