#include "transfer/nccl_transport.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"

namespace latentserve::transfer {

absl::StatusOr<NcclBootstrap> ValidateNcclBootstrap(const internal::v1::NcclBootstrap& message) {
  if (message.comm_key().empty() || message.comm_key().size() > 256) {
    return absl::InvalidArgumentError("NcclBootstrap: comm_key must be 1..256 bytes");
  }
  if (message.unique_id().size() != kNcclUniqueIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("NcclBootstrap: unique_id has ", message.unique_id().size(),
                                                   " bytes, an ncclUniqueId has ", kNcclUniqueIdBytes));
  }
  if (message.nranks() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("NcclBootstrap: nranks ", message.nranks(),
                                                   " (a communicator joins one prefill and one decode worker: 2)"));
  }
  if (message.rank() != kNcclReceiverRank) {
    return absl::InvalidArgumentError(absl::StrCat("NcclBootstrap: rank ", message.rank(), " for the receiver, expected ",
                                                   kNcclReceiverRank));
  }
  // At most a minute: the decode worker waits this long for a peer's communicator to form (and
  // its shutdown waits for a forming one).
  if (message.init_timeout_ms() <= 0 || message.init_timeout_ms() > 60000) {
    return absl::InvalidArgumentError("NcclBootstrap: init_timeout_ms outside (0, 60000]");
  }
  NcclBootstrap bootstrap;
  bootstrap.comm_key = message.comm_key();
  bootstrap.unique_id = message.unique_id();
  bootstrap.nranks = message.nranks();
  bootstrap.rank = message.rank();
  bootstrap.init_timeout = absl::Milliseconds(message.init_timeout_ms());
  bootstrap.reuse = message.reuse();
  return bootstrap;
}

internal::v1::NcclBootstrap ToProto(const NcclBootstrap& bootstrap) {
  internal::v1::NcclBootstrap message;
  message.set_comm_key(bootstrap.comm_key);
  message.set_unique_id(bootstrap.unique_id);
  message.set_nranks(bootstrap.nranks);
  message.set_rank(bootstrap.rank);
  message.set_init_timeout_ms(absl::ToInt64Milliseconds(bootstrap.init_timeout));
  message.set_reuse(bootstrap.reuse);
  return message;
}

absl::StatusOr<std::vector<NcclRun>> SplitRuns(int64_t first_token, int64_t count, int64_t src_page_tokens,
                                               int64_t dst_page_tokens) {
  if (src_page_tokens < 1 || dst_page_tokens < 1) return absl::InvalidArgumentError("page sizes must be >= 1");
  int64_t end = 0;
  if (first_token < 0 || count <= 0 || __builtin_add_overflow(first_token, count, &end)) {
    return absl::InvalidArgumentError(absl::StrCat("no runs for tokens [", first_token, ", +", count, ")"));
  }
  std::vector<NcclRun> runs;
  for (int64_t token = first_token; token < end;) {
    const int64_t run = std::min({end - token, src_page_tokens - token % src_page_tokens,
                                  dst_page_tokens - token % dst_page_tokens});
    runs.push_back({token, run});
    token += run;
  }
  return runs;
}

NcclChunkLedger::NcclChunkLedger(int64_t mla_layers, int64_t prompt_tokens, int64_t row_bytes, int64_t max_in_flight)
    : prompt_tokens_(prompt_tokens), row_bytes_(row_bytes), max_in_flight_(max_in_flight),
      posted_next_(static_cast<size_t>(std::max<int64_t>(mla_layers, 0)), 0),
      completed_next_(posted_next_.size(), 0) {}

absl::Status NcclChunkLedger::Post(int64_t mla_index, int64_t first_token, int64_t token_count) {
  if (mla_index < 0 || mla_index >= static_cast<int64_t>(posted_next_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL chunk for MLA ordinal ", mla_index, " of ",
                                                   posted_next_.size()));
  }
  if (first_token != posted_next_[mla_index] || token_count <= 0 || token_count > prompt_tokens_ - first_token) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL chunk of MLA ordinal ", mla_index, " covers [", first_token,
                                                   ", +", token_count, "), expected to start at ",
                                                   posted_next_[mla_index], " within ", prompt_tokens_, " tokens"));
  }
  if (in_flight() >= max_in_flight_) {
    return absl::ResourceExhaustedError(absl::StrCat(in_flight(), " NCCL chunks already in flight (at most ",
                                                     max_in_flight_, ")"));
  }
  posted_next_[mla_index] += token_count;
  in_flight_.push_back({mla_index, first_token, token_count});
  return absl::OkStatus();
}

absl::Status NcclChunkLedger::Complete(int64_t mla_index, int64_t first_token, int64_t token_count) {
  // Groups complete in the order they were posted on one stream: the oldest of the layer.
  auto it = std::find_if(in_flight_.begin(), in_flight_.end(),
                         [&](const Posted& p) { return p.mla_index == mla_index; });
  if (it == in_flight_.end() || it->first_token != first_token || it->token_count != token_count) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL chunk [", first_token, ", +", token_count,
                                                   ") of MLA ordinal ", mla_index, " completed but was not posted next"));
  }
  in_flight_.erase(it);
  completed_next_[mla_index] += token_count;
  bytes_completed_ += token_count * row_bytes_;
  return absl::OkStatus();
}

absl::Status NcclChunkLedger::CheckComplete() const {
  if (!in_flight_.empty()) {
    return absl::DataLossError(absl::StrCat("NCCL handoff ended with ", in_flight_.size(), " chunks in flight"));
  }
  for (size_t i = 0; i < completed_next_.size(); ++i) {
    if (completed_next_[i] != prompt_tokens_) {
      return absl::DataLossError(absl::StrCat("NCCL handoff ended with ", completed_next_[i], " of ", prompt_tokens_,
                                              " rows of MLA ordinal ", i));
    }
  }
  return absl::OkStatus();
}

CommCache::CommCache(Factory factory, absl::Duration poll) : factory_(std::move(factory)) {
  if (poll > absl::ZeroDuration()) watchdog_ = std::thread([this, poll] { WatchdogLoop(poll); });
}

CommCache::~CommCache() {
  std::vector<std::unique_ptr<Creator>> creators;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    creators.swap(creators_);
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  // A creation ends by itself at its bootstrap's init timeout at the latest.
  for (auto& creator : creators) creator->thread.join();
}

absl::StatusOr<std::shared_ptr<NcclComm>> CommCache::Get(const NcclBootstrap& bootstrap) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    created_.wait(lock, [&] { return creating_.count(bootstrap.comm_key) == 0; });
    auto it = comms_.find(bootstrap.comm_key);
    if (it != comms_.end()) {
      TouchLocked(bootstrap.comm_key);
      return it->second;
    }
    auto failed = failed_.find(bootstrap.comm_key);
    if (failed != failed_.end()) return failed->second;  // its unique id is spent
    RETURN_IF_ERROR(MakeRoomLocked());
    creating_[bootstrap.comm_key] = false;
  }
  // Created outside the lock: forming a communicator waits for the peer.
  absl::StatusOr<std::shared_ptr<NcclComm>> created = factory_(bootstrap);
  Created(bootstrap.comm_key, created);
  return created;
}

void CommCache::Created(const std::string& comm_key, absl::StatusOr<std::shared_ptr<NcclComm>> created) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    creating_.erase(comm_key);
    if (created.ok()) {
      comms_[comm_key] = *created;
      TouchLocked(comm_key);
    } else {
      if (failed_.size() >= 256) failed_.clear();  // keys carry an epoch: old ones never come back
      failed_[comm_key] = created.status();
    }
  }
  created_.notify_all();
}

absl::Status CommCache::Prepare(const NcclBootstrap& bootstrap) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("shutting down");
  if (comms_.count(bootstrap.comm_key) || creating_.count(bootstrap.comm_key)) return absl::OkStatus();
  // Reap the threads of creations that ended (each marks itself done as its last step).
  creators_.erase(std::remove_if(creators_.begin(), creators_.end(),
                                 [](const std::unique_ptr<Creator>& c) {
                                   if (c->done) c->thread.join();
                                   return c->done;
                                 }),
                  creators_.end());
  if (creating_.size() >= kMaxCreating) {
    return absl::ResourceExhaustedError(absl::StrCat(creating_.size(), " NCCL communicators are already forming"));
  }
  RETURN_IF_ERROR(MakeRoomLocked());
  creating_[bootstrap.comm_key] = true;
  failed_.erase(bootstrap.comm_key);
  auto creator = std::make_unique<Creator>();
  Creator* raw = creator.get();
  creator->thread = std::thread([this, bootstrap, raw] {
    Created(bootstrap.comm_key, factory_(bootstrap));
    std::lock_guard<std::mutex> lock(mu_);
    raw->done = true;
  });
  creators_.push_back(std::move(creator));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<NcclComm>> CommCache::Await(const std::string& comm_key) {
  std::unique_lock<std::mutex> lock(mu_);
  created_.wait(lock, [&] { return creating_.count(comm_key) == 0; });
  auto it = comms_.find(comm_key);
  if (it != comms_.end()) {
    TouchLocked(comm_key);
    return it->second;
  }
  auto failed = failed_.find(comm_key);
  if (failed != failed_.end()) return failed->second;
  return absl::FailedPreconditionError(absl::StrCat("no NCCL communicator ", comm_key,
                                                    " here (never opened, or aborted after a failure)"));
}

bool CommCache::Has(const std::string& comm_key) const {
  std::lock_guard<std::mutex> lock(mu_);
  return comms_.count(comm_key) > 0 || creating_.count(comm_key) > 0;
}

CommCache::Guard CommCache::Watch(const std::string& comm_key, absl::Time deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  if (comms_.count(comm_key)) TouchLocked(comm_key);
  const uint64_t id = next_watch_id_++;
  watched_[id] = {comm_key, deadline, false};
  return Guard(this, id);
}

CommCache::Guard::~Guard() {
  if (cache_ == nullptr) return;
  std::lock_guard<std::mutex> lock(cache_->mu_);
  cache_->watched_.erase(id_);
}

bool CommCache::Guard::aborted() const {
  std::lock_guard<std::mutex> lock(cache_->mu_);
  auto it = cache_->watched_.find(id_);
  return it != cache_->watched_.end() && it->second.aborted;
}

absl::Status CommCache::MakeRoomLocked() {
  if (comms_.size() + creating_.size() < kMaxComms) return absl::OkStatus();
  std::string oldest;
  uint64_t oldest_use = UINT64_MAX;
  for (const auto& entry : comms_) {
    const std::string& key = entry.first;
    bool busy = false;
    for (const auto& [id, watched] : watched_) busy = busy || watched.comm_key == key;
    const uint64_t use = last_used_.count(key) ? last_used_[key] : 0;
    if (!busy && use < oldest_use) {
      oldest = key;
      oldest_use = use;
    }
  }
  if (oldest.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(comms_.size() + creating_.size(),
                                                     " NCCL communicators are held or forming, none idle"));
  }
  AbortLocked(oldest);
  return absl::OkStatus();
}

void CommCache::DropOthersWithPrefix(const std::string& prefix, const std::string& keep) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> drop;
  for (const auto& [key, comm] : comms_) {
    if (key != keep && key.compare(0, prefix.size(), prefix) == 0) drop.push_back(key);
  }
  for (const std::string& key : drop) AbortLocked(key);
}

void CommCache::AbortLocked(const std::string& comm_key) {
  auto it = comms_.find(comm_key);
  if (it == comms_.end()) return;
  it->second->Abort();  // returns promptly: ncclCommAbort does not wait for the peer
  comms_.erase(it);
  last_used_.erase(comm_key);
  for (auto& [id, watched] : watched_) {
    if (watched.comm_key == comm_key) watched.aborted = true;
  }
}

void CommCache::PeerDied(const std::string& comm_key) {
  std::lock_guard<std::mutex> lock(mu_);
  AbortLocked(comm_key);
}

int CommCache::CheckDeadlines(absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> late;
  for (const auto& [id, watched] : watched_) {
    if (!watched.aborted && watched.deadline <= now) late.push_back(watched.comm_key);
  }
  int aborted = 0;
  for (const std::string& key : late) {
    if (comms_.count(key)) aborted++;
    AbortLocked(key);
    for (auto& [id, watched] : watched_) {
      if (watched.comm_key == key) watched.aborted = true;  // also when it was already dropped
    }
  }
  return aborted;
}

size_t CommCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return comms_.size();
}

void CommCache::WatchdogLoop(absl::Duration poll) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    wake_.wait_for(lock, absl::ToChronoNanoseconds(poll));
    if (stopping_) break;
    lock.unlock();
    CheckDeadlines(absl::Now());
    lock.lock();
  }
}

absl::Status WaitPosted(NcclPosted& posted, const CommCache::Guard& guard, const std::function<bool()>& cancelled) {
  for (;;) {
    absl::StatusOr<bool> done = posted.Done();
    // An aborted communicator may end its kernels with an error or as if done: the deadline
    // (or the peer's death) is the reason either way.
    if (guard.aborted()) {
      return absl::DeadlineExceededError("the NCCL chunk did not complete by its deadline (communicator aborted)");
    }
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    if (cancelled && cancelled()) return absl::CancelledError("the peer's control stream ended during an NCCL chunk");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void KeepNvlsOff() { setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0); }

}  // namespace latentserve::transfer
