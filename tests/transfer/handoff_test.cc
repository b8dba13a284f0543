// The handoff protocol (transfer/handoff_writer.h, handoff_assembler.h) between two caches on
// two CPU backends: in process it moves views and copies no byte through the host; over a
// byte transport every chunk is checksummed; either way the receiver continues exactly as the
// sender would, and a corrupt, reordered or incomplete handoff is refused.
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cache/sequence_table.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "common/status.h"
#include "tools/lib/test_model.h"
#include "transfer/checksum.h"
#include "transfer/handoff_assembler.h"
#include "transfer/handoff_writer.h"
#include "transfer/inproc_transport.h"

namespace latentserve::transfer {
namespace {

// A transport that moves bytes (as gRPC does) straight into a receiver, optionally corrupting
// one latent chunk on the way.
class ByteSender : public CacheSender {
 public:
  explicit ByteSender(CacheReceiver* receiver) : receiver_(receiver) {}
  absl::Status SendLatentRows(LatentRows chunk) override {
    if (chunk.view) return absl::InternalError("views on a byte transport");
    if (corrupt_next_ && !chunk.payload().empty()) {
      chunk.rows = std::string(chunk.payload());  // a copy: the staging block is the sender's
      chunk.staged = {};
      chunk.rows[chunk.rows.size() / 2] ^= 0x10;
      corrupt_next_ = false;
    }
    return receiver_->OnLatentRows(chunk);
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override {
    if (chunk.view) return absl::InternalError("views on a byte transport");
    return receiver_->OnKdaState(chunk);
  }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    RETURN_IF_ERROR(receiver_->Finish(end));
    return end.payload_bytes;
  }
  void Cancel() override { receiver_->Abort(absl::CancelledError("cancelled")); }
  bool corrupt_next_ = false;

 private:
  CacheReceiver* receiver_;
};

// What the CUDA IPC sender does, on CPU backends: rows copied straight into the receiver's
// pages (a "device write"), then announced with the checksum of the sender's rows.
class DeviceWriteSender : public CacheSender {
 public:
  DeviceWriteSender(CacheReceiver* receiver, const cache::Sequence* target) : receiver_(receiver), target_(target) {}
  bool MovesViews() const override { return true; }
  absl::Status SendLatentRows(LatentRows chunk) override {
    std::string rows;
    RETURN_IF_ERROR(chunk.view->pool->ExportRows(chunk.mla_index, chunk.view->pages, chunk.first_token,
                                                 chunk.token_count, &rows));
    if (!skip_write_) {
      RETURN_IF_ERROR(cache::CopyRows(*chunk.view, cache::RowsOf(*target_, chunk.mla_index, chunk.first_token,
                                                                 chunk.token_count)).status());
    }
    // The device transports' checksum, computed by hand: XXH64 per row, then over the hashes.
    const size_t row_bytes = chunk.view->pool->row_bytes();
    std::vector<uint64_t> row_hashes;
    for (size_t offset = 0; offset < rows.size(); offset += row_bytes) {
      row_hashes.push_back(Xxh64(std::string_view(rows).substr(offset, row_bytes)));
    }
    if (swap_rows_ && row_hashes.size() > 1) std::swap(row_hashes[0], row_hashes[1]);
    return receiver_->OnRowsWritten({chunk.mla_index, chunk.first_token, chunk.token_count, RowsChecksum(row_hashes)});
  }
  absl::Status SendKdaState(KdaStateBytes chunk) override { return receiver_->OnKdaState(chunk); }
  absl::StatusOr<int64_t> Finish(const HandoffEnd& end) override {
    RETURN_IF_ERROR(receiver_->Finish(end));
    return end.payload_bytes;
  }
  void Cancel() override { receiver_->Abort(absl::CancelledError("cancelled")); }
  bool skip_write_ = false;  // announce rows that never landed
  bool swap_rows_ = false;   // announce the right rows in the wrong order

 private:
  CacheReceiver* receiver_;
  const cache::Sequence* target_;
};

class HandoffTest : public ::testing::Test, public CacheSink {
 protected:
  static void SetUpTestSuite() {
    path_ = (std::filesystem::temp_directory_path() / ("ls_handoff_" + std::to_string(::getpid()) + ".gguf")).string();
    tools::TestModelOptions options = tools::TinyTestModel();
    options.out_path = path_;
    options.seed = 5;
    ASSERT_TRUE(tools::WriteTestModel(options).ok());
  }
  static void TearDownTestSuite() { std::filesystem::remove(path_); }

  void SetUp() override {
    for (int side = 0; side < 2; ++side) {
      backends_[side] = *kernels::CreateBackend({"cpu", 1, 0});
      models_[side] = *model::Model::Load(path_, *backends_[side]);
      model::LatentCacheOptions options;
      options.dtype = DType::kF16;
      options.page_tokens = side == 0 ? 16 : 8;  // page sizes may differ: rows are token-addressed
      options.pages = 32;
      caches_[side] = *model::NewLatentCache(models_[side]->config(), *backends_[side], options);
      tables_[side] = std::make_unique<cache::SequenceTable>(*caches_[side], models_[side]->kda_layout());
    }
    std::mt19937 rng(9);
    for (int i = 0; i < 50; ++i) prompt_.push_back(static_cast<int32_t>(rng() % models_[0]->vocab()));
    const model::ModelConfig& config = models_[0]->config();
    header_.request_id = "r1";
    header_.model_fingerprint = "fp";
    DescribeLayout(*tables_[0], &header_);
    for (int64_t layer = 0; layer < config.n_layers; ++layer) {
      (config.is_mla[layer] ? header_.mla_layers : header_.kda_layers).push_back(static_cast<int32_t>(layer));
    }
    header_.prompt_tokens = kPrompt;
    source_ = *tables_[0]->New();
    target_ = *tables_[1]->New();
    ASSERT_TRUE(tables_[1]->Reserve(*target_, kPrompt).ok());
  }
  void TearDown() override {
    source_.reset();
    target_.reset();
    for (int side = 0; side < 2; ++side) EXPECT_EQ(caches_[side]->free_pages(), caches_[side]->total_pages());
  }

  // CacheSink: the receiving side, as a decode worker would make it.
  absl::StatusOr<std::unique_ptr<CacheReceiver>> BeginHandoff(const HandoffHeader& header) override {
    RETURN_IF_ERROR(CheckHeader(header, {"fp", tables_[1].get(), models_[1]->config().n_layers}));
    AssemblyHooks hooks;
    hooks.check_live = [] { return absl::OkStatus(); };
    hooks.admit = [this](const HandoffEnd& end, const AssemblyStats& stats, ArrivedCheckpoints&) {
      admitted_stats_ = stats;
      first_token_ = end.first_token;
      return tables_[1]->Advance(*target_, kPrompt);
    };
    hooks.aborted = [this](const absl::Status& why) { aborted_ = why; };
    return std::unique_ptr<CacheReceiver>(
        new HandoffAssembler(header, {tables_[1].get(), target_.get(), &device_mu_}, std::move(hooks)));
  }

  // Prefills the source in chunks of 16, streaming each chunk's rows, then the KDA state.
  absl::Status Send(CacheSender& sender, HandoffWriter& writer) {
    absl::Status sent;
    auto logits = models_[0]->Prefill(*source_, absl::MakeConstSpan(prompt_).subspan(0, kPrompt), *caches_[0], 16,
                                      false, [&](int64_t first, int64_t count) {
                                        if (sent.ok()) sent = writer.SendRows(*source_, first, count);
                                      });
    RETURN_IF_ERROR(logits.status());
    RETURN_IF_ERROR(sent);
    RETURN_IF_ERROR(writer.SendKdaState(*source_));
    return writer.Finish(7).status();
  }
  // Both sides decode the same next tokens: identical logits.
  void ExpectSameContinuation() {
    for (int64_t t = kPrompt; t < kPrompt + 4; ++t) {
      model::BatchEntry a{source_.get(), absl::MakeConstSpan(&prompt_[t], 1), false};
      model::BatchEntry b{target_.get(), absl::MakeConstSpan(&prompt_[t], 1), false};
      auto la = models_[0]->Forward({a}, *caches_[0]);
      auto lb = models_[1]->Forward({b}, *caches_[1]);
      ASSERT_TRUE(la.ok() && lb.ok());
      ASSERT_EQ(*la, *lb) << "pos " << t;
    }
  }

  static constexpr int64_t kPrompt = 37;
  static std::string path_;
  std::unique_ptr<kernels::Backend> backends_[2];
  std::unique_ptr<model::Model> models_[2];
  std::unique_ptr<model::LatentCache> caches_[2];
  std::unique_ptr<cache::SequenceTable> tables_[2];
  std::unique_ptr<cache::Sequence> source_, target_;
  std::vector<int32_t> prompt_;
  HandoffHeader header_;
  std::mutex device_mu_;
  AssemblyStats admitted_stats_;
  int32_t first_token_ = -1;
  absl::Status aborted_;
};
std::string HandoffTest::path_;

TEST_F(HandoffTest, InProcessHandoffCopiesNoByteThroughTheHost) {
  InProcTransport transport;
  transport.AddSink("decode", this);
  auto sender = transport.Open("decode", header_, absl::InfiniteFuture());
  ASSERT_TRUE(sender.ok()) << sender.status();
  ASSERT_TRUE((*sender)->MovesViews());
  HandoffWriter writer(**sender, header_);
  ASSERT_TRUE(Send(**sender, writer).ok());
  EXPECT_EQ(first_token_, 7);
  EXPECT_EQ(writer.host_bytes(), 0);
  EXPECT_EQ(admitted_stats_.host_bytes, 0) << "the in-process handoff staged bytes in host memory";
  EXPECT_EQ(admitted_stats_.payload_bytes, writer.payload_bytes());
  EXPECT_EQ(writer.payload_bytes(), kPrompt * header_.row_bytes * static_cast<int64_t>(header_.mla_layers.size()) +
                                        header_.kda_state_bytes * static_cast<int64_t>(header_.kda_layers.size()));
  ExpectSameContinuation();
}

TEST_F(HandoffTest, ByteHandoffIsChecksummedAndCountsItsHostBytes) {
  auto receiver = BeginHandoff(header_);
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  ByteSender sender(receiver->get());
  HandoffWriter writer(sender, header_);
  ASSERT_TRUE(Send(sender, writer).ok());
  EXPECT_EQ(writer.host_bytes(), writer.payload_bytes());
  EXPECT_EQ(admitted_stats_.host_bytes, writer.payload_bytes());
  ExpectSameContinuation();
}

TEST_F(HandoffTest, ACorruptChunkIsDataLoss) {
  auto receiver = BeginHandoff(header_);
  ASSERT_TRUE(receiver.ok());
  ByteSender sender(receiver->get());
  sender.corrupt_next_ = true;
  HandoffWriter writer(sender, header_);
  const absl::Status status = Send(sender, writer);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_NE(status.message().find("checksum mismatch"), std::string::npos);
  EXPECT_EQ(first_token_, -1) << "a corrupt handoff was admitted";
}

TEST_F(HandoffTest, ReorderedOrMissingChunksAreRefused) {
  auto receiver = BeginHandoff(header_);
  ASSERT_TRUE(receiver.ok());
  LatentRows late;
  late.mla_index = 0;
  late.first_token = 16;
  late.token_count = 4;
  late.rows.assign(4 * header_.row_bytes, '\0');
  late.checksum = Xxh64(late.rows);
  EXPECT_EQ((*receiver)->OnLatentRows(late).code(), absl::StatusCode::kInvalidArgument);
  LatentRows first = late;
  first.first_token = 0;
  EXPECT_TRUE((*receiver)->OnLatentRows(first).ok());
  const absl::Status finish = (*receiver)->Finish({3, 1, static_cast<int64_t>(first.rows.size())});
  EXPECT_EQ(finish.code(), absl::StatusCode::kDataLoss) << finish;
  EXPECT_EQ(first_token_, -1);
  receiver->reset();
  EXPECT_EQ(aborted_.code(), absl::StatusCode::kCancelled) << "a dropped handoff reports its abort";
}

TEST_F(HandoffTest, HeaderOfAnotherLayoutIsRefused) {
  HandoffHeader other = header_;
  other.cache_dtype = DType::kQ8_0;
  const absl::Status status = BeginHandoff(other).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("cache layout mismatch"), std::string::npos) << status;
  other = header_;
  other.kda_state_bytes = -1;
  EXPECT_EQ(BeginHandoff(other).status().code(), absl::StatusCode::kFailedPrecondition);
  other = header_;
  other.model_fingerprint = "another";
  EXPECT_EQ(BeginHandoff(other).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(HandoffTest, TheWriterSendsRowsInOrderOnly) {
  auto receiver = BeginHandoff(header_);
  ASSERT_TRUE(receiver.ok());
  ByteSender sender(receiver->get());
  HandoffWriter writer(sender, header_);
  ASSERT_TRUE(tables_[0]->Reserve(*source_, kPrompt).ok());
  EXPECT_EQ(writer.SendRows(*source_, 5, 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.SendRows(*source_, 0, kPrompt + 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.chunks(), 0);
}

}  // namespace
}  // namespace latentserve::transfer

namespace latentserve::transfer {
namespace {

TEST_F(HandoffTest, DeviceWrittenRowsAreVerifiedAndAccounted) {
  HandoffHeader device = header_;
  device.transport = "cuda-ipc";
  auto receiver = BeginHandoff(device);
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  DeviceWriteSender sender(receiver->get(), target_.get());
  HandoffWriter writer(sender, device);
  ASSERT_TRUE(Send(sender, writer).ok());
  EXPECT_EQ(first_token_, 7);
  EXPECT_EQ(admitted_stats_.device_bytes,
            kPrompt * header_.row_bytes * static_cast<int64_t>(header_.mla_layers.size()));
  EXPECT_EQ(admitted_stats_.payload_bytes, writer.payload_bytes());
  ExpectSameContinuation();
}

TEST_F(HandoffTest, RowsAnnouncedButNotWrittenAreDataLoss) {
  HandoffHeader device = header_;
  device.transport = "cuda-ipc";
  auto receiver = BeginHandoff(device);
  ASSERT_TRUE(receiver.ok());
  DeviceWriteSender sender(receiver->get(), target_.get());
  sender.skip_write_ = true;
  HandoffWriter writer(sender, device);
  const absl::Status status = Send(sender, writer);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_EQ(first_token_, -1);
}

TEST_F(HandoffTest, DeviceRowsInAnotherOrderAreDataLoss) {
  HandoffHeader device = header_;
  device.transport = "cuda-ipc";
  auto receiver = BeginHandoff(device);
  ASSERT_TRUE(receiver.ok());
  DeviceWriteSender sender(receiver->get(), target_.get());
  sender.swap_rows_ = true;  // every row hash right, their order not: the outer hash differs
  HandoffWriter writer(sender, device);
  const absl::Status status = Send(sender, writer);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_EQ(first_token_, -1);
}

TEST_F(HandoffTest, RowsWrittenNeedADeviceHeaderAndOrder) {
  auto plain = BeginHandoff(header_);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->OnRowsWritten({0, 0, 4, 0}).code(), absl::StatusCode::kInvalidArgument)
      << "a gRPC handoff must not take out-of-band rows";
  plain->reset();
  HandoffHeader device = header_;
  device.transport = "cuda-ipc";
  auto receiver = BeginHandoff(device);
  ASSERT_TRUE(receiver.ok());
  EXPECT_EQ((*receiver)->OnRowsWritten({0, 8, 4, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*receiver)->OnRowsWritten({5, 0, 4, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*receiver)->OnRowsWritten({0, 0, kPrompt + 1, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*receiver)->OnRowsWritten({0, 0, -1, 0}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace latentserve::transfer
