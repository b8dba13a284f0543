#include "transfer/nccl_receiver.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace latentserve::transfer {
namespace {

// One NCCL handoff: receives announced chunks into the lease's pages, then lets the assembler
// verify them (checksum over what landed) and account them like any device-written rows.
class NcclReceiver : public CacheReceiver {
 public:
  NcclReceiver(NcclDataPlane& plane, CommCache& comms, absl::Duration chunk_timeout,
               std::unique_ptr<CacheReceiver> assembler, const HandoffHeader& header, AssemblyTarget target,
               std::function<absl::Status()> check_live, std::string comm_key)
      : plane_(plane), comms_(comms), chunk_timeout_(chunk_timeout), assembler_(std::move(assembler)),
        header_(header), target_(target), check_live_(std::move(check_live)), comm_key_(std::move(comm_key)),
        // One chunk at a time: the control stream is read by this thread, which waits for each
        // chunk before it reads the next announcement.
        ledger_(static_cast<int64_t>(header.mla_layers.size()), header.prompt_tokens, header.row_bytes, 1) {}

  ~NcclReceiver() override {
    if (!ended_) comms_.PeerDied(comm_key_);  // dropped mid-handoff: the pair's state is unknown
  }

  void WatchCancelled(std::function<bool()> cancelled) override { cancelled_ = std::move(cancelled); }

  absl::Status OnLatentRows(const LatentRows& chunk) override {
    return absl::InvalidArgumentError("latent rows as bytes in a handoff whose header named NCCL");
  }
  absl::Status OnKdaState(const KdaStateBytes& chunk) override { return assembler_->OnKdaState(chunk); }

  absl::Status OnRowsWritten(const RowsWritten& announced) override {
    RETURN_IF_ERROR(check_live_());
    // Order, range and the in-flight bound before anything is posted into our pages.
    RETURN_IF_ERROR(ledger_.Post(announced.mla_index, announced.first_token, announced.token_count));
    absl::Status received = Receive(announced);
    if (!received.ok()) {
      comms_.PeerDied(comm_key_);  // a group half matched (or never) leaves the pair out of step
      return received;
    }
    RETURN_IF_ERROR(ledger_.Complete(announced.mla_index, announced.first_token, announced.token_count));
    return assembler_->OnRowsWritten(announced);
  }

  absl::Status Finish(const HandoffEnd& end) override {
    if (absl::Status complete = ledger_.CheckComplete(); !complete.ok()) {
      comms_.PeerDied(comm_key_);
      ended_ = true;
      return complete;
    }
    absl::Status admitted = assembler_->Finish(end);
    ended_ = admitted.ok();  // on an error the stream's caller aborts us
    return admitted;
  }

  void Abort(const absl::Status& why) override {
    ended_ = true;
    comms_.PeerDied(comm_key_);
    assembler_->Abort(why);
  }

 private:
  absl::Status Receive(const RowsWritten& announced) {
    ASSIGN_OR_RETURN(std::shared_ptr<NcclComm> comm, comms_.Await(comm_key_));
    const cache::PagePool& pool = target_.table->pool();
    ASSIGN_OR_RETURN(std::vector<NcclRun> runs, SplitRuns(announced.first_token, announced.token_count,
                                                          header_.page_tokens, pool.page_tokens()));
    CommCache::Guard guard = comms_.Watch(comm_key_, absl::Now() + chunk_timeout_);
    std::unique_ptr<NcclPosted> posted;
    {
      // Posted with the worker's other device work (its stream), while the lease holds the pages.
      std::lock_guard<std::mutex> lock(*target_.device_mu);
      RETURN_IF_ERROR(check_live_());
      ASSIGN_OR_RETURN(posted, plane_.Recv(*comm, pool.backend(), pool.pool(announced.mla_index),
                                           target_.sequence->pages(), runs, kNcclSenderRank));
    }
    absl::Status waited = WaitPosted(*posted, guard, cancelled_);
    if (waited.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::DeadlineExceededError(absl::StrCat("NCCL chunk [", announced.first_token, ", +",
                                                      announced.token_count, ") of MLA ordinal ", announced.mla_index,
                                                      " did not arrive within ", absl::FormatDuration(chunk_timeout_),
                                                      "; communicator ", comm_key_, " aborted"));
    }
    return waited;
  }

  NcclDataPlane& plane_;
  CommCache& comms_;
  const absl::Duration chunk_timeout_;
  std::unique_ptr<CacheReceiver> assembler_;
  const HandoffHeader header_;
  const AssemblyTarget target_;
  const std::function<absl::Status()> check_live_;
  const std::string comm_key_;
  NcclChunkLedger ledger_;
  std::function<bool()> cancelled_;
  bool ended_ = false;
};

}  // namespace

NcclReceiveSide::NcclReceiveSide(NcclDataPlane& plane, NcclReceiveOptions options)
    : plane_(plane), options_(options),
      comms_([&plane](const NcclBootstrap& bootstrap) { return plane.Join(bootstrap, kNcclReceiverRank); },
             options.watchdog_poll) {}

absl::StatusOr<NcclBootstrap> NcclReceiveSide::Prepare(const internal::v1::NcclBootstrap& message) {
  ASSIGN_OR_RETURN(NcclBootstrap bootstrap, ValidateNcclBootstrap(message));
  if (bootstrap.reuse) {
    if (!comms_.Has(bootstrap.comm_key)) {
      return absl::FailedPreconditionError(absl::StrCat("no NCCL communicator ", bootstrap.comm_key,
                                                        " on this decode worker (dropped after a failure or a "
                                                        "restart); send a fresh bootstrap"));
    }
    return bootstrap;
  }
  // A fresh id under a key we hold: the sender lost its communicator; ours is stale. So are
  // this sender's older pairs with us (keys "<sender process>|<target>|<epoch>": it keeps one
  // per target, and bootstraps afresh only once it has dropped the previous one).
  if (comms_.Has(bootstrap.comm_key)) comms_.PeerDied(bootstrap.comm_key);
  if (const size_t bar = bootstrap.comm_key.rfind('|'); bar != std::string::npos) {
    comms_.DropOthersWithPrefix(bootstrap.comm_key.substr(0, bar + 1), bootstrap.comm_key);
  }
  KeepNvlsOff();
  RETURN_IF_ERROR(comms_.Prepare(bootstrap));
  return bootstrap;
}

std::unique_ptr<CacheReceiver> NcclReceiveSide::Wrap(std::unique_ptr<CacheReceiver> assembler,
                                                     const HandoffHeader& header, AssemblyTarget target,
                                                     std::function<absl::Status()> check_live, std::string comm_key) {
  return std::make_unique<NcclReceiver>(plane_, comms_, options_.chunk_timeout, std::move(assembler), header, target,
                                        std::move(check_live), std::move(comm_key));
}

}  // namespace latentserve::transfer
