#include "transfer/nccl_sender.h"

#include <unistd.h>

#include <algorithm>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "transfer/checksum.h"
#include "transfer/cuda_ipc_transport.h"

namespace latentserve::transfer {
namespace {

// One handoff: each chunk announced on the control stream, then its rows sent over NCCL.
class NcclSender : public DeviceCacheSender {
 public:
  NcclSender(NcclDataPlane& plane, CommCache& comms, std::shared_ptr<NcclComm> comm, std::string comm_key,
             std::unique_ptr<CacheSender> control, int64_t dst_page_tokens, const HandoffHeader& header,
             absl::Duration chunk_timeout, absl::Time deadline, std::function<void()> forget_peer)
      : DeviceCacheSender(std::move(control), header, std::move(forget_peer)), plane_(plane), comms_(comms),
        comm_(std::move(comm)), comm_key_(std::move(comm_key)), dst_page_tokens_(dst_page_tokens),
        chunk_timeout_(chunk_timeout), deadline_(deadline) {}

  std::string transport() const override { return "nccl"; }
  void Cancel() override {
    control_->Cancel();
    // The receiver drops its communicator when the stream ends early: drop ours as well.
    (void)Failed(absl::CancelledError("handoff cancelled"));
  }

 private:
  absl::Status SendRows(const LatentRows& chunk) override {
    if (!chunk.view || chunk.view->pool == nullptr) return absl::InternalError("the NCCL sender takes views");
    const cache::LatentRowsView& view = *chunk.view;
    const int64_t first = chunk.first_token, count = chunk.token_count;
    if (chunk.mla_index < 0 || chunk.mla_index >= static_cast<int64_t>(header_.mla_layers.size()) || first < 0 ||
        count <= 0 || count > header_.prompt_tokens - first) {
      return absl::InvalidArgumentError("latent rows outside the handoff");
    }
    const cache::PagePool& pool = *view.pool;
    if (static_cast<int64_t>(pool.row_bytes()) != header_.row_bytes || pool.page_tokens() != header_.page_tokens) {
      return absl::FailedPreconditionError("rows of another size or page size than the header's");
    }
    if (view.mla_index != chunk.mla_index) return absl::InternalError("a chunk's view is of another layer");
    RETURN_IF_ERROR(pool.CheckRange(view.mla_index, view.pages, first, count));
    ASSIGN_OR_RETURN(std::vector<NcclRun> runs, SplitRuns(first, count, pool.page_tokens(), dst_page_tokens_));
    // The receiver compares this with what lands in its pages (hashed there on its GPU).
    ASSIGN_OR_RETURN(uint64_t checksum, PagedRowsChecksum(pool, view.mla_index, view.pages, first, count));
    // Announced first: the receiver posts its receives when it reads this, and our sends
    // complete only once it has.
    RETURN_IF_ERROR(control_->SendRowsWritten({chunk.mla_index, first, count, checksum}));
    const absl::Time start = absl::Now();
    CommCache::Guard guard = comms_.Watch(comm_key_, std::min(start + chunk_timeout_, deadline_));
    ASSIGN_OR_RETURN(std::unique_ptr<NcclPosted> posted, plane_.Send(*comm_, pool.backend(), pool.pool(view.mla_index),
                                                                     view.pages, runs, kNcclReceiverRank));
    absl::Status sent = WaitPosted(*posted, guard, {});
    if (sent.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(absl::StrCat("NCCL chunk [", first, ", +", count, ") of MLA ordinal ",
                                                      chunk.mla_index, " was not received in time; communicator ",
                                                      comm_key_, " aborted"));
    }
    RETURN_IF_ERROR(sent);
    device_copy_time_ += absl::Now() - start;
    device_bytes_ += count * header_.row_bytes;
    return absl::OkStatus();
  }

  NcclDataPlane& plane_;
  CommCache& comms_;
  std::shared_ptr<NcclComm> comm_;
  const std::string comm_key_;
  const int64_t dst_page_tokens_;
  const absl::Duration chunk_timeout_;
  const absl::Time deadline_;
};

std::string ProcessKey() {
  char host[64] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device random;
  return absl::StrCat(host, ":", ::getpid(), ":", random());
}

}  // namespace

NcclTransport::NcclTransport(CacheTransport& control, TransportOffer self, NcclDataPlane& plane,
                             DeviceTargetFetcher fetch, NcclSendOptions options)
    : control_(control), self_(std::move(self)), plane_(plane), fetch_(std::move(fetch)), options_(options),
      self_key_(ProcessKey()),
      comms_([&plane](const NcclBootstrap& bootstrap) { return plane.Join(bootstrap, kNcclSenderRank); },
             options.watchdog_poll) {}

size_t NcclTransport::open_peers() const { return comms_.size(); }

void NcclTransport::Forget(const std::string& target) {
  std::string comm_key;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(target);
    if (it == peers_.end()) return;
    comm_key = it->second.comm_key;
    peers_.erase(it);
  }
  comms_.PeerDied(comm_key);
}

absl::StatusOr<NcclBootstrap> NcclTransport::Fresh(const std::string& target) {
  NcclBootstrap bootstrap;
  ASSIGN_OR_RETURN(bootstrap.unique_id, plane_.NewUniqueId());
  uint64_t epoch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    epoch = next_epoch_++;
  }
  bootstrap.comm_key = absl::StrCat(self_key_, "|", target.substr(0, 128), "|", epoch);  // <= 256 bytes
  bootstrap.init_timeout = options_.init_timeout;
  return bootstrap;
}

absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> NcclTransport::Ask(const std::string& target,
                                                                           const HandoffHeader& header,
                                                                           const NcclBootstrap& bootstrap,
                                                                           absl::Time deadline) {
  internal::v1::OpenDeviceHandoffRequest request;
  request.set_lease_id(header.lease_id);
  request.set_transport("nccl");
  request.set_host_id(self_.host_id);
  request.set_gpu_uuid(self_.gpu_uuid);
  *request.mutable_nccl() = ToProto(bootstrap);
  return fetch_(target, request, deadline);
}

absl::StatusOr<std::unique_ptr<CacheSender>> NcclTransport::Open(const std::string& target,
                                                                 const HandoffHeader& header, absl::Time deadline) {
  KeepNvlsOff();
  HandoffHeader nccl_header = header;
  nccl_header.transport = "nccl";
  std::optional<NcclBootstrap> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(target);
    if (it != peers_.end()) held = it->second;
  }
  NcclBootstrap bootstrap;
  absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> answer;
  if (held && comms_.Has(held->comm_key)) {
    bootstrap = *held;
    bootstrap.reuse = true;
    answer = Ask(target, nccl_header, bootstrap, deadline);
    // The decode worker lost it (a failed handoff there, a restart): start a fresh pair.
    if (answer.status().code() == absl::StatusCode::kFailedPrecondition) {
      Forget(target);
      held.reset();
    }
  } else if (held) {
    Forget(target);  // aborted by the watchdog since
    held.reset();
  }
  if (!held) {
    ASSIGN_OR_RETURN(bootstrap, Fresh(target));
    answer = Ask(target, nccl_header, bootstrap, deadline);
  }
  RETURN_IF_ERROR(answer.status());
  // From here the decode worker forms (or holds) the communicator: any failure drops ours.
  auto fail = [&](absl::Status status) {
    Forget(target);
    comms_.PeerDied(bootstrap.comm_key);
    return status;
  };
  absl::StatusOr<DeviceTarget> device = ValidateDeviceTarget(*answer, nccl_header);
  if (!device.ok()) return fail(device.status());
  bootstrap.reuse = false;
  absl::StatusOr<std::shared_ptr<NcclComm>> comm = comms_.Get(bootstrap);  // joins as rank 0, or reuses
  if (!comm.ok()) return fail(comm.status());
  {
    std::lock_guard<std::mutex> lock(mu_);
    peers_[target] = bootstrap;
  }
  absl::StatusOr<std::unique_ptr<CacheSender>> control = control_.Open(target, nccl_header, deadline);
  if (!control.ok()) return fail(control.status());
  return std::unique_ptr<CacheSender>(new NcclSender(plane_, comms_, *std::move(comm), bootstrap.comm_key,
                                                     *std::move(control), device->page_tokens, nccl_header,
                                                     options_.chunk_timeout, deadline,
                                                     [this, target] { Forget(target); }));
}

}  // namespace latentserve::transfer
