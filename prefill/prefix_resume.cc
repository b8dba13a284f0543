// PrefillWorker's prefix read (docs/serving.md "Prefix reuse"): a job whose lease resumed a
// cached prefix on the decode worker reads that prefix's latent rows and the KDA state at its
// end (DecodeWorker.ReadPrefix) into its own sequence, so only the rest is computed. The read
// is a handoff in the other direction and goes through the same HandoffAssembler checks
// (model, layout, order, sizes, XXH64, completeness); any failure leaves the sequence empty
// and the job computes the whole prompt (the same answer, slower).
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "prefill/prefill_worker.h"
#include "transfer/handoff_assembler.h"

namespace latentserve::prefill {
namespace {

// Receives the one read this job asked for into `sequence`.
class PrefixSink : public transfer::CacheSink {
 public:
  PrefixSink(const PrefillJob& job, const transfer::LocalLayout& local, cache::SequenceTable& table,
             model::Sequence& sequence, std::mutex& device_mu, std::function<absl::Status()> check_live)
      : job_(job), local_(local), table_(table), sequence_(sequence), device_mu_(device_mu),
        check_live_(std::move(check_live)) {}

  absl::StatusOr<std::unique_ptr<transfer::CacheReceiver>> BeginHandoff(const transfer::HandoffHeader& header) override {
    RETURN_IF_ERROR(transfer::CheckHeader(header, local_));
    if (header.lease_id != job_.lease_id || header.prompt_tokens != job_.cached_tokens || header.cached_tokens != 0) {
      return absl::InvalidArgumentError(absl::StrCat("prefix read answered with ", header.prompt_tokens, " tokens of lease ",
                                                     header.lease_id, "; asked for ", job_.cached_tokens, " of ",
                                                     job_.lease_id));
    }
    if (begun_) return absl::FailedPreconditionError("a second header in one prefix read");
    begun_ = true;
    transfer::AssemblyHooks hooks;
    hooks.check_live = check_live_;
    hooks.admit = [this](const transfer::HandoffEnd&, const transfer::AssemblyStats&,
                         transfer::ArrivedCheckpoints&) -> absl::Status {
      std::lock_guard<std::mutex> lock(device_mu_);
      RETURN_IF_ERROR(table_.Advance(sequence_, job_.cached_tokens));
      admitted_ = true;
      return absl::OkStatus();
    };
    hooks.aborted = [](const absl::Status&) {};
    transfer::AssemblyTarget target{&table_, &sequence_, &device_mu_};
    return std::unique_ptr<transfer::CacheReceiver>(new transfer::HandoffAssembler(header, target, std::move(hooks)));
  }
  bool admitted() const { return admitted_; }

 private:
  const PrefillJob& job_;
  const transfer::LocalLayout local_;
  cache::SequenceTable& table_;
  model::Sequence& sequence_;
  std::mutex& device_mu_;
  const std::function<absl::Status()> check_live_;
  bool begun_ = false;
  bool admitted_ = false;
};

}  // namespace

absl::Status PrefillWorker::LoadPrefix(const PrefillJob& job, model::Sequence& sequence,
                                       const std::function<bool()>& cancelled) {
  if (prefix_reader_ == nullptr || prefix_read_max_bytes_ <= 0) {
    return absl::FailedPreconditionError("this prefill worker reads no prefixes (--prefix-read-max-mib 0)");
  }
  // The read's size from our own layout (the header must match it): rows of every MLA layer
  // plus every KDA layer's state, compared without overflow (cached_tokens < prompt <= cache).
  const cache::PagePool& pool = sequences_.pool();
  const int64_t kda_bytes = sequences_.kda_layout().layers * (sequences_.kda_layout().layers > 0
                                                                  ? sequences_.kda_layout().layer_bytes()
                                                                  : 0);
  const int64_t row_bytes_all_layers = static_cast<int64_t>(pool.row_bytes()) * pool.mla_layers();
  if (kda_bytes > prefix_read_max_bytes_ || row_bytes_all_layers <= 0 ||
      job.cached_tokens > (prefix_read_max_bytes_ - kda_bytes) / row_bytes_all_layers) {
    return absl::ResourceExhaustedError(absl::StrCat("a prefix of ", job.cached_tokens,
                                                     " tokens exceeds --prefix-read-max-mib (",
                                                     prefix_read_max_bytes_ >> 20, " MiB)"));
  }
  absl::Status status = sequences_.Reserve(sequence, job.cached_tokens);
  if (status.ok()) {
    const absl::Time deadline = job.deadline;
    PrefixSink sink(job, {fingerprint_, &sequences_, model_.config().n_layers}, sequences_, sequence, device_mu_,
                    [&cancelled, deadline]() -> absl::Status {
                      if (cancelled()) return absl::CancelledError("request cancelled during its prefix read");
                      if (absl::Now() > deadline) return absl::DeadlineExceededError("deadline passed during the prefix read");
                      return absl::OkStatus();
                    });
    status = prefix_reader_->Read(job.decode_worker, {job.request_id, job.lease_id, fingerprint_}, sink, job.deadline);
    if (status.ok() && !sink.admitted()) status = absl::DataLossError("prefix read ended without its end message");
  }
  if (!status.ok()) sequences_.Reset(sequence);
  return status;
}

}  // namespace latentserve::prefill
