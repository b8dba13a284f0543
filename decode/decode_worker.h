// The decode worker's engine side (no gRPC): leases, cache admission, continuous batching.
//
// Life of a request: ReserveLease reserves cache pages for the tokens the router asks (the
// prompt plus some room, or prompt + max_tokens with --decode-pages upfront; the lease ends at
// its deadline unless Decode has started). A handoff (transfer::CacheSink) imports
// latent rows and KDA state, checking every chunk; after its End the sequence is ready.
// Decode admits it into the batch: one scheduler thread runs Model::Forward over every
// decoding sequence, one token each, and samples per request; each step first grows every
// sequence by the page its next token needs, and one that finds none stops (kCacheFull).
// Pages return to the cache on finish, error, cancel and lease expiry.
#pragma once

#include <atomic>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cache/prefix_cache.h"
#include "cache/sequence_table.h"
#include "kernels/cpu/thread_pool.h"
#include "model/decode_graphs.h"
#include "model/latent_cache.h"
#include "model/model.h"
#include "model/sampler.h"
#include "serving/metrics.h"
#include "transfer/nccl_receiver.h"
#include "transfer/transport.h"

namespace latentserve::decode {

// kCacheFull: the cache had no page for the next token (pages grow during decode): the
// service reports it as LENGTH and says why in its log and metrics.
enum class FinishReason { kLength, kStopToken, kCacheFull };

struct DecodeParams {
  std::string lease_id;
  std::string caller;  // who asks (serving::ClientIdentity); must be the lease's owner
  model::SamplingParams sampling;
  int64_t max_new_tokens = 0;          // tokens after the first; >= 1
  std::vector<int32_t> stop_token_ids;  // EOS included by the caller unless ignore_eos
};

// Prefix reuse on this worker (cache/prefix_cache.h; docs/serving.md "Prefix reuse").
struct DecodePrefixOptions {
  int64_t budget_bytes = 0;                 // prefix pages + KDA checkpoints kept; 0: no prefix cache
  int64_t checkpoint_interval_tokens = 0;   // checkpoints inside prompts (prefilled here or handed off); 0: ends only
  int64_t local_prefill_max_tokens = 2048;  // uncached rest of a prompt prefilled here, without a handoff
  int64_t chunk_tokens = 512;               // chunk of that local prefill
};

// What a lease starts from (ReserveLease with the prompt's tokens).
struct LeaseReuse {
  int64_t cached_tokens = 0;   // prompt tokens resumed from the prefix cache (not computed)
  bool local_prefill = false;  // the rest is prefilled here in Decode: no handoff; Decode streams the first token
  // A prompt that arrives by handoff and is kept: the prefill worker sends the KDA state at every
  // multiple of this past cached_tokens (checkpoints kept with the prompt); 0: its end only.
  int64_t checkpoint_interval_tokens = 0;
};

struct DecodeStats {
  int64_t pages_free = 0;
  int64_t pages_total = 0;
  int64_t page_tokens = 0;
  int64_t leases_active = 0;     // reserved, not yet decoding
  int64_t sequences_active = 0;  // in the batch
  int64_t steps = 0;             // batched forward steps run
  double step_seconds = 0;       // their forwards (the tokens, or for sampled rows the logits, on the host included)
  double sample_seconds = 0;     // sampling their logits on the host (none when every row is greedy)
  int64_t leases_expired = 0;    // reservations whose cache did not arrive before their deadline
  int64_t cache_full_stops = 0;  // sequences stopped early: no free page for their next token
  int64_t handoffs_admitted = 0;   // caches that arrived complete
  int64_t handoff_host_bytes = 0;  // bytes those handoffs copied through host memory here (0 in process)
  bool draining = false;
  cache::PrefixCacheStats prefix;  // the prefix cache (all zero when it is off)
  int64_t local_prefills = 0;      // prompts (or their uncached rest) prefilled here
  int64_t prefix_reads = 0;        // cached prefixes read by prefill workers (ReadPrefix)
  int64_t prefix_read_bytes = 0;   // their payload bytes
};

// What a prefill worker on this host needs to write a lease's rows into this worker's pages
// (DecodeWorker.OpenDeviceHandoff).
struct DeviceExport {
  std::string export_id;  // new for each process's export
  std::vector<kernels::Backend::MemoryHandle> pools;  // per MLA ordinal
  int64_t page_tokens = 0;
  int64_t pool_pages = 0;
  int64_t row_bytes = 0;
  DType dtype = DType::kF16;
  std::vector<int32_t> pages;  // the lease's page table
};

class DecodeWorker : public transfer::CacheSink {
 public:
  // `max_lease_ttl`: the longest a lease lives without Decode, whatever ttl a caller asks for
  // (ReserveLease and RenewLease clamp to it).
  DecodeWorker(const model::Model& model, model::LatentCache& cache, std::string fingerprint,
               absl::Duration max_lease_ttl = absl::Minutes(5), const DecodePrefixOptions& prefix = {});
  ~DecodeWorker() override;

  // Reserves pages for `tokens` (prompt + max_tokens) until `ttl` (at most max_lease_ttl)
  // passes without Decode.
  // ResourceExhausted when the cache is too full, Unavailable while draining. The lease id is
  // "lease-" + 128 random bits from the kernel (unguessable: it is the handoff's capability)
  // and the lease belongs to `owner` (the reserving caller's identity): only the owner may
  // release, renew or decode it.
  //
  // `prompt` (optional, at most `tokens` ids): the prompt's tokens, for the prefix cache. When it
  // starts with a cached prefix, the lease's sequence resumes from it; when the rest is short
  // (local_prefill_max_tokens) Decode prefills it here and no handoff comes (`reuse` says so).
  absl::StatusOr<std::string> ReserveLease(const std::string& request_id, int64_t tokens, absl::Duration ttl,
                                           const std::string& fingerprint, const std::string& owner = "",
                                           absl::Span<const int32_t> prompt = {}, LeaseReuse* reuse = nullptr,
                                           bool keep_prompt = true);
  // NotFound when the lease is not held (expired, released, never existed); PermissionDenied
  // when `caller` is not its owner; OK (nothing to do) once Decode has taken it over.
  absl::Status ReleaseLease(const std::string& lease_id, const std::string& caller = "");
  // Moves the lease's deadline to at least now + ttl. Aborted when it is no longer held,
  // PermissionDenied when `caller` is not its owner; OK (nothing to do) once Decode has taken
  // it over.
  absl::Status RenewLease(const std::string& lease_id, absl::Duration ttl, const std::string& caller = "");

  absl::StatusOr<std::unique_ptr<transfer::CacheReceiver>> BeginHandoff(
      const transfer::HandoffHeader& header) override;

  // Runs a ready lease to the end. `on_tokens` streams new tokens (false: the caller is
  // gone); `cancelled` is polled. Returns why generation ended, or the error.
  absl::StatusOr<FinishReason> Decode(const DecodeParams& params,
                                      const std::function<bool(const std::vector<int32_t>&)>& on_tokens,
                                      const std::function<bool()>& cancelled);

  // For a device transport (decode/device_export.cc): the page table of a lease that awaits
  // its cache, and for "cuda-ipc" the pools, exported on first use. For "nccl" no pools: the
  // bootstrap `nccl` is validated, its communicator starts forming in the background and the
  // lease's handoff will receive on it. FailedPrecondition when the peer is on another host
  // (CUDA IPC), the pools cannot be exported, this worker has no NCCL, or the lease shares
  // pages; InvalidArgument for a bad bootstrap; Aborted for an unknown lease.
  absl::StatusOr<DeviceExport> ExportForHandoff(const std::string& lease_id, const std::string& transport,
                                                const std::string& peer_host_id,
                                                const internal::v1::NcclBootstrap& nccl = {});
  // Takes NCCL handoffs through `nccl` (owned by the caller, outliving this worker). Call
  // before serving.
  void EnableNccl(transfer::NcclReceiveSide* nccl) { nccl_ = nccl; }

  // DecodeWorker.ReadPrefix (decode/prefix_read.cc): the cached prefix lease `lease_id`
  // resumed from (its rows and the KDA state at its end), sent through a sender that `open`
  // makes for the read's header, chunk by chunk under the backend lock. Aborted when the lease
  // is not held; FailedPrecondition when it resumed no prefix for a handoff or its cache arrived.
  using PrefixSenderFactory =
      std::function<absl::StatusOr<std::unique_ptr<transfer::CacheSender>>(const transfer::HandoffHeader&)>;
  absl::StatusOr<int64_t> SendLeasePrefix(const std::string& lease_id, const std::string& fingerprint,
                                          const std::string& request_id, const PrefixSenderFactory& open);

  DecodeStats Stats() const;
  // Sessions (the router's CreateSession): pins the prefix cache entry holding exactly
  // `tokens` under `session_id` (NotFound when none does: it was not kept or was evicted) and
  // returns the bytes it holds. A session id pins one entry; an entry may be pinned by several.
  absl::StatusOr<int64_t> PinSession(const std::string& session_id, absl::Span<const int32_t> tokens);
  // Drops the session's pin; the entry goes with the last pin on it. OK when none is held.
  void DropSession(const std::string& session_id);
  // Hashes of the page-aligned token blocks of the cached prefixes (common/token_hash.h).
  std::vector<uint64_t> PrefixBlockHashes(int64_t max_hashes) const;
  void StartDrain();
  const std::string& fingerprint() const { return fingerprint_; }
  int64_t max_context_tokens() const { return cache_.total_pages() * cache_.page_tokens(); }

 private:
  struct Slot;
  // Why a handoff no longer owns its slot (handoff_receiver.cc).
  static absl::Status LostLease(const Slot& slot);
  // The pages of a lease that awaits its cache, none shared (device_export.cc; takes mu_).
  absl::StatusOr<std::vector<int32_t>> ExclusiveLeasePages(const std::string& lease_id);

  void SchedulerLoop();
  // Drops the sequences (their pages back to the cache) of slots whose decoding ended but whose
  // Decode call has not yet run FreeSlot: it needs backend_mu_, which the scheduler may take
  // again first, step after step. Call with backend_mu_ held (not mu_). True if any went.
  bool ReleaseEndedSequences();
  // Adds one step's times (mu_ held). When the batch changed after at least kStepLogMinWindow,
  // or kStepLogInterval passed since the window began, returns the fields of a decode_steps log
  // line (the window that ended), else nothing.
  std::vector<std::pair<std::string, serving::LogValue>> CountStep(absl::Time start, absl::Time end,
                                                                   absl::Time sampled, int64_t batch);
  static constexpr absl::Duration kStepLogInterval = absl::Seconds(10);
  static constexpr absl::Duration kStepLogMinWindow = absl::Seconds(1);
  void ReaperLoop();
  // Marks a slot done and returns its pages (takes backend_mu_; call without mu_).
  void FreeSlot(const std::shared_ptr<Slot>& slot);
  // prefix_reuse.cc: the lease's starting point (backend_mu_ held) ...
  absl::Status StartFromPrefix(Slot& slot, absl::Span<const int32_t> prompt, int64_t tokens, LeaseReuse* reuse);
  // ... the local prefill of a lease that starts here, and keeping a finished prompt.
  absl::Status PrefillHere(Slot& slot, const DecodeParams& params, const std::function<bool()>& cancelled);
  void KeepPrompt(Slot& slot, std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints);
  absl::Status InsertPrompt(Slot& slot, std::vector<std::unique_ptr<cache::KdaCheckpoint>> checkpoints);
  // Keeps a prompt whose cache arrived by handoff, with the checkpoints that came with it and one
  // at its end (backend_mu_ held; the slot not decoding: its sequence must still end at the prompt).
  void KeepArrived(Slot& slot);
  // The checkpoints a lease whose prompt arrives by handoff asks for (prefix_reuse.cc).
  void PlanHandoffCheckpoints(Slot& slot, int64_t prompt_tokens, LeaseReuse& start);
  // Erases a prefix entry unless a session still pins it (backend_mu_ held).
  void ReleasePinLocked(int64_t entry);

  const model::Model& model_;
  model::LatentCache& cache_;
  cache::SequenceTable sequences_{cache_, model_.kda_layout()};  // every slot's sequence; pages taken under backend_mu_
  const DecodePrefixOptions prefix_options_;
  cache::PrefixCache prefix_{sequences_, {prefix_options_.budget_bytes, prefix_options_.checkpoint_interval_tokens}};
  model::DecodeGraphs graphs_{model_, cache_};  // the scheduler's steps, replayed (under backend_mu_)
  const std::string fingerprint_;
  const absl::Duration max_lease_ttl_;

  // Serialises use of the backend (Forward, imports, resets): one stream of work.
  std::mutex backend_mu_;
  std::mutex export_mu_;  // export_id_, exported_pools_ (a leaf lock)
  std::string export_id_;
  std::vector<kernels::Backend::MemoryHandle> exported_pools_;
  transfer::NcclReceiveSide* nccl_ = nullptr;  // NCCL handoffs (EnableNccl); none: refused
  mutable std::mutex mu_;
  std::condition_variable cv_;  // slot state changes; scheduler wake-ups
  std::map<std::string, std::shared_ptr<Slot>> slots_;  // by lease id
  static constexpr size_t kMaxSessionPins = 65536;  // bound on session_pins_ whatever the callers do
  std::map<std::string, int64_t> session_pins_;         // session id -> pinned prefix entry (backend_mu_)
  int64_t steps_ = 0;
  double step_seconds_ = 0, sample_seconds_ = 0;
  // Samples a step's rows in parallel (made at the first step of several sequences; the
  // scheduler thread only). A batch's rows one after another took ~0.2-1 ms each greedy and
  // ~1-2 ms sampled at a 163,840-entry vocabulary (docs/benchmarks.md).
  std::unique_ptr<kernels::cpu::ThreadPool> sample_pool_;
  // Steps of one batch size since the last decode_steps log line (CountStep).
  struct StepWindow {
    absl::Time since = absl::InfinitePast();
    int64_t batch = 0, steps = 0;
    double step_seconds = 0, sample_seconds = 0;
  } step_window_;
  int64_t leases_expired_ = 0;
  int64_t cache_full_stops_ = 0;
  int64_t handoffs_admitted_ = 0;
  int64_t handoff_host_bytes_ = 0;
  int64_t local_prefills_ = 0;
  int64_t prefix_reads_ = 0;
  // KDA checkpoint bytes that leases may still receive by handoff (held by each lease until it
  // goes): every lease plans its checkpoints in what the prefix-cache budget leaves after these.
  std::shared_ptr<std::atomic<int64_t>> handoff_checkpoint_bytes_ = std::make_shared<std::atomic<int64_t>>(0);
  int64_t prefix_reads_active_ = 0;  // ReadPrefix streams running (at most kMaxPrefixReads)
  int64_t prefix_read_bytes_ = 0;
  bool draining_ = false;
  bool stopping_ = false;
  std::thread scheduler_;
  std::thread reaper_;
};

}  // namespace latentserve::decode
