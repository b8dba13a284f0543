// Trust boundaries of a split deployment (issue 17), against real processes on loopback:
// `latentserve router`, `prefill` and `decode` started from the built binary, certificates made
// with the openssl CLI, every call real gRPC. A caller with a public client's credentials
// (a certificate of the cluster CA, the public bearer token) must be refused on every internal
// method; cluster components (the component certificate's CN, or the internal token) must not.
//
// The binary: $LATENTSERVE_BIN, else the one this test was built with (LATENTSERVE_BIN_PATH).
#include <signal.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "latentserve/v1/generate.grpc.pb.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"

namespace latentserve {
namespace {

namespace v1 = ::latentserve::v1;
using std::chrono::milliseconds;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteAll(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Polls `predicate` every 20 ms for at most `timeout`.
bool WaitFor(const std::function<bool()>& predicate, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (predicate()) return true;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return predicate();
}

std::string Bin() {
  if (const char* bin = std::getenv("LATENTSERVE_BIN")) return bin;
#ifdef LATENTSERVE_BIN_PATH
  return LATENTSERVE_BIN_PATH;
#else
  return "";
#endif
}

int RunQuiet(const std::string& command) { return std::system(("(" + command + ") >/dev/null 2>&1").c_str()); }

// One `latentserve` child process; stdout+stderr go to <dir>/<name>.log. Killed on destruction.
class Process {
 public:
  Process(const std::string& dir, const std::string& name, std::vector<std::string> args, bool wait_listening = true)
      : log_(dir + "/" + name + ".log"), port_file_(dir + "/" + name + ".port") {
    unlink(port_file_.c_str());
    args.insert(args.begin(), Bin());
    if (wait_listening) {
      args.push_back("--port-file");
      args.push_back(port_file_);
    }
    pid_ = fork();
    if (pid_ == 0) {
      FILE* log = std::fopen(log_.c_str(), "w");
      if (log) {
        dup2(fileno(log), 1);
        dup2(fileno(log), 2);
      }
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    if (wait_listening) {
      WaitFor([&] { return Exited() || !ReadAll(port_file_).empty(); }, milliseconds(60000));
      address_ = ReadAll(port_file_);
      while (!address_.empty() && (address_.back() == '\n' || address_.back() == ' ')) address_.pop_back();
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // True once the process has ended (its status then in exit_code()).
  bool Exited() {
    if (exited_) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return exited_;
  }
  int exit_code() const { return exit_code_; }
  const std::string& address() const { return address_; }
  std::string log() const { return ReadAll(log_); }

 private:
  std::string log_;
  std::string port_file_;
  std::string address_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
};

// Files shared by every test: the model, a CA, component and client certificates, tokens.
struct Fixture {
  std::string dir;
  std::string model;
  std::string ca, node_cert, node_key, node2_cert, node2_key, client_cert, client_key;
  std::string public_token, internal_token;  // file paths
  std::string public_token_value = "public-test-token", internal_token_value = "internal-test-token-7f3a";
  bool ok = false;
};

std::string* work_dir = nullptr;  // set once Files() made it

// Removes the work directory when the test binary ends (KEEP_WORK=1 keeps it).
class RemoveWorkDir : public ::testing::Environment {
 public:
  void TearDown() override;
};

Fixture& Files() {
  static Fixture* fixture = [] {
    auto* f = new Fixture();
    char pattern[] = "/tmp/latentserve-auth-XXXXXX";
    f->dir = mkdtemp(pattern);
    work_dir = new std::string(f->dir);
    f->model = f->dir + "/model.gguf";
    const std::string d = f->dir;
    int rc = RunQuiet(Bin() + " make-test-model --out " + f->model + " --seed 5");
    const std::string key = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
    rc |= RunQuiet("cd " + d + " && openssl req -x509" + key + "-keyout ca.key -out ca.pem -days 1 -subj /CN=auth-test-ca");
    WriteAll(d + "/san.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
    for (const auto& [name, cn] : std::vector<std::pair<std::string, std::string>>{
             {"node", "latentserve-node"}, {"node2", "latentserve-node2"}, {"client", "test-client"}}) {
      rc |= RunQuiet("cd " + d + " && openssl req" + key + "-keyout " + name + ".key -out " + name + ".csr -subj /CN=" +
                     cn + " && openssl x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key -CAcreateserial -out " +
                     name + ".pem -days 1 -extfile san.ext");
    }
    f->ca = d + "/ca.pem";
    f->node_cert = d + "/node.pem";
    f->node_key = d + "/node.key";
    f->node2_cert = d + "/node2.pem";
    f->node2_key = d + "/node2.key";
    f->client_cert = d + "/client.pem";
    f->client_key = d + "/client.key";
    f->public_token = d + "/public-token";
    f->internal_token = d + "/internal-token";
    WriteAll(f->public_token, f->public_token_value + "\n");
    WriteAll(f->internal_token, f->internal_token_value + "\n");
    f->ok = rc == 0;
    return f;
  }();
  return *fixture;
}

void RemoveWorkDir::TearDown() {
  if (work_dir && !std::getenv("KEEP_WORK")) RunQuiet("rm -rf '" + *work_dir + "'");
}
const ::testing::Environment* const kRemoveWorkDir = ::testing::AddGlobalTestEnvironment(new RemoveWorkDir);

std::shared_ptr<grpc::ChannelCredentials> TlsAs(const std::string& cert, const std::string& key) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadAll(Files().ca);
  if (!cert.empty()) {
    options.pem_cert_chain = ReadAll(cert);
    options.pem_private_key = ReadAll(key);
  }
  return grpc::SslCredentials(options);
}

// Metadata a caller attaches to each call.
struct Caller {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::vector<std::pair<std::string, std::string>> metadata;

  std::shared_ptr<grpc::Channel> To(const std::string& address) const {
    return grpc::CreateChannel(address, credentials);
  }
  void Prepare(grpc::ClientContext& context, milliseconds timeout = milliseconds(5000)) const {
    for (const auto& [k, v] : metadata) context.AddMetadata(k, v);
    context.set_deadline(std::chrono::system_clock::now() + timeout);
  }
};

// A router, one prefill and one decode worker, each its own process.
struct Cluster {
  std::unique_ptr<Process> router, prefill, decode;

  Cluster(const std::string& name, const std::vector<std::string>& router_flags,
          const std::vector<std::string>& worker_flags, const std::vector<std::string>& decode_flags = {}) {
    const std::string dir = Files().dir + "/" + name;
    mkdir(dir.c_str(), 0700);
    std::vector<std::string> r = {"router", "--listen", "127.0.0.1:0"};
    r.insert(r.end(), router_flags.begin(), router_flags.end());
    router = std::make_unique<Process>(dir, "router", r);
    auto worker = [&](const char* role, const std::vector<std::string>& extra) {
      std::vector<std::string> w = {role, "--listen", "127.0.0.1:0", "--router", router->address(), "--model",
                                    Files().model, "--threads", "1", "--chunk", "64"};
      w.insert(w.end(), worker_flags.begin(), worker_flags.end());
      w.insert(w.end(), extra.begin(), extra.end());
      return std::make_unique<Process>(dir, role, w);
    };
    prefill = worker("prefill", {});
    decode = worker("decode", decode_flags);
  }
  bool Listening() const {
    return !router->address().empty() && !prefill->address().empty() && !decode->address().empty();
  }
  std::string Logs() const {
    return "router:\n" + router->log() + "\nprefill:\n" + prefill->log() + "\ndecode:\n" + decode->log();
  }
};

// GetModelInfo through the router as `caller`: both workers alive?
bool BothWorkersAlive(const Cluster& cluster, const Caller& caller) {
  auto stub = v1::Generation::NewStub(caller.To(cluster.router->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  v1::GetModelInfoResponse info;
  if (!stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return false;
  int alive = 0;
  for (const auto& w : info.workers()) alive += w.alive() ? 1 : 0;
  return alive == 2;
}

// After a forged "draining" heartbeat: wait until the router's next poll has undone it.
bool NoneDraining(const Cluster& cluster, const Caller& caller) {
  auto stub = v1::Generation::NewStub(caller.To(cluster.router->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  v1::GetModelInfoResponse info;
  if (!stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return false;
  int ready = 0;
  for (const auto& w : info.workers()) ready += (w.alive() && !w.draining()) ? 1 : 0;
  return ready == 2;
}

// One generation through the router; returns the status and the number of tokens seen.
grpc::Status Generate(const Cluster& cluster, const Caller& caller, int max_tokens, int* tokens) {
  auto stub = v1::Generation::NewStub(caller.To(cluster.router->address()));
  grpc::ClientContext context;
  caller.Prepare(context, milliseconds(60000));
  v1::GenerateRequest request;
  for (int i = 0; i < 40; ++i) request.mutable_tokens()->add_ids((i * 7 + 1) % 300);
  request.mutable_stopping()->set_max_tokens(max_tokens);
  request.mutable_stopping()->set_ignore_eos(true);
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse event;
  *tokens = 0;
  while (reader->Read(&event)) {
    if (event.has_tokens()) *tokens += event.tokens().token_ids_size();
  }
  return reader->Finish();
}

std::string Fingerprint(const Cluster& cluster, const Caller& component) {
  auto stub = internal::v1::WorkerStats::NewStub(component.To(cluster.decode->address()));
  grpc::ClientContext context;
  component.Prepare(context);
  internal::v1::GetWorkerStatsResponse stats;
  grpc::Status status = stub->GetWorkerStats(&context, internal::v1::GetWorkerStatsRequest(), &stats);
  return status.ok() ? stats.model().fingerprint() : "";
}

// Every internal method of the cluster, called as `caller`; returns each method's status.
std::vector<std::pair<std::string, grpc::Status>> CallEveryInternalMethod(const Cluster& cluster, const Caller& caller,
                                                                          const std::string& fingerprint) {
  std::vector<std::pair<std::string, grpc::Status>> out;
  auto decode = internal::v1::DecodeWorker::NewStub(caller.To(cluster.decode->address()));
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::ReserveLeaseRequest request;
    request.set_request_id("intruder");
    request.set_tokens(64);
    request.set_ttl_ms(2000);
    request.set_model_fingerprint(fingerprint);
    internal::v1::ReserveLeaseResponse response;
    out.emplace_back("DecodeWorker.ReserveLease", decode->ReserveLease(&context, request, &response));
    if (out.back().second.ok()) {  // admitted: give the pages back at once (not one of the checked calls)
      grpc::ClientContext release_context;
      caller.Prepare(release_context);
      internal::v1::ReleaseLeaseRequest release;
      release.set_lease_id(response.lease_id());
      internal::v1::ReleaseLeaseResponse released;
      decode->ReleaseLease(&release_context, release, &released);
    }
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::ReleaseLeaseRequest request;
    request.set_lease_id("lease-1");
    internal::v1::ReleaseLeaseResponse response;
    out.emplace_back("DecodeWorker.ReleaseLease", decode->ReleaseLease(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::RenewLeaseRequest request;
    request.set_lease_id("lease-1");
    request.set_ttl_ms(1000);
    internal::v1::RenewLeaseResponse response;
    out.emplace_back("DecodeWorker.RenewLease", decode->RenewLease(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::PinSessionRequest request;
    request.set_session_id("sess-1");
    request.add_token_ids(1);
    internal::v1::PinSessionResponse response;
    out.emplace_back("DecodeWorker.PinSession", decode->PinSession(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::DropSessionRequest request;
    request.set_session_id("sess-1");
    internal::v1::DropSessionResponse response;
    out.emplace_back("DecodeWorker.DropSession", decode->DropSession(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::DecodeRequest request;
    request.set_lease_id("lease-1");
    request.set_max_new_tokens(4);
    auto reader = decode->Decode(&context, request);
    internal::v1::DecodeResponse event;
    while (reader->Read(&event)) {
    }
    out.emplace_back("DecodeWorker.Decode", reader->Finish());
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::ReadPrefixRequest request;
    request.set_lease_id("lease-1");
    request.set_model_fingerprint(fingerprint);
    auto reader = decode->ReadPrefix(&context, request);
    internal::v1::ReadPrefixResponse event;
    while (reader->Read(&event)) {
    }
    out.emplace_back("DecodeWorker.ReadPrefix", reader->Finish());
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::ReceiveCacheResponse response;
    auto writer = decode->ReceiveCache(&context, &response);
    internal::v1::ReceiveCacheRequest header;
    header.mutable_header()->set_lease_id("lease-1");
    header.mutable_header()->set_model_fingerprint(fingerprint);
    writer->Write(header);
    writer->WritesDone();
    out.emplace_back("DecodeWorker.ReceiveCache", writer->Finish());
  }
  {
    auto prefill = internal::v1::PrefillWorker::NewStub(caller.To(cluster.prefill->address()));
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::PrefillRequest request;
    request.set_request_id("intruder");
    request.set_lease_id("lease-1");
    request.set_decode_worker(cluster.decode->address());
    request.add_token_ids(1);
    request.set_model_fingerprint(fingerprint);
    auto reader = prefill->Prefill(&context, request);
    internal::v1::PrefillResponse event;
    while (reader->Read(&event)) {
    }
    out.emplace_back("PrefillWorker.Prefill", reader->Finish());
  }
  for (const Process* worker : {cluster.prefill.get(), cluster.decode.get()}) {
    auto stats = internal::v1::WorkerStats::NewStub(caller.To(worker->address()));
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::GetWorkerStatsResponse response;
    out.emplace_back("WorkerStats.GetWorkerStats", stats->GetWorkerStats(&context, internal::v1::GetWorkerStatsRequest(), &response));
  }
  auto registry = internal::v1::WorkerRegistry::NewStub(caller.To(cluster.router->address()));
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::RegisterWorkerRequest request;
    request.set_address("127.0.0.1:9");
    request.set_role("decode");
    request.mutable_model()->set_fingerprint("bogus");
    internal::v1::RegisterWorkerResponse response;
    out.emplace_back("WorkerRegistry.RegisterWorker", registry->RegisterWorker(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    caller.Prepare(context);
    internal::v1::HeartbeatRequest request;
    request.set_address(cluster.decode->address());
    request.mutable_stats()->set_draining(true);
    internal::v1::HeartbeatResponse response;
    out.emplace_back("WorkerRegistry.Heartbeat", registry->Heartbeat(&context, request, &response));
  }
  return out;
}

// ---- mutual TLS: components are CN=latentserve-node; public clients hold CN=test-client ----

// A fatal failure inside SetUpTestSuite makes gtest report the suite's tests as SKIPPED,
// which ctest counts as skips, not failures: the suites record why their shared setup (the
// model, the certificates, the cluster) failed, and every test then fails with that reason.
template <typename Suite>
class ClusterSuite : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(setup_error().empty()) << setup_error(); }
  static std::string& setup_error() {
    static std::string error;
    return error;
  }
  static void SetupFailed(const std::string& why) { setup_error() = why; }
};

class MutualTls : public ClusterSuite<MutualTls> {
 protected:
  static void SetUpTestSuite() {
    if (Bin().empty()) return SetupFailed("set LATENTSERVE_BIN");
    if (!Files().ok) return SetupFailed("making the model or the certificates failed in " + Files().dir);
    const Fixture& f = Files();
    const std::vector<std::string> tls = {"--tls-cert", f.node_cert, "--tls-key", f.node_key, "--tls-ca", f.ca,
                                          "--internal-peer-cn", "latentserve-node,latentserve-node2"};
    std::vector<std::string> router_flags = tls;
    router_flags.insert(router_flags.end(), {"--auth-token-file", f.public_token});
    cluster_ = new Cluster("mtls", router_flags, tls);
    if (!cluster_->Listening()) return SetupFailed(cluster_->Logs());
    if (!WaitFor([] { return BothWorkersAlive(*cluster_, PublicClient()); }, milliseconds(30000))) {
      return SetupFailed(cluster_->Logs());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  // A public client: a certificate of the cluster CA and the public bearer token.
  static Caller PublicClient() {
    return {TlsAs(Files().client_cert, Files().client_key),
            {{"authorization", "Bearer " + Files().public_token_value}}};
  }
  static Caller Component() { return {TlsAs(Files().node_cert, Files().node_key), {}}; }
  static Cluster* cluster_;
};
Cluster* MutualTls::cluster_ = nullptr;

TEST_F(MutualTls, PublicClientIsRefusedOnEveryInternalMethod) {
  const std::string fingerprint = Fingerprint(*cluster_, Component());
  ASSERT_FALSE(fingerprint.empty());
  const auto results = CallEveryInternalMethod(*cluster_, PublicClient(), fingerprint);
  ASSERT_EQ(results.size(), 13u);
  for (const auto& [method, status] : results) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method << ": " << status.error_message();
  }
  // The forged registration and heartbeat changed nothing: both real workers still serve.
  int tokens = 0;
  grpc::Status status = Generate(*cluster_, PublicClient(), 4, &tokens);
  EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << cluster_->Logs();
  EXPECT_EQ(tokens, 4);
}

TEST_F(MutualTls, ComponentCertificateIsAdmitted) {
  // The same calls as a cluster component get past authorization (they may still fail on
  // their arguments: the lease ids are made up).
  const std::string fingerprint = Fingerprint(*cluster_, Component());
  ASSERT_FALSE(fingerprint.empty());
  for (const auto& [method, status] : CallEveryInternalMethod(*cluster_, Component(), fingerprint)) {
    EXPECT_NE(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method << ": " << status.error_message();
    EXPECT_NE(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method << ": " << status.error_message();
  }
  EXPECT_TRUE(WaitFor([] { return NoneDraining(*cluster_, PublicClient()); }, milliseconds(10000)));
}

TEST_F(MutualTls, GenerationThroughTheRouterStillWorks) {
  int tokens = 0;
  grpc::Status status = Generate(*cluster_, PublicClient(), 6, &tokens);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << cluster_->Logs();
  EXPECT_EQ(tokens, 6);
  // Without the public token the router's public API still says UNAUTHENTICATED.
  Caller no_token{TlsAs(Files().client_cert, Files().client_key), {}};
  status = Generate(*cluster_, no_token, 2, &tokens);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << status.error_message();
}

v1::WorkerInfo DecodeStats(const Cluster& cluster, const Caller& component) {
  auto stub = internal::v1::WorkerStats::NewStub(component.To(cluster.decode->address()));
  grpc::ClientContext context;
  component.Prepare(context);
  internal::v1::GetWorkerStatsResponse stats;
  EXPECT_TRUE(stub->GetWorkerStats(&context, internal::v1::GetWorkerStatsRequest(), &stats).ok());
  return stats.stats();
}

grpc::Status Reserve(const Cluster& cluster, const Caller& caller, int64_t tokens, int64_t ttl_ms, std::string* lease_id) {
  auto stub = internal::v1::DecodeWorker::NewStub(caller.To(cluster.decode->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  internal::v1::ReserveLeaseRequest request;
  request.set_request_id("lease-test");
  request.set_tokens(tokens);
  request.set_ttl_ms(ttl_ms);
  request.set_model_fingerprint(Fingerprint(cluster, caller));
  internal::v1::ReserveLeaseResponse response;
  grpc::Status status = stub->ReserveLease(&context, request, &response);
  *lease_id = response.lease_id();
  return status;
}

grpc::Status Release(const Cluster& cluster, const Caller& caller, const std::string& lease_id) {
  auto stub = internal::v1::DecodeWorker::NewStub(caller.To(cluster.decode->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  internal::v1::ReleaseLeaseRequest request;
  request.set_lease_id(lease_id);
  internal::v1::ReleaseLeaseResponse response;
  return stub->ReleaseLease(&context, request, &response);
}

grpc::Status Renew(const Cluster& cluster, const Caller& caller, const std::string& lease_id) {
  auto stub = internal::v1::DecodeWorker::NewStub(caller.To(cluster.decode->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  internal::v1::RenewLeaseRequest request;
  request.set_lease_id(lease_id);
  request.set_ttl_ms(5000);
  internal::v1::RenewLeaseResponse response;
  return stub->RenewLease(&context, request, &response);
}

grpc::Status DecodeLease(const Cluster& cluster, const Caller& caller, const std::string& lease_id) {
  auto stub = internal::v1::DecodeWorker::NewStub(caller.To(cluster.decode->address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  internal::v1::DecodeRequest request;
  request.set_lease_id(lease_id);
  request.set_max_new_tokens(2);
  auto reader = stub->Decode(&context, request);
  internal::v1::DecodeResponse event;
  while (reader->Read(&event)) {
  }
  return reader->Finish();
}

bool IsLeaseId(const std::string& id) {
  if (id.size() != 6 + 32 || id.compare(0, 6, "lease-") != 0) return false;
  for (size_t i = 6; i < id.size(); ++i) {
    if (!std::isxdigit(static_cast<unsigned char>(id[i])) || std::isupper(static_cast<unsigned char>(id[i]))) return false;
  }
  return true;
}

TEST_F(MutualTls, LeaseIdsAreUnguessableAndBoundToTheirOwner) {
  const Caller owner = Component();
  const Caller other_component{TlsAs(Files().node2_cert, Files().node2_key), {}};  // CN=latentserve-node2
  const int64_t leases_before = DecodeStats(*cluster_, owner).leases_active();
  std::string first, second;
  ASSERT_TRUE(Reserve(*cluster_, owner, 32, 30000, &first).ok());
  ASSERT_TRUE(Reserve(*cluster_, owner, 32, 30000, &second).ok());
  EXPECT_TRUE(IsLeaseId(first)) << first;
  EXPECT_TRUE(IsLeaseId(second)) << second;
  EXPECT_NE(first, second);
  EXPECT_EQ(DecodeStats(*cluster_, owner).leases_active(), leases_before + 2);

  // Guessed ids (the old sequential scheme, a neighbour of a real id) name no lease.
  std::string neighbour = first;
  neighbour.back() = neighbour.back() == '0' ? '1' : '0';
  for (const std::string& guess : {std::string("lease-1"), std::string("lease-2"), std::string("lease-3"), neighbour}) {
    EXPECT_EQ(Release(*cluster_, owner, guess).error_code(), grpc::StatusCode::NOT_FOUND) << guess;
    EXPECT_EQ(Renew(*cluster_, owner, guess).error_code(), grpc::StatusCode::ABORTED) << guess;
    EXPECT_EQ(DecodeLease(*cluster_, owner, guess).error_code(), grpc::StatusCode::ABORTED) << guess;
  }
  // Another component that learnt the id can neither release, renew nor decode it.
  EXPECT_EQ(Release(*cluster_, other_component, first).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Renew(*cluster_, other_component, first).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(DecodeLease(*cluster_, other_component, first).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(DecodeStats(*cluster_, owner).leases_active(), leases_before + 2);

  // The owner can.
  EXPECT_TRUE(Renew(*cluster_, owner, first).ok());
  EXPECT_TRUE(Release(*cluster_, owner, first).ok());
  EXPECT_TRUE(Release(*cluster_, owner, second).ok());
  EXPECT_EQ(DecodeStats(*cluster_, owner).leases_active(), leases_before);
}

// ---- plaintext with an internal token ----

class InternalToken : public ClusterSuite<InternalToken> {
 protected:
  static void SetUpTestSuite() {
    if (Bin().empty()) return SetupFailed("set LATENTSERVE_BIN");
    if (!Files().ok) return SetupFailed("making the model failed in " + Files().dir);
    const std::vector<std::string> flags = {"--internal-token-file", Files().internal_token};
    cluster_ = new Cluster("token", flags, flags);
    if (!cluster_->Listening()) return SetupFailed(cluster_->Logs());
    if (!WaitFor([] { return BothWorkersAlive(*cluster_, Anonymous()); }, milliseconds(30000))) {
      return SetupFailed(cluster_->Logs());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static Caller Anonymous() { return {grpc::InsecureChannelCredentials(), {}}; }
  static Caller WithInternalToken(const std::string& token) {
    return {grpc::InsecureChannelCredentials(), {{"latentserve-internal-token", token}}};
  }
  static Cluster* cluster_;
};
Cluster* InternalToken::cluster_ = nullptr;

TEST_F(InternalToken, CallersWithoutTheTokenAreRefused) {
  const std::string fingerprint = Fingerprint(*cluster_, WithInternalToken(Files().internal_token_value));
  ASSERT_FALSE(fingerprint.empty());
  for (const auto& [method, status] : CallEveryInternalMethod(*cluster_, Anonymous(), fingerprint)) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method << ": " << status.error_message();
  }
  const Caller public_token{grpc::InsecureChannelCredentials(), {{"authorization", "Bearer " + Files().internal_token_value}}};
  for (const Caller& caller : {WithInternalToken("internal-test-token-7f3b"), WithInternalToken(""), public_token}) {
    for (const auto& [method, status] : CallEveryInternalMethod(*cluster_, caller, fingerprint)) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method << ": " << status.error_message();
    }
  }
}

TEST_F(InternalToken, TokenHoldersAreAdmittedAndGenerationWorks) {
  // The router's own internal calls (registration, polls, lease, prefill, cache transfer,
  // decode) carry the token: a generation goes through.
  int tokens = 0;
  grpc::Status status = Generate(*cluster_, Anonymous(), 5, &tokens);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << cluster_->Logs();
  EXPECT_EQ(tokens, 5);
  const Caller component = WithInternalToken(Files().internal_token_value);
  const std::string fingerprint = Fingerprint(*cluster_, component);
  ASSERT_FALSE(fingerprint.empty());
  for (const auto& [method, status] : CallEveryInternalMethod(*cluster_, component, fingerprint)) {
    EXPECT_NE(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << method << ": " << status.error_message();
    EXPECT_NE(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << method << ": " << status.error_message();
  }
  EXPECT_TRUE(WaitFor([] { return NoneDraining(*cluster_, Anonymous()); }, milliseconds(10000)));
}

internal::v1::ModelDescriptor WorkerModel(const Process& worker, const Caller& caller, grpc::Status* status) {
  auto stub = internal::v1::WorkerStats::NewStub(caller.To(worker.address()));
  grpc::ClientContext context;
  caller.Prepare(context);
  internal::v1::GetWorkerStatsResponse stats;
  *status = stub->GetWorkerStats(&context, internal::v1::GetWorkerStatsRequest(), &stats);
  return stats.model();
}

TEST_F(InternalToken, WorkerStatsGiveTheAbsoluteModelPathToComponentsOnly) {
  const Caller component = WithInternalToken(Files().internal_token_value);
  for (const Process* worker : {cluster_->prefill.get(), cluster_->decode.get()}) {
    grpc::Status status;
    const internal::v1::ModelDescriptor model = WorkerModel(*worker, component, &status);
    ASSERT_TRUE(status.ok()) << status.error_message();
    char resolved[PATH_MAX];
    ASSERT_NE(realpath(Files().model.c_str(), resolved), nullptr);
    EXPECT_EQ(model.path(), resolved);  // the router reads the tokenizer from it
    WorkerModel(*worker, Anonymous(), &status);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
}

// Server-side request forgery: a prefill's decode_worker and a registered address must be
// HOST:PORT, never a gRPC target scheme such as unix: (even from a component).
TEST_F(InternalToken, WorkerAddressesFromTheWireMustBeHostAndPort) {
  const Caller component = WithInternalToken(Files().internal_token_value);
  const std::string fingerprint = Fingerprint(*cluster_, component);
  for (const std::string& target : {std::string("unix:/tmp/latentserve-ssrf.sock"), std::string("dns:///example.com:80"),
                                    std::string("127.0.0.1"), std::string("127.0.0.1:0"), std::string("")}) {
    auto prefill = internal::v1::PrefillWorker::NewStub(component.To(cluster_->prefill->address()));
    grpc::ClientContext context;
    component.Prepare(context);
    internal::v1::PrefillRequest request;
    request.set_request_id("ssrf");
    request.set_lease_id("lease-0");
    request.set_decode_worker(target);
    request.add_token_ids(1);
    request.set_model_fingerprint(fingerprint);
    auto reader = prefill->Prefill(&context, request);
    internal::v1::PrefillResponse event;
    while (reader->Read(&event)) {
    }
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << target << ": " << status.error_message();

    auto registry = internal::v1::WorkerRegistry::NewStub(component.To(cluster_->router->address()));
    grpc::ClientContext register_context;
    component.Prepare(register_context);
    internal::v1::RegisterWorkerRequest registration;
    registration.set_address(target);
    registration.set_role("decode");
    registration.mutable_model()->set_fingerprint(fingerprint);
    internal::v1::RegisterWorkerResponse registered;
    status = registry->RegisterWorker(&register_context, registration, &registered);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << target << ": " << status.error_message();
  }
}

// ---- plaintext without any internal credential: the loopback / demo mode ----

class OpenLoopback : public ClusterSuite<OpenLoopback> {
 protected:
  static void SetUpTestSuite() {
    if (Bin().empty()) return SetupFailed("set LATENTSERVE_BIN");
    if (!Files().ok) return SetupFailed("making the model failed in " + Files().dir);
    cluster_ = new Cluster("open", {}, {});
    if (!cluster_->Listening()) return SetupFailed(cluster_->Logs());
    if (!WaitFor([] { return BothWorkersAlive(*cluster_, Anonymous()); }, milliseconds(30000))) {
      return SetupFailed(cluster_->Logs());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static Caller Anonymous() { return {grpc::InsecureChannelCredentials(), {}}; }
  static Cluster* cluster_;
};
Cluster* OpenLoopback::cluster_ = nullptr;

TEST_F(OpenLoopback, GenerationWorksAndEveryProcessWarnsThatItIsOpen) {
  int tokens = 0;
  grpc::Status status = Generate(*cluster_, Anonymous(), 4, &tokens);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << cluster_->Logs();
  EXPECT_EQ(tokens, 4);
  for (const Process* p : {cluster_->router.get(), cluster_->prefill.get(), cluster_->decode.get()}) {
    EXPECT_NE(p->log().find("the internal APIs are open"), std::string::npos) << p->log();
  }
}

TEST_F(OpenLoopback, WorkerStatsDoNotLeakTheAbsoluteModelPath) {
  for (const Process* worker : {cluster_->prefill.get(), cluster_->decode.get()}) {
    grpc::Status status;
    const internal::v1::ModelDescriptor model = WorkerModel(*worker, Anonymous(), &status);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(model.path(), "model.gguf");
    EXPECT_FALSE(model.fingerprint().empty());
  }
}

// ---- bounds on what a component's request may hold (plaintext, internal token) ----

// A number from the one-line JSON `latentserve plan` prints.
int64_t JsonInt(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  return at == std::string::npos ? -1 : std::atoll(json.c_str() + at + key.size() + 3);
}

// The test model's cache layout as `latentserve plan` reports it.
struct ModelPlan {
  std::string json;
  int64_t mla_layers = -1, kda_layers = -1, row_bytes = -1, kda_total = -1;
};

ModelPlan ReadPlan() {
  ModelPlan plan;
  FILE* pipe = popen((Bin() + " plan --model " + Files().model + " --context 1024 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) return plan;
  char buffer[4096] = {};
  const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, pipe);
  pclose(pipe);
  plan.json.assign(buffer, n);
  plan.mla_layers = JsonInt(plan.json, "mla_layers");
  plan.kda_layers = JsonInt(plan.json, "kda_layers");
  plan.row_bytes = JsonInt(plan.json, "latent_bytes_per_token") / std::max<int64_t>(plan.mla_layers, 1);
  plan.kda_total = JsonInt(plan.json, "kda_state_bytes");
  return plan;
}

// A handoff header for that layout (f16 cache, the workers' default; 4 prompt tokens).
void FillHeader(const ModelPlan& plan, const std::string& lease, const std::string& fingerprint,
                int64_t kda_state_bytes, internal::v1::CacheHandoffHeader* h) {
  h->set_lease_id(lease);
  h->set_model_fingerprint(fingerprint);
  h->set_cache_dtype(internal::v1::CACHE_D_TYPE_F16);
  h->set_latent_width(plan.row_bytes / 2);
  h->set_row_bytes(plan.row_bytes);
  for (int64_t i = 0; i < plan.mla_layers; ++i) h->add_mla_layers(static_cast<int32_t>(i));
  for (int64_t i = 0; i < plan.kda_layers; ++i) h->add_kda_layers(static_cast<int32_t>(plan.mla_layers + i));
  h->set_kda_state_bytes(kda_state_bytes);
  h->set_prompt_tokens(4);
}

class LeaseBounds : public ClusterSuite<LeaseBounds> {
 protected:
  static void SetUpTestSuite() {
    if (Bin().empty()) return SetupFailed("set LATENTSERVE_BIN");
    if (!Files().ok) return SetupFailed("making the model failed in " + Files().dir);
    const std::vector<std::string> flags = {"--internal-token-file", Files().internal_token};
    std::vector<std::string> router_flags = flags;
    router_flags.insert(router_flags.end(), {"--lease-ttl-ms", "900"});  // renewed every 300 ms
    cluster_ = new Cluster("bounds", router_flags, flags, {"--max-lease-ttl-ms", "1000"});
    if (!cluster_->Listening()) return SetupFailed(cluster_->Logs());
    if (!WaitFor([] { return BothWorkersAlive(*cluster_, Component()); }, milliseconds(30000))) {
      return SetupFailed(cluster_->Logs());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  static Caller Component() {
    return {grpc::InsecureChannelCredentials(), {{"latentserve-internal-token", Files().internal_token_value}}};
  }
  static bool AtBaseline(const v1::WorkerInfo& baseline) {
    const v1::WorkerInfo now = DecodeStats(*cluster_, Component());
    return now.leases_active() == baseline.leases_active() && now.cache_pages_free() == baseline.cache_pages_free();
  }
  static Cluster* cluster_;
};
Cluster* LeaseBounds::cluster_ = nullptr;

TEST_F(LeaseBounds, ReserveTtlIsClampedToTheWorkersMaximum) {
  const v1::WorkerInfo baseline = DecodeStats(*cluster_, Component());
  std::string lease;
  ASSERT_TRUE(Reserve(*cluster_, Component(), 256, INT64_MAX, &lease).ok());
  const v1::WorkerInfo held = DecodeStats(*cluster_, Component());
  EXPECT_EQ(held.leases_active(), baseline.leases_active() + 1);
  EXPECT_LT(held.cache_pages_free(), baseline.cache_pages_free());
  // --max-lease-ttl-ms 1000: the pages come back after about a second, not in 292 million years.
  EXPECT_TRUE(WaitFor([&] { return AtBaseline(baseline); }, milliseconds(8000)));
  EXPECT_EQ(Renew(*cluster_, Component(), lease).error_code(), grpc::StatusCode::ABORTED);
}

TEST_F(LeaseBounds, RenewTtlIsClampedToTheWorkersMaximum) {
  const v1::WorkerInfo baseline = DecodeStats(*cluster_, Component());
  std::string lease;
  ASSERT_TRUE(Reserve(*cluster_, Component(), 256, 500, &lease).ok());
  auto stub = internal::v1::DecodeWorker::NewStub(Component().To(cluster_->decode->address()));
  grpc::ClientContext context;
  Component().Prepare(context);
  internal::v1::RenewLeaseRequest request;
  request.set_lease_id(lease);
  request.set_ttl_ms(INT64_MAX);
  internal::v1::RenewLeaseResponse response;
  ASSERT_TRUE(stub->RenewLease(&context, request, &response).ok());
  EXPECT_TRUE(WaitFor([&] { return AtBaseline(baseline); }, milliseconds(8000)));
}

TEST_F(LeaseBounds, GenerationRenewsWithinTheBound) {
  int tokens = 0;
  grpc::Status status = Generate(*cluster_, Component(), 8, &tokens);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << cluster_->Logs();
  EXPECT_EQ(tokens, 8);
}

// A handoff header whose kda_state_bytes only matches the model after overflowing
// (kda_state_bytes * kda_layers wraps to the real total) is refused, not accepted.
TEST_F(LeaseBounds, HandoffHeaderSizesAreCheckedWithoutOverflow) {
  const ModelPlan model = ReadPlan();
  const std::string& plan = model.json;
  const int64_t mla_layers = model.mla_layers, kda_layers = model.kda_layers, kda_total = model.kda_total;
  ASSERT_FALSE(plan.empty()) << "latentserve plan printed nothing";
  ASSERT_GT(mla_layers, 0) << plan;
  ASSERT_EQ(kda_layers, 2) << plan << " (the test model's shape changed: the overflow below assumes 2 KDA layers)";
  ASSERT_EQ(kda_total % 2, 0) << plan;

  const Caller component = Component();
  const std::string fingerprint = Fingerprint(*cluster_, component);
  auto send_header = [&](int64_t kda_state_bytes) {
    std::string lease;
    EXPECT_TRUE(Reserve(*cluster_, component, 64, 5000, &lease).ok());
    auto stub = internal::v1::DecodeWorker::NewStub(component.To(cluster_->decode->address()));
    grpc::ClientContext context;
    component.Prepare(context);
    internal::v1::ReceiveCacheResponse response;
    auto writer = stub->ReceiveCache(&context, &response);
    internal::v1::ReceiveCacheRequest message;
    internal::v1::CacheHandoffHeader* h = message.mutable_header();
    h->set_request_id("overflow");
    h->set_page_tokens(16);
    FillHeader(model, lease, fingerprint, kda_state_bytes, h);
    writer->Write(message);
    writer->WritesDone();
    grpc::Status status = writer->Finish();
    Release(*cluster_, component, lease);
    return status;
  };
  // Control: the true size passes the header checks (the stream then ends without data).
  grpc::Status control = send_header(kda_total / 2);
  EXPECT_EQ(control.error_code(), grpc::StatusCode::CANCELLED) << control.error_message();
  // kda_total / 2 + 2^63: negative, and twice it is kda_total modulo 2^64.
  const int64_t wrapping = static_cast<int64_t>(static_cast<uint64_t>(kda_total / 2) + (uint64_t{1} << 63));
  ASSERT_LT(wrapping, 0);
  grpc::Status refused = send_header(wrapping);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << refused.error_message();
  EXPECT_NE(refused.error_message().find("KDA state layout"), std::string::npos) << refused.error_message();
  grpc::Status negative = send_header(-1);
  EXPECT_EQ(negative.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << negative.error_message();
}

// A handoff into a lease its owner released ends ABORTED (lease lost, retryable), not
// CANCELLED.
TEST_F(LeaseBounds, HandoffIntoAReleasedLeaseIsAborted) {
  const ModelPlan model = ReadPlan();
  const std::string& plan = model.json;
  const int64_t kda_layers = model.kda_layers, kda_total = model.kda_total;
  ASSERT_FALSE(plan.empty()) << "latentserve plan printed nothing";
  ASSERT_GT(kda_layers, 0) << plan;

  const Caller component = Component();
  std::string lease;
  ASSERT_TRUE(Reserve(*cluster_, component, 64, 5000, &lease).ok());
  auto stub = internal::v1::DecodeWorker::NewStub(component.To(cluster_->decode->address()));
  grpc::ClientContext context;
  component.Prepare(context);
  internal::v1::ReceiveCacheResponse response;
  auto writer = stub->ReceiveCache(&context, &response);
  internal::v1::ReceiveCacheRequest message;
  internal::v1::CacheHandoffHeader* h = message.mutable_header();
  FillHeader(model, lease, Fingerprint(*cluster_, component), kda_total / kda_layers, h);
  ASSERT_TRUE(writer->Write(message));
  // The header is taken within milliseconds on loopback; well inside the 1 s lease bound.
  std::this_thread::sleep_for(milliseconds(300));
  ASSERT_TRUE(Release(*cluster_, component, lease).ok());
  internal::v1::ReceiveCacheRequest chunk;
  chunk.mutable_kda()->set_kda_index(0);
  chunk.mutable_kda()->set_offset(0);
  chunk.mutable_kda()->set_data("x");
  writer->Write(chunk);
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED) << status.error_message();
  // "lease ... was released" (or, had the header been slower than the release, "... unknown
  // to this decode worker (expired or released)": ABORTED as well).
  EXPECT_NE(status.error_message().find("released"), std::string::npos) << status.error_message();
}

// ---- the plaintext health port answers health checks only ----

// One grpc.reflection.v1alpha.ServerReflection call (list_services) as a unary generic call.
grpc::Status ListServicesByReflection(const std::string& target, std::string* response_bytes) {
  grpc::GenericStub stub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + milliseconds(5000));
  const std::string request_bytes("\x3a\x00", 2);  // field 7 (list_services) = ""
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                    request, &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::vector<grpc::Slice> slices;
  response_bytes->clear();
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& piece : slices) response_bytes->append(reinterpret_cast<const char*>(piece.begin()), piece.size());
  }
  return status;
}

TEST(HealthPort, ServesNoReflection) {
  ASSERT_TRUE(Files().ok);
  Process router(Files().dir, "health-reflection",
                 {"router", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"});
  ASSERT_FALSE(router.address().empty()) << router.log();
  std::string health;
  ASSERT_TRUE(WaitFor(
      [&] {
        const std::string log = router.log();
        const size_t at = log.find("health on ");
        if (at == std::string::npos) return false;
        health = log.substr(at + 10, log.find('\n', at) - at - 10);
        return true;
      },
      milliseconds(10000)))
      << router.log();
  std::string services;
  // Control: the serving port lists its services (the internal schema included).
  grpc::Status status = ListServicesByReflection(router.address(), &services);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(services.find("latentserve.internal.v1.WorkerRegistry"), std::string::npos);
  // The plaintext health port: no reflection at all.
  status = ListServicesByReflection(health, &services);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << status.error_message() << " " << services;
}

// ---- startup: TLS without saying who the components are is refused ----

TEST(InternalAuthFlags, TlsWithoutInternalCredentialFailsAtStartup) {
  ASSERT_TRUE(Files().ok);
  const Fixture& f = Files();
  for (const char* role : {"router", "decode"}) {
    std::vector<std::string> args = {role, "--listen", "127.0.0.1:0", "--tls-cert", f.node_cert, "--tls-key",
                                     f.node_key, "--tls-ca", f.ca};
    if (std::string(role) == "decode") args.insert(args.end(), {"--router", "127.0.0.1:1", "--model", f.model});
    Process p(f.dir, std::string("startup-") + role, args, /*wait_listening=*/false);
    ASSERT_TRUE(WaitFor([&] { return p.Exited(); }, milliseconds(30000))) << role;
    EXPECT_EQ(p.exit_code(), 2) << role << ": " << p.log();
    EXPECT_NE(p.log().find("--internal-peer-cn"), std::string::npos) << p.log();
  }
  // A CN list means nothing unless the server verifies client certificates.
  Process p(f.dir, "startup-cn-without-ca",
            {"router", "--listen", "127.0.0.1:0", "--internal-peer-cn", "latentserve-node"}, false);
  ASSERT_TRUE(WaitFor([&] { return p.Exited(); }, milliseconds(30000)));
  EXPECT_EQ(p.exit_code(), 2) << p.log();
  EXPECT_NE(p.log().find("--tls-ca"), std::string::npos) << p.log();
}

}  // namespace
}  // namespace latentserve
