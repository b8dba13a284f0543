// The receiving side of one cache handoff: it checks the header against the local cache,
// then order, sizes and checksums of every chunk, writes each into the receiving sequence
// (device to device for view chunks) or, for KDA checkpoints inside the prompt, into new
// checkpoints, and on End checks completeness and the sender's totals before it asks the
// receiver to admit the sequence (and take the checkpoints). Leases, slots and what "admitted" means
// stay with the receiver (the decode worker), behind AssemblyHooks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/sequence_table.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// What a receiver checks a header against.
struct LocalLayout {
  std::string fingerprint;                    // transfer/fingerprint.h of the local model
  const cache::SequenceTable* table = nullptr;  // the receiving cache and KDA layout
  int64_t model_layers = 0;                   // layers of the local model
};
// FailedPrecondition for another model or cache layout, InvalidArgument for layer ids outside
// the model; the messages tell the operator which flag differs.
absl::Status CheckHeader(const HandoffHeader& header, const LocalLayout& local);

struct AssemblyStats {
  int64_t chunks = 0;
  int64_t checkpoints = 0;  // KDA checkpoints that arrived complete
  int64_t payload_bytes = 0;
  int64_t host_bytes = 0;  // bytes this side copied through host memory
  int64_t device_bytes = 0;  // rows a device transport wrote into our pages (hashed in place to verify)
};

// KDA checkpoints a receiver takes inside the prompt (KdaStateBytes::position > 0). Each holds
// a full KDA state in device memory (cache::KdaLayout) until the receiver keeps or drops it.
struct CheckpointPolicy {
  int64_t interval_tokens = 0;  // positions must be multiples of it; 0: any checkpoint is refused
  int64_t max_checkpoints = 0;  // at most this many per handoff
};

// Where one handoff goes. `sequence` holds pages for header.prompt_tokens tokens; it is
// touched only while `device_mu` is held and check_live() passes (so the receiver may drop it
// once check_live fails, under `device_mu`).
struct AssemblyTarget {
  cache::SequenceTable* table = nullptr;
  cache::Sequence* sequence = nullptr;
  std::mutex* device_mu = nullptr;  // serialises writes with the receiver's other device work
  CheckpointPolicy checkpoints = {};
};

// Checkpoints that arrived complete, ascending positions (device memory: dropped under device_mu).
using ArrivedCheckpoints = std::vector<std::unique_ptr<cache::KdaCheckpoint>>;

struct AssemblyHooks {
  // OK while the receiver still wants this handoff (e.g. its lease is held); the error ends it.
  std::function<absl::Status()> check_live;
  // Every row and state arrived and matched: the receiver makes the sequence ready, and may take
  // the checkpoints (those it leaves are dropped with the assembler, under device_mu).
  std::function<absl::Status(const HandoffEnd& end, const AssemblyStats& stats, ArrivedCheckpoints& checkpoints)>
      admit;
  // The handoff ended without admission (sender gone, error, dropped).
  std::function<void(const absl::Status& why)> aborted;
};

class HandoffAssembler : public CacheReceiver {
 public:
  HandoffAssembler(HandoffHeader header, AssemblyTarget target, AssemblyHooks hooks);
  ~HandoffAssembler() override;

  absl::Status OnLatentRows(const LatentRows& chunk) override;
  absl::Status OnKdaState(const KdaStateBytes& chunk) override;
  // Device-written rows (header.transport "cuda-ipc", or "nccl" once NcclReceiver received them): order as for OnLatentRows, then the rows
  // in our pages are hashed where they are (transfer/checksum.h PagedRowsChecksum: on the GPU
  // for the CUDA backend) and compared with the sender's.
  absl::Status OnRowsWritten(const RowsWritten& written) override;
  absl::Status Finish(const HandoffEnd& end) override;
  void Abort(const absl::Status& why) override;

  const AssemblyStats& stats() const { return stats_; }

 private:
  absl::Status CheckOrder(int64_t mla_index, int64_t first_token, int64_t token_count) const;
  absl::Status CheckLatentChunk(const LatentRows& chunk) const;
  // Checkpoints (handoff_checkpoints.cc): position, order and count of a new one; its chunks.
  absl::Status CheckCheckpointStart(int64_t position) const;
  absl::Status OnCheckpointState(const KdaStateBytes& chunk);
  void DropCheckpoints();
  const HandoffHeader header_;
  const AssemblyTarget target_;
  const AssemblyHooks hooks_;
  std::vector<int64_t> latent_next_;      // per MLA ordinal: next expected token
  std::vector<std::string> kda_buffers_;  // per KDA ordinal: bytes so far
  int64_t kda_done_ = 0;
  bool final_kda_started_ = false;  // no checkpoint may follow the final state's first chunk
  ArrivedCheckpoints checkpoints_;
  std::unique_ptr<cache::KdaCheckpoint> pending_;  // the checkpoint being received
  int64_t pending_layer_ = 0;                      // its next KDA ordinal
  std::string pending_buffer_;                     // that layer's bytes so far
  AssemblyStats stats_;
  bool finished_ = false;
};

}  // namespace latentserve::transfer
