// Workers announce themselves to every router replica: a list, or all addresses of a name.
#include "worker/announcer_set.h"

#include <atomic>
#include <memory>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"

namespace latentserve::worker {
namespace {

TEST(ResolveAll, LiteralsNamesAndErrors) {
  auto v4 = ResolveAll("127.0.0.1:5");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(*v4, std::vector<std::string>{"127.0.0.1:5"});
  auto v6 = ResolveAll("[::1]:7");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(*v6, std::vector<std::string>{"[::1]:7"});
  auto name = ResolveAll("localhost:80");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_TRUE(std::set<std::string>(name->begin(), name->end()).count("127.0.0.1:80"));
  for (const char* bad : {"noport", ":80", "host:", "host:0", "host:x", "host:70000"}) {
    EXPECT_EQ(ResolveAll(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ResolveAll("no-such-host.invalid:80").status().code(), absl::StatusCode::kUnavailable);
}

class CountingRegistry final : public internal::v1::WorkerRegistry::Service {
 public:
  CountingRegistry() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~CountingRegistry() override { server_->Shutdown(); }
  grpc::Status RegisterWorker(grpc::ServerContext*, const internal::v1::RegisterWorkerRequest* request,
                              internal::v1::RegisterWorkerResponse*) override {
    if (request->address() == "worker:1") registered_++;
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const internal::v1::HeartbeatRequest*, internal::v1::HeartbeatResponse*) override {
    return grpc::Status::OK;
  }
  int port() const { return port_; }
  int registered() const { return registered_.load(); }

 private:
  int port_ = 0;
  std::atomic<int> registered_{0};
  std::unique_ptr<grpc::Server> server_;
};

bool WaitFor(const std::function<bool()>& done) {
  for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end; absl::SleepFor(absl::Milliseconds(20))) {
    if (done()) return true;
  }
  return done();
}

TEST(AnnouncerSet, RegistersWithEveryListedRouterAndEveryResolvedAddress) {
  CountingRegistry a, b, c;
  AnnouncerSet set({absl::StrCat("127.0.0.1:", a.port()), absl::StrCat("127.0.0.1:", b.port())},
                   absl::StrCat("localhost:", c.port()), "worker:1", "decode", internal::v1::ModelDescriptor(),
                   [] { return v1::WorkerInfo(); }, absl::Milliseconds(50));
  EXPECT_TRUE(WaitFor([&] { return a.registered() > 0 && b.registered() > 0 && c.registered() > 0; }))
      << a.registered() << " " << b.registered() << " " << c.registered();
  std::set<std::string> targets;
  for (const std::string& t : set.Targets()) targets.insert(t);
  EXPECT_TRUE(targets.count(absl::StrCat("127.0.0.1:", c.port()))) << "the resolved replica is announced to";
}

}  // namespace
}  // namespace latentserve::worker
