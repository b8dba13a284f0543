// CUDA backend: device, stream, memory (stream-ordered pool), copies, GetRows, factory.
#include <cuda_profiler_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_graph.h"
#include "kernels/cuda/dequant.cuh"
#include "kernels/random_fill.h"

namespace latentserve::kernels::cuda {

void CudaFailed(const char* what, const char* detail, const char* file, int line) {
  std::fprintf(stderr, "latentserve: CUDA failure: %s: %s (%s:%d)\n", what, detail, file, line);
  std::abort();
}

// Freed tensor memory kept for the next allocation of the same (rounded) size, the way
// PyTorch's caching allocator works: a decode step allocates the same few hundred tensors
// every time, and a cudaMallocAsync + cudaFreeAsync pair per tensor cost more host time than
// launching the step's kernels (the decode step was host-bound: generate --profile-overlap).
// Every use of the memory is on the backend's one stream, so a block given back after its
// last use was enqueued can serve work enqueued later: stream order separates them.
// LATENTSERVE_CUDA_ALLOC_CACHE=0 turns it off (each tensor then goes back to the pool).
class BlockCache {
 public:
  explicit BlockCache(cudaStream_t stream) : stream_(stream) {
    const char* env = std::getenv("LATENTSERVE_CUDA_ALLOC_CACHE");
    enabled_ = env == nullptr || std::strcmp(env, "0") != 0;
  }
  ~BlockCache() { Flush(); }

  static size_t Round(size_t bytes) { return (std::max<size_t>(bytes, 256) + 511) / 512 * 512; }

  void* Take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back();
    it->second.pop_back();
    cached_bytes_ -= bytes;
    return ptr;
  }
  void Give(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // While a graph is recorded the stream may not free: keep every block until it ends.
      if (hold_ || (enabled_ && cached_bytes_ + bytes <= kMaxCachedBytes)) {
        free_[bytes].push_back(ptr);
        cached_bytes_ += bytes;
        return;
      }
    }
    cudaFreeAsync(ptr, stream_);
  }
  void Hold(bool hold) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = hold;
  }
  // Returns every cached block to the pool (before retrying an allocation that failed).
  void Flush() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [bytes, blocks] : free_) {
      for (void* ptr : blocks) cudaFreeAsync(ptr, stream_);
    }
    free_.clear();
    cached_bytes_ = 0;
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{4} << 30;
  cudaStream_t stream_;
  bool enabled_ = true;
  bool hold_ = false;
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};

namespace {

// Device memory from the stream-ordered pool (through the block cache); freed in stream
// order, so a tensor dropped while kernels that use it are queued stays valid for them.
class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(void* ptr, size_t size, std::shared_ptr<BlockCache> cache)
      : ptr_(ptr), size_(size), cache_(std::move(cache)) {}
  ~DeviceBuffer() override { cache_->Give(ptr_, size_); }
  void* address() override { return ptr_; }
  size_t size() const override { return size_; }

 private:
  void* ptr_;
  size_t size_;
  std::shared_ptr<BlockCache> cache_;  // outlives the backend while tensors do
};

// Memory of a recording (cuda_graph.cu): freed with the graph, not per tensor.
class RecordedBuffer final : public Buffer {
 public:
  RecordedBuffer(void* ptr, size_t size) : ptr_(ptr), size_(size) {}
  void* address() override { return ptr_; }
  size_t size() const override { return size_; }

 private:
  void* ptr_;
  size_t size_;
};

__global__ void CopyColumnsKernel(const float* src, int64_t src_width, int64_t src_col, float* dst, int64_t dst_width,
                                  int64_t dst_col, int64_t cols, int64_t rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  dst[r * dst_width + dst_col + c] = src[r * src_width + src_col + c];
}

__global__ void GetRowsKernel(DType type, const uint8_t* table, size_t row_bytes, int64_t width, const int32_t* ids,
                              float* out) {
  const int64_t column = blockIdx.x;
  const uint8_t* row = table + static_cast<int64_t>(ids[column]) * row_bytes;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[column * width + i] = LoadElement(type, row, i);
}

__global__ void FillRandomKernel(DType type, uint8_t* data, size_t row_bytes, int64_t width, int64_t rows,
                                 uint64_t seed, float mean, float scale) {
  const int64_t per_row = (type == DType::kQ8_0 || type == DType::kQ4_0) ? width / 32 : width;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= per_row * rows) return;
  const int64_t r = i / per_row, j = i % per_row;
  uint8_t* row = data + r * row_bytes;
  const uint64_t base = static_cast<uint64_t>(r * width);
  if (type == DType::kQ8_0) {
    uint8_t* block = row + j * 34;
    *reinterpret_cast<__half*>(block) = __float2half_rn(scale / 127.0f);
    for (int k = 0; k < 32; ++k) block[2 + k] = static_cast<uint8_t>(static_cast<int8_t>(HashUniform(seed, base + j * 32 + k) * 127.0f));
  } else if (type == DType::kQ4_0) {
    uint8_t* block = row + j * 18;
    *reinterpret_cast<__half*>(block) = __float2half_rn(scale / 8.0f);
    for (int k = 0; k < 16; ++k) {
      const int lo = static_cast<int>((HashUniform(seed, base + j * 32 + k) + 1.0f) * 7.999f);
      const int hi = static_cast<int>((HashUniform(seed, base + j * 32 + 16 + k) + 1.0f) * 7.999f);
      block[2 + k] = static_cast<uint8_t>(lo | (hi << 4));
    }
  } else {
    const float v = mean + scale * HashUniform(seed, base + j);
    if (type == DType::kF32) reinterpret_cast<float*>(row)[j] = v;
    if (type == DType::kF16) reinterpret_cast<__half*>(row)[j] = __float2half_rn(v);
    if (type == DType::kBF16) reinterpret_cast<__nv_bfloat16*>(row)[j] = __float2bfloat16_rn(v);
  }
}

}  // namespace

void CudaBackend::FillRandom(const Tensor& dst, uint64_t seed, float mean, float scale) {
  CU_CHECK(dst.dtype != DType::kI32);
  if (IsKQuant(dst.dtype) || dst.dtype == DType::kQ5_0 || dst.dtype == DType::kQ5_1) {
    // K-quants (and q5_0 / q5_1) are quantised on the host exactly as the CPU backend fills them (uniform values,
    // then QuantizeRow), so both backends hold the same bytes; only --random-weights uses this.
    const int64_t width = dst.ne[0];
    std::vector<uint8_t> bytes(dst.nbytes());
    std::vector<float> values(width);
    for (int64_t r = 0; r < dst.rows(); ++r) {
      for (int64_t i = 0; i < width; ++i) values[i] = mean + scale * HashUniform(seed, static_cast<uint64_t>(r * width + i));
      QuantizeRow(dst.dtype, values.data(), bytes.data() + r * dst.row_bytes(), width);
    }
    Upload(bytes.data(), bytes.size(), dst, 0);
    CUDA_OK(cudaStreamSynchronize(stream_));  // `bytes` is freed on return
    return;
  }
  const bool quantised = dst.dtype == DType::kQ8_0 || dst.dtype == DType::kQ4_0;
  const int64_t n = (quantised ? dst.ne[0] / 32 : dst.ne[0]) * dst.rows();
  if (n == 0) return;
  FillRandomKernel<<<Blocks(n, 256), 256, 0, stream_>>>(dst.dtype, DevPtr(dst), dst.row_bytes(), dst.ne[0], dst.rows(),
                                                        seed, mean, scale);
  LAUNCH_OK();
}

int64_t CudaBackend::PeakMemoryBytes() const {
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, device_) != cudaSuccess) return -1;
  uint64_t high = 0;
  if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &high) != cudaSuccess) return -1;
  return static_cast<int64_t>(high);
}

CudaBackend::CudaBackend(int device) : device_(device), scratch_(kScratchSlots) {
  CUDA_OK(cudaSetDevice(device));
  CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
  CUBLAS_OK(cublasCreate(&cublas_));
  CUBLAS_OK(cublasSetStream(cublas_, stream_));
  // cuBLAS's own workspace, set once: GEMMs recorded into a graph must not allocate.
  constexpr size_t kCublasWorkspace = size_t{32} << 20;
  CUDA_OK(cudaMalloc(&cublas_workspace_, kCublasWorkspace));
  CUBLAS_OK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
  block_cache_ = std::make_shared<BlockCache>(stream_);
  CUDA_OK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
  // Keep freed memory in the pool instead of returning it to the driver.
  cudaMemPool_t pool;
  CUDA_OK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t threshold = UINT64_MAX;
  CUDA_OK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  for (auto& slot : scratch_) {
    if (slot.ptr) cudaFreeAsync(slot.ptr, stream_);
  }
  for (auto& [key, matrix] : mla_expansion_) cudaFreeAsync(matrix, stream_);
  cudaStreamSynchronize(stream_);
  for (auto& entry : staging_) {
    if (entry.host) cudaFreeHost(entry.host);
    if (entry.done) cudaEventDestroy(entry.done);
  }
  for (auto& [key, copy] : f32_weights_) cudaFree(copy.second);
  for (TicketArrays* use : {&mla_tickets_, &mma_tickets_}) {
    for (int* tickets : use->arrays) cudaFree(tickets);
  }
  cublasDestroy(cublas_);
  cudaFree(cublas_workspace_);
  if (aux_stream_) cudaStreamDestroy(aux_stream_);
  cudaStreamSynchronize(copy_stream_);
  cudaStreamDestroy(copy_stream_);
  // Tensors still alive free themselves on the stream; it is intentionally not destroyed.
}

absl::StatusOr<Tensor> CudaBackend::Alloc(DType dtype, Shape ne) {
  for (int64_t d : ne) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  if (ne[0] % Traits(dtype).block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("row of ", ne[0], " is not a whole number of ", DTypeName(dtype), " blocks"));
  }
  Tensor t;
  t.dtype = dtype;
  t.ne = ne;
  const size_t bytes = BlockCache::Round(t.nbytes());
  if (capture_) {
    t.buffer = std::make_shared<RecordedBuffer>(capture_->Device(bytes), bytes);
    return t;
  }
  void* ptr = block_cache_->Take(bytes);
  if (ptr == nullptr) {
    cudaError_t err = cudaMallocAsync(&ptr, bytes, stream_);
    if (err != cudaSuccess) {  // cached blocks of other sizes may be what is missing
      cudaGetLastError();
      block_cache_->Flush();
      err = cudaMallocAsync(&ptr, bytes, stream_);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(
          absl::StrCat("device allocation of ", bytes, " bytes failed: ", cudaGetErrorString(err)));
    }
  }
  t.buffer = std::make_shared<DeviceBuffer>(ptr, bytes, block_cache_);
  return t;
}

absl::StatusOr<Tensor> CudaBackend::ImportHost(DType dtype, Shape ne, const void* data) {
  auto t = Alloc(dtype, ne);
  if (!t.ok()) return t.status();
  Upload(data, t->nbytes(), *t, 0);
  return t;
}

void CudaBackend::Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) {
  CU_CHECK(dst_offset + bytes <= dst.nbytes());
  if (bytes == 0) return;
  // A recorded upload reads a pinned copy owned by the recording at every replay.
  if (capture_) host = capture_->PinnedCopy(host, bytes);
  // From pageable memory the call returns once the data is staged, so `host` may be reused.
  CUDA_OK(cudaMemcpyAsync(DevPtr(dst) + dst_offset, host, bytes, cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::Download(const Tensor& src, void* host, size_t bytes, size_t src_offset) {
  CU_CHECK(src_offset + bytes <= src.nbytes());
  if (capture_) {
    CaptureRefused("Download (the host would wait for the device)");
    std::memset(host, 0, bytes);
    return;
  }
  if (bytes) CUDA_OK(cudaMemcpyAsync(host, DevPtr(src) + src_offset, bytes, cudaMemcpyDeviceToHost, stream_));
  CUDA_OK(cudaStreamSynchronize(stream_));
}

void CudaBackend::Synchronize() {
  if (capture_) return CaptureRefused("Synchronize");
  CUDA_OK(cudaStreamSynchronize(stream_));
}

void CudaBackend::ProfilerStart() { CUDA_OK(cudaProfilerStart()); }

void CudaBackend::ProfilerStop() {
  CUDA_OK(cudaStreamSynchronize(stream_));  // the span's work is inside it
  CUDA_OK(cudaProfilerStop());
}

void CudaBackend::Zero(const Tensor& dst) { CUDA_OK(cudaMemsetAsync(DevPtr(dst), 0, dst.nbytes(), stream_)); }

void CudaBackend::Copy(const Tensor& src, const Tensor& dst) {
  CU_CHECK(src.dtype == dst.dtype && src.nbytes() == dst.nbytes());
  CUDA_OK(cudaMemcpyAsync(DevPtr(dst), DevPtr(src), src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::CopyColumns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col, int64_t cols) {
  CU_CHECK(src.dtype == DType::kF32 && dst.dtype == DType::kF32 && src.rows() == dst.rows());
  CU_CHECK(src_col + cols <= src.ne[0] && dst_col + cols <= dst.ne[0]);
  const int64_t n = src.rows() * cols;
  if (n == 0) return;
  CopyColumnsKernel<<<Blocks(n, 256), 256, 0, stream_>>>(DevF32(src), src.ne[0], src_col, DevF32(dst), dst.ne[0],
                                                          dst_col, cols, src.rows());
  LAUNCH_OK();
}

void CudaBackend::CopyPage(const Tensor& src_pool, int32_t src_page, const Tensor& dst_pool, int32_t dst_page) {
  CU_CHECK(src_pool.dtype == dst_pool.dtype && src_pool.ne[0] == dst_pool.ne[0] && src_pool.ne[1] == dst_pool.ne[1]);
  const size_t page_bytes = src_pool.row_bytes() * src_pool.ne[1];
  CUDA_OK(cudaMemcpyAsync(DevPtr(dst_pool) + dst_page * page_bytes, DevPtr(src_pool) + src_page * page_bytes,
                          page_bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::GetRows(const Tensor& table, const Tensor& ids, const Tensor& out) {
  const int64_t n = ids.elements();
  CU_CHECK(ids.dtype == DType::kI32 && out.dtype == DType::kF32 && out.ne[0] == table.ne[0] && out.rows() == n);
  if (n == 0) return;
  GetRowsKernel<<<static_cast<unsigned>(n), 256, 0, stream_>>>(table.dtype, DevPtr(table), table.row_bytes(),
                                                                table.ne[0], reinterpret_cast<const int32_t*>(DevPtr(ids)),
                                                                DevF32(out));
  LAUNCH_OK();
}

int* CudaBackend::Tickets(TicketArrays& use, int64_t count) {
  if (count > use.count) {
    // Zeroed on the side stream (a recording must not replay the memset, nor wait for it).
    const int64_t size = std::max<int64_t>(2 * count, 256);
    int* tickets = nullptr;
    CUDA_OK(cudaMalloc(&tickets, static_cast<size_t>(size) * sizeof(int)));
    if (aux_stream_ == nullptr) CUDA_OK(cudaStreamCreateWithFlags(&aux_stream_, cudaStreamNonBlocking));
    CUDA_OK(cudaMemsetAsync(tickets, 0, static_cast<size_t>(size) * sizeof(int), aux_stream_));
    CUDA_OK(cudaStreamSynchronize(aux_stream_));
    use.arrays.push_back(tickets);
    use.count = size;
  }
  return use.arrays.back();
}

void CudaBackend::HoldFreedBlocks(bool hold) { block_cache_->Hold(hold); }

bool CudaBackend::ScratchFits(int slot, size_t bytes) {
  if (capture_ || scratch_.at(slot).bytes >= bytes) return true;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return free_bytes > bytes + (size_t{1} << 30);
}

void* CudaBackend::Scratch(int slot, size_t bytes) {
  if (capture_) {  // the recording's own block per slot, with the same reuse rule
    auto& [ptr, size] = capture_->scratch[slot];
    if (size < bytes) {
      ptr = capture_->Device(bytes);
      size = bytes;
    }
    return ptr;
  }
  ScratchSlot& s = scratch_.at(slot);
  if (s.bytes < bytes) {
    if (s.ptr) CUDA_OK(cudaFreeAsync(s.ptr, stream_));
    s.bytes = std::max(bytes, s.bytes * 2);
    CUDA_OK(cudaMallocAsync(&s.ptr, s.bytes, stream_));
  }
  return s.ptr;
}

const int32_t* CudaBackend::SeqPages(const LatentSeqView& seq, int slot) {
  if (seq.page_plan != nullptr) {
    CU_CHECK(seq.plan_column < seq.page_plan->rows() &&
             static_cast<int64_t>(seq.page_table.size()) <= seq.page_plan->ne[0]);
    return reinterpret_cast<const int32_t*>(DevPtr(*seq.page_plan)) + seq.plan_column * seq.page_plan->ne[0];
  }
  return static_cast<const int32_t*>(UploadScratch(slot, seq.page_table.data(), seq.page_table.size() * sizeof(int32_t)));
}

const int32_t* CudaBackend::SharedPlan(absl::Span<const LatentSeqView> seqs, std::vector<int32_t>* offsets) {
  offsets->clear();
  if (seqs.empty() || seqs[0].page_plan == nullptr) return nullptr;
  const Tensor* plan = seqs[0].page_plan;
  for (const LatentSeqView& seq : seqs) {
    if (seq.page_plan != plan) return nullptr;
    CU_CHECK(seq.plan_column < plan->rows() && static_cast<int64_t>(seq.page_table.size()) <= plan->ne[0]);
    offsets->push_back(static_cast<int32_t>(seq.plan_column * plan->ne[0]));
  }
  return reinterpret_cast<const int32_t*>(DevPtr(*plan));
}

void* CudaBackend::UploadScratch(int slot, const void* host, size_t bytes) {
  if (capture_) {
    // The bytes are the recording's constants: every replay would copy the same ones. So they
    // get their own block, filled once when the recording ends (RecordingMemory::uploads), and
    // the graph has no copy node: a host-to-device copy node took a PCIe round trip per replay
    // and made the next kernel wait for it whole (no programmatic launch across a copy).
    void* dst = capture_->Device(std::max<size_t>(bytes, 64));
    if (bytes > 0) capture_->uploads.push_back({dst, capture_->PinnedCopy(host, bytes), bytes});
    return dst;
  }
  void* dst = Scratch(slot, std::max<size_t>(bytes, 64));
  if (bytes == 0) return dst;
  // Round-robin over pinned entries; an entry is reused only after its last copy finished
  // (256 uploads later: several decode steps back, so the wait is normally free).
  if (staging_.empty()) staging_.resize(256);
  Staging& entry = staging_[next_staging_++ % staging_.size()];
  if (entry.done) CUDA_OK(cudaEventSynchronize(entry.done));
  if (entry.bytes < bytes) {
    if (entry.host) CUDA_OK(cudaFreeHost(entry.host));
    entry.bytes = std::max<size_t>(bytes, 4096);
    CUDA_OK(cudaHostAlloc(&entry.host, entry.bytes, cudaHostAllocDefault));
  }
  if (!entry.done) CUDA_OK(cudaEventCreateWithFlags(&entry.done, cudaEventDisableTiming));
  std::memcpy(entry.host, host, bytes);
  CUDA_OK(cudaMemcpyAsync(dst, entry.host, bytes, cudaMemcpyHostToDevice, stream_));
  CUDA_OK(cudaEventRecord(entry.done, stream_));
  return dst;
}

}  // namespace latentserve::kernels::cuda

namespace latentserve::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError("--backend cuda: no CUDA device is visible");
  }
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options.device, " does not exist (", count, " visible)"));
  }
  return std::unique_ptr<Backend>(new cuda::CudaBackend(options.device));
}

}  // namespace latentserve::kernels
