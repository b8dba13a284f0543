#include "transfer/grpc_transport.h"

#include <atomic>
#include <cstdio>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "kernels/backend.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "transfer/checksum.h"
#include "transfer/staging_pool.h"

namespace latentserve::transfer {
namespace {

std::string Pattern(size_t n, int salt) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i + 977 * salt) * 2654435761u >> 24);
  return s;
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// --- encoding ---------------------------------------------------------------------------------

TEST(EncodeTest, LatentRowsAreTheProtobufSerialisation) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{127}, size_t{128}, size_t{1} << 20}) {
    for (uint64_t checksum : {uint64_t{0}, uint64_t{0x0123456789abcdefULL}}) {
      LatentRows chunk{3, 4096, 17, Pattern(n, 1), checksum};
      internal::v1::ReceiveCacheRequest expected;
      auto* p = expected.mutable_latent();
      p->set_mla_index(3);
      p->set_first_token(4096);
      p->set_token_count(17);
      p->set_rows(chunk.rows);
      p->set_checksum(checksum);
      const std::string bytes = Flatten(EncodeLatentRows(chunk));
      EXPECT_EQ(bytes, expected.SerializeAsString()) << n << " " << checksum;
      internal::v1::ReceiveCacheRequest parsed;
      ASSERT_TRUE(parsed.ParseFromString(bytes));
      ASSERT_TRUE(parsed.has_latent());
      EXPECT_EQ(parsed.latent().rows(), chunk.rows);
      EXPECT_EQ(parsed.latent().checksum(), checksum);
      EXPECT_EQ(parsed.latent().first_token(), 4096);
    }
  }
}

TEST(EncodeTest, KdaStateIsTheProtobufSerialisation) {
  KdaStateBytes chunk{2, 3 << 20, Pattern(1000, 2), 0xfedcba9876543210ULL};
  internal::v1::ReceiveCacheRequest expected;
  auto* p = expected.mutable_kda();
  p->set_kda_index(2);
  p->set_offset(3 << 20);
  p->set_data(chunk.data);
  p->set_checksum(chunk.checksum);
  EXPECT_EQ(Flatten(EncodeKdaState(chunk)), expected.SerializeAsString());
}

TEST(EncodeTest, PayloadIsNotCopied) {
  std::string rows = Pattern(1 << 20, 3);
  const char* data = rows.data();
  grpc::ByteBuffer buffer = EncodeLatentRows(LatentRows{0, 0, 1, std::move(rows), 1});
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(buffer.Dump(&slices).ok());
  bool found = false;
  for (const auto& s : slices) found |= reinterpret_cast<const char*>(s.begin()) == data && s.size() == (1u << 20);
  EXPECT_TRUE(found) << "the payload slice should point at the original rows";
}

TEST(EncodeTest, StagedPayloadIsReferencedAndReleasedOnceWritten) {
  auto backend = *kernels::CreateBackend({"cpu", 1, 0});
  StagingOptions options;
  options.blocks = 1;
  StagingPool staging(*backend, options);
  LatentRows chunk;
  chunk.mla_index = 1;
  chunk.first_token = 8;
  chunk.token_count = 2;
  chunk.staged = *staging.Acquire(1000);
  const std::string pattern = Pattern(1000, 4);
  std::copy(pattern.begin(), pattern.end(), chunk.staged.data);
  chunk.checksum = Xxh64(chunk.payload());
  const uint8_t* block = chunk.staged.data;
  internal::v1::ReceiveCacheRequest expected;
  expected.mutable_latent()->set_mla_index(1);
  expected.mutable_latent()->set_first_token(8);
  expected.mutable_latent()->set_token_count(2);
  expected.mutable_latent()->set_rows(pattern);
  expected.mutable_latent()->set_checksum(chunk.checksum);
  {
    grpc::ByteBuffer buffer = EncodeLatentRows(std::move(chunk));
    EXPECT_EQ(staging.counts().in_use, 1);
    EXPECT_EQ(Flatten(buffer), expected.SerializeAsString());
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(buffer.Dump(&slices).ok());
    bool found = false;
    for (const auto& s : slices) found |= s.begin() == block && s.size() == 1000;
    EXPECT_TRUE(found) << "the payload slice should point into the staging block";
  }
  EXPECT_EQ(staging.counts().in_use, 0) << "the block goes back once the message is gone";
}

// --- handoffs over loopback ------------------------------------------------------------------

struct Received {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, std::string> latent;  // by MLA ordinal, reassembled in token order
  std::map<int, std::string> kda;
  int64_t chunks = 0;
  int64_t bytes = 0;
  bool finished = false;
  absl::Status aborted = absl::OkStatus();
  bool gate_open = true;  // receivers wait while false (backpressure test)
  int64_t entered = 0;
};

// Checks what the decode worker checks: order, sizes, checksums, totals.
class TestReceiver : public CacheReceiver {
 public:
  TestReceiver(Received& r, HandoffHeader header) : r_(r), header_(std::move(header)) {}
  absl::Status OnLatentRows(const LatentRows& c) override {
    Wait();
    if (Xxh64(c.rows) != c.checksum) return absl::DataLossError("checksum mismatch in latent rows");
    if (static_cast<int64_t>(c.rows.size()) != c.token_count * header_.row_bytes) {
      return absl::InvalidArgumentError("row bytes");
    }
    std::lock_guard<std::mutex> lock(r_.mu);
    std::string& rows = r_.latent[c.mla_index];
    if (static_cast<int64_t>(rows.size()) != c.first_token * header_.row_bytes) {
      return absl::InvalidArgumentError("out of order");
    }
    rows += c.rows;
    r_.chunks++;
    r_.bytes += static_cast<int64_t>(c.rows.size());
    return absl::OkStatus();
  }
  absl::Status OnKdaState(const KdaStateBytes& c) override {
    if (Xxh64(c.data) != c.checksum) return absl::DataLossError("checksum mismatch in KDA state");
    std::lock_guard<std::mutex> lock(r_.mu);
    std::string& state = r_.kda[c.kda_index];
    if (static_cast<int64_t>(state.size()) != c.offset) return absl::InvalidArgumentError("KDA offset");
    state += c.data;
    r_.chunks++;
    r_.bytes += static_cast<int64_t>(c.data.size());
    return absl::OkStatus();
  }
  absl::Status Finish(const HandoffEnd& end) override {
    std::lock_guard<std::mutex> lock(r_.mu);
    if (end.chunks != r_.chunks || end.payload_bytes != r_.bytes) return absl::DataLossError("incomplete handoff");
    r_.finished = true;
    r_.cv.notify_all();
    return absl::OkStatus();
  }
  void Abort(const absl::Status& why) override {
    std::lock_guard<std::mutex> lock(r_.mu);
    r_.aborted = why;
    r_.cv.notify_all();
  }

 private:
  void Wait() {
    std::unique_lock<std::mutex> lock(r_.mu);
    r_.entered++;
    r_.cv.notify_all();
    r_.cv.wait(lock, [&] { return r_.gate_open; });
  }
  Received& r_;
  HandoffHeader header_;
};

class TestSink : public CacheSink {
 public:
  explicit TestSink(Received& r) : r_(r) {}
  absl::StatusOr<std::unique_ptr<CacheReceiver>> BeginHandoff(const HandoffHeader& header) override {
    if (header.lease_id != "lease-1") return absl::NotFoundError("unknown lease");
    return std::unique_ptr<CacheReceiver>(new TestReceiver(r_, header));
  }

 private:
  Received& r_;
};

class Service final : public internal::v1::DecodeWorker::Service {
 public:
  explicit Service(CacheSink& sink) : sink_(sink) {}
  grpc::Status ReceiveCache(grpc::ServerContext* context, grpc::ServerReader<internal::v1::ReceiveCacheRequest>* reader,
                            internal::v1::ReceiveCacheResponse* response) override {
    return ServeReceiveCache(sink_, context, reader, response);
  }

 private:
  CacheSink& sink_;
};

class GrpcTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.SetMaxReceiveMessageSize(16 << 20);  // as tools/cmd_serving.cc
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    target_ = "127.0.0.1:" + std::to_string(port_);
    header_.request_id = "req-1";
    header_.lease_id = "lease-1";
    header_.cache_dtype = DType::kF16;
    header_.latent_width = 576;
    header_.row_bytes = 1152;
    header_.mla_layers = {3, 7};
    header_.kda_layers = {0, 1, 2};
    header_.kda_state_bytes = (2 << 20) + 100;
    header_.prompt_tokens = 3000;
  }
  void TearDown() override {
    {
      std::lock_guard<std::mutex> lock(received_.mu);
      received_.gate_open = true;
    }
    received_.cv.notify_all();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  }

  Received received_;
  TestSink sink_{received_};
  Service service_{sink_};
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::string target_;
  HandoffHeader header_;
};

TEST_F(GrpcTransportTest, ChunkedHandoffIsReassembledExactly) {
  GrpcTransport transport;
  auto sender = transport.Open(target_, header_, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(sender.ok()) << sender.status();
  // What the prefill worker does: rows of every MLA layer in <= kMaxChunkBytes messages,
  // then each KDA state in kMaxChunkBytes pieces.
  const int64_t rows_per_message = kMaxChunkBytes / header_.row_bytes;
  std::vector<std::string> latent(2), kda(3);
  int64_t chunks = 0, bytes = 0;
  for (int mla = 0; mla < 2; ++mla) {
    latent[mla] = Pattern(header_.prompt_tokens * header_.row_bytes, 10 + mla);
    for (int64_t t = 0; t < header_.prompt_tokens; t += rows_per_message) {
      const int64_t count = std::min(rows_per_message, header_.prompt_tokens - t);
      LatentRows c{mla, t, count, latent[mla].substr(t * header_.row_bytes, count * header_.row_bytes), 0};
      ASSERT_LE(static_cast<int64_t>(c.rows.size()), kMaxChunkBytes);
      c.checksum = Xxh64(c.rows);
      bytes += static_cast<int64_t>(c.rows.size());
      chunks++;
      ASSERT_TRUE((*sender)->SendLatentRows(std::move(c)).ok());
    }
  }
  for (int k = 0; k < 3; ++k) {
    kda[k] = Pattern(header_.kda_state_bytes, 20 + k);
    for (int64_t off = 0; off < header_.kda_state_bytes; off += kMaxChunkBytes) {
      KdaStateBytes c{k, off, kda[k].substr(off, kMaxChunkBytes), 0};
      c.checksum = Xxh64(c.data);
      bytes += static_cast<int64_t>(c.data.size());
      chunks++;
      ASSERT_TRUE((*sender)->SendKdaState(std::move(c)).ok());
    }
  }
  auto accepted = (*sender)->Finish({42, chunks, bytes});
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(*accepted, bytes);
  std::lock_guard<std::mutex> lock(received_.mu);
  EXPECT_TRUE(received_.finished);
  for (int mla = 0; mla < 2; ++mla) EXPECT_TRUE(received_.latent[mla] == latent[mla]) << "MLA " << mla;
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(received_.kda[k] == kda[k]) << "KDA " << k;
}

TEST_F(GrpcTransportTest, CorruptedChunkIsRejectedWithDataLoss) {
  GrpcTransport transport;
  auto sender = transport.Open(target_, header_, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(sender.ok());
  std::string rows = Pattern(100 * header_.row_bytes, 5);
  const uint64_t checksum = Xxh64(rows);
  ASSERT_TRUE((*sender)->SendLatentRows({0, 0, 100, rows, checksum}).ok());
  rows[777] ^= 1;  // one bit flipped after the checksum was taken
  absl::Status status = (*sender)->SendLatentRows({0, 100, 100, rows, checksum});
  // The send may be accepted locally before the receiver's verdict; the verdict arrives at
  // the latest with Finish, and nothing after the bad chunk is admitted.
  for (int i = 0; status.ok() && i < 50; ++i) {
    status = (*sender)->SendLatentRows({0, 200, 100, Pattern(100 * header_.row_bytes, 6), 0});
    absl::SleepFor(absl::Milliseconds(10));
  }
  auto done = (*sender)->Finish({1, 3, 300 * header_.row_bytes});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), absl::StatusCode::kDataLoss) << done.status();
  EXPECT_NE(done.status().message().find("checksum mismatch"), std::string::npos) << done.status();
  std::unique_lock<std::mutex> lock(received_.mu);
  received_.cv.wait_for(lock, std::chrono::seconds(5), [&] { return !received_.aborted.ok(); });
  EXPECT_EQ(received_.aborted.code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(received_.finished);
  EXPECT_EQ(received_.latent[0].size(), 100 * header_.row_bytes) << "only the good chunk was taken";
}

TEST_F(GrpcTransportTest, UnknownLeaseFailsTheHandoff) {
  header_.lease_id = "nope";
  GrpcTransport transport;
  auto sender = transport.Open(target_, header_, absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(sender.ok());
  auto done = (*sender)->Finish({1, 0, 0});
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.status().code(), absl::StatusCode::kNotFound) << done.status();
}

TEST_F(GrpcTransportTest, SenderBlocksWhileTheReceiverIsStalledThenCompletes) {
  {
    std::lock_guard<std::mutex> lock(received_.mu);
    received_.gate_open = false;
  }
  const int64_t queue_limit = 2 << 20;
  GrpcTransport transport(queue_limit);
  auto sender = transport.Open(target_, header_, absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(sender.ok());
  const int64_t rows_per_chunk = kMaxChunkBytes / header_.row_bytes;
  const int64_t chunk_bytes = rows_per_chunk * header_.row_bytes;
  std::atomic<int> sent{0};
  std::atomic<bool> send_failed{false};
  const std::string payload = Pattern(chunk_bytes, 9);
  const uint64_t checksum = Xxh64(payload);
  // Many times what the queue, gRPC's flow-control windows and the socket buffers can hold.
  constexpr int kChunks = 256;
  std::thread producer([&] {
    for (int i = 0; i < kChunks; ++i) {
      // One chunk per "MLA ordinal" keeps the receiver's token-order check simple.
      LatentRows c{i, 0, rows_per_chunk, payload, checksum};
      if (!(*sender)->SendLatentRows(std::move(c)).ok()) {
        send_failed = true;
        return;
      }
      sent++;
    }
  });
  {
    std::unique_lock<std::mutex> lock(received_.mu);
    ASSERT_TRUE(received_.cv.wait_for(lock, std::chrono::seconds(10), [&] { return received_.entered > 0; }));
  }
  absl::SleepFor(absl::Milliseconds(500));
  const int stalled_at = sent.load();
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(sent.load(), stalled_at) << "the sender kept going while the receiver was stalled";
  EXPECT_LT(stalled_at, kChunks / 2) << "backpressure should bound the bytes in flight";
  std::printf("chunks accepted while the receiver was stalled: %d (of %d)\n", stalled_at, kChunks);
  {
    std::lock_guard<std::mutex> lock(received_.mu);
    received_.gate_open = true;
  }
  received_.cv.notify_all();
  producer.join();
  ASSERT_FALSE(send_failed.load());
  auto done = (*sender)->Finish({1, kChunks, kChunks * chunk_bytes});
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(*done, kChunks * chunk_bytes);
}

TEST_F(GrpcTransportTest, StalledReceiverEndsInDeadlineExceededNotAHang) {
  {
    std::lock_guard<std::mutex> lock(received_.mu);
    received_.gate_open = false;
  }
  GrpcTransport transport(1 << 20);
  auto sender = transport.Open(target_, header_, absl::Now() + absl::Milliseconds(800));
  ASSERT_TRUE(sender.ok());
  const int64_t rows_per_chunk = kMaxChunkBytes / header_.row_bytes;
  const std::string payload = Pattern(rows_per_chunk * header_.row_bytes, 4);
  const absl::Time start = absl::Now();
  absl::Status status;
  for (int i = 0; i < 1000 && status.ok(); ++i) status = (*sender)->SendLatentRows({i, 0, rows_per_chunk, payload, Xxh64(payload)});
  if (status.ok()) status = (*sender)->Finish({1, 1000, 0}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

}  // namespace
}  // namespace latentserve::transfer
