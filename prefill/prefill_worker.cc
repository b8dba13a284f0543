#include "prefill/prefill_worker.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "transfer/handoff_writer.h"

namespace latentserve::prefill {

PrefillWorker::PrefillWorker(const model::Model& model, model::LatentCache& cache,
                             transfer::CacheTransport& transport, std::string fingerprint, int64_t chunk_tokens)
    : model_(model), cache_(cache), sequences_(cache, model.kda_layout()), transport_(transport),
      staging_(cache.backend()), fingerprint_(std::move(fingerprint)),
      chunk_tokens_(chunk_tokens) {}

absl::StatusOr<PrefillResult> PrefillWorker::Run(const PrefillJob& job,
                                                 const std::function<void(const PrefillProgressEvent&)>& on_progress,
                                                 const std::function<bool()>& cancelled, bool* transfer_failed) {
  *transfer_failed = false;
  if (job.tokens.empty()) return absl::InvalidArgumentError("empty prompt");
  RETURN_IF_ERROR(model_.ValidateTokens(job.tokens));
  if (static_cast<int64_t>(job.tokens.size()) > max_context_tokens()) {
    // This worker's configuration, not the request, falls short: the router tries another.
    return absl::FailedPreconditionError(absl::StrCat("prompt of ", job.tokens.size(),
                                                      " tokens exceeds this prefill worker's ", max_context_tokens(),
                                                      "-token cache (--cache-tokens)"));
  }
  const double cost = static_cast<double>(job.tokens.size()) * static_cast<double>(job.tokens.size());
  std::unique_lock<std::mutex> lock(mu_);
  if (draining_) return absl::UnavailableError("prefill worker is draining");
  jobs_active_++;
  outstanding_cost_ += cost;
  absl::Status queue_status;
  while (busy_) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
    if (cancelled()) {
      queue_status = absl::CancelledError("request cancelled while queued for prefill");
      break;
    }
    if (absl::Now() > job.deadline) {
      queue_status = absl::DeadlineExceededError("deadline passed while queued for prefill");
      break;
    }
  }
  absl::StatusOr<PrefillResult> result = absl::UnknownError("prefill did not run");
  if (!queue_status.ok()) {
    result = queue_status;
  } else {
    busy_ = true;
    lock.unlock();
    result = RunLocked(job, on_progress, cancelled, transfer_failed);
    lock.lock();
    busy_ = false;
  }
  jobs_active_--;
  outstanding_cost_ -= cost;
  if (jobs_active_ == 0) outstanding_cost_ = 0;  // no drift from float sums
  cv_.notify_all();
  return result;
}

absl::StatusOr<PrefillResult> PrefillWorker::RunLocked(
    const PrefillJob& job, const std::function<void(const PrefillProgressEvent&)>& on_progress,
    const std::function<bool()>& cancelled, bool* transfer_failed) {
  const model::ModelConfig& config = model_.config();
  const int64_t prompt_tokens = static_cast<int64_t>(job.tokens.size());
  transfer::HandoffHeader header;
  header.request_id = job.request_id;
  header.lease_id = job.lease_id;
  header.model_fingerprint = fingerprint_;
  transfer::DescribeLayout(sequences_, &header);
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    (config.is_mla[layer] ? header.mla_layers : header.kda_layers).push_back(static_cast<int32_t>(layer));
  }
  header.prompt_tokens = prompt_tokens;
  header.transport = job.transport == "cuda-ipc" || job.transport == "nccl" ? job.transport : "";
  if (job.cached_tokens < 0 || job.cached_tokens >= prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("cached_tokens ", job.cached_tokens, " outside [0, ", prompt_tokens,
                                                   ") prompt tokens"));
  }
  header.cached_tokens = job.cached_tokens;  // the decode worker holds those rows: they are not sent
  const int64_t interval = job.checkpoint_interval_tokens;
  // 0: none; else at least 16 tokens, so an interval from the router cannot cut the prefill into
  // chunks of a few tokens.
  if (interval != 0 && interval < 16) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint interval ", interval, " is neither 0 nor >= 16 tokens"));
  }

  // Its pages go back to this worker's cache on every path out of here (the handle owns them).
  ASSIGN_OR_RETURN(std::unique_ptr<model::Sequence> sequence, sequences_.New());
  PrefillResult result;
  if (job.cached_tokens > 0) {
    const absl::Time read_start = absl::Now();
    absl::Status loaded = LoadPrefix(job, *sequence, cancelled);
    if (loaded.ok()) {
      result.resumed_tokens = job.cached_tokens;
      result.prefix_read_ms = absl::ToDoubleMilliseconds(absl::Now() - read_start);
    } else {
      if (cancelled()) return absl::CancelledError("request cancelled while reading its cached prefix");
      result.resume_error = std::string(loaded.message());  // computed whole below; same answer, slower
    }
  }
  const int64_t resumed = result.resumed_tokens;

  auto sender_or = transport_.Open(job.decode_worker, header, job.deadline);
  if (!sender_or.ok()) {
    *transfer_failed = true;
    return sender_or.status();
  }
  std::unique_ptr<transfer::CacheSender> sender = std::move(*sender_or);
  bool sender_finished = false;
  struct CancelSender {
    transfer::CacheSender& sender;
    const bool& finished;
    ~CancelSender() {
      if (!finished) sender.Cancel();
    }
  } cancel_sender{*sender, sender_finished};
  // Chunking, order and checksums are the writer's; this loop says what is final when.
  transfer::HandoffWriter writer(*sender, header, &staging_);
  absl::Status send_status;

  const absl::Time start = absl::Now();
  std::vector<float> logits;
  for (int64_t first = resumed, count = 0; first < prompt_tokens; first += count) {
    if (cancelled()) return absl::CancelledError("request cancelled during prefill");
    if (absl::Now() > job.deadline) return absl::DeadlineExceededError("deadline passed during prefill");
    count = std::min(chunk_tokens_, prompt_tokens - first);
    // A chunk ends at the next checkpoint position, so the KDA state there exists to be sent.
    if (interval > 0) count = std::min(count, (first / interval + 1) * interval - first);
    // One Model::Prefill call per chunk: its callback streams the chunk's rows while the
    // next chunk computes, and the loop gives cancellation a point between chunks.
    ASSIGN_OR_RETURN(logits, model_.Prefill(*sequence, absl::MakeConstSpan(job.tokens).subspan(first, count), cache_,
                                            chunk_tokens_, /*all_logits=*/false,
                                            [&](int64_t chunk_first, int64_t chunk_count) {
                                              if (!send_status.ok()) return;
                                              // Rows the decode worker holds already are not sent.
                                              const int64_t from = std::max(first + chunk_first, job.cached_tokens);
                                              const int64_t to = first + chunk_first + chunk_count;
                                              if (to <= from) return;
                                              send_status = writer.SendRows(*sequence, from, to - from);
                                            }));
    if (!send_status.ok()) {
      *transfer_failed = true;
      return send_status;
    }
    const int64_t at = first + count;
    if (interval > 0 && at % interval == 0 && at > job.cached_tokens && at < prompt_tokens) {
      if (absl::Status status = writer.SendKdaState(*sequence, at); !status.ok()) {
        *transfer_failed = true;
        return status;
      }
      result.checkpoints_sent++;
    }
    if (on_progress) on_progress({at, prompt_tokens, writer.payload_bytes()});
  }
  const absl::Time computed = absl::Now();
  result.first_token = model::Sampler(job.sampling).Sample(logits);
  if (fault_stall_transfer_ > absl::ZeroDuration()) {
    const absl::Time stall_until = absl::Now() + fault_stall_transfer_;
    while (absl::Now() < stall_until) {
      if (cancelled()) return absl::CancelledError("request cancelled during a (fault-injected) transfer stall");
      if (absl::Now() > job.deadline) {
        *transfer_failed = true;
        return absl::DeadlineExceededError("deadline passed while the cache transfer was stalled");
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  if (absl::Status status = writer.SendKdaState(*sequence); !status.ok()) {
    *transfer_failed = true;
    return status;
  }
  auto accepted = writer.Finish(result.first_token);
  sender_finished = true;
  if (!accepted.ok()) {
    *transfer_failed = true;
    return accepted.status();
  }
  const absl::Time acked = absl::Now();
  result.prefill_ms = absl::ToDoubleMilliseconds(computed - start);
  result.cache_bytes = writer.payload_bytes();
  result.host_bytes = writer.host_bytes();
  result.transport = sender->transport();
  result.device_bytes = sender->device_bytes();
  result.device_copy_ms = absl::ToDoubleMilliseconds(sender->device_copy_time());
  result.transfer_tail_ms = absl::ToDoubleMilliseconds(acked - computed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    handoff_host_bytes_ += result.host_bytes;
  }
  return result;
}

PrefillStats PrefillWorker::Stats() const {
  PrefillStats stats;
  stats.pages_free = cache_.free_pages();
  stats.pages_total = cache_.total_pages();
  stats.page_tokens = cache_.page_tokens();
  std::lock_guard<std::mutex> lock(mu_);
  stats.jobs_active = jobs_active_;
  stats.outstanding_cost = outstanding_cost_;
  stats.draining = draining_;
  stats.handoff_host_bytes = handoff_host_bytes_;
  return stats;
}

void PrefillWorker::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

}  // namespace latentserve::prefill
