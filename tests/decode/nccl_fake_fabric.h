// A fake NCCL data plane for tests without a GPU: two ranks of one process "join" a
// communicator when both called Join with its unique id (or its init timeout passes), and a
// posted group of sends completes together with the next posted group of receives on the same
// communicator, its runs copied pool to pool on the CPU backends (CopyToBackend) as NCCL
// would move them between GPUs. Faults: `stall` (no group ever matches: a peer that never
// posts) and `corrupt` (one byte of the next matched group flipped on the way).
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transfer/nccl_transport.h"

namespace latentserve::test {

class FakeNcclFabric : public transfer::NcclDataPlane {
 public:
  struct Group {
    kernels::Backend* backend;
    kernels::Tensor pool;
    std::vector<int32_t> pages;
    std::vector<transfer::NcclRun> runs;
    bool done = false;
    std::string error;
  };

  absl::StatusOr<std::string> NewUniqueId() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string id = absl::StrCat("fake-id-", ++ids_);
    id.resize(transfer::kNcclUniqueIdBytes, '\0');
    return id;
  }

  absl::StatusOr<std::shared_ptr<transfer::NcclComm>> Join(const transfer::NcclBootstrap& bootstrap,
                                                           int rank) override {
    std::unique_lock<std::mutex> lock(mu_);
    joins_++;
    Channel& channel = channels_[bootstrap.unique_id];
    channel.joined++;
    cv_.notify_all();
    if (!cv_.wait_for(lock, absl::ToChronoNanoseconds(bootstrap.init_timeout),
                      [&] { return channel.joined >= 2 || shut_; }) ||
        shut_) {
      return absl::DeadlineExceededError("fake communicator: the other rank never joined");
    }
    return std::shared_ptr<transfer::NcclComm>(new Comm(this, bootstrap.unique_id, rank));
  }

  absl::StatusOr<std::unique_ptr<transfer::NcclPosted>> Send(transfer::NcclComm& comm, kernels::Backend& backend,
                                                             const kernels::Tensor& pool,
                                                             absl::Span<const int32_t> page_table,
                                                             const std::vector<transfer::NcclRun>& runs,
                                                             int peer) override {
    return Post(comm, backend, pool, page_table, runs, /*send=*/true);
  }
  absl::StatusOr<std::unique_ptr<transfer::NcclPosted>> Recv(transfer::NcclComm& comm, kernels::Backend& backend,
                                                             const kernels::Tensor& pool,
                                                             absl::Span<const int32_t> page_table,
                                                             const std::vector<transfer::NcclRun>& runs,
                                                             int peer) override {
    return Post(comm, backend, pool, page_table, runs, /*send=*/false);
  }

  void set_stall(bool stall) {
    std::lock_guard<std::mutex> lock(mu_);
    stall_ = stall;
  }
  void set_corrupt(bool corrupt) {
    std::lock_guard<std::mutex> lock(mu_);
    corrupt_ = corrupt;
  }
  // Releases every Join still waiting (a test that ends with a communicator half formed).
  void Shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    shut_ = true;
    cv_.notify_all();
  }
  int joins() const {
    std::lock_guard<std::mutex> lock(mu_);
    return joins_;
  }
  int recvs_posted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return recvs_posted_;
  }
  void WaitForRecvsPosted(int count) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return recvs_posted_ >= count; });
  }
  void WaitForAborts(int count) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return aborts_ >= count; });
  }
  int aborts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return aborts_;
  }

 private:
  struct Channel {
    int joined = 0;
    std::deque<std::shared_ptr<Group>> sends, recvs;
  };
  class Comm : public transfer::NcclComm {
   public:
    Comm(FakeNcclFabric* fabric, std::string id, int rank) : fabric_(fabric), id_(std::move(id)), rank_(rank) {}
    void Abort() override {
      std::lock_guard<std::mutex> lock(fabric_->mu_);
      fabric_->aborts_++;
      fabric_->cv_.notify_all();
    }
    FakeNcclFabric* fabric_;
    const std::string id_;
    const int rank_;
  };
  class Posted : public transfer::NcclPosted {
   public:
    Posted(FakeNcclFabric* fabric, std::shared_ptr<Group> group) : fabric_(fabric), group_(std::move(group)) {}
    absl::StatusOr<bool> Done() override {
      std::lock_guard<std::mutex> lock(fabric_->mu_);
      if (!group_->error.empty()) return absl::InternalError(group_->error);
      return group_->done;
    }

   private:
    FakeNcclFabric* fabric_;
    std::shared_ptr<Group> group_;
  };

  absl::StatusOr<std::unique_ptr<transfer::NcclPosted>> Post(transfer::NcclComm& comm, kernels::Backend& backend,
                                                             const kernels::Tensor& pool,
                                                             absl::Span<const int32_t> page_table,
                                                             const std::vector<transfer::NcclRun>& runs, bool send) {
    auto* fake = dynamic_cast<Comm*>(&comm);
    if (fake == nullptr) return absl::InternalError("not a fake communicator");
    auto group = std::make_shared<Group>(Group{&backend, pool, {page_table.begin(), page_table.end()}, runs, false, ""});
    std::lock_guard<std::mutex> lock(mu_);
    Channel& channel = channels_[fake->id_];
    (send ? channel.sends : channel.recvs).push_back(group);
    if (!send) recvs_posted_++;
    cv_.notify_all();
    if (!stall_) MatchLocked(channel);
    return std::unique_ptr<transfer::NcclPosted>(new Posted(this, group));
  }

  // NCCL's rule: the n-th group of sends matches the n-th group of receives, run for run.
  void MatchLocked(Channel& channel) {
    while (!channel.sends.empty() && !channel.recvs.empty()) {
      std::shared_ptr<Group> send = channel.sends.front(), recv = channel.recvs.front();
      channel.sends.pop_front();
      channel.recvs.pop_front();
      bool same = send->runs.size() == recv->runs.size();
      for (size_t i = 0; same && i < send->runs.size(); ++i) {
        same = send->runs[i].first_token == recv->runs[i].first_token && send->runs[i].tokens == recv->runs[i].tokens;
      }
      if (!same) {
        send->error = recv->error = "mismatched runs";
        continue;
      }
      for (const transfer::NcclRun& run : send->runs) {
        const size_t row_bytes = send->pool.row_bytes();
        const auto offset = [&](const Group& g, int64_t token) {
          const int64_t page_tokens = g.pool.ne[1];
          return static_cast<size_t>(g.pages[token / page_tokens] * page_tokens + token % page_tokens) * row_bytes;
        };
        send->backend->CopyToBackend(send->pool, offset(*send, run.first_token), *recv->backend, recv->pool,
                                     offset(*recv, run.first_token), static_cast<size_t>(run.tokens) * row_bytes);
        if (corrupt_) {
          const size_t at = offset(*recv, run.first_token);
          uint8_t byte = 0;
          recv->backend->Download(recv->pool, &byte, 1, at);
          byte ^= 0x10;
          recv->backend->Upload(&byte, 1, recv->pool, at);
          corrupt_ = false;
        }
      }
      send->done = recv->done = true;
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Channel> channels_;
  int ids_ = 0, joins_ = 0, recvs_posted_ = 0, aborts_ = 0;
  bool stall_ = false, corrupt_ = false, shut_ = false;
};

}  // namespace latentserve::test
