#include "transfer/cuda_ipc_transport.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {
namespace {

constexpr int64_t kMaxPageTokens = 65536;
constexpr size_t kMaxHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t)

// One handoff: rows go device to device into the peer's pages, control on the gRPC stream.
class CudaIpcSender : public DeviceCacheSender {
 public:
  CudaIpcSender(kernels::Backend& backend, std::unique_ptr<CacheSender> control, std::shared_ptr<const void> peer,
                std::vector<kernels::Tensor> pools, DeviceTarget target, const HandoffHeader& header,
                std::function<void()> forget_peer)
      : DeviceCacheSender(std::move(control), header, std::move(forget_peer)), backend_(backend),
        peer_(std::move(peer)), pools_(std::move(pools)), target_(std::move(target)) {}

  std::string transport() const override { return "cuda-ipc"; }

 private:
  absl::Status SendRows(const LatentRows& chunk) override {
    if (!chunk.view || chunk.view->pool == nullptr) return absl::InternalError("the CUDA IPC sender takes views");
    const cache::LatentRowsView& view = *chunk.view;
    const int64_t first = chunk.first_token, count = chunk.token_count;
    if (chunk.mla_index < 0 || chunk.mla_index >= static_cast<int64_t>(pools_.size()) || first < 0 || count <= 0 ||
        count > header_.prompt_tokens - first) {
      return absl::InvalidArgumentError("latent rows outside the handoff");
    }
    const cache::PagePool& pool = *view.pool;
    if (static_cast<int64_t>(pool.row_bytes()) != header_.row_bytes) {
      return absl::FailedPreconditionError("rows of another size than the header's");
    }
    if (view.mla_index != chunk.mla_index) return absl::InternalError("a chunk's view is of another layer");
    RETURN_IF_ERROR(pool.CheckRange(view.mla_index, view.pages, first, count));
    // The checksum the receiver verifies against what lands in its pages, hashed on this
    // device; it returns once the rows' pending writes are done, so the clock below times the
    // copies alone.
    ASSIGN_OR_RETURN(uint64_t checksum, PagedRowsChecksum(pool, view.mla_index, view.pages, first, count));
    const int64_t rb = header_.row_bytes, src_page = pool.page_tokens(), dst_page = target_.page_tokens;
    // One run per stretch of tokens inside one page on both sides; all of them go as one
    // batched copy (one kernel on one device).
    std::vector<kernels::Backend::CopyRun> runs;
    for (int64_t t = 0; t < count;) {
      const int64_t s = first + t;
      const int64_t run = std::min({count - t, src_page - s % src_page, dst_page - s % dst_page});
      const int64_t src_offset = (static_cast<int64_t>(view.pages[s / src_page]) * src_page + s % src_page) * rb;
      // The target was validated against its pools' size; checked again here so that no
      // answer of the peer can make a copy leave the opened memory.
      const int64_t dst_offset = RowOffset(target_, rb, s);
      if (dst_offset < 0 || run * rb > static_cast<int64_t>(pools_[chunk.mla_index].nbytes()) - dst_offset) {
        return absl::InvalidArgumentError("latent rows outside the peer's opened pool");
      }
      runs.push_back({static_cast<size_t>(src_offset), static_cast<size_t>(dst_offset), static_cast<size_t>(run * rb)});
      t += run;
    }
    // Returns once the rows are in the peer's pages (it must not be told before), with the
    // copies' own device time (they run on a stream of their own, beside the next chunk).
    absl::Duration copy_time;
    if (!backend_.CopyRunsToBackend(pool.pool(view.mla_index), backend_, pools_[chunk.mla_index], runs, &copy_time)) {
      return absl::FailedPreconditionError(absl::StrCat("the ", backend_.name(),
                                                        " backend cannot copy into opened peer memory"));
    }
    device_copy_time_ += copy_time;
    device_bytes_ += count * rb;
    return control_->SendRowsWritten({chunk.mla_index, first, count, checksum});
  }

  kernels::Backend& backend_;
  std::shared_ptr<const void> peer_;  // keeps the opened memory mapped while this handoff runs
  std::vector<kernels::Tensor> pools_;
  const DeviceTarget target_;
};

bool MulFits(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

absl::StatusOr<DeviceTarget> ValidateDeviceTarget(const internal::v1::OpenDeviceHandoffResponse& answer,
                                                  const HandoffHeader& header) {
  if (answer.export_id().empty() || answer.export_id().size() > 128) {
    return absl::InvalidArgumentError("OpenDeviceHandoff: export_id must be 1..128 bytes");
  }
  ASSIGN_OR_RETURN(DType dtype, FromProtoDType(answer.cache_dtype()));
  if (dtype != header.cache_dtype || answer.row_bytes() != header.row_bytes) {
    return absl::FailedPreconditionError(absl::StrCat("the decode worker's cache is ", DTypeName(dtype), " with ",
                                                      answer.row_bytes(), "-byte rows, this one ",
                                                      DTypeName(header.cache_dtype), " with ", header.row_bytes,
                                                      " (--cache-type must match)"));
  }
  if (header.row_bytes <= 0 || header.prompt_tokens <= 0) return absl::InvalidArgumentError("empty handoff");
  // NCCL moves rows over a communicator: its answer is the layout alone, with no memory to open.
  const int expected_pools = header.transport == "nccl" ? 0 : static_cast<int>(header.mla_layers.size());
  if (answer.pools_size() != expected_pools) {
    return absl::InvalidArgumentError(absl::StrCat("OpenDeviceHandoff: ", answer.pools_size(), " pools for ",
                                                   header.mla_layers.size(), " MLA layers over ",
                                                   header.transport.empty() ? "cuda-ipc" : header.transport));
  }
  if (answer.page_tokens() < 1 || answer.page_tokens() > kMaxPageTokens) {
    return absl::InvalidArgumentError("OpenDeviceHandoff: page_tokens outside [1, 65536]");
  }
  if (answer.pool_pages() < 1 || answer.pool_pages() > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("OpenDeviceHandoff: pool_pages outside [1, 2^31)");
  }
  int64_t pool_rows = 0, pool_bytes = 0;
  if (!MulFits(answer.page_tokens(), answer.pool_pages(), &pool_rows) ||
      !MulFits(pool_rows, header.row_bytes, &pool_bytes)) {
    return absl::InvalidArgumentError("OpenDeviceHandoff: pool size overflows");
  }
  DeviceTarget target;
  target.export_id = answer.export_id();
  target.page_tokens = answer.page_tokens();
  target.pool_pages = answer.pool_pages();
  for (const auto& p : answer.pools()) {
    if (p.kind() != "cuda-ipc" || p.handle().empty() || p.handle().size() > kMaxHandleBytes) {
      return absl::InvalidArgumentError("OpenDeviceHandoff: pools must be cuda-ipc handles");
    }
    if (p.bytes() < static_cast<uint64_t>(pool_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat("OpenDeviceHandoff: a ", p.bytes(), "-byte pool cannot hold ",
                                                     pool_bytes, " bytes of pages"));
    }
    target.pools.push_back({p.kind(), p.handle(), p.bytes(), p.process()});
  }
  // Enough pages for the prompt (pages.size() <= 2^31 from the proto, page_tokens <= 2^16).
  if (static_cast<int64_t>(answer.pages_size()) * answer.page_tokens() < header.prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("OpenDeviceHandoff: ", answer.pages_size(), " pages of ",
                                                   answer.page_tokens(), " tokens cannot hold ",
                                                   header.prompt_tokens, " prompt tokens"));
  }
  for (int32_t page : answer.pages()) {
    if (page < 0 || page >= answer.pool_pages()) {
      return absl::InvalidArgumentError(absl::StrCat("OpenDeviceHandoff: page ", page, " outside the pool"));
    }
  }
  target.pages.assign(answer.pages().begin(), answer.pages().end());
  return target;
}

int64_t RowOffset(const DeviceTarget& target, int64_t row_bytes, int64_t token) {
  const int64_t page = target.pages[token / target.page_tokens];
  return (page * target.page_tokens + token % target.page_tokens) * row_bytes;
}

CudaIpcTransport::CudaIpcTransport(kernels::Backend& backend, GrpcTransport& control, TransportOffer self,
                                   GrpcTransport::CredentialsProvider credentials,
                                   GrpcTransport::CallDecorator decorate_call, TargetFetcher fetch)
    : backend_(backend), control_(control), self_(std::move(self)), fetch_(std::move(fetch)) {
  if (!fetch_) fetch_ = OpenDeviceHandoffRpc(credentials, decorate_call);
}

size_t CudaIpcTransport::open_peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peers_.size();
}

void CudaIpcTransport::Forget(const std::string& target) {
  std::lock_guard<std::mutex> lock(mu_);
  peers_.erase(target);
}

absl::StatusOr<std::shared_ptr<const CudaIpcTransport::Peer>> CudaIpcTransport::OpenPeer(
    const std::string& target, const DeviceTarget& device, const HandoffHeader& header) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(target);
    // Reused only for the same export of the same shape: the rows are addressed with this
    // answer's geometry, so memory opened for another one must not be written through.
    if (it != peers_.end() && it->second->export_id == device.export_id &&
        it->second->pools.size() == device.pools.size()) {
      bool same_shape = true;
      for (const kernels::Tensor& pool : it->second->pools) {
        same_shape = same_shape && pool.dtype == header.cache_dtype && pool.ne[0] == header.latent_width &&
                     pool.ne[1] == device.page_tokens && pool.ne[2] == device.pool_pages;
      }
      if (same_shape) return it->second;
    }
  }
  auto peer = std::make_shared<Peer>();
  peer->export_id = device.export_id;
  for (const auto& handle : device.pools) {
    ASSIGN_OR_RETURN(kernels::Tensor pool,
                     backend_.OpenMemory(handle, header.cache_dtype,
                                         {header.latent_width, device.page_tokens, device.pool_pages, 1}));
    if (static_cast<int64_t>(pool.row_bytes()) != header.row_bytes) {
      return absl::FailedPreconditionError("opened pool rows differ from the header's row size");
    }
    peer->pools.push_back(std::move(pool));
  }
  std::lock_guard<std::mutex> lock(mu_);
  peers_[target] = peer;  // replaces (and, once unused, closes) an older export of a restarted peer
  return std::shared_ptr<const Peer>(peer);
}

absl::StatusOr<std::unique_ptr<CacheSender>> CudaIpcTransport::Open(const std::string& target,
                                                                    const HandoffHeader& header, absl::Time deadline) {
  internal::v1::OpenDeviceHandoffRequest request;
  request.set_lease_id(header.lease_id);
  request.set_transport("cuda-ipc");
  request.set_host_id(self_.host_id);
  request.set_gpu_uuid(self_.gpu_uuid);
  ASSIGN_OR_RETURN(internal::v1::OpenDeviceHandoffResponse answer, fetch_(target, request, deadline));
  ASSIGN_OR_RETURN(DeviceTarget device, ValidateDeviceTarget(answer, header));
  auto peer = OpenPeer(target, device, header);
  if (!peer.ok()) {
    Forget(target);
    return peer.status();
  }
  HandoffHeader control_header = header;
  control_header.transport = "cuda-ipc";
  ASSIGN_OR_RETURN(std::unique_ptr<CacheSender> control, control_.Open(target, control_header, deadline));
  std::vector<kernels::Tensor> pools = (*peer)->pools;
  return std::unique_ptr<CacheSender>(new CudaIpcSender(backend_, std::move(control), *peer, std::move(pools),
                                                        std::move(device), control_header,
                                                        [this, target] { Forget(target); }));
}

std::string SelectingTransport::name() const {
  std::string name = grpc_->name();
  if (ipc_ != nullptr) name += "+cuda-ipc";
  if (nccl_ != nullptr) name += "+nccl";
  return name;
}

absl::StatusOr<std::unique_ptr<CacheSender>> SelectingTransport::Open(const std::string& target,
                                                                      const HandoffHeader& header, absl::Time deadline) {
  if (header.transport == "cuda-ipc" && ipc_ != nullptr) return ipc_->Open(target, header, deadline);
  if (header.transport == "nccl" && nccl_ != nullptr) return nccl_->Open(target, header, deadline);
  HandoffHeader bytes_header = header;
  bytes_header.transport.clear();
  return grpc_->Open(target, bytes_header, deadline);
}

}  // namespace latentserve::transfer
