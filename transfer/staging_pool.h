// Host staging blocks for byte transports: where device rows land on their way to a socket.
//
// A handoff over gRPC downloads each chunk's rows into host memory, hashes it and hands the
// memory to gRPC, which writes it to the socket without another copy and releases it when
// written. StagingPool keeps those blocks from the backend's AllocHost (pinned on CUDA: the
// copy engine fills them asynchronously at full speed, no CPU copy) and recycles them, so a
// handoff allocates nothing per chunk. A block goes back to the pool when the last holder of
// its bytes (the writer, a queued gRPC message) drops them; the pool's memory outlives the
// pool object until then.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

struct StagingOptions {
  size_t block_bytes = size_t{1} << 20;  // one chunk (transfer::kMaxChunkBytes)
  size_t blocks = 64;                    // 64 MiB: the gRPC queue bound (32 MiB) plus what is in flight
};

class StagingPool {
 public:
  // Allocates nothing until the first Acquire; then one AllocHost of blocks x block_bytes.
  StagingPool(kernels::Backend& backend, StagingOptions options = {});
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // `bytes` of host memory: a recycled (pinned where the backend pins) block when one is free
  // and large enough, else fresh ordinary heap memory (never blocks, so a slow socket cannot
  // stall the writer here; the transport's own queue bound is the backpressure).
  // ResourceExhausted only when even the heap refuses.
  absl::StatusOr<HostBytes> Acquire(size_t bytes);

  // Blocks handed out (and not yet back), blocks in the pool, and heap fallbacks so far.
  struct Counts {
    int64_t in_use = 0;
    int64_t capacity = 0;
    int64_t fallbacks = 0;
    bool pinned = false;
  };
  Counts counts() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace latentserve::transfer
