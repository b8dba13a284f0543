// What the device transports (CUDA IPC, NCCL) share on the sending side: the
// DecodeWorker.OpenDeviceHandoff call that fetches the decode worker's layout for a lease, and
// KDA state sent as bytes on the control stream (their rows move on the device; the state,
// ~43 MiB for the full model, goes as byte chunks hashed on the host).
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "transfer/grpc_transport.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// Asks the decode worker at `target` for a lease's device layout (tests inject a fake).
using DeviceTargetFetcher = std::function<absl::StatusOr<internal::v1::OpenDeviceHandoffResponse>(
    const std::string& target, const internal::v1::OpenDeviceHandoffRequest& request, absl::Time deadline)>;

// The OpenDeviceHandoff RPC over `credentials` / `decorate_call` (as GrpcTransport's), bounded
// by the handoff's deadline and at most 5 s.
DeviceTargetFetcher OpenDeviceHandoffRpc(GrpcTransport::CredentialsProvider credentials,
                                         GrpcTransport::CallDecorator decorate_call);

// Sends one KDA layer's state (a view chunk) as byte pieces of at most kMaxChunkBytes on
// `control`, each with its XXH64; `extra_chunks` counts the pieces beyond one (End's chunk
// count includes them). FailedPrecondition when the state's size is not `kda_state_bytes`.
absl::Status SendKdaStateAsBytes(CacheSender& control, const KdaStateBytes& chunk, int64_t kda_state_bytes,
                                 int64_t* extra_chunks);

}  // namespace latentserve::transfer
