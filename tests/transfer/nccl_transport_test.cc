// The NCCL transport's parts that run without a GPU: bootstrap validation, runs split at both
// sides' page boundaries, the receiver's chunk ledger, and the communicator cache's reuse and
// abort paths (deadline, peer death) with a fake communicator. Deadlines are checked with an
// explicit clock (CheckDeadlines), never by sleeping.
#include "transfer/nccl_transport.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace latentserve::transfer {
namespace {

internal::v1::NcclBootstrap GoodBootstrap() {
  NcclBootstrap bootstrap;
  bootstrap.comm_key = "prefill:1|decode:2|1";
  bootstrap.unique_id = std::string(kNcclUniqueIdBytes, '\x5a');
  bootstrap.init_timeout = absl::Seconds(30);
  return ToProto(bootstrap);
}

TEST(NcclBootstrapTest, AValidMessageRoundTrips) {
  auto bootstrap = ValidateNcclBootstrap(GoodBootstrap());
  ASSERT_TRUE(bootstrap.ok()) << bootstrap.status();
  EXPECT_EQ(bootstrap->comm_key, "prefill:1|decode:2|1");
  EXPECT_EQ(bootstrap->unique_id.size(), kNcclUniqueIdBytes);
  EXPECT_EQ(bootstrap->rank, kNcclReceiverRank);
  EXPECT_EQ(bootstrap->init_timeout, absl::Seconds(30));
}

TEST(NcclBootstrapTest, HostileMessagesAreRefused) {
  std::vector<std::function<void(internal::v1::NcclBootstrap&)>> breakers = {
      [](auto& m) { m.clear_comm_key(); },
      [](auto& m) { m.set_comm_key(std::string(257, 'k')); },
      [](auto& m) { m.set_unique_id(std::string(127, 'x')); },
      [](auto& m) { m.set_unique_id(std::string(129, 'x')); },
      [](auto& m) { m.clear_unique_id(); },
      [](auto& m) { m.set_nranks(3); },
      [](auto& m) { m.set_nranks(0); },
      [](auto& m) { m.set_rank(0); },
      [](auto& m) { m.set_rank(-1); },
      [](auto& m) { m.set_init_timeout_ms(0); },
      [](auto& m) { m.set_init_timeout_ms(-5); },
      [](auto& m) { m.set_init_timeout_ms(60001); },
  };
  for (size_t i = 0; i < breakers.size(); ++i) {
    internal::v1::NcclBootstrap message = GoodBootstrap();
    breakers[i](message);
    EXPECT_EQ(ValidateNcclBootstrap(message).status().code(), absl::StatusCode::kInvalidArgument) << "case " << i;
  }
}

TEST(NcclRunsTest, RunsStayInsideOnePageOnBothSides) {
  auto runs = SplitRuns(10, 40, 16, 12);
  ASSERT_TRUE(runs.ok());
  // Boundaries: sender 16, 32, 48; receiver 12, 24, 36, 48.
  const std::vector<std::pair<int64_t, int64_t>> expected = {{10, 2}, {12, 4}, {16, 8}, {24, 8}, {32, 4}, {36, 12},
                                                             {48, 2}};
  ASSERT_EQ(runs->size(), expected.size());
  int64_t tokens = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ((*runs)[i].first_token, expected[i].first);
    EXPECT_EQ((*runs)[i].tokens, expected[i].second);
    tokens += (*runs)[i].tokens;
  }
  EXPECT_EQ(tokens, 40);
  EXPECT_EQ(SplitRuns(0, 256, 256, 256)->size(), 1u);
  EXPECT_EQ(SplitRuns(0, 0, 16, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitRuns(-1, 4, 16, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitRuns(0, 4, 0, 16).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitRuns(INT64_MAX, 2, 16, 16).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclChunkLedgerTest, ChunksInOrderBoundedAndComplete) {
  NcclChunkLedger ledger(/*mla_layers=*/2, /*prompt_tokens=*/100, /*row_bytes=*/1152, /*max_in_flight=*/2);
  ASSERT_TRUE(ledger.Post(0, 0, 60).ok());
  EXPECT_EQ(ledger.Post(0, 0, 40).code(), absl::StatusCode::kInvalidArgument) << "a repeated range";
  EXPECT_EQ(ledger.Post(0, 60, 41).code(), absl::StatusCode::kInvalidArgument) << "past the prompt";
  EXPECT_EQ(ledger.Post(2, 0, 10).code(), absl::StatusCode::kInvalidArgument) << "no such layer";
  ASSERT_TRUE(ledger.Post(1, 0, 100).ok());
  EXPECT_EQ(ledger.Post(0, 60, 40).code(), absl::StatusCode::kResourceExhausted) << "two in flight at most";
  EXPECT_EQ(ledger.CheckComplete().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ledger.Complete(0, 60, 40).code(), absl::StatusCode::kInvalidArgument) << "never posted";
  ASSERT_TRUE(ledger.Complete(0, 0, 60).ok());
  ASSERT_TRUE(ledger.Post(0, 60, 40).ok());
  ASSERT_TRUE(ledger.Complete(1, 0, 100).ok());
  EXPECT_EQ(ledger.CheckComplete().code(), absl::StatusCode::kDataLoss) << "one chunk still in flight";
  ASSERT_TRUE(ledger.Complete(0, 60, 40).ok());
  EXPECT_TRUE(ledger.CheckComplete().ok());
  EXPECT_EQ(ledger.bytes_completed(), 200 * 1152);
  EXPECT_EQ(ledger.in_flight(), 0);
}

class FakeComm : public NcclComm {
 public:
  explicit FakeComm(std::atomic<int>* aborts) : aborts_(aborts) {}
  void Abort() override { (*aborts_)++; }

 private:
  std::atomic<int>* aborts_;
};

class CommCacheTest : public ::testing::Test {
 protected:
  CommCache::Factory Factory() {
    return [this](const NcclBootstrap& bootstrap) -> absl::StatusOr<std::shared_ptr<NcclComm>> {
      created_++;
      if (bootstrap.comm_key == "unreachable") return absl::DeadlineExceededError("peer never joined");
      return std::shared_ptr<NcclComm>(std::make_shared<FakeComm>(&aborts_));
    };
  }
  NcclBootstrap Bootstrap(const std::string& key) {
    NcclBootstrap bootstrap = *ValidateNcclBootstrap(GoodBootstrap());
    bootstrap.comm_key = key;
    return bootstrap;
  }
  std::atomic<int> created_{0}, aborts_{0};
};

TEST_F(CommCacheTest, ACommunicatorIsCreatedOncePerPair) {
  CommCache cache(Factory(), absl::ZeroDuration());
  auto a = cache.Get(Bootstrap("p|d1"));
  auto b = cache.Get(Bootstrap("p|d1"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  ASSERT_TRUE(cache.Get(Bootstrap("p|d2")).ok());
  EXPECT_EQ(created_, 2);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Get(Bootstrap("unreachable")).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(cache.size(), 2u) << "a failed bootstrap is not cached";
}

// Peers that restart never come back for their communicators: past kMaxComms the least
// recently used idle one goes; one with an operation in flight stays; all busy -> refused.
TEST_F(CommCacheTest, PastTheCapTheLeastRecentlyUsedIdleCommunicatorGoes) {
  CommCache cache(Factory(), absl::ZeroDuration());
  for (size_t i = 0; i < CommCache::kMaxComms; ++i) ASSERT_TRUE(cache.Get(Bootstrap("p|d" + std::to_string(i))).ok());
  ASSERT_TRUE(cache.Get(Bootstrap("p|d0")).ok());  // used again: d1 is now the oldest
  CommCache::Guard busy = cache.Watch("p|d1", absl::InfiniteFuture());  // in flight: not dropped
  ASSERT_TRUE(cache.Get(Bootstrap("p|new")).ok());
  EXPECT_EQ(cache.size(), CommCache::kMaxComms);
  EXPECT_EQ(aborts_, 1);
  EXPECT_TRUE(cache.Has("p|d0"));
  EXPECT_TRUE(cache.Has("p|d1"));
  EXPECT_FALSE(cache.Has("p|d2")) << "the least recently used idle one";
  std::vector<CommCache::Guard> guards;
  for (size_t i = 0; i < CommCache::kMaxComms; ++i) {
    const std::string key = i == 0 ? "p|new" : "p|d" + std::to_string(i + 2);
    if (cache.Has(key)) guards.push_back(cache.Watch(key, absl::InfiniteFuture()));
  }
  guards.push_back(cache.Watch("p|d0", absl::InfiniteFuture()));
  EXPECT_EQ(cache.Get(Bootstrap("p|one-too-many")).status().code(), absl::StatusCode::kResourceExhausted)
      << "every communicator busy";
  EXPECT_EQ(cache.Prepare(Bootstrap("p|one-too-many")).code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CommCacheTest, ASendersOtherPairsWithThePrefixAreDropped) {
  CommCache cache(Factory(), absl::ZeroDuration());
  for (const char* key : {"host:1:7|d1|1", "host:1:7|d1|2", "host:1:7|d2|1", "host:2:9|d1|1"}) {
    ASSERT_TRUE(cache.Get(Bootstrap(key)).ok());
  }
  cache.DropOthersWithPrefix("host:1:7|d1|", "host:1:7|d1|2");
  EXPECT_FALSE(cache.Has("host:1:7|d1|1"));
  EXPECT_TRUE(cache.Has("host:1:7|d1|2"));
  EXPECT_TRUE(cache.Has("host:1:7|d2|1"));
  EXPECT_TRUE(cache.Has("host:2:9|d1|1"));
  EXPECT_EQ(aborts_, 1);
}

TEST_F(CommCacheTest, AnOperationPastItsDeadlineAbortsItsCommunicatorOnly) {
  CommCache cache(Factory(), absl::ZeroDuration());
  ASSERT_TRUE(cache.Get(Bootstrap("p|d1")).ok());
  ASSERT_TRUE(cache.Get(Bootstrap("p|d2")).ok());
  const absl::Time now = absl::FromUnixSeconds(1000);
  {
    CommCache::Guard late = cache.Watch("p|d1", now + absl::Seconds(5));
    CommCache::Guard fine = cache.Watch("p|d2", now + absl::Seconds(60));
    EXPECT_EQ(cache.CheckDeadlines(now), 0);
    EXPECT_FALSE(late.aborted());
    EXPECT_EQ(cache.CheckDeadlines(now + absl::Seconds(6)), 1);
    EXPECT_TRUE(late.aborted());
    EXPECT_FALSE(fine.aborted());
    EXPECT_EQ(aborts_, 1);
    EXPECT_EQ(cache.size(), 1u) << "the aborted communicator is dropped";
    EXPECT_EQ(cache.CheckDeadlines(now + absl::Seconds(7)), 0) << "aborted once";
  }
  EXPECT_EQ(cache.CheckDeadlines(now + absl::Hours(1)), 0) << "finished operations are not watched";
  ASSERT_TRUE(cache.Get(Bootstrap("p|d1")).ok());
  EXPECT_EQ(created_, 3) << "the next handoff forms a new communicator";
}

TEST_F(CommCacheTest, PeerDeathAbortsAndTheWatchdogThreadAbortsLateOperations) {
  CommCache cache(Factory(), absl::Milliseconds(1));
  ASSERT_TRUE(cache.Get(Bootstrap("p|d1")).ok());
  CommCache::Guard in_flight = cache.Watch("p|d1", absl::InfiniteFuture());
  cache.PeerDied("p|d1");
  EXPECT_TRUE(in_flight.aborted());
  EXPECT_EQ(aborts_, 1);
  EXPECT_EQ(cache.size(), 0u);
  cache.PeerDied("p|d1");
  EXPECT_EQ(aborts_, 1) << "an unknown peer aborts nothing";
  // The thread: a deadline already passed is aborted without anyone calling CheckDeadlines.
  ASSERT_TRUE(cache.Get(Bootstrap("p|d2")).ok());
  CommCache::Guard late = cache.Watch("p|d2", absl::InfinitePast());
  for (int i = 0; i < 10000 && !late.aborted(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(late.aborted());
  EXPECT_EQ(aborts_, 2);
}

}  // namespace
}  // namespace latentserve::transfer
