// The prefill worker's side of the NCCL transport (rank 0): a CacheTransport selected when the
// router chose "nccl" for a handoff (SelectingTransport).
//
// Open: OpenDeviceHandoff with the communicator's bootstrap (a fresh ncclUniqueId, or the one
// of the communicator already held for that decode worker, marked reuse) fetches the lease's
// layout (page size, page table); the communicator is formed (or reused) from this worker's
// CommCache; then the ordinary ReceiveCache stream opens with header.transport "nccl". Each
// latent chunk: its rows are hashed on this GPU (PagedRowsChecksum), announced on the stream
// (LatentRowsWritten with that checksum), then sent as one group of ncclSend of the runs
// SplitRuns gives (both sides' page boundaries), straight from this worker's pages; the sender
// waits for the group under a CommCache::Guard (the watchdog aborts a communicator whose chunk
// passes its deadline). KDA state and End go as bytes on the stream, as for CUDA IPC.
//
// A handoff that fails drops the communicator to that decode worker (ncclCommAbort): the
// next one forms a fresh pair. A decode worker that no longer holds a communicator the sender
// reuses answers FAILED_PRECONDITION; the sender then retries once with a fresh bootstrap.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "kernels/backend.h"
#include "transfer/device_handoff.h"
#include "transfer/nccl_transport.h"
#include "transfer/transport.h"
#include "transfer/transport_choice.h"

namespace latentserve::transfer {

struct NcclSendOptions {
  absl::Duration init_timeout = absl::Seconds(30);        // a communicator forms within this
  absl::Duration chunk_timeout = absl::Seconds(10);       // one chunk's sends, posted to complete
  absl::Duration watchdog_poll = absl::Milliseconds(50);  // CommCache's deadline checks
};

class NcclTransport : public CacheTransport {
 public:
  // `control`: the transport of the handoff's stream (gRPC). `plane`: NCCL itself (or a fake).
  // `fetch`: the OpenDeviceHandoff call (device_handoff.h OpenDeviceHandoffRpc).
  NcclTransport(CacheTransport& control, TransportOffer self, NcclDataPlane& plane, DeviceTargetFetcher fetch,
                NcclSendOptions options = {});
  std::string name() const override { return "nccl"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

  // Decode workers this worker holds a communicator with (tests, stats).
  size_t open_peers() const;
  // Aborts and drops the communicator with `target` (a handoff to it failed).
  void Forget(const std::string& target);

 private:
  absl::StatusOr<NcclBootstrap> Fresh(const std::string& target);
  absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> Ask(const std::string& target, const HandoffHeader& header,
                                                              const NcclBootstrap& bootstrap, absl::Time deadline);

  CacheTransport& control_;
  const TransportOffer self_;
  NcclDataPlane& plane_;
  DeviceTargetFetcher fetch_;
  const NcclSendOptions options_;
  const std::string self_key_;  // names this process in comm keys (host, pid, a random epoch)
  CommCache comms_;
  mutable std::mutex mu_;  // below
  std::map<std::string, NcclBootstrap> peers_;  // decode worker -> its communicator's bootstrap
  uint64_t next_epoch_ = 1;
};

}  // namespace latentserve::transfer
