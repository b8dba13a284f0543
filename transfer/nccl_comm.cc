#include "transfer/nccl_comm.h"

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"

namespace latentserve::transfer {
namespace {

static_assert(NCCL_UNIQUE_ID_BYTES == kNcclUniqueIdBytes, "the bootstrap's id size is NCCL's");

absl::Status NcclError(const char* what, ncclResult_t result) {
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(result)));
}

class RealNcclComm final : public NcclComm {
 public:
  explicit RealNcclComm(ncclComm_t comm) : comm_(comm) {}
  ~RealNcclComm() override {
    if (!aborted_) ncclCommDestroy(comm_);
  }
  void Abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_) ncclCommAbort(comm_);
    aborted_ = true;
  }
  ncclComm_t get() const { return comm_; }
  bool aborted() const { return aborted_; }
  // The communicator's asynchronous error (a failed peer, a network error); ncclSuccess once
  // aborted. Serialised with Abort: an aborted communicator is freed.
  ncclResult_t AsyncError() {
    std::lock_guard<std::mutex> lock(mu_);
    ncclResult_t async = ncclSuccess;
    if (!aborted_ && ncclCommGetAsyncError(comm_, &async) != ncclSuccess) return ncclSystemError;
    return async;
  }

 private:
  ncclComm_t comm_;
  std::mutex mu_;  // Abort vs AsyncError
  std::atomic<bool> aborted_{false};
};

template <typename Op>
absl::Status GroupRuns(NcclComm& comm, kernels::Backend& backend, const kernels::Tensor& pool,
                       absl::Span<const int32_t> page_table, const std::vector<NcclRun>& runs, Op op) {
  auto* cuda = dynamic_cast<kernels::cuda::CudaBackend*>(&backend);
  auto* real = dynamic_cast<RealNcclComm*>(&comm);
  if (cuda == nullptr || real == nullptr) {
    return absl::FailedPreconditionError("the NCCL transport moves rows of a CUDA backend over an NCCL communicator");
  }
  const int64_t page_tokens = pool.ne[1];
  const size_t row_bytes = pool.row_bytes();
  for (const NcclRun& run : runs) {
    RETURN_IF_ERROR(kernels::CheckPagedRows(pool, page_table, run.first_token, run.tokens));
    if (run.first_token / page_tokens != (run.first_token + run.tokens - 1) / page_tokens) {
      return absl::InvalidArgumentError("an NCCL run crosses a page");
    }
  }
  if (ncclResult_t r = ncclGroupStart(); r != ncclSuccess) return NcclError("ncclGroupStart", r);
  ncclResult_t failed = ncclSuccess;
  for (const NcclRun& run : runs) {
    const int64_t slot = static_cast<int64_t>(page_table[run.first_token / page_tokens]) * page_tokens +
                         run.first_token % page_tokens;
    uint8_t* rows = kernels::cuda::DevPtr(pool) + static_cast<size_t>(slot) * row_bytes;
    failed = op(rows, static_cast<size_t>(run.tokens) * row_bytes, real->get(), cuda->stream());
    if (failed != ncclSuccess) break;
  }
  ncclResult_t ended = ncclGroupEnd();
  if (failed != ncclSuccess) return NcclError("ncclSend/ncclRecv", failed);
  // A non-blocking communicator answers ncclInProgress while it is still enqueuing the group
  // (its first point-to-point calls connect the two ranks): the kernels are on the stream only
  // once that ends, so the event the caller records after them must wait for it. The chunk's
  // watchdog (the caller's CommCache::Guard) aborts the communicator past its deadline, which
  // ends this wait.
  while (ended == ncclInProgress) {
    if (real->aborted()) return absl::DeadlineExceededError("NCCL communicator aborted while enqueuing a chunk");
    std::this_thread::sleep_for(std::chrono::microseconds(50));
    ended = real->AsyncError();
  }
  if (ended != ncclSuccess) return NcclError("ncclGroupEnd", ended);
  return absl::OkStatus();
}

// The event after one posted group, and the communicator whose async error it checks.
class CudaPosted final : public NcclPosted {
 public:
  CudaPosted(cudaEvent_t event, std::shared_ptr<NcclComm> comm) : event_(event), comm_(std::move(comm)) {}
  ~CudaPosted() override { cudaEventDestroy(event_); }
  absl::StatusOr<bool> Done() override {
    const cudaError_t state = cudaEventQuery(event_);
    if (state == cudaSuccess) return true;
    if (state != cudaErrorNotReady) {
      cudaGetLastError();
      return absl::InternalError(absl::StrCat("NCCL chunk on the device: ", cudaGetErrorString(state)));
    }
    auto* real = dynamic_cast<RealNcclComm*>(comm_.get());
    const ncclResult_t async = real != nullptr ? real->AsyncError() : ncclSuccess;
    if (async != ncclSuccess && async != ncclInProgress) return NcclError("NCCL communicator", async);
    return false;
  }

 private:
  cudaEvent_t event_;
  std::shared_ptr<NcclComm> comm_;
};

class CudaNcclDataPlane final : public NcclDataPlane {
 public:
  explicit CudaNcclDataPlane(int device) : device_(device) {}
  absl::StatusOr<std::string> NewUniqueId() override { return NewNcclUniqueId(); }
  absl::StatusOr<std::shared_ptr<NcclComm>> Join(const NcclBootstrap& bootstrap, int rank) override {
    return CreateNcclComm(bootstrap, rank, device_);
  }
  absl::StatusOr<std::unique_ptr<NcclPosted>> Send(NcclComm& comm, kernels::Backend& backend,
                                                   const kernels::Tensor& pool, absl::Span<const int32_t> page_table,
                                                   const std::vector<NcclRun>& runs, int peer) override {
    RETURN_IF_ERROR(NcclSendRuns(comm, backend, pool, page_table, runs, peer));
    return Posted(comm, backend);
  }
  absl::StatusOr<std::unique_ptr<NcclPosted>> Recv(NcclComm& comm, kernels::Backend& backend,
                                                   const kernels::Tensor& pool, absl::Span<const int32_t> page_table,
                                                   const std::vector<NcclRun>& runs, int peer) override {
    RETURN_IF_ERROR(NcclRecvRuns(comm, backend, pool, page_table, runs, peer));
    return Posted(comm, backend);
  }

 private:
  static absl::StatusOr<std::unique_ptr<NcclPosted>> Posted(NcclComm& comm, kernels::Backend& backend) {
    auto* cuda = dynamic_cast<kernels::cuda::CudaBackend*>(&backend);  // GroupRuns checked it
    cudaEvent_t event;
    if (cudaError_t err = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); err != cudaSuccess) {
      cudaGetLastError();
      return absl::InternalError(absl::StrCat("cudaEventCreate: ", cudaGetErrorString(err)));
    }
    if (cudaError_t err = cudaEventRecord(event, cuda->stream()); err != cudaSuccess) {
      cudaGetLastError();
      cudaEventDestroy(event);
      return absl::InternalError(absl::StrCat("cudaEventRecord: ", cudaGetErrorString(err)));
    }
    // Not owning: the caller holds the communicator while it waits (a shared_ptr from the cache).
    return std::unique_ptr<NcclPosted>(new CudaPosted(event, std::shared_ptr<NcclComm>(&comm, [](NcclComm*) {})));
  }

  const int device_;
};

}  // namespace

std::unique_ptr<NcclDataPlane> NewCudaNcclDataPlane(int device) { return std::make_unique<CudaNcclDataPlane>(device); }

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) return NcclError("ncclGetUniqueId", r);
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::shared_ptr<NcclComm>> CreateNcclComm(const NcclBootstrap& bootstrap, int rank, int device) {
  if (bootstrap.unique_id.size() != kNcclUniqueIdBytes || bootstrap.nranks != 2 || rank < 0 || rank >= 2) {
    return absl::InvalidArgumentError("NCCL bootstrap of another shape than two ranks and a 128-byte id");
  }
  if (cudaError_t err = cudaSetDevice(device); err != cudaSuccess) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(err)));
  }
  ncclUniqueId id;
  std::memcpy(id.internal, bootstrap.unique_id.data(), kNcclUniqueIdBytes);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // the init returns at once; we poll, and abort at the deadline
  ncclComm_t comm = nullptr;
  ncclResult_t state = ncclCommInitRankConfig(&comm, bootstrap.nranks, id, rank, &config);
  const absl::Time deadline = absl::Now() + bootstrap.init_timeout;
  while (state == ncclInProgress) {
    if (absl::Now() >= deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(absl::StrCat("NCCL communicator ", bootstrap.comm_key, " did not form within ",
                                                      absl::FormatDuration(bootstrap.init_timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (ncclResult_t r = ncclCommGetAsyncError(comm, &state); r != ncclSuccess) state = r;
  }
  if (state != ncclSuccess) {
    if (comm != nullptr) ncclCommAbort(comm);
    return NcclError("ncclCommInitRankConfig", state);
  }
  return std::shared_ptr<NcclComm>(new RealNcclComm(comm));
}

absl::Status NcclSendRuns(NcclComm& comm, kernels::Backend& backend, const kernels::Tensor& pool,
                          absl::Span<const int32_t> page_table, const std::vector<NcclRun>& runs, int peer) {
  return GroupRuns(comm, backend, pool, page_table, runs,
                   [peer](uint8_t* rows, size_t bytes, ncclComm_t c, cudaStream_t stream) {
                     return ncclSend(rows, bytes, ncclUint8, peer, c, stream);
                   });
}

absl::Status NcclRecvRuns(NcclComm& comm, kernels::Backend& backend, const kernels::Tensor& pool,
                          absl::Span<const int32_t> page_table, const std::vector<NcclRun>& runs, int peer) {
  return GroupRuns(comm, backend, pool, page_table, runs,
                   [peer](uint8_t* rows, size_t bytes, ncclComm_t c, cudaStream_t stream) {
                     return ncclRecv(rows, bytes, ncclUint8, peer, c, stream);
                   });
}

}  // namespace latentserve::transfer
