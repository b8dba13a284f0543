// DecodeWorker's side of a device transport: per handoff the lease's page table, and for CUDA
// IPC the page pools exported once, so that a prefill worker on this host can write the rows
// straight into the reserved pages (transfer/cuda_ipc_transport.h); for NCCL the bootstrap of
// the communicator the handoff's rows will arrive on (transfer/nccl_receiver.h). The rows are
// verified when the handoff's LatentRowsWritten messages arrive (transfer::HandoffAssembler).
#include <unistd.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "decode/decode_slot.h"
#include "decode/decode_worker.h"
#include "transfer/transport_choice.h"

namespace latentserve::decode {

absl::StatusOr<std::vector<int32_t>> DecodeWorker::ExclusiveLeasePages(const std::string& lease_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(lease_id);
  if (it == slots_.end()) {
    return absl::AbortedError(absl::StrCat("lease ", lease_id, " is unknown to this decode worker (expired or released)"));
  }
  const Slot& slot = *it->second;
  if (slot.state != SlotState::kLeased && slot.state != SlotState::kReceiving) {
    return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id, " already holds a complete cache"));
  }
  // A peer writes these pages directly: none may be shared (a prefix the lease resumes from
  // is read-only to everyone else).
  for (int32_t page : slot.sequence->pages()) {
    if (cache_.references(page) != 1) {
      return absl::FailedPreconditionError(absl::StrCat("lease ", lease_id, " shares cached pages; it takes the "
                                                        "handoff by gRPC"));
    }
  }
  return std::vector<int32_t>(slot.sequence->pages().begin(), slot.sequence->pages().end());
}

absl::StatusOr<DeviceExport> DecodeWorker::ExportForHandoff(const std::string& lease_id, const std::string& transport,
                                                            const std::string& peer_host_id,
                                                            const internal::v1::NcclBootstrap& nccl) {
  DeviceExport out;
  out.page_tokens = cache_.page_tokens();
  out.pool_pages = cache_.total_pages();
  out.row_bytes = static_cast<int64_t>(cache_.row_bytes());
  out.dtype = cache_.dtype();
  if (transport == "nccl") {
    if (nccl_ == nullptr) {
      return absl::FailedPreconditionError("this decode worker takes no NCCL handoffs (start it with --transport nccl "
                                           "on a CUDA build)");
    }
    ASSIGN_OR_RETURN(out.pages, ExclusiveLeasePages(lease_id));
    // Forming starts once the lease is known good; the prefill worker joins after our answer.
    ASSIGN_OR_RETURN(transfer::NcclBootstrap bootstrap, nccl_->Prepare(nccl));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(lease_id);
    if (it == slots_.end()) return absl::AbortedError(absl::StrCat("lease ", lease_id, " ended"));
    it->second->nccl_comm_key = bootstrap.comm_key;
    out.export_id = "nccl";  // nothing to open: the rows come over the communicator
    return out;
  }
  if (transport != "cuda-ipc") {
    return absl::InvalidArgumentError(absl::StrCat("no device transport '", transport.substr(0, 32), "'"));
  }
  const std::string host_id = transfer::HostId();
  if (host_id.empty() || peer_host_id != host_id) {
    return absl::FailedPreconditionError("CUDA IPC needs the prefill worker on this decode worker's host");
  }
  {
    std::lock_guard<std::mutex> lock(export_mu_);
    if (exported_pools_.empty()) {
      std::vector<kernels::Backend::MemoryHandle> pools;
      for (int64_t mla = 0; mla < cache_.mla_layers(); ++mla) {
        auto handle = cache_.backend().ExportMemory(cache_.pool(mla));
        if (!handle.ok() || handle->kind != "cuda-ipc") {
          return absl::FailedPreconditionError(absl::StrCat("this decode worker's cache cannot be exported (",
                                                            handle.ok() ? "host memory" : handle.status().message(),
                                                            ")"));
        }
        pools.push_back(*handle);
      }
      std::random_device random;
      export_id_ = absl::StrCat(::getpid(), "-", random(), random());
      exported_pools_ = std::move(pools);
    }
    out.export_id = export_id_;
    out.pools = exported_pools_;
  }
  ASSIGN_OR_RETURN(out.pages, ExclusiveLeasePages(lease_id));
  return out;
}

}  // namespace latentserve::decode
