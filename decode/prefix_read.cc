// DecodeWorker.ReadPrefix: a prefill worker that computes a lease's long rest reads the cached
// prefix the lease resumed from (docs/serving.md "Prefix reuse"). The lease holds it (a
// read-only share of its pages and a copy of the KDA state at its end, Slot::resume_prefix), so
// an eviction from the prefix cache after the lease was made cannot take it away.
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "decode/decode_slot.h"
#include "decode/decode_worker.h"
#include "transfer/handoff_writer.h"
#include "transfer/prefix_stream.h"

namespace latentserve::decode {

absl::StatusOr<int64_t> DecodeWorker::SendLeasePrefix(const std::string& lease_id, const std::string& fingerprint,
                                                      const std::string& request_id, const PrefixSenderFactory& open) {
  if (fingerprint != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat("prefix read for model ", fingerprint, "; this decode worker serves ",
                                                      fingerprint_));
  }
  // A lease is read by the one prefill worker computing its rest, once; a worker streams at
  // most a few reads at a time (each takes the backend lock chunk by chunk).
  constexpr int64_t kMaxPrefixReads = 4;
  std::shared_ptr<model::Sequence> prefix;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(lease_id);
    if (it == slots_.end() || it->second->state == SlotState::kDone) {
      return absl::AbortedError(absl::StrCat("lease ", lease_id, " is not held (expired or released)"));
    }
    const Slot& slot = *it->second;
    if (!slot.resume_prefix || (slot.state != SlotState::kLeased && slot.state != SlotState::kReceiving)) {
      return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id,
                                                        " resumed no cached prefix for a handoff, or its cache has arrived"));
    }
    if (slot.prefix_read_active) {
      return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id, "'s prefix is already being read"));
    }
    if (prefix_reads_active_ >= kMaxPrefixReads) {
      return absl::ResourceExhaustedError(
          absl::StrCat(kMaxPrefixReads, " prefix reads are running on this decode worker; the prefill worker computes "
                                        "the whole prompt instead"));
    }
    it->second->prefix_read_active = true;
    prefix_reads_active_++;
    prefix = slot.resume_prefix;
  }
  // The lease may be released while its prefix streams: its flag is cleared only if it is still there.
  struct EndRead {
    DecodeWorker& worker;
    const std::string& lease_id;
    ~EndRead() {
      std::lock_guard<std::mutex> lock(worker.mu_);
      worker.prefix_reads_active_--;
      if (auto it = worker.slots_.find(lease_id); it != worker.slots_.end()) it->second->prefix_read_active = false;
    }
  } end_read{*this, lease_id};
  // Whoever holds the last reference destroys it under the backend lock (its KDA state is device memory).
  struct DropUnderLock {
    std::shared_ptr<model::Sequence>& prefix;
    std::mutex& backend_mu;
    ~DropUnderLock() {
      std::lock_guard<std::mutex> lock(backend_mu);
      prefix.reset();
    }
  } drop{prefix, backend_mu_};
  transfer::HandoffHeader header;
  header.request_id = request_id;
  header.lease_id = lease_id;
  header.model_fingerprint = fingerprint_;
  transfer::DescribeLayout(sequences_, &header);
  const model::ModelConfig& config = model_.config();
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    (config.is_mla[layer] ? header.mla_layers : header.kda_layers).push_back(static_cast<int32_t>(layer));
  }
  header.prompt_tokens = prefix->cached_tokens();
  ASSIGN_OR_RETURN(std::unique_ptr<transfer::CacheSender> sender, open(header));
  RETURN_IF_ERROR(transfer::SendPrefix(*sender, header, *prefix, backend_mu_));
  const int64_t bytes = header.prompt_tokens * header.row_bytes * static_cast<int64_t>(header.mla_layers.size()) +
                        header.kda_state_bytes * static_cast<int64_t>(header.kda_layers.size());
  std::lock_guard<std::mutex> lock(mu_);
  prefix_reads_++;
  prefix_read_bytes_ += bytes;
  return bytes;
}

}  // namespace latentserve::decode
