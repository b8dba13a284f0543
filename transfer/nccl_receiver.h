// The decode worker's side of the NCCL transport (rank 1).
//
// OpenDeviceHandoff brings the prefill worker's bootstrap: Prepare validates it and starts
// forming the communicator on a background thread, so the RPC answers at once (the prefill
// worker joins as rank 0 only after it has the answer; a join inside the RPC would wait for a
// peer that waits for the answer). A reused bootstrap must name a communicator held here.
//
// The handoff itself is an ordinary ReceiveCache stream whose header says "nccl". Each
// LatentRowsWritten on it announces one chunk: the receiver accounts it (NcclChunkLedger:
// order, range, in-flight bound), waits for the communicator if it is still forming, posts
// the chunk's runs as one group of ncclRecv straight into the lease's pages, waits for it
// under a CommCache::Guard (the watchdog aborts the communicator at the chunk's deadline),
// then hands the announcement to the wrapped HandoffAssembler, which hashes the rows where
// they landed and compares the sender's checksum. KDA state and End arrive as bytes. Any
// failure, and a stream that ends before End, drops the communicator (CommCache::PeerDied):
// the sender may have posted sends nobody will match, so the pair starts a fresh one.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "transfer/handoff_assembler.h"
#include "transfer/nccl_transport.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

struct NcclReceiveOptions {
  absl::Duration chunk_timeout = absl::Seconds(10);       // one chunk: receives posted to complete
  absl::Duration watchdog_poll = absl::Milliseconds(50);  // CommCache's deadline checks
};

class NcclReceiveSide {
 public:
  NcclReceiveSide(NcclDataPlane& plane, NcclReceiveOptions options);

  // The bootstrap of OpenDeviceHandoffRequest.nccl, validated (ValidateNcclBootstrap). A fresh
  // one starts forming here in the background (an older communicator under the same key is
  // dropped); a reused one must be held or forming here, else FailedPrecondition.
  absl::StatusOr<NcclBootstrap> Prepare(const internal::v1::NcclBootstrap& message);

  // The receiver of one NCCL handoff into `target` (the assembler's), over `comm_key`:
  // announced chunks are received, then passed to `assembler` to verify and account.
  // `check_live` is the assembler's hook (the lease still wants this handoff).
  std::unique_ptr<CacheReceiver> Wrap(std::unique_ptr<CacheReceiver> assembler, const HandoffHeader& header,
                                      AssemblyTarget target, std::function<absl::Status()> check_live,
                                      std::string comm_key);

  CommCache& comms() { return comms_; }

 private:
  NcclDataPlane& plane_;
  const NcclReceiveOptions options_;
  CommCache comms_;
};

}  // namespace latentserve::transfer
