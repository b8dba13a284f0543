// Recorded steps on the CUDA backend: stream capture into a CUDA graph (relaxed mode, so the
// recording may take new device and pinned memory with cudaMalloc while it runs), replayed
// with cudaGraphLaunch. A decode step is ~800 small operations whose launches cost the host
// more than the GPU needs to run them (docs/benchmarks.md); a replay is one launch.
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_graph.h"

namespace latentserve::kernels::cuda {

namespace {
constexpr size_t kDeviceChunk = size_t{64} << 20;
constexpr size_t kPinnedChunk = size_t{1} << 20;
constexpr size_t kAlign = 512;
size_t AlignUp(size_t bytes) { return (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign; }
}  // namespace

void* RecordingMemory::Device(size_t bytes) {
  bytes = AlignUp(bytes);
  if (bytes > device_left) {
    const size_t chunk = std::max(bytes, kDeviceChunk);
    void* ptr = nullptr;
    CUDA_OK(cudaMalloc(&ptr, chunk));
    device_chunks.push_back(ptr);
    device_next = static_cast<uint8_t*>(ptr);
    device_left = chunk;
    device_bytes += chunk;
  }
  void* out = device_next;
  device_next += bytes;
  device_left -= bytes;
  return out;
}

void* RecordingMemory::PinnedCopy(const void* host, size_t bytes) {
  const size_t rounded = AlignUp(bytes);
  if (rounded > pinned_left) {
    const size_t chunk = std::max(rounded, kPinnedChunk);
    void* ptr = nullptr;
    CUDA_OK(cudaHostAlloc(&ptr, chunk, cudaHostAllocDefault));
    pinned_chunks.push_back(ptr);
    pinned_next = static_cast<uint8_t*>(ptr);
    pinned_left = chunk;
    pinned_bytes += chunk;
  }
  void* out = pinned_next;
  std::memcpy(out, host, bytes);
  pinned_next += rounded;
  pinned_left -= rounded;
  return out;
}

void RecordingMemory::Free() {
  for (void* ptr : device_chunks) cudaFree(ptr);
  for (void* ptr : pinned_chunks) cudaFreeHost(ptr);
  device_chunks.clear();
  pinned_chunks.clear();
  scratch.clear();
  uploads.clear();
  device_left = pinned_left = 0;
}

CudaGraph::~CudaGraph() {
  cudaStreamSynchronize(stream_);  // a replay may still be running
  cudaGraphExecDestroy(exec_);
  cudaGraphDestroy(graph_);
  memory_.Free();
}

absl::Status CudaBackend::BeginCapture() {
  if (capture_) return absl::FailedPreconditionError("a recording is already in progress");
  CUDA_OK(cudaStreamSynchronize(stream_));
  capture_ = std::make_unique<RecordingMemory>();
  HoldFreedBlocks(true);
  CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend::Graph>> CudaBackend::EndCapture() {
  if (!capture_) return absl::FailedPreconditionError("no recording in progress");
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  std::unique_ptr<RecordingMemory> memory = std::move(capture_);
  HoldFreedBlocks(false);
  std::string failure;
  if (ended != cudaSuccess) {
    (void)cudaGetLastError();
    failure = absl::StrCat("stream capture failed: ", cudaGetErrorString(ended));
  } else if (!memory->refused.empty()) {
    failure = absl::StrCat("cannot record this step: ", memory->refused);
  }
  for (const RecordingMemory::Upload& upload : memory->uploads) {
    if (!failure.empty()) break;
    const cudaError_t copied = cudaMemcpy(upload.device, upload.pinned, upload.bytes, cudaMemcpyHostToDevice);
    if (copied != cudaSuccess) {
      (void)cudaGetLastError();
      failure = absl::StrCat("copying a recording's constants failed: ", cudaGetErrorString(copied));
    }
  }
  cudaGraphExec_t exec = nullptr;
  if (failure.empty()) {
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    if (made != cudaSuccess) {
      (void)cudaGetLastError();
      failure = absl::StrCat("graph instantiation failed: ", cudaGetErrorString(made));
    }
  }
  if (!failure.empty()) {
    if (graph) cudaGraphDestroy(graph);
    memory->Free();
    return absl::FailedPreconditionError(failure);
  }
  return std::unique_ptr<Backend::Graph>(new CudaGraph(stream_, graph, exec, std::move(*memory)));
}

absl::Status CudaBackend::Replay(const Graph& graph) {
  const auto* cuda_graph = dynamic_cast<const CudaGraph*>(&graph);
  if (cuda_graph == nullptr || cuda_graph->stream() != stream_) {
    return absl::InvalidArgumentError("replay of a graph recorded by another backend");
  }
  CUDA_OK(cudaGraphLaunch(cuda_graph->exec(), stream_));
  return absl::OkStatus();
}

void CudaBackend::CaptureRefused(const std::string& why) {
  if (capture_ && capture_->refused.empty()) capture_->refused = why;
}

}  // namespace latentserve::kernels::cuda
