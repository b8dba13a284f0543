// The NCCL transport's parts that need no GPU: the bootstrap message, chunk accounting, the
// communicator cache with its watchdog and the data-plane interface the sender
// (transfer/nccl_sender.h) and receiver (transfer/nccl_receiver.h) drive. The real data plane
// (ncclCommInitRankConfig / grouped ncclSend, ncclRecv / ncclCommAbort) is
// transfer/nccl_comm.cc, built only with LATENTSERVE_CUDA; tests inject a fake.
//
// One communicator per (prefill worker, decode worker) pair, two ranks: the prefill worker
// (rank 0) makes an ncclUniqueId and sends it in OpenDeviceHandoffRequest.nccl over the gRPC
// control path; the decode worker (rank 1) joins. Both keep it under comm_key in a CommCache
// and reuse it for later handoffs. Each latent chunk moves as one NCCL group of sends (or
// receives) of the runs SplitRuns gives: consecutive tokens that stay inside one page on both
// sides, so the receiver's pieces land straight in its reserved pages and both sides post the
// same sizes in the same order. The watchdog aborts (ncclCommAbort) a communicator whose
// operation passes its deadline or whose peer died, and drops it from the cache, so no thread
// stays blocked in NCCL.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "latentserve/internal/v1/worker.pb.h"

namespace latentserve::transfer {

inline constexpr size_t kNcclUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
inline constexpr int kNcclSenderRank = 0;
inline constexpr int kNcclReceiverRank = 1;

struct NcclBootstrap {
  std::string comm_key;
  std::string unique_id;  // kNcclUniqueIdBytes
  int nranks = 2;
  int rank = kNcclReceiverRank;
  absl::Duration init_timeout;
  // The sender already holds this communicator: the receiver joins nothing and answers
  // FailedPrecondition unless it holds (or is forming) it too.
  bool reuse = false;
};

// Checks a peer's bootstrap before anything is handed to NCCL: comm_key 1..256 bytes, the
// unique id exactly 128 bytes, nranks 2, rank 1 (the receiver's), init timeout in (0, 1 min].
// InvalidArgument with the field named otherwise.
absl::StatusOr<NcclBootstrap> ValidateNcclBootstrap(const internal::v1::NcclBootstrap& message);
internal::v1::NcclBootstrap ToProto(const NcclBootstrap& bootstrap);

// One piece of a chunk: `tokens` rows from token `first_token`, inside one page on both sides.
struct NcclRun {
  int64_t first_token = 0;
  int64_t tokens = 0;
};
// The runs of tokens [first_token, +count), split at the sender's and the receiver's page
// boundaries (the same list on both sides: NCCL matches sends and receives by order and size).
// InvalidArgument for page sizes < 1 or an empty or negative range.
absl::StatusOr<std::vector<NcclRun>> SplitRuns(int64_t first_token, int64_t count, int64_t src_page_tokens,
                                               int64_t dst_page_tokens);

// The receiving side's accounting of one NCCL handoff: chunks announced in order per MLA
// ordinal and inside the prompt, at most `max_in_flight` posted and not yet complete (bounded:
// each holds a group of receives), every row arrived at the end.
class NcclChunkLedger {
 public:
  NcclChunkLedger(int64_t mla_layers, int64_t prompt_tokens, int64_t row_bytes, int64_t max_in_flight);
  // A chunk's receives are about to be posted: order, range and the in-flight bound checked.
  absl::Status Post(int64_t mla_index, int64_t first_token, int64_t token_count);
  // The oldest posted chunk of `mla_index` completed (its group's stream work finished).
  absl::Status Complete(int64_t mla_index, int64_t first_token, int64_t token_count);
  // DataLoss unless every row of every MLA layer completed and nothing is in flight.
  absl::Status CheckComplete() const;
  int64_t in_flight() const { return static_cast<int64_t>(in_flight_.size()); }
  int64_t bytes_completed() const { return bytes_completed_; }

 private:
  struct Posted {
    int64_t mla_index, first_token, token_count;
  };
  const int64_t prompt_tokens_, row_bytes_, max_in_flight_;
  std::vector<int64_t> posted_next_, completed_next_;  // per MLA ordinal: next token
  std::vector<Posted> in_flight_;
  int64_t bytes_completed_ = 0;
};

// A communicator as the cache sees it (nccl_comm.cc: ncclComm_t; tests: a fake).
class NcclComm {
 public:
  virtual ~NcclComm() = default;
  // ncclCommAbort: any NCCL call blocked on this communicator returns with an error. Called at
  // most once, from the watchdog or the cache, possibly while another thread is inside NCCL.
  virtual void Abort() = 0;
};

// Communicators per peer, created on first use and reused; a watchdog thread aborts and drops
// a communicator whose guarded operation passes its deadline or whose peer is reported dead.
class CommCache {
 public:
  using Factory = std::function<absl::StatusOr<std::shared_ptr<NcclComm>>(const NcclBootstrap&)>;
  // `poll`: how often the watchdog looks at deadlines (0: no thread; CheckDeadlines by hand).
  CommCache(Factory factory, absl::Duration poll);
  ~CommCache();  // stops the watchdog; aborts nothing that is idle

  // The communicator under bootstrap.comm_key, created with `factory` the first time (waits
  // for a creation that Prepare started).
  absl::StatusOr<std::shared_ptr<NcclComm>> Get(const NcclBootstrap& bootstrap);
  // Starts creating the communicator on a background thread (the receiver: the RPC that
  // brought the bootstrap answers at once, the sender then joins as the other rank). Nothing
  // when it exists or is being created. ResourceExhausted past kMaxCreating creations at once.
  absl::Status Prepare(const NcclBootstrap& bootstrap);
  // The communicator under `comm_key`, waiting for a creation in progress; never creates one.
  // Its creation error, or FailedPrecondition when there is none (never prepared, or aborted).
  absl::StatusOr<std::shared_ptr<NcclComm>> Await(const std::string& comm_key);
  // Whether `comm_key` exists or is being created.
  bool Has(const std::string& comm_key) const;
  static constexpr size_t kMaxCreating = 16;
  // Communicators kept at most: making one more first drops the least recently used one with no
  // operation in flight (a peer that restarted never uses its old one again); ResourceExhausted
  // when every one is busy.
  static constexpr size_t kMaxComms = 32;
  // Aborts and drops every communicator whose key starts with `prefix` except `keep` (a sender
  // that bootstraps a pair afresh has lost the old one).
  void DropOthersWithPrefix(const std::string& prefix, const std::string& keep);

  // While a Guard lives, its communicator has an operation in flight that must end by
  // `deadline`; past it the watchdog aborts the communicator and drops it. `aborted()` says
  // whether that happened (the operation's error is then the deadline's).
  class Guard {
   public:
    Guard(CommCache* cache, uint64_t id) : cache_(cache), id_(id) {}
    Guard(Guard&& other) noexcept : cache_(other.cache_), id_(other.id_) { other.cache_ = nullptr; }
    Guard& operator=(Guard&&) = delete;
    ~Guard();
    bool aborted() const;

   private:
    CommCache* cache_;
    uint64_t id_;
  };
  Guard Watch(const std::string& comm_key, absl::Time deadline);

  // The peer of `comm_key` is gone (its stream ended, the router dropped it): abort and drop.
  void PeerDied(const std::string& comm_key);
  // Aborts and drops every communicator with a guarded operation past its deadline at `now`;
  // returns how many. The watchdog thread calls it every `poll`.
  int CheckDeadlines(absl::Time now);
  size_t size() const;

 private:
  struct Watched {
    std::string comm_key;
    absl::Time deadline;
    bool aborted = false;
  };
  void AbortLocked(const std::string& comm_key);
  // Room for one more communicator (see kMaxComms).
  absl::Status MakeRoomLocked();
  void TouchLocked(const std::string& comm_key) { last_used_[comm_key] = next_use_++; }
  void WatchdogLoop(absl::Duration poll);

  void Created(const std::string& comm_key, absl::StatusOr<std::shared_ptr<NcclComm>> created);

  Factory factory_;
  mutable std::mutex mu_;  // everything below
  std::condition_variable wake_;
  std::condition_variable created_;  // a creation ended
  bool stopping_ = false;
  std::map<std::string, std::shared_ptr<NcclComm>> comms_;
  std::map<std::string, uint64_t> last_used_;  // comm key -> use stamp (LRU among idle ones)
  uint64_t next_use_ = 1;
  std::map<std::string, bool> creating_;       // comm key -> created on a Prepare thread
  std::map<std::string, absl::Status> failed_;  // background creations that failed (bounded)
  struct Creator {
    std::thread thread;
    bool done = false;
  };
  std::vector<std::unique_ptr<Creator>> creators_;
  std::map<uint64_t, Watched> watched_;
  uint64_t next_watch_id_ = 1;
  std::thread watchdog_;
};

// One chunk's group of sends or receives, posted on a device stream.
class NcclPosted {
 public:
  virtual ~NcclPosted() = default;
  // True once the group's stream work finished; the error when the device or the
  // communicator failed (ncclCommGetAsyncError).
  virtual absl::StatusOr<bool> Done() = 0;
};

// What moves rows over a communicator (nccl_comm.h NewCudaNcclDataPlane; tests: a fake).
class NcclDataPlane {
 public:
  virtual ~NcclDataPlane() = default;
  virtual absl::StatusOr<std::string> NewUniqueId() = 0;  // kNcclUniqueIdBytes
  // Joins as `rank`; returns once the communicator formed, DeadlineExceeded past
  // bootstrap.init_timeout.
  virtual absl::StatusOr<std::shared_ptr<NcclComm>> Join(const NcclBootstrap& bootstrap, int rank) = 0;
  // Posts one group: every run's rows of `pool` ([W, page_tokens, n_pages]) addressed through
  // `page_table`, to (Send) or from (Recv) rank `peer`, on `backend`'s stream.
  virtual absl::StatusOr<std::unique_ptr<NcclPosted>> Send(NcclComm& comm, kernels::Backend& backend,
                                                           const kernels::Tensor& pool,
                                                           absl::Span<const int32_t> page_table,
                                                           const std::vector<NcclRun>& runs, int peer) = 0;
  virtual absl::StatusOr<std::unique_ptr<NcclPosted>> Recv(NcclComm& comm, kernels::Backend& backend,
                                                           const kernels::Tensor& pool,
                                                           absl::Span<const int32_t> page_table,
                                                           const std::vector<NcclRun>& runs, int peer) = 0;
};

// Waits for `posted` while `guard` watches its communicator: OK when it completed,
// DeadlineExceeded once the watchdog aborted the communicator (the guard's deadline passed or
// the peer died), Cancelled when `cancelled` (may be empty) says the peer's control stream is
// gone, or the device's error. Polls (the host must notice a dead peer while the device waits).
absl::Status WaitPosted(NcclPosted& posted, const CommCache::Guard& guard, const std::function<bool()>& cancelled);

// Sets NCCL_NVLS_ENABLE=0 in this process's environment unless the operator set it: NVLink
// SHARP multicast is left off on the machines we run on. Call before the first communicator.
void KeepNvlsOff();

}  // namespace latentserve::transfer
