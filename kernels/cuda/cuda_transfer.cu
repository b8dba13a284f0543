// The CUDA backend's device-transfer capabilities (kernels/backend.h): copies to another
// CUDA backend without the host (same device: device-to-device; another device: peer copy),
// events, pinned host memory, asynchronous copies, and memory exported with CUDA IPC.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_graph.h"

namespace latentserve::kernels::cuda {
namespace {

class CudaEvent final : public Backend::Event {
 public:
  explicit CudaEvent(cudaEvent_t event) : event_(event) {}
  ~CudaEvent() override { cudaEventDestroy(event_); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_;
};

// cudaMalloc'd memory: unlike the stream-ordered pool's, cudaIpcGetMemHandle accepts it.
class ExportableBuffer final : public Buffer {
 public:
  ExportableBuffer(void* ptr, size_t size) : ptr_(ptr), size_(size) {}
  ~ExportableBuffer() override { cudaFree(ptr_); }
  void* address() override { return ptr_; }
  size_t size() const override { return size_; }

 private:
  void* ptr_;
  size_t size_;
};

// Another process's exported memory, mapped into this one until the tensor goes.
class OpenedBuffer final : public Buffer {
 public:
  OpenedBuffer(void* ptr, size_t size) : ptr_(ptr), size_(size) {}
  ~OpenedBuffer() override { cudaIpcCloseMemHandle(ptr_); }
  void* address() override { return ptr_; }
  size_t size() const override { return size_; }

 private:
  void* ptr_;
  size_t size_;
};

// Makes `device` current for the scope (events and streams belong to one device).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    CUDA_OK(cudaGetDevice(&previous_));
    if (previous_ != device) CUDA_OK(cudaSetDevice(device));
  }
  ~DeviceScope() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// Work enqueued on `later` from now on runs after the work enqueued on `earlier` so far.
void Order(cudaStream_t earlier, int earlier_device, cudaStream_t later) {
  if (earlier == later) return;
  cudaEvent_t event;
  {
    DeviceScope scope(earlier_device);
    CUDA_OK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    CUDA_OK(cudaEventRecord(event, earlier));
  }
  CUDA_OK(cudaStreamWaitEvent(later, event, 0));
  CUDA_OK(cudaEventDestroy(event));  // released once it has completed
}

absl::Status CudaError(const char* what, cudaError_t err) {
  cudaGetLastError();  // clear the sticky-free error so later calls do not see it
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// A batch of copy runs as one kernel's argument (kernel parameters may be up to 32 KiB since
// CUDA 12.1: no upload of the run list, no extra ordering).
struct CopyRunBatch {
  static constexpr int kMax = 512;  // 512 x 24 bytes = 12 KiB of parameters
  const uint8_t* src;
  uint8_t* dst;
  int count;
  int64_t src_offset[kMax];
  int64_t dst_offset[kMax];
  int64_t bytes[kMax];
};
constexpr int kCopyThreads = 256;
constexpr int64_t kCopyBytesPerBlock = 16 * 1024;  // 4 x 16-byte vectors per thread

// blockIdx.y: the run; blockIdx.x: its kCopyBytesPerBlock slice. kVector: every address and
// length a multiple of 16 bytes (uint4 loads and stores), else bytes.
template <bool kVector>
__global__ void __launch_bounds__(kCopyThreads) CopyRunsKernel(const __grid_constant__ CopyRunBatch batch) {
  const int run = static_cast<int>(blockIdx.y);
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kCopyBytesPerBlock;
  const int64_t end = min(batch.bytes[run], begin + kCopyBytesPerBlock);
  const uint8_t* src = batch.src + batch.src_offset[run];
  uint8_t* dst = batch.dst + batch.dst_offset[run];
  if constexpr (kVector) {
    for (int64_t i = begin + threadIdx.x * 16; i < end; i += kCopyThreads * 16) {
      *reinterpret_cast<uint4*>(dst + i) = __ldg(reinterpret_cast<const uint4*>(src + i));
    }
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kCopyThreads) dst[i] = src[i];
  }
}

}  // namespace

bool CudaBackend::CopyToBackend(const Tensor& src, size_t src_offset, Backend& dst_backend, const Tensor& dst,
                                size_t dst_offset, size_t bytes) {
  auto* peer = dynamic_cast<CudaBackend*>(&dst_backend);
  if (peer == nullptr || capture_ || peer->capture_) return false;
  CU_CHECK(src_offset <= src.nbytes() && bytes <= src.nbytes() - src_offset);
  CU_CHECK(dst_offset <= dst.nbytes() && bytes <= dst.nbytes() - dst_offset);
  if (bytes == 0) return true;
  // On the destination's stream, after the source's pending work (the rows are final); the
  // source's later work (its pages reused) waits for the copy. The host waits for neither.
  DeviceScope scope(peer->device_);
  Order(stream_, device_, peer->stream_);
  if (device_ == peer->device_) {
    CUDA_OK(cudaMemcpyAsync(DevPtr(dst) + dst_offset, DevPtr(src) + src_offset, bytes, cudaMemcpyDeviceToDevice,
                            peer->stream_));
  } else {
    CUDA_OK(cudaMemcpyPeerAsync(DevPtr(dst) + dst_offset, peer->device_, DevPtr(src) + src_offset, device_, bytes,
                                peer->stream_));
  }
  Order(peer->stream_, peer->device_, stream_);
  return true;
}

bool CudaBackend::CopyRunsToBackend(const Tensor& src, Backend& dst_backend, const Tensor& dst,
                                    absl::Span<const CopyRun> runs, absl::Duration* device_time) {
  auto* peer = dynamic_cast<CudaBackend*>(&dst_backend);
  if (peer == nullptr || capture_ || peer->capture_) return false;
  if (peer->device_ != device_) return Backend::CopyRunsToBackend(src, dst_backend, dst, runs, device_time);
  bool vector = reinterpret_cast<uintptr_t>(DevPtr(src)) % 16 == 0 && reinterpret_cast<uintptr_t>(DevPtr(dst)) % 16 == 0;
  int64_t longest = 0;
  for (const CopyRun& r : runs) {
    CU_CHECK(r.src_offset <= src.nbytes() && r.bytes <= src.nbytes() - r.src_offset);
    CU_CHECK(r.dst_offset <= dst.nbytes() && r.bytes <= dst.nbytes() - r.dst_offset);
    vector = vector && (r.src_offset | r.dst_offset | r.bytes) % 16 == 0;
    longest = std::max(longest, static_cast<int64_t>(r.bytes));
  }
  if (device_time != nullptr) *device_time = absl::ZeroDuration();
  if (longest == 0) return true;
  // On the destination's copy stream, after the work enqueued on both backends so far (the
  // rows are final, the pages free); work enqueued on either later waits for the copies. The
  // copy stream keeps the timing events to the copies alone.
  DeviceScope scope(peer->device_);
  Order(stream_, device_, peer->copy_stream_);
  Order(peer->stream_, peer->device_, peer->copy_stream_);
  cudaEvent_t start = nullptr, end = nullptr;
  if (device_time != nullptr) {
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreate(&end));
    CUDA_OK(cudaEventRecord(start, peer->copy_stream_));
  }
  auto batch = std::make_unique<CopyRunBatch>();
  batch->src = DevPtr(src);
  batch->dst = DevPtr(dst);
  const unsigned slices = static_cast<unsigned>((longest + kCopyBytesPerBlock - 1) / kCopyBytesPerBlock);
  for (size_t first = 0; first < runs.size(); first += CopyRunBatch::kMax) {
    batch->count = static_cast<int>(std::min<size_t>(CopyRunBatch::kMax, runs.size() - first));
    for (int i = 0; i < batch->count; ++i) {
      batch->src_offset[i] = static_cast<int64_t>(runs[first + i].src_offset);
      batch->dst_offset[i] = static_cast<int64_t>(runs[first + i].dst_offset);
      batch->bytes[i] = static_cast<int64_t>(runs[first + i].bytes);
    }
    const dim3 grid(slices, static_cast<unsigned>(batch->count));
    if (vector) {
      CopyRunsKernel<true><<<grid, kCopyThreads, 0, peer->copy_stream_>>>(*batch);
    } else {
      CopyRunsKernel<false><<<grid, kCopyThreads, 0, peer->copy_stream_>>>(*batch);
    }
    LAUNCH_OK();
  }
  Order(peer->copy_stream_, peer->device_, peer->stream_);
  Order(peer->copy_stream_, peer->device_, stream_);
  if (device_time != nullptr) {
    CUDA_OK(cudaEventRecord(end, peer->copy_stream_));
    CUDA_OK(cudaEventSynchronize(end));
    float ms = 0.0f;
    CUDA_OK(cudaEventElapsedTime(&ms, start, end));
    *device_time = absl::Microseconds(static_cast<double>(ms) * 1e3);
    cudaEventDestroy(start);
    cudaEventDestroy(end);
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Backend::Event>> CudaBackend::RecordEvent() {
  if (capture_) return absl::FailedPreconditionError("an event cannot be recorded while a step is being recorded");
  cudaEvent_t event;
  if (cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); err != cudaSuccess) {
    return CudaError("cudaEventCreate", err);
  }
  CUDA_OK(cudaEventRecord(event, stream_));
  return std::unique_ptr<Event>(new CudaEvent(event));
}

absl::Status CudaBackend::WaitEvent(const Event& event) {
  const auto* cuda_event = dynamic_cast<const CudaEvent*>(&event);
  if (cuda_event == nullptr) return absl::InvalidArgumentError("not an event of a cuda backend");
  if (cudaError_t err = cudaEventSynchronize(cuda_event->get()); err != cudaSuccess) {
    return CudaError("cudaEventSynchronize", err);
  }
  return absl::OkStatus();
}

absl::StatusOr<Backend::HostMemory> CudaBackend::AllocHost(size_t bytes) {
  void* ptr = nullptr;
  if (cudaError_t err = cudaMallocHost(&ptr, std::max<size_t>(bytes, 1)); err != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cannot pin ", bytes, " host bytes: ", cudaGetErrorString(err)));
  }
  HostMemory memory;
  memory.data = std::shared_ptr<uint8_t>(static_cast<uint8_t*>(ptr), [](uint8_t* p) { cudaFreeHost(p); });
  memory.bytes = bytes;
  memory.pinned = true;
  return memory;
}

void CudaBackend::DownloadAsync(const Tensor& src, void* host, size_t bytes, size_t src_offset) {
  CU_CHECK(src_offset <= src.nbytes() && bytes <= src.nbytes() - src_offset);
  if (capture_) {
    CaptureRefused("DownloadAsync (a recording cannot write host memory)");
    return;
  }
  if (bytes) CUDA_OK(cudaMemcpyAsync(host, DevPtr(src) + src_offset, bytes, cudaMemcpyDeviceToHost, stream_));
}

void CudaBackend::UploadAsync(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) {
  CU_CHECK(dst_offset <= dst.nbytes() && bytes <= dst.nbytes() - dst_offset);
  if (bytes == 0) return;
  if (capture_) host = capture_->PinnedCopy(host, bytes);
  CUDA_OK(cudaMemcpyAsync(DevPtr(dst) + dst_offset, host, bytes, cudaMemcpyHostToDevice, stream_));
}

absl::StatusOr<Tensor> CudaBackend::AllocExportable(DType dtype, Shape ne) {
  for (int64_t d : ne) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  if (ne[0] % Traits(dtype).block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("row of ", ne[0], " is not a whole number of ", DTypeName(dtype), " blocks"));
  }
  if (capture_) return absl::FailedPreconditionError("exportable memory cannot be allocated while recording");
  Tensor t;
  t.dtype = dtype;
  t.ne = ne;
  const size_t bytes = std::max<size_t>(t.nbytes(), 1);
  void* ptr = nullptr;
  if (cudaError_t err = cudaMalloc(&ptr, bytes); err != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("device allocation of ", bytes, " bytes failed: ",
                                                     cudaGetErrorString(err)));
  }
  t.buffer = std::make_shared<ExportableBuffer>(ptr, bytes);
  return t;
}

absl::StatusOr<Backend::MemoryHandle> CudaBackend::ExportMemory(const Tensor& tensor) {
  if (!tensor.defined() || tensor.offset != 0) {
    return absl::InvalidArgumentError("only a whole allocation can be exported (a tensor at offset 0)");
  }
  cudaIpcMemHandle_t ipc;
  if (cudaError_t err = cudaIpcGetMemHandle(&ipc, tensor.buffer->address()); err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat("cudaIpcGetMemHandle: ", cudaGetErrorString(err),
                                                      " (export tensors made by AllocExportable)"));
  }
  MemoryHandle handle;
  handle.kind = "cuda-ipc";
  handle.handle.assign(reinterpret_cast<const char*>(&ipc), sizeof(ipc));
  handle.bytes = tensor.buffer->size();
  handle.process = static_cast<int64_t>(::getpid());
  return handle;
}

absl::StatusOr<Tensor> CudaBackend::OpenMemory(const MemoryHandle& handle, DType dtype, Shape ne) {
  if (handle.kind != "cuda-ipc" || handle.handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat("the cuda backend opens cuda-ipc handles, not '", handle.kind, "'"));
  }
  if (handle.process == static_cast<int64_t>(::getpid())) {
    return absl::InvalidArgumentError("a CUDA IPC handle opens in another process than its exporter");
  }
  Tensor t;
  t.dtype = dtype;
  t.ne = ne;
  for (int64_t d : ne) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  if (t.nbytes() > handle.bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a tensor of ", t.nbytes(), " bytes does not fit the ",
                                                   handle.bytes, "-byte exported memory"));
  }
  cudaIpcMemHandle_t ipc;
  std::memcpy(&ipc, handle.handle.data(), sizeof(ipc));
  void* ptr = nullptr;
  if (cudaError_t err = cudaIpcOpenMemHandle(&ptr, ipc, cudaIpcMemLazyEnablePeerAccess); err != cudaSuccess) {
    return CudaError("cudaIpcOpenMemHandle", err);
  }
  t.buffer = std::make_shared<OpenedBuffer>(ptr, handle.bytes);
  return t;
}

std::string CudaBackend::DeviceUuid() const {
  cudaDeviceProp props;
  if (cudaGetDeviceProperties(&props, device_) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  // nvidia-smi's form: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
  const auto* b = reinterpret_cast<const unsigned char*>(props.uuid.bytes);
  std::string out = "GPU-";
  static const char* kHex = "0123456789abcdef";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[b[i] >> 4]);
    out.push_back(kHex[b[i] & 15]);
  }
  return out;
}

}  // namespace latentserve::kernels::cuda
