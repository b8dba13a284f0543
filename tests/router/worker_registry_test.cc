// Placement: concurrent requests must spread over workers, and sequential ones must rotate
// when the workers look the same. The workers are real WorkerStats servers on loopback so
// the registry's monitor sees them alive, as it does in production.
#include "router/worker_registry.h"

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"

namespace latentserve::router {
namespace {

internal::v1::ModelDescriptor TestModel(int64_t max_context_tokens = 4096) {
  internal::v1::ModelDescriptor model;
  model.set_name("test");
  model.set_fingerprint("0123456789abcdef");
  model.set_max_context_tokens(max_context_tokens);
  return model;
}

class StatsServer final : public internal::v1::WorkerStats::Service {
 public:
  explicit StatsServer(std::string role, int64_t max_context_tokens = 4096)
      : role_(std::move(role)), max_context_tokens_(max_context_tokens) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  ~StatsServer() override { server_->Shutdown(); }

  grpc::Status GetWorkerStats(grpc::ServerContext*, const internal::v1::GetWorkerStatsRequest*,
                              internal::v1::GetWorkerStatsResponse* response) override {
    response->set_role(role_);
    *response->mutable_model() = TestModel(max_context_tokens_);
    response->mutable_stats()->set_cache_pages_free(100);
    response->mutable_stats()->set_page_tokens(64);
    return grpc::Status::OK;
  }

  internal::v1::RegisterWorkerRequest Registration() const {
    internal::v1::RegisterWorkerRequest request;
    request.set_address(address_);
    request.set_role(role_);
    *request.mutable_model() = TestModel(max_context_tokens_);
    request.mutable_stats()->set_cache_pages_free(100);
    request.mutable_stats()->set_page_tokens(64);
    return request;
  }
  const std::string& address() const { return address_; }

 private:
  std::string role_;
  int64_t max_context_tokens_;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
};

// A worker whose stats call answers only once `group_size` calls are in flight across the
// group (a barrier), then reports 777 free pages. Polled one at a time, each call would wait
// for the others and miss its deadline; polled together, all answer.
class BarrierStatsServer final : public internal::v1::WorkerStats::Service {
 public:
  struct Group {
    std::mutex mu;
    std::condition_variable cv;
    int size = 0;         // calls that must be in flight together
    int in_flight = 0;
    int64_t released = 0;  // rounds in which `size` calls met
  };
  explicit BarrierStatsServer(Group& group) : group_(group) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  ~BarrierStatsServer() override { server_->Shutdown(); }

  grpc::Status GetWorkerStats(grpc::ServerContext* context, const internal::v1::GetWorkerStatsRequest*,
                              internal::v1::GetWorkerStatsResponse* response) override {
    std::unique_lock<std::mutex> lock(group_.mu);
    const int64_t round = group_.released;
    if (++group_.in_flight == group_.size) {
      ++group_.released;
      group_.cv.notify_all();
    }
    // Bounded by the caller's deadline: a call the others do not join in time fails.
    const bool joined = group_.cv.wait_until(lock, context->deadline(), [&] { return group_.released > round; });
    --group_.in_flight;
    if (!joined) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the other polls did not come");
    response->set_role("decode");
    *response->mutable_model() = TestModel();
    response->mutable_stats()->set_cache_pages_free(777);
    return grpc::Status::OK;
  }
  const std::string& address() const { return address_; }

 private:
  Group& group_;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
};

class PlacementTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      decode_.push_back(std::make_unique<StatsServer>("decode"));
      prefill_.push_back(std::make_unique<StatsServer>("prefill"));
      ASSERT_TRUE(registry_.Register(decode_.back()->Registration()).ok());
      ASSERT_TRUE(registry_.Register(prefill_.back()->Registration()).ok());
    }
  }

  std::vector<std::unique_ptr<StatsServer>> decode_, prefill_;
  WorkerRegistry registry_{absl::Milliseconds(50)};
};

TEST_F(PlacementTest, ConcurrentDecodeClaimsGoToDifferentWorkers) {
  auto a = registry_.ClaimDecode(1000, {});
  auto b = registry_.ClaimDecode(1000, {});
  ASSERT_TRUE(a && b);
  EXPECT_NE(*a, *b);
  registry_.ReleaseDecode(*a);
  registry_.ReleaseDecode(*b);
}

TEST_F(PlacementTest, SequentialDecodeClaimsRotateOverEqualWorkers) {
  std::set<std::string> used;
  for (int i = 0; i < 4; ++i) {
    auto w = registry_.ClaimDecode(1000, {});
    ASSERT_TRUE(w);
    used.insert(*w);
    registry_.ReleaseDecode(*w);
  }
  EXPECT_EQ(used.size(), 2u);
}

TEST_F(PlacementTest, DecodeClaimSkipsExcludedAndTooSmallWorkers) {
  auto first = registry_.ClaimDecode(1000, {});
  ASSERT_TRUE(first);
  registry_.ReleaseDecode(*first);
  auto other = registry_.ClaimDecode(1000, {*first});
  ASSERT_TRUE(other);
  EXPECT_NE(*other, *first);
  registry_.ReleaseDecode(*other);
  EXPECT_FALSE(registry_.ClaimDecode(1000, {decode_[0]->address(), decode_[1]->address()}));
  EXPECT_FALSE(registry_.ClaimDecode(TestModel().max_context_tokens() + 1, {}));
}

TEST_F(PlacementTest, PrefillClaimSkipsWorkersWhoseCacheCannotHoldThePrompt) {
  // A third prefill worker with a small cache: prompts longer than it never go there, however idle.
  StatsServer small("prefill", /*max_context_tokens=*/1024);
  ASSERT_TRUE(registry_.Register(small.Registration()).ok());
  EXPECT_EQ(registry_.MaxContextTokens("prefill"), TestModel().max_context_tokens());
  std::vector<std::string> claimed;
  for (int i = 0; i < 6; ++i) {
    auto w = registry_.ClaimPrefill(3000, 9e6, {});
    ASSERT_TRUE(w);
    EXPECT_NE(*w, small.address());
    claimed.push_back(*w);
  }
  for (const std::string& w : claimed) registry_.ReleasePrefill(w, 9e6);
  auto fits = registry_.ClaimPrefill(1000, 1.0, {prefill_[0]->address(), prefill_[1]->address()});
  ASSERT_TRUE(fits);
  EXPECT_EQ(*fits, small.address());
  registry_.ReleasePrefill(*fits, 1.0);
  EXPECT_FALSE(registry_.ClaimPrefill(TestModel().max_context_tokens() + 1, 1.0, {}));
}

TEST_F(PlacementTest, PrefillClaimsFollowOutstandingCost) {
  auto big = registry_.ClaimPrefill(100, 1e6, {});
  auto small = registry_.ClaimPrefill(100, 1.0, {});
  ASSERT_TRUE(big && small);
  EXPECT_NE(*big, *small);
  // The worker with the small job is less loaded, so it takes the next one too.
  auto next = registry_.ClaimPrefill(100, 1.0, {});
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, *small);
  registry_.ReleasePrefill(*big, 1e6);
  registry_.ReleasePrefill(*small, 1.0);
  registry_.ReleasePrefill(*next, 1.0);
  // All released: equal cost, so placement rotates.
  auto x = registry_.ClaimPrefill(100, 1.0, {});
  ASSERT_TRUE(x);
  registry_.ReleasePrefill(*x, 1.0);
  auto y = registry_.ClaimPrefill(100, 1.0, {});
  ASSERT_TRUE(y);
  registry_.ReleasePrefill(*y, 1.0);
  EXPECT_NE(*x, *y);
}

// Registrations are bounded (issue 17, 3): forged ones cannot grow the router without end,
// addresses must be HOST:PORT, and a worker nobody hears from is forgotten.
internal::v1::RegisterWorkerRequest RegistrationAt(const std::string& address) {
  internal::v1::RegisterWorkerRequest request;
  request.set_address(address);
  request.set_role("decode");
  *request.mutable_model() = TestModel();
  return request;
}

bool Wait(const std::function<bool()>& predicate, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return predicate();
}

TEST(RegistryLimitsTest, NewRegistrationsBeyondTheCapAreRefused) {
  RegistryLimits limits;
  limits.max_workers = 3;
  WorkerRegistry registry(absl::Milliseconds(50), limits);
  registry.AddStatic("127.0.0.1:5", "prefill");  // static entries do not count
  for (int port = 1; port <= 3; ++port) {
    ASSERT_TRUE(registry.Register(RegistrationAt(absl::StrCat("127.0.0.1:", port))).ok()) << port;
  }
  const absl::Status refused = registry.Register(RegistrationAt("127.0.0.1:4"));
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_TRUE(registry.Register(RegistrationAt("127.0.0.1:2")).ok());  // re-registering is not growth
  EXPECT_EQ(registry.Snapshot().size(), 4u);
}

TEST(RegistryLimitsTest, AddressesMustBeHostAndPort) {
  WorkerRegistry registry(absl::Milliseconds(50));
  for (const char* bad : {"unix:/tmp/x.sock", "dns:///example.com:80", "127.0.0.1", "host:0", "host:65536", "a b:1",
                          "", "[::1:5"}) {
    EXPECT_EQ(registry.Register(RegistrationAt(bad)).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  for (const char* good : {"127.0.0.1:7", "decode-0.latentserve-workers.ns.svc.cluster.local:50051", "[::1]:8"}) {
    EXPECT_TRUE(registry.Register(RegistrationAt(good)).ok()) << good;
  }
}

TEST(RegistryLimitsTest, UnheardWorkersAreEvicted) {
  RegistryLimits limits;
  limits.evict_after = absl::Milliseconds(300);
  WorkerRegistry registry(absl::Milliseconds(50), limits);
  StatsServer real("decode");
  ASSERT_TRUE(registry.Register(real.Registration()).ok());
  ASSERT_TRUE(registry.Register(RegistrationAt("127.0.0.1:1")).ok());  // nobody listens there
  registry.AddStatic("127.0.0.1:2", "prefill");                        // static: never evicted
  const auto addresses = [&] {
    std::set<std::string> out;
    for (const WorkerEntry& w : registry.Snapshot()) out.insert(w.address);
    return out;
  };
  EXPECT_TRUE(Wait([&] { return !addresses().count("127.0.0.1:1"); }, absl::Seconds(10)));
  const std::set<std::string> left = addresses();
  EXPECT_TRUE(left.count(real.address()));  // answers its polls: kept
  EXPECT_TRUE(left.count("127.0.0.1:2"));
}

TEST(RegistryPollTest, WorkersArePolledConcurrently) {
  BarrierStatsServer::Group group;
  group.size = 4;
  std::vector<std::unique_ptr<BarrierStatsServer>> workers;
  WorkerRegistry registry(absl::Milliseconds(50));
  for (int i = 0; i < group.size; ++i) {
    workers.push_back(std::make_unique<BarrierStatsServer>(group));
    internal::v1::RegisterWorkerRequest request = RegistrationAt(workers.back()->address());
    request.mutable_stats()->set_cache_pages_free(100);
    ASSERT_TRUE(registry.Register(request).ok());
  }
  const auto all_polled = [&] {
    const std::vector<WorkerEntry> entries = registry.Snapshot();
    return std::all_of(entries.begin(), entries.end(),
                       [](const WorkerEntry& w) { return w.alive && w.stats.cache_pages_free() == 777; });
  };
  EXPECT_TRUE(Wait(all_polled, absl::Seconds(20)));
}

TEST(RegistryLimitsTest, PinnedFingerprintIsNotDecidedByTheFirstRegistration) {
  WorkerRegistry registry(absl::Milliseconds(50));
  registry.PinFingerprint(TestModel().fingerprint());
  internal::v1::RegisterWorkerRequest bogus = RegistrationAt("127.0.0.1:9");
  bogus.mutable_model()->set_fingerprint("bogus");
  EXPECT_EQ(registry.Register(bogus).code(), absl::StatusCode::kFailedPrecondition);
  StatsServer real("decode");
  EXPECT_TRUE(registry.Register(real.Registration()).ok());
  ASSERT_TRUE(registry.Model().has_value());
  EXPECT_EQ(registry.Model()->fingerprint(), TestModel().fingerprint());
}

}  // namespace
}  // namespace latentserve::router
