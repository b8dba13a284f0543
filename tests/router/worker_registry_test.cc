// Placement: concurrent requests must spread over workers, and sequential ones must rotate
// when the workers look the same. The workers are real WorkerStats servers on loopback so
// the registry's monitor sees them alive, as it does in production.
#include "router/worker_registry.h"

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "latentserve/v1/worker.grpc.pb.h"

namespace latentserve::router {
namespace {

v1::ModelDescriptor TestModel() {
  v1::ModelDescriptor model;
  model.set_name("test");
  model.set_fingerprint("0123456789abcdef");
  model.set_max_context_tokens(4096);
  return model;
}

class StatsServer final : public v1::WorkerStats::Service {
 public:
  explicit StatsServer(std::string role) : role_(std::move(role)) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  ~StatsServer() override { server_->Shutdown(); }

  grpc::Status GetWorkerStats(grpc::ServerContext*, const v1::GetWorkerStatsRequest*,
                              v1::GetWorkerStatsResponse* response) override {
    response->set_role(role_);
    *response->mutable_model() = TestModel();
    response->mutable_stats()->set_cache_pages_free(100);
    response->mutable_stats()->set_page_tokens(64);
    return grpc::Status::OK;
  }

  v1::RegisterWorkerRequest Registration() const {
    v1::RegisterWorkerRequest request;
    request.set_address(address_);
    request.set_role(role_);
    *request.mutable_model() = TestModel();
    request.mutable_stats()->set_cache_pages_free(100);
    request.mutable_stats()->set_page_tokens(64);
    return request;
  }
  const std::string& address() const { return address_; }

 private:
  std::string role_;
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

TEST_F(PlacementTest, PrefillClaimsFollowOutstandingCost) {
  auto big = registry_.ClaimPrefill(1e6, {});
  auto small = registry_.ClaimPrefill(1.0, {});
  ASSERT_TRUE(big && small);
  EXPECT_NE(*big, *small);
  // The worker with the small job is less loaded, so it takes the next one too.
  auto next = registry_.ClaimPrefill(1.0, {});
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, *small);
  registry_.ReleasePrefill(*big, 1e6);
  registry_.ReleasePrefill(*small, 1.0);
  registry_.ReleasePrefill(*next, 1.0);
  // All released: equal cost, so placement rotates.
  auto x = registry_.ClaimPrefill(1.0, {});
  ASSERT_TRUE(x);
  registry_.ReleasePrefill(*x, 1.0);
  auto y = registry_.ClaimPrefill(1.0, {});
  ASSERT_TRUE(y);
  registry_.ReleasePrefill(*y, 1.0);
  EXPECT_NE(*x, *y);
}

}  // namespace
}  // namespace latentserve::router
