// What the device transports (CUDA IPC, NCCL) share on the sending side: the
// DecodeWorker.OpenDeviceHandoff call that fetches the decode worker's layout for a lease, and
// KDA state sent as bytes on the control stream (their rows move on the device; the state,
// ~43 MiB for the full model, goes as byte chunks hashed on the host).
#pragma once

#include <functional>
#include <memory>
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

// A device transport's sender: the subclass moves each chunk's rows on the device (SendRows);
// KDA state and End go as bytes on the control stream; the first failure forgets the peer (its
// opened memory, its communicator) once, since a failed handoff may mean a dead peer.
class DeviceCacheSender : public CacheSender {
 public:
  DeviceCacheSender(std::unique_ptr<CacheSender> control, const HandoffHeader& header,
                    std::function<void()> forget_peer)
      : control_(std::move(control)), header_(header), forget_peer_(std::move(forget_peer)) {}

  bool MovesViews() const override { return true; }
  int64_t device_bytes() const override { return device_bytes_; }
  absl::Duration device_copy_time() const override { return device_copy_time_; }
  absl::Status SendLatentRows(LatentRows chunk) override { return Failed(SendRows(chunk)); }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    return Failed(SendKdaStateAsBytes(*control_, chunk, header_.kda_state_bytes, &extra_chunks_));
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override;
  void Cancel() override { control_->Cancel(); }

 protected:
  virtual absl::Status SendRows(const LatentRows& chunk) = 0;
  absl::Status Failed(absl::Status status);

  std::unique_ptr<CacheSender> control_;
  const HandoffHeader header_;
  int64_t device_bytes_ = 0;
  absl::Duration device_copy_time_;  // the device's time for those bytes, summed over chunks

 private:
  std::function<void()> forget_peer_;
  int64_t extra_chunks_ = 0;  // KDA views sent in several byte pieces: End counts them
};

}  // namespace latentserve::transfer
