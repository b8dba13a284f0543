#include "router/worker_registry.h"

#include <map>
#include <set>

#include "common/token_hash.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "router/channels.h"
#include "serving/security.h"
#include "transfer/transport_choice.h"

namespace latentserve::router {

WorkerRegistry::WorkerRegistry(absl::Duration poll_interval, RegistryLimits limits)
    : poll_interval_(poll_interval), limits_(limits) {
  monitor_ = std::thread([this] { MonitorLoop(); });
}

WorkerRegistry::~WorkerRegistry() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  monitor_.join();
}

void WorkerRegistry::AddStatic(const std::string& address, const std::string& role) {
  std::lock_guard<std::mutex> lock(mu_);
  WorkerEntry& entry = workers_[address];
  entry.address = address;
  entry.role = role;
  entry.static_entry = true;
}

void WorkerRegistry::PinFingerprint(const std::string& fingerprint) {
  std::lock_guard<std::mutex> lock(mu_);
  pinned_fingerprint_ = fingerprint;
}

absl::Status WorkerRegistry::AcceptModel(const internal::v1::ModelDescriptor& model, const std::string& address) {
  if (!pinned_fingerprint_.empty() && model.fingerprint() != pinned_fingerprint_) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", address, " serves model ", model.name(), " (",
                                                      model.fingerprint(), "), this router's --model is ",
                                                      pinned_fingerprint_));
  }
  if (!model_) {
    model_ = model;
    return absl::OkStatus();
  }
  if (model_->fingerprint() != model.fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", address, " serves model ", model.name(), " (",
                                                      model.fingerprint(), "), this router serves ", model_->name(),
                                                      " (", model_->fingerprint(), ")"));
  }
  return absl::OkStatus();
}

absl::Status WorkerRegistry::Register(const internal::v1::RegisterWorkerRequest& request) {
  RETURN_IF_ERROR(serving::ValidateWorkerAddress(request.address()));
  if (request.role() != "prefill" && request.role() != "decode") {
    return absl::InvalidArgumentError(absl::StrCat("worker role must be prefill or decode, got '", request.role(), "'"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!workers_.count(request.address())) {
    int64_t registered = 0;
    for (const auto& [address, entry] : workers_) registered += entry.static_entry ? 0 : 1;
    if (registered >= limits_.max_workers) {
      return absl::ResourceExhaustedError(absl::StrCat("this router already has ", registered,
                                                       " registered workers (--max-workers)"));
    }
  }
  if (absl::Status status = AcceptModel(request.model(), request.address()); !status.ok()) return status;
  WorkerEntry& entry = workers_[request.address()];
  entry.address = request.address();
  entry.role = request.role();
  entry.model = request.model();
  entry.transports = request.transports();
  entry.stats = request.stats();
  entry.alive = true;
  entry.last_seen = absl::Now();
  return absl::OkStatus();
}

absl::Status WorkerRegistry::Heartbeat(const internal::v1::HeartbeatRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(request.address());
  if (it == workers_.end()) return absl::NotFoundError(absl::StrCat("worker ", request.address(), " is not registered"));
  it->second.stats = request.stats();
  it->second.alive = true;
  it->second.last_seen = absl::Now();
  return absl::OkStatus();
}

void WorkerRegistry::MarkDead(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(address);
  if (it != workers_.end()) it->second.alive = false;
}

std::optional<std::string> WorkerRegistry::ClaimDecode(int64_t tokens, const std::set<std::string>& exclude,
                                                       const std::string& prefer) {
  std::lock_guard<std::mutex> lock(mu_);
  // Stats can be a poll old: the lease itself is the authority. The router's own count is current.
  const auto better = [](const WorkerEntry& a, const WorkerEntry& b) {
    if (a.inflight_requests != b.inflight_requests) return a.inflight_requests < b.inflight_requests;
    const int64_t free_a = a.stats.cache_pages_free() * a.stats.page_tokens();
    const int64_t free_b = b.stats.cache_pages_free() * b.stats.page_tokens();
    if (free_a != free_b) return free_a > free_b;
    return a.last_placed < b.last_placed;
  };
  WorkerEntry* best = nullptr;
  WorkerEntry* preferred = nullptr;
  for (auto& [address, entry] : workers_) {
    if (entry.role != "decode" || !entry.alive || entry.stats.draining() || exclude.count(address)) continue;
    if (entry.model.max_context_tokens() < tokens) continue;
    if (!best || better(entry, *best)) best = &entry;
    if (!prefer.empty() && address == prefer) preferred = &entry;
  }
  if (!best) return std::nullopt;
  if (preferred && preferred->inflight_requests <= best->inflight_requests + kPreferSlack) best = preferred;
  best->inflight_requests++;
  best->last_placed = ++placements_;
  return best->address;
}

std::pair<std::string, int64_t> WorkerRegistry::LongestPrefixWorker(absl::Span<const int32_t> prompt) const {
  // The block sizes first (cheap, under the lock), the prompt's hashes outside it (a 1M-token
  // prompt is ~1M mixes), then the lookups under it again.
  std::set<int64_t> block_sizes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [address, entry] : workers_) {
      if (entry.role == "decode" && entry.alive && !entry.prefix_hashes.empty()) block_sizes.insert(entry.prefix_block_tokens);
    }
  }
  if (block_sizes.empty()) return {"", 0};
  std::map<int64_t, std::vector<uint64_t>> prompt_hashes;
  for (int64_t block : block_sizes) {
    prompt_hashes[block] = PrefixBlockHashes(prompt, block, static_cast<int64_t>(prompt.size()) / block);
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::pair<std::string, int64_t> best{"", 0};
  for (const auto& [address, entry] : workers_) {
    if (entry.role != "decode" || !entry.alive || entry.stats.draining() || entry.prefix_hashes.empty()) continue;
    auto hashes = prompt_hashes.find(entry.prefix_block_tokens);
    if (hashes == prompt_hashes.end()) continue;  // its index arrived after the sizes were read
    for (int64_t k = static_cast<int64_t>(hashes->second.size()) - 1; k >= 0; --k) {
      if (!entry.prefix_hashes.contains(hashes->second[k])) continue;
      const int64_t tokens = (k + 1) * entry.prefix_block_tokens;
      if (tokens > best.second) best = {address, tokens};
      break;
    }
  }
  return best;
}

void WorkerRegistry::ReleaseDecode(const std::string& address) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(address);
  if (it != workers_.end()) it->second.inflight_requests = std::max<int64_t>(0, it->second.inflight_requests - 1);
}

std::optional<std::string> WorkerRegistry::ClaimPrefill(int64_t prompt_tokens, double cost,
                                                        const std::set<std::string>& exclude) {
  std::lock_guard<std::mutex> lock(mu_);
  // This router's own cost is current; the worker's reported cost (polled) also covers the
  // jobs of other router replicas. The larger of the two is the load.
  const auto load = [](const WorkerEntry& e) { return std::max(e.inflight_cost, e.stats.outstanding_cost()); };
  WorkerEntry* best = nullptr;
  for (auto& [address, entry] : workers_) {
    if (entry.role != "prefill" || !entry.alive || entry.stats.draining() || exclude.count(address)) continue;
    if (entry.model.max_context_tokens() < prompt_tokens) continue;  // its cache cannot hold the prompt
    if (!best || load(entry) < load(*best) || (load(entry) == load(*best) && entry.last_placed < best->last_placed)) {
      best = &entry;
    }
  }
  if (!best) return std::nullopt;
  best->inflight_cost += cost;
  best->last_placed = ++placements_;
  return best->address;
}

void WorkerRegistry::ReleasePrefill(const std::string& address, double cost) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(address);
  if (it != workers_.end()) it->second.inflight_cost = std::max(0.0, it->second.inflight_cost - cost);
}

std::optional<internal::v1::ModelDescriptor> WorkerRegistry::Model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return model_;
}

int64_t WorkerRegistry::MaxContextTokens(const std::string& role) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t best = 0;
  for (const auto& [address, entry] : workers_) {
    if (entry.role == role && entry.alive) best = std::max(best, entry.model.max_context_tokens());
  }
  return best;
}

bool WorkerRegistry::AnyAlive(const std::string& role) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [address, entry] : workers_) {
    if (entry.role == role && entry.alive) return true;
  }
  return false;
}

bool WorkerRegistry::IsAlive(const std::string& address) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = workers_.find(address);
  return it != workers_.end() && it->second.alive;
}

std::string WorkerRegistry::ChooseTransport(const std::string& prefill, const std::string& decode) const {
  auto offer = [](const internal::v1::WorkerTransports& p) {
    transfer::TransportOffer out;
    // Bounded: a registration's lists are peer input.
    for (int i = 0; i < p.transports_size() && i < 8; ++i) out.transports.push_back(p.transports(i));
    out.host_id = p.host_id();
    out.gpu_uuid = p.gpu_uuid();
    return out;
  };
  std::lock_guard<std::mutex> lock(mu_);
  auto p = workers_.find(prefill), d = workers_.find(decode);
  if (p == workers_.end() || d == workers_.end()) return "grpc";
  return transfer::ChooseTransport(offer(p->second.transports), offer(d->second.transports));
}

std::vector<WorkerEntry> WorkerRegistry::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<WorkerEntry> out;
  for (const auto& [address, entry] : workers_) out.push_back(entry);
  return out;
}

void WorkerRegistry::PollAll(const std::vector<std::string>& addresses) {
  // One asynchronous call per worker, all in flight together: a slow or dead worker costs
  // one deadline per round, not one per worker in the list.
  struct Poll {
    std::string address;
    grpc::ClientContext context;
    internal::v1::GetWorkerStatsRequest request;
    internal::v1::GetWorkerStatsResponse response;
    grpc::Status status;
    std::unique_ptr<internal::v1::WorkerStats::Stub> stub;
  };
  std::vector<std::unique_ptr<Poll>> polls;
  std::mutex done_mu;
  std::condition_variable done_cv;
  size_t done = 0;
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(1000);
  for (const std::string& address : addresses) {
    auto poll = std::make_unique<Poll>();
    poll->address = address;
    poll->stub = internal::v1::WorkerStats::NewStub(ChannelTo(address));
    serving::AttachInternalCredential(poll->context);
    poll->context.set_deadline(deadline);
    polls.push_back(std::move(poll));
  }
  for (auto& poll : polls) {
    poll->stub->async()->GetWorkerStats(&poll->context, &poll->request, &poll->response,
                                        [&, p = poll.get()](grpc::Status status) {
                                          p->status = std::move(status);
                                          std::lock_guard<std::mutex> lock(done_mu);
                                          ++done;
                                          done_cv.notify_all();
                                        });
  }
  {
    // Every call ends by its deadline; gRPC runs each callback exactly once.
    std::unique_lock<std::mutex> lock(done_mu);
    done_cv.wait(lock, [&] { return done == polls.size(); });
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& poll : polls) {
    auto it = workers_.find(poll->address);
    if (it == workers_.end()) continue;
    if (!poll->status.ok()) {
      it->second.alive = false;
      continue;
    }
    if (!AcceptModel(poll->response.model(), poll->address).ok()) {
      it->second.alive = false;  // a worker of another model never takes work here
      continue;
    }
    it->second.model = poll->response.model();
    if (poll->response.has_transports()) it->second.transports = poll->response.transports();
    it->second.stats = poll->response.stats();
    const internal::v1::PrefixIndex& index = poll->response.prefix_index();
    it->second.prefix_block_tokens = index.block_tokens() > 0 ? index.block_tokens() : 0;
    it->second.prefix_hashes.clear();
    for (int i = 0; i < index.block_hashes_size() && i < kMaxPrefixHashes; ++i) {
      it->second.prefix_hashes.insert(index.block_hashes(i));
    }
    it->second.role = poll->response.role();
    it->second.alive = true;
    it->second.last_seen = absl::Now();
  }
}

void WorkerRegistry::MonitorLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    std::vector<std::string> addresses;
    for (const auto& [address, entry] : workers_) addresses.push_back(address);
    lock.unlock();
    PollAll(addresses);
    lock.lock();
    // Forget registered workers nobody has heard from for evict_after (dead, or never real):
    // they re-register when they come back.
    const absl::Time now = absl::Now();
    for (auto it = workers_.begin(); it != workers_.end();) {
      const WorkerEntry& entry = it->second;
      if (!entry.static_entry && !entry.alive && now - entry.last_seen > limits_.evict_after) {
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    cv_.wait_for(lock, absl::ToChronoNanoseconds(poll_interval_), [&] { return stopping_; });
  }
}

}  // namespace latentserve::router
