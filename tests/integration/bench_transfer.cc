// Benchmark (not a test): cache streaming throughput of GrpcTransport on loopback.
// A DecodeWorker.ReceiveCache server whose sink verifies every chunk's XXH64 and discards
// it; the sender streams MIB MiB of latent chunks, each a fresh copy of the payload (as
// LatentCache::ExportRows would produce it). Prints GB/s and the process CPU seconds per GB
// (user + system: on shared cores the wall-clock rate depends on what else runs).
//
//   bench_transfer [MIB] [--chunk-kib N] [--unix] [--sender-checksum] [--server-arg NAME=INT]...
//
// --chunk-kib: payload bytes per chunk (default transfer::kMaxChunkBytes).
// --unix: a unix-domain socket instead of 127.0.0.1 TCP.
// --sender-checksum: hash each chunk on the sending side too (the prefill worker does).
// --server-arg: an integer channel argument of the receiving server (experiments with HTTP/2
//   windows, frame sizes, read chunk sizes).
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "transfer/checksum.h"
#include "transfer/grpc_transport.h"

namespace ls = latentserve;

class CheckingReceiver : public ls::transfer::CacheReceiver {
 public:
  absl::Status OnLatentRows(const ls::transfer::LatentRows& c) override {
    if (ls::transfer::Xxh64(c.rows) != c.checksum) return absl::DataLossError("checksum");
    bytes_ += static_cast<int64_t>(c.rows.size());
    chunks_++;
    return absl::OkStatus();
  }
  absl::Status OnKdaState(const ls::transfer::KdaStateBytes&) override { return absl::OkStatus(); }
  absl::Status Finish(const ls::transfer::HandoffEnd& end) override {
    if (end.chunks != chunks_ || end.payload_bytes != bytes_) return absl::DataLossError("incomplete");
    return absl::OkStatus();
  }
  void Abort(const absl::Status&) override {}

 private:
  int64_t bytes_ = 0;
  int64_t chunks_ = 0;
};

class Sink : public ls::transfer::CacheSink {
 public:
  absl::StatusOr<std::unique_ptr<ls::transfer::CacheReceiver>> BeginHandoff(const ls::transfer::HandoffHeader&) override {
    return std::unique_ptr<ls::transfer::CacheReceiver>(new CheckingReceiver());
  }
};

class Service final : public ls::internal::v1::DecodeWorker::Service {
 public:
  grpc::Status ReceiveCache(grpc::ServerContext* ctx, grpc::ServerReader<ls::internal::v1::ReceiveCacheRequest>* reader,
                            ls::internal::v1::ReceiveCacheResponse* response) override {
    return ls::transfer::ServeReceiveCache(sink_, ctx, reader, response);
  }
  Sink sink_;
};

double CpuSeconds() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char** argv) {
  int64_t mib = 1024;
  int64_t chunk_bytes = ls::transfer::kMaxChunkBytes;
  bool unix_socket = false, sender_checksum = false;
  std::vector<std::pair<std::string, int>> server_args;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--chunk-kib") && i + 1 < argc) {
      chunk_bytes = std::atoll(argv[++i]) << 10;
    } else if (!std::strcmp(argv[i], "--unix")) {
      unix_socket = true;
    } else if (!std::strcmp(argv[i], "--server-arg") && i + 1 < argc) {
      const std::string arg = argv[++i];
      const size_t eq = arg.find('=');
      if (eq == std::string::npos) return 2;
      server_args.emplace_back(arg.substr(0, eq), std::atoi(arg.c_str() + eq + 1));
    } else if (!std::strcmp(argv[i], "--sender-checksum")) {
      sender_checksum = true;
    } else {
      mib = std::atoll(argv[i]);
    }
  }
  Service service;
  grpc::ServerBuilder builder;
  int port = 0;
  std::string target;
  if (unix_socket) {
    target = "unix:/tmp/latentserve_bench_transfer." + std::to_string(getpid()) + ".sock";
    builder.AddListeningPort(target, grpc::InsecureServerCredentials());
  } else {
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  }
  builder.SetMaxReceiveMessageSize(16 << 20);  // as serving/server_shell.cc (the default --max-message-bytes)
  for (const auto& [name, value] : server_args) builder.AddChannelArgument(name, value);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  if (!server) return 1;
  if (!unix_socket) target = "127.0.0.1:" + std::to_string(port);
  ls::transfer::GrpcTransport transport;
  ls::transfer::HandoffHeader header;
  header.prompt_tokens = 1;
  std::string payload(chunk_bytes, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 2654435761u >> 24);
  const uint64_t checksum = ls::transfer::Xxh64(payload);
  const int64_t total = mib << 20;
  const int64_t chunks = (total + chunk_bytes - 1) / chunk_bytes;
  const double cpu0 = CpuSeconds();
  const auto start = std::chrono::steady_clock::now();
  auto sender = transport.Open(target, header, absl::Now() + absl::Minutes(5));
  if (!sender.ok()) return 1;
  for (int64_t i = 0; i < chunks; ++i) {
    ls::transfer::LatentRows rows{0, i, 1, payload, checksum};
    if (sender_checksum) rows.checksum = ls::transfer::Xxh64(rows.rows);
    if (!(*sender)->SendLatentRows(std::move(rows)).ok()) return 1;
  }
  auto done = (*sender)->Finish({0, chunks, chunks * chunk_bytes});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = CpuSeconds() - cpu0;
  if (!done.ok()) {
    std::fprintf(stderr, "%s\n", std::string(done.status().message()).c_str());
    return 1;
  }
  const double bytes = static_cast<double>(chunks * chunk_bytes);
  std::printf("{\"bytes\":%.0f,\"chunk_bytes\":%lld,\"socket\":\"%s\",\"seconds\":%.3f,\"GB_per_s\":%.3f,"
              "\"cpu_s_per_GB\":%.3f}\n",
              bytes, static_cast<long long>(chunk_bytes), unix_socket ? "unix" : "tcp", s, bytes / s / 1e9,
              cpu / (bytes / 1e9));
  server->Shutdown();
  return 0;
}
