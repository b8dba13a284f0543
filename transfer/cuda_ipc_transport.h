// CUDA IPC transport: a prefill and a decode worker on one host write the cache GPU to GPU.
//
// The decode worker exports its latent page pools once (Backend::AllocExportable +
// ExportMemory: cudaIpcGetMemHandle) and answers DecodeWorker.OpenDeviceHandoff with the
// handles and the lease's page table. The prefill worker opens the handles once per decode
// worker (kept under the answer's export_id; dropped when a handoff to that worker fails, so
// a dead peer's mapping is closed), copies each chunk's rows from its pages straight into the
// reserved pages (cudaMemcpyAsync device to device through Backend::CopyToBackend), waits for
// the copy, and then sends a LatentRowsWritten control message with the rows' checksum on the
// ordinary ReceiveCache stream: per-row XXH64s hashed on the GPU, then XXH64 of those on the
// host (transfer/checksum.h PagedRowsChecksum). The decode worker's HandoffAssembler computes
// the same over its pages on its GPU and compares; KDA state (~43 MiB for the full model) and End travel
// as bytes on the same stream. Header checks, chunk accounting, leases and admission are the
// gRPC handoff's: a dead or stalled peer ends the stream and the handoff as there.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "transfer/device_handoff.h"
#include "transfer/grpc_transport.h"
#include "transfer/transport.h"
#include "transfer/transport_choice.h"

namespace latentserve::transfer {

// OpenDeviceHandoff's answer after validation against the handoff's header.
struct DeviceTarget {
  std::string export_id;
  std::vector<kernels::Backend::MemoryHandle> pools;  // per MLA ordinal
  int64_t page_tokens = 0;
  int64_t pool_pages = 0;
  std::vector<int32_t> pages;  // the lease's page table
};

// Every field of a peer's answer checked before any address is formed from it: one pool per
// MLA ordinal (none when header.transport is "nccl": its answer is the layout alone), the header's dtype and row size, page size in [1, 65536], pool pages in
// [1, 2^31), each handle a cuda-ipc handle of at least row_bytes x page_tokens x pool_pages
// bytes (computed without overflow), page ids inside the pool and enough pages for the prompt.
// InvalidArgument (FailedPrecondition for a cache type that differs) otherwise.
absl::StatusOr<DeviceTarget> ValidateDeviceTarget(const internal::v1::OpenDeviceHandoffResponse& answer,
                                                  const HandoffHeader& header);

// Byte offset in a pool of token `token` of a sequence with page table `pages`; the caller has
// validated the target (so the product stays inside the pool).
int64_t RowOffset(const DeviceTarget& target, int64_t row_bytes, int64_t token);

class CudaIpcTransport : public CacheTransport {
 public:
  // Asks the decode worker at `target` for its device memory (the RPC; tests inject a fake).
  using TargetFetcher = DeviceTargetFetcher;

  // `backend`: the prefill worker's (its pages are the copies' source). `control`: the gRPC
  // transport that carries the handoff's stream. `fetch`: empty = the OpenDeviceHandoff RPC
  // over `credentials` / `decorate_call` (as GrpcTransport's).
  CudaIpcTransport(kernels::Backend& backend, GrpcTransport& control, TransportOffer self,
                   GrpcTransport::CredentialsProvider credentials = {}, GrpcTransport::CallDecorator decorate_call = {},
                   TargetFetcher fetch = {});
  std::string name() const override { return "cuda-ipc"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

  // Decode workers whose memory is open here (tests, stats).
  size_t open_peers() const;
  // Closes what is open for `target` (its handoff failed: the peer may be gone). In-flight
  // senders keep their mapping until they end.
  void Forget(const std::string& target);

 private:
  struct Peer {
    std::string export_id;
    std::vector<kernels::Tensor> pools;  // opened, per MLA ordinal
  };
  absl::StatusOr<std::shared_ptr<const Peer>> OpenPeer(const std::string& target, const DeviceTarget& device,
                                                       const HandoffHeader& header);

  kernels::Backend& backend_;
  GrpcTransport& control_;
  const TransportOffer self_;
  TargetFetcher fetch_;
  mutable std::mutex mu_;  // peers_
  std::map<std::string, std::shared_ptr<const Peer>> peers_;
};

// The transport a handoff's header names: "cuda-ipc" goes to `ipc`, "nccl" to `nccl`, when this
// worker has them; anything else (or a transport it lacks) to `grpc`. The router chose; a
// worker that cannot follow falls back to gRPC, and the header it sends says so.
class SelectingTransport : public CacheTransport {
 public:
  SelectingTransport(CacheTransport* grpc, CudaIpcTransport* ipc, CacheTransport* nccl = nullptr)
      : grpc_(grpc), ipc_(ipc), nccl_(nccl) {}
  std::string name() const override;
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

 private:
  CacheTransport* grpc_;
  CudaIpcTransport* ipc_;
  CacheTransport* nccl_;
};

}  // namespace latentserve::transfer
