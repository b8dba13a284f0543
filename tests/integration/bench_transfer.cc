// Benchmark (not a test): cache streaming throughput of GrpcTransport on loopback.
// A DecodeWorker.ReceiveCache server whose sink verifies every chunk's XXH64 and discards
// it; the sender streams `--mib` MiB of 1 MiB latent chunks. Prints GB/s.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "latentserve/v1/worker.grpc.pb.h"
#include "transfer/checksum.h"
#include "transfer/grpc_transport.h"

namespace ls = latentserve;

class CheckingReceiver : public ls::transfer::CacheReceiver {
 public:
  absl::Status OnLatentRows(const ls::transfer::LatentRows& c) override {
    if (ls::transfer::Xxh64(c.rows) != c.checksum) return absl::DataLossError("checksum");
    return absl::OkStatus();
  }
  absl::Status OnKdaState(const ls::transfer::KdaStateBytes&) override { return absl::OkStatus(); }
  absl::Status Finish(const ls::transfer::HandoffEnd&) override { return absl::OkStatus(); }
  void Abort(const absl::Status&) override {}
};

class Sink : public ls::transfer::CacheSink {
 public:
  absl::StatusOr<std::unique_ptr<ls::transfer::CacheReceiver>> BeginHandoff(const ls::transfer::HandoffHeader&) override {
    return std::unique_ptr<ls::transfer::CacheReceiver>(new CheckingReceiver());
  }
};

class Service final : public ls::v1::DecodeWorker::Service {
 public:
  grpc::Status ReceiveCache(grpc::ServerContext* ctx, grpc::ServerReader<ls::v1::ReceiveCacheRequest>* reader,
                            ls::v1::ReceiveCacheResponse* response) override {
    return ls::transfer::ServeReceiveCache(sink_, ctx, reader, response);
  }
  Sink sink_;
};

int main(int argc, char** argv) {
  const int64_t mib = argc > 1 ? std::atoll(argv[1]) : 1024;
  Service service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ls::transfer::GrpcTransport transport;
  ls::transfer::HandoffHeader header;
  header.prompt_tokens = 1;
  const std::string target = "127.0.0.1:" + std::to_string(port);
  std::string payload(1 << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 2654435761u >> 24);
  const uint64_t checksum = ls::transfer::Xxh64(payload);
  const auto start = std::chrono::steady_clock::now();
  auto sender = transport.Open(target, header, absl::Now() + absl::Minutes(5));
  if (!sender.ok()) return 1;
  for (int64_t i = 0; i < mib; ++i) {
    ls::transfer::LatentRows rows{0, i, 1, payload, checksum};
    if (!(*sender)->SendLatentRows(std::move(rows)).ok()) return 1;
  }
  auto done = (*sender)->Finish({0, mib, mib << 20});
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!done.ok()) {
    std::fprintf(stderr, "%s\n", std::string(done.status().message()).c_str());
    return 1;
  }
  std::printf("{\"bytes\":%lld,\"seconds\":%.3f,\"GB_per_s\":%.3f}\n", static_cast<long long>(mib << 20), s,
              (mib << 20) / s / 1e9);
  server->Shutdown();
  return 0;
}
