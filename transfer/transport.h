// CacheTransport: how a prefill worker's cache reaches a decode worker.
//
// A handoff is a header, then payload chunks of two kinds with their own layouts (latent
// rows per (MLA layer, token range); KDA state per KDA layer, in byte ranges: the prompt's
// final state, and before it the checkpoints the receiver asked for at interior positions),
// then an end message with the first sampled token. Latent chunks may be sent while the prefill is still
// running; the receiver admits the sequence only after End, when every byte has arrived and
// every checksum matched.
//
// The protocol itself (chunking, order, checksums, completeness) is transfer/handoff_writer.h
// on the sending side and transfer/handoff_assembler.h on the receiving side; a transport
// only moves what they hand it. Implementations: InProcTransport (same process: chunks carry
// views of the sender's cache, copied device to device; `serve`), GrpcTransport
// (DecodeWorker.ReceiveCache stream with backpressure: chunks carry bytes). CUDA IPC / NCCL
// transports fit the same interface: the header names the layout, and a device transport
// moves the payload out of band while keeping the same chunk accounting.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/views.h"
#include "common/dtype.h"

namespace latentserve::transfer {

// What follows, for whom, in which layout. Mirrors latentserve.v1.CacheHandoffHeader.
struct HandoffHeader {
  std::string request_id;
  std::string lease_id;           // reservation on the receiving decode worker
  std::string model_fingerprint;  // transfer/fingerprint.h; must match the receiver's
  DType cache_dtype = DType::kF16;
  int64_t page_tokens = 0;        // sender's page size (informational: rows are token-addressed)
  int64_t latent_width = 0;       // values per latent row
  int64_t row_bytes = 0;          // bytes per latent row in cache_dtype
  std::vector<int32_t> mla_layers;  // model layer of each MLA ordinal
  std::vector<int32_t> kda_layers;  // model layer of each KDA ordinal
  int64_t kda_state_bytes = 0;    // bytes of one KDA layer's state
  int64_t prompt_tokens = 0;
  // "cuda-ipc": latent rows arrive out of band (RowsWritten); "nccl": each RowsWritten
  // announces a chunk that follows over NCCL; empty: every payload in band.
  std::string transport;
  // Rows [0, cached_tokens) are already in the receiving lease (a prefix it resumed from its
  // cache); rows [cached_tokens, prompt_tokens) follow. 0 <= cached_tokens < prompt_tokens.
  int64_t cached_tokens = 0;
};

// Rows [first_token, first_token + token_count) of MLA ordinal mla_index are already in the
// receiver's pages (a device transport wrote them, and the write completed, before this was
// sent); checksum is the XXH64 of those rows as the sender's cache holds them.
struct RowsWritten {
  int32_t mla_index = 0;
  int64_t first_token = 0;
  int64_t token_count = 0;
  uint64_t checksum = 0;
};

// Bytes [data, data + size) of host memory, valid while `owner` lives (a staging block:
// transfer/staging_pool.h). Lets a sender hand downloaded rows to a transport without a copy.
struct HostBytes {
  std::shared_ptr<const uint8_t> owner;
  uint8_t* data = nullptr;
  size_t size = 0;
};

// Latent rows [first_token, first_token + token_count) of MLA ordinal mla_index:
// token_count rows of header.row_bytes each.
struct LatentRows {
  int32_t mla_index = 0;
  int64_t first_token = 0;
  int64_t token_count = 0;
  std::string rows;
  uint64_t checksum = 0;  // Xxh64(payload())
  // Instead of `rows` when set (sending side): the bytes in a staging block.
  HostBytes staged = {};
  // Instead of `rows` (empty then, no checksum: nothing crosses a wire), for senders that
  // MovesViews(): the rows where they lie in the sender's cache, valid until Send returns.
  std::optional<cache::LatentRowsView> view = std::nullopt;

  std::string_view payload() const {
    return staged.owner ? std::string_view(reinterpret_cast<const char*>(staged.data), staged.size) : rows;
  }
};

// Bytes [offset, offset + data.size()) of KDA ordinal kda_index's state
// (cache::SequenceTable::ExportKdaState layout: recurrent [Dk, Dk, H] f32, then conv tails).
struct KdaStateBytes {
  int32_t kda_index = 0;
  int64_t offset = 0;
  std::string data;
  uint64_t checksum = 0;  // Xxh64(payload())
  HostBytes staged = {};  // instead of `data` when set, as LatentRows::staged
  // Instead of `data`, for senders that MovesViews(): the layer's whole state (offset 0).
  std::optional<cache::KdaStateRef> view = std::nullopt;
  // 0: the state at the prompt's end. > 0: a checkpoint, the state after `position` tokens
  // (a multiple of the lease's checkpoint interval inside the prompt; all of a checkpoint's
  // layers in order, checkpoints ascending, before the final state).
  int64_t position = 0;

  std::string_view payload() const {
    return staged.owner ? std::string_view(reinterpret_cast<const char*>(staged.data), staged.size) : data;
  }
};

struct HandoffEnd {
  int32_t first_token = 0;
  int64_t chunks = 0;         // payload chunks sent
  int64_t payload_bytes = 0;  // sum of rows/data sizes
};

// Largest payload of one chunk: well under gRPC's 4 MiB default message limit. 1 MiB measured
// best on loopback (docs/benchmarks-serving.md): 256 KiB and 4 MiB chunks were both slower.
inline constexpr int64_t kMaxChunkBytes = 1 << 20;

// One handoff on the receiving side. Calls come from one thread, in order.
class CacheReceiver {
 public:
  virtual ~CacheReceiver() = default;
  virtual absl::Status OnLatentRows(const LatentRows& chunk) = 0;
  virtual absl::Status OnKdaState(const KdaStateBytes& chunk) = 0;
  // Rows a device transport wrote into the receiving pages; the receiver verifies them.
  virtual absl::Status OnRowsWritten(const RowsWritten& written) {
    return absl::UnimplementedError("this receiver takes no device-written rows");
  }
  // How to tell that the sender's stream went away, for a receiver that waits on a device
  // between messages (NCCL): it polls `cancelled` while it waits. Default: unused.
  virtual void WatchCancelled(std::function<bool()> cancelled) {}
  // Verifies completeness and admits the cache; the lease then waits for Decode.
  virtual absl::Status Finish(const HandoffEnd& end) = 0;
  // The sender went away or failed: drop what arrived (the lease stays until it expires
  // or a retried handoff replaces it).
  virtual void Abort(const absl::Status& why) = 0;
};

// Implemented by the decode worker.
class CacheSink {
 public:
  virtual ~CacheSink() = default;
  // Checks the header against the lease and the local model; NotFound for an unknown or
  // expired lease, FailedPrecondition for a layout or model mismatch.
  virtual absl::StatusOr<std::unique_ptr<CacheReceiver>> BeginHandoff(const HandoffHeader& header) = 0;
};

// One handoff on the sending side. Send* may block (backpressure) and return the error that
// ended the handoff (receiver gone, lease expired, deadline); after an error, stop sending.
class CacheSender {
 public:
  virtual ~CacheSender() = default;
  // True when chunks may carry views of the sender's cache instead of bytes: the receiver
  // copies out of them (device to device where the backends allow) before Send returns.
  virtual bool MovesViews() const { return false; }
  virtual absl::Status SendLatentRows(LatentRows chunk) = 0;
  virtual absl::Status SendKdaState(KdaStateBytes chunk) = 0;
  // Announces rows written out of band (a device transport's control message).
  virtual absl::Status SendRowsWritten(const RowsWritten& written) {
    return absl::UnimplementedError("this sender carries no device-written rows");
  }
  // Sends End and waits for the receiver's verdict. Returns payload bytes it accepted.
  virtual absl::StatusOr<int64_t> Finish(const HandoffEnd& end) = 0;
  // Abandons the handoff (the prefill was cancelled); the receiver sees Abort.
  virtual void Cancel() = 0;
  // What moved the cache ("grpc", "inproc", "cuda-ipc", "nccl"), and the bytes written device to
  // device by a device transport (0 for the others).
  virtual std::string transport() const { return ""; }
  virtual int64_t device_bytes() const { return 0; }
  // Time the device copies of those bytes took (their device time where the backend has a
  // timer, else enqueued to complete; summed over chunks): device_bytes / this is the
  // handoff's device-to-device rate.
  virtual absl::Duration device_copy_time() const { return absl::ZeroDuration(); }
};

class CacheTransport {
 public:
  virtual ~CacheTransport() = default;
  virtual std::string name() const = 0;
  // Opens a handoff to the decode worker at `target` (host:port), bounded by `deadline`.
  virtual absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target,
                                                            const HandoffHeader& header,
                                                            absl::Time deadline) = 0;
};

// What a prefill worker asks for when it resumes a long rest (DecodeWorker.ReadPrefix).
struct PrefixReadRequest {
  std::string request_id;
  std::string lease_id;           // the lease that resumed the prefix
  std::string model_fingerprint;  // the reader's model
};

// Reads the cached prefix a lease resumed from, on the decode worker at `target`: a handoff in
// the other direction (header, latent rows of [0, prefix), KDA state, end), delivered to `sink`
// (which checks it like any handoff). Returns the first error of the read or of the sink.
class PrefixReader {
 public:
  virtual ~PrefixReader() = default;
  virtual absl::Status Read(const std::string& target, const PrefixReadRequest& request, CacheSink& sink,
                            absl::Time deadline) = 0;
};

}  // namespace latentserve::transfer
