// Recording a CUDA backend's work as a CUDA graph (cuda_graph.cu): the memory a recording
// owns, and the graph that replays it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace latentserve::kernels::cuda {

// Memory handed out while recording: device memory for tensors and scratch, pinned host copies
// of uploaded bytes. Replays read and write the same addresses, so it lives as long as the
// graph and is never lent to anything else.
struct RecordingMemory {
  std::vector<void*> device_chunks;
  uint8_t* device_next = nullptr;
  size_t device_left = 0;
  std::vector<void*> pinned_chunks;
  uint8_t* pinned_next = nullptr;
  size_t pinned_left = 0;
  std::map<int, std::pair<void*, size_t>> scratch;  // slot -> block (the slot's current scratch)
  struct Upload {
    void* device;
    const void* pinned;
    size_t bytes;
  };
  std::vector<Upload> uploads;  // constants the replays read, copied once after recording
  size_t device_bytes = 0, pinned_bytes = 0;
  std::string refused;  // the first op that could not be recorded

  void* Device(size_t bytes);
  void* PinnedCopy(const void* host, size_t bytes);
  void Free();
};

class CudaGraph final : public Backend::Graph {
 public:
  CudaGraph(cudaStream_t stream, cudaGraph_t graph, cudaGraphExec_t exec, RecordingMemory memory)
      : stream_(stream), graph_(graph), exec_(exec), memory_(std::move(memory)) {}
  ~CudaGraph() override;
  cudaGraphExec_t exec() const { return exec_; }
  cudaStream_t stream() const { return stream_; }

 private:
  cudaStream_t stream_;
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
  RecordingMemory memory_;
};

}  // namespace latentserve::kernels::cuda
