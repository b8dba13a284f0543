#include "transfer/staging_pool.h"

#include <mutex>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"

namespace latentserve::transfer {

struct StagingPool::State {
  kernels::Backend* backend = nullptr;
  StagingOptions options;
  std::mutex mu;  // everything below
  bool allocated = false;
  kernels::Backend::HostMemory slab;  // blocks x block_bytes
  std::vector<uint8_t*> free_blocks;
  int64_t in_use = 0;
  int64_t fallbacks = 0;

  void Release(uint8_t* block) {
    std::lock_guard<std::mutex> lock(mu);
    free_blocks.push_back(block);
    in_use--;
  }
};

StagingPool::StagingPool(kernels::Backend& backend, StagingOptions options) : state_(std::make_shared<State>()) {
  state_->backend = &backend;
  state_->options = options;
}

StagingPool::~StagingPool() = default;

absl::StatusOr<HostBytes> StagingPool::Acquire(size_t bytes) {
  HostBytes out;
  out.size = bytes;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    const StagingOptions& options = state_->options;
    if (!state_->allocated && options.blocks > 0 && options.block_bytes > 0 &&
        options.blocks <= SIZE_MAX / options.block_bytes) {
      state_->allocated = true;  // once, whether or not it works: a refused pin falls back to the heap
      auto slab = state_->backend->AllocHost(options.blocks * options.block_bytes);
      if (slab.ok()) {
        state_->slab = *slab;
        for (size_t i = options.blocks; i-- > 0;) state_->free_blocks.push_back(slab->data.get() + i * options.block_bytes);
      }
    }
    if (bytes <= options.block_bytes && !state_->free_blocks.empty()) {
      uint8_t* block = state_->free_blocks.back();
      state_->free_blocks.pop_back();
      state_->in_use++;
      // The holder keeps the pool's state (and so the slab) alive; the last one returns the block.
      std::shared_ptr<State> state = state_;
      out.owner = std::shared_ptr<const uint8_t>(block, [state](const uint8_t* p) {
        state->Release(const_cast<uint8_t*>(p));
      });
      out.data = block;
      return out;
    }
    state_->fallbacks++;
  }
  uint8_t* heap = new (std::nothrow) uint8_t[bytes > 0 ? bytes : 1];
  if (heap == nullptr) return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " staging bytes"));
  out.owner = std::shared_ptr<const uint8_t>(heap, std::default_delete<const uint8_t[]>());
  out.data = heap;
  return out;
}

StagingPool::Counts StagingPool::counts() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  Counts counts;
  counts.in_use = state_->in_use;
  counts.capacity = state_->slab.data ? static_cast<int64_t>(state_->options.blocks) : 0;
  counts.fallbacks = state_->fallbacks;
  counts.pinned = state_->slab.pinned;
  return counts;
}

}  // namespace latentserve::transfer
