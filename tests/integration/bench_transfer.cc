// Benchmark (not a test): cache streaming throughput of GrpcTransport on loopback.
// A DecodeWorker.ReceiveCache server whose sink verifies every chunk's XXH64 and discards
// it; the sender streams MIB MiB of latent chunks, each a fresh copy of the payload (as
// LatentCache::ExportRows would produce it). Prints GB/s and the process CPU seconds per GB
// (user + system: on shared cores the wall-clock rate depends on what else runs).
//
//   bench_transfer [MIB] [--chunk-kib N] [--unix] [--sender-checksum] [--staged | --writer]
//                  [--server-arg NAME=INT]...
//
// --chunk-kib: payload bytes per chunk (default transfer::kMaxChunkBytes).
// --unix: a unix-domain socket instead of 127.0.0.1 TCP.
// --sender-checksum: hash each chunk on the sending side too (the prefill worker does).
// --staged: each chunk's payload is a recycled transfer::StagingPool block referenced by the
//   gRPC message, not a fresh copy: what the prefill worker sends when the CUDA copy engine
//   has filled the (pinned) block, so the sender's CPU does no copy.
// --writer: the whole sending side of a prefill worker on the CPU backend: a PagePool of 8
//   MLA layers x 576 f16 values, transfer::HandoffWriter cutting, exporting (a memcpy on the
//   CPU backend), hashing and staging its rows; handoffs of up to 256 MiB until MIB are sent.
// --server-arg: an integer channel argument of the receiving server (experiments with HTTP/2
//   windows, frame sizes, read chunk sizes).
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "cache/page_pool.h"
#include "cache/sequence_table.h"
#include "kernels/backend.h"
#include "transfer/checksum.h"
#include "transfer/grpc_transport.h"
#include "transfer/handoff_writer.h"
#include "transfer/staging_pool.h"

namespace ls = latentserve;

class CheckingReceiver : public ls::transfer::CacheReceiver {
 public:
  absl::Status OnLatentRows(const ls::transfer::LatentRows& c) override {
    if (ls::transfer::Xxh64(c.rows) != c.checksum) return absl::DataLossError("checksum");
    if (c.rows.size() != static_cast<size_t>(c.token_count) * row_bytes_) return absl::DataLossError("size");
    bytes_ += static_cast<int64_t>(c.rows.size());
    chunks_++;
    return absl::OkStatus();
  }
  absl::Status OnKdaState(const ls::transfer::KdaStateBytes&) override { return absl::OkStatus(); }
  size_t row_bytes_ = 0;
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
  absl::StatusOr<std::unique_ptr<ls::transfer::CacheReceiver>> BeginHandoff(const ls::transfer::HandoffHeader& header) override {
    auto receiver = std::make_unique<CheckingReceiver>();
    receiver->row_bytes_ = static_cast<size_t>(header.row_bytes);
    return std::unique_ptr<ls::transfer::CacheReceiver>(std::move(receiver));
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

// The sending side of a prefill worker on the CPU backend (--writer): rows written once into
// a page pool, then handed off by transfer::HandoffWriter (export, XXH64, staging) in handoffs
// of up to 256 MiB until `total` bytes are sent. The clock starts after the pool is filled.
int RunWriter(ls::transfer::GrpcTransport& transport, const std::string& target, ls::transfer::StagingPool& staging,
              int64_t total, int64_t* sent_bytes, double* cpu0, std::chrono::steady_clock::time_point* start) {
  auto backend = ls::kernels::CreateBackend({"cpu", 1, 0});
  if (!backend.ok()) return 1;
  const ls::cache::PoolLayout layout{8, 576};
  const int64_t token_bytes = layout.mla_layers * RowBytes(ls::DType::kF16, layout.latent_width);
  const int64_t tokens = std::max<int64_t>(1, std::min<int64_t>(total, 256 << 20) / token_bytes);
  ls::cache::PagePoolOptions options;
  options.dtype = ls::DType::kF16;
  options.page_tokens = 256;
  options.pages = (tokens + 255) / 256;
  auto pool = ls::cache::PagePool::Create(layout, **backend, options);
  if (!pool.ok()) return 1;
  ls::cache::SequenceTable table(**pool, ls::cache::KdaLayout{});
  auto sequence = table.New();
  if (!sequence.ok() || !table.Reserve(**sequence, tokens).ok() || !table.Advance(**sequence, tokens).ok()) return 1;
  for (int64_t mla = 0; mla < layout.mla_layers; ++mla) (*backend)->FillRandom((*pool)->pool(mla), 7 + mla, 0, 1);
  ls::transfer::HandoffHeader header;
  ls::transfer::DescribeLayout(table, &header);
  header.prompt_tokens = tokens;
  header.mla_layers.resize(layout.mla_layers);
  *cpu0 = CpuSeconds();
  *start = std::chrono::steady_clock::now();
  while (*sent_bytes < total) {
    auto sender = transport.Open(target, header, absl::Now() + absl::Minutes(5));
    if (!sender.ok()) return 1;
    ls::transfer::HandoffWriter writer(**sender, header, &staging);
    // Ranges of 4096 tokens, as a prefill worker's chunks arrive.
    for (int64_t first = 0; first < tokens; first += 4096) {
      if (!writer.SendRows(**sequence, first, std::min<int64_t>(4096, tokens - first)).ok()) return 1;
    }
    auto done = writer.Finish(0);
    if (!done.ok()) {
      std::fprintf(stderr, "%s\n", std::string(done.status().message()).c_str());
      return 1;
    }
    *sent_bytes += writer.payload_bytes();
  }
  return 0;
}

int main(int argc, char** argv) {
  int64_t mib = 1024;
  int64_t chunk_bytes = ls::transfer::kMaxChunkBytes;
  bool unix_socket = false, sender_checksum = false, staged = false, writer = false;
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
    } else if (!std::strcmp(argv[i], "--staged")) {
      staged = true;
    } else if (!std::strcmp(argv[i], "--writer")) {
      writer = true;
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
  header.row_bytes = chunk_bytes;
  std::string payload(chunk_bytes, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 2654435761u >> 24);
  const uint64_t checksum = ls::transfer::Xxh64(payload);
  const int64_t total = mib << 20;
  const int64_t chunks = (total + chunk_bytes - 1) / chunk_bytes;
  auto cpu_backend = ls::kernels::CreateBackend({"cpu", 1, 0});
  if (!cpu_backend.ok()) return 1;
  ls::transfer::StagingOptions staging_options;
  staging_options.block_bytes = static_cast<size_t>(chunk_bytes);
  ls::transfer::StagingPool staging(**cpu_backend, staging_options);
  if (staging_options.block_bytes != static_cast<size_t>(ls::transfer::kMaxChunkBytes) && writer) return 2;
  double cpu0 = CpuSeconds();
  auto start = std::chrono::steady_clock::now();
  int64_t sent_bytes = 0;
  std::set<const uint8_t*> filled;  // staging blocks that hold the payload
  if (writer) {
    if (RunWriter(transport, target, staging, total, &sent_bytes, &cpu0, &start) != 0) return 1;
  } else {
    auto sender = transport.Open(target, header, absl::Now() + absl::Minutes(5));
    if (!sender.ok()) return 1;
    for (int64_t i = 0; i < chunks; ++i) {
      ls::transfer::LatentRows rows;
      rows.first_token = i;
      rows.token_count = 1;
      rows.checksum = checksum;
      if (staged) {
        const int64_t fallbacks = staging.counts().fallbacks;
        auto block = staging.Acquire(payload.size());
        if (!block.ok()) return 1;
        rows.staged = *block;
        // Recycled blocks already hold the pattern; a block's first use and a heap fallback
        // are written once.
        if (staging.counts().fallbacks != fallbacks || filled.insert(rows.staged.data).second) {
          std::memcpy(rows.staged.data, payload.data(), payload.size());
        }
      } else {
        rows.rows = payload;
      }
      if (sender_checksum) rows.checksum = ls::transfer::Xxh64(rows.payload());
      if (!(*sender)->SendLatentRows(std::move(rows)).ok()) return 1;
    }
    auto done = (*sender)->Finish({0, chunks, chunks * chunk_bytes});
    if (!done.ok()) {
      std::fprintf(stderr, "%s\n", std::string(done.status().message()).c_str());
      return 1;
    }
    sent_bytes = chunks * chunk_bytes;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu = CpuSeconds() - cpu0;
  const double bytes = static_cast<double>(sent_bytes);
  std::printf("{\"bytes\":%.0f,\"chunk_bytes\":%lld,\"socket\":\"%s\",\"mode\":\"%s\",\"seconds\":%.3f,"
              "\"GB_per_s\":%.3f,\"cpu_s_per_GB\":%.3f,\"staging_fallbacks\":%lld}\n",
              bytes, static_cast<long long>(chunk_bytes), unix_socket ? "unix" : "tcp",
              writer ? "writer" : (staged ? "staged" : "copy"), s, bytes / s / 1e9, cpu / (bytes / 1e9),
              static_cast<long long>(staging.counts().fallbacks));
  server->Shutdown();
  return 0;
}
