// The NCCL transport end to end without a GPU: a prefill-side NcclTransport and a DecodeWorker
// with an NcclReceiveSide, the control stream served by the real ReceiveCacheMessages on its
// own thread (as the gRPC server would), NCCL replaced by a fake fabric (nccl_fake_fabric.h)
// that moves rows pool to pool on CPU backends. Sender pages of 12 tokens, receiver pages of
// 16: runs split at both sides' boundaries. Checked: rows verified on arrival and the
// communicator reused; a corrupted chunk refused (DATA_LOSS) and the pair dropped; out-of-order
// and over-range announcements refused before anything is posted; a chunk that never arrives
// aborted by the watchdog (DEADLINE_EXCEEDED on both sides); a stream that ends mid-handoff
// drops the communicator (PeerDied). Every test ends with leases and pages at their baseline.
#include <thread>

#include "common/status.h"
#include "decode/decode_worker.h"
#include "gtest/gtest.h"
#include "tests/decode/loopback_control.h"
#include "tests/decode/nccl_fake_fabric.h"
#include "tests/model/tiny_model_fixture.h"
#include "transfer/grpc_transport.h"
#include "transfer/handoff_writer.h"
#include "transfer/nccl_receiver.h"
#include "transfer/nccl_sender.h"

namespace latentserve::transfer {
namespace {

constexpr int64_t kDecodePageTokens = 16;
constexpr int64_t kPrefillPageTokens = 12;
constexpr int64_t kPromptTokens = 50;

class NcclHandoffTest : public test::TinyModelFixture</*seed=*/9, kDecodePageTokens, /*pages=*/64> {
 protected:
  void SetUp() override {
    TinyModelFixture::SetUp();
    model::LatentCacheOptions options;
    options.dtype = DType::kF32;
    options.page_tokens = kPrefillPageTokens;
    options.pages = 64;
    prefill_cache_ = *model::NewLatentCache(model_->config(), *backend_, options);
    prefill_table_ = std::make_unique<cache::SequenceTable>(*prefill_cache_, model_->kda_layout());
    worker_ = std::make_unique<decode::DecodeWorker>(*model_, *cache_, "fp");
    NcclReceiveOptions receive;
    receive.chunk_timeout = absl::Minutes(10);  // tests that need a deadline set a short one
    receive.watchdog_poll = absl::Milliseconds(2);
    MakeReceiveSide(receive);
    control_ = std::make_unique<LoopbackControl>(*worker_);
    NcclSendOptions send;
    // A sender learns a refusal from the stream's status only when it next writes to it; while
    // it waits inside a chunk, this deadline bounds a refusal it has not heard (the corrupt test).
    send.chunk_timeout = absl::Seconds(5);
    send.watchdog_poll = absl::Milliseconds(2);
    MakeTransport(send);
    baseline_free_ = worker_->Stats().pages_free;
  }
  void TearDown() override {
    fabric_.Shutdown();
    transport_.reset();
    worker_.reset();
    receive_side_.reset();
    prefill_table_.reset();
    prefill_cache_.reset();
    TinyModelFixture::TearDown();
  }
  void MakeReceiveSide(NcclReceiveOptions options) {
    receive_side_ = std::make_unique<NcclReceiveSide>(fabric_, options);
    worker_->EnableNccl(receive_side_.get());
  }
  void MakeTransport(NcclSendOptions options) {
    auto fetch = [this](const std::string&, const internal::v1::OpenDeviceHandoffRequest& request,
                        absl::Time) -> absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> {
      ASSIGN_OR_RETURN(decode::DeviceExport out, worker_->ExportForHandoff(request.lease_id(), request.transport(),
                                                                           request.host_id(), request.nccl()));
      internal::v1::OpenDeviceHandoffResponse answer;
      answer.set_export_id(out.export_id);
      answer.set_page_tokens(out.page_tokens);
      answer.set_pool_pages(out.pool_pages);
      answer.set_row_bytes(out.row_bytes);
      answer.set_cache_dtype(ToProtoDType(out.dtype));
      for (int32_t page : out.pages) answer.add_pages(page);
      return answer;
    };
    transport_ = std::make_unique<NcclTransport>(*control_, TransportOffer{{"grpc", "nccl"}, "h", ""}, fabric_, fetch,
                                                 options);
  }
  std::string Lease() {
    auto lease = worker_->ReserveLease("r", kPromptTokens + 8, absl::Minutes(5), "fp");
    EXPECT_TRUE(lease.ok()) << lease.status();
    return *lease;
  }
  HandoffHeader Header(const std::string& lease) {
    HandoffHeader header;
    header.request_id = "r";
    header.lease_id = lease;
    header.model_fingerprint = "fp";
    DescribeLayout(*prefill_table_, &header);
    for (int64_t layer = 0; layer < model_->config().n_layers; ++layer) {
      (model_->config().is_mla[layer] ? header.mla_layers : header.kda_layers).push_back(static_cast<int32_t>(layer));
    }
    header.prompt_tokens = kPromptTokens;
    header.transport = "nccl";
    return header;
  }
  // A prefill worker's handoff: rows in two pieces (several chunks per layer), KDA, End.
  absl::Status Handoff(const std::string& lease, const std::function<void(CacheSender&)>& after_first = {}) {
    auto sequence = *prefill_table_->New();
    std::vector<int32_t> tokens(kPromptTokens);
    for (int64_t i = 0; i < kPromptTokens; ++i) tokens[i] = static_cast<int32_t>(7 * i % model_->vocab());
    RETURN_IF_ERROR(model_->Prefill(*sequence, tokens, *prefill_cache_, 512, false).status());
    const HandoffHeader header = Header(lease);
    ASSIGN_OR_RETURN(std::unique_ptr<CacheSender> sender, transport_->Open("decode:1", header, absl::InfiniteFuture()));
    HandoffWriter writer(*sender, header);
    absl::Status status = writer.SendRows(*sequence, 0, 20);
    if (status.ok() && after_first) {
      after_first(*sender);
      return absl::CancelledError("cancelled by the test");
    }
    if (status.ok()) status = writer.SendRows(*sequence, 20, kPromptTokens - 20);
    if (status.ok()) status = writer.SendKdaState(*sequence);
    if (status.ok()) status = writer.Finish(3).status();
    if (!status.ok()) sender->Cancel();
    last_device_bytes_ = sender->device_bytes();
    return status;
  }
  void ExpectBaselineAfterRelease(const std::string& lease) {
    EXPECT_TRUE(worker_->ReleaseLease(lease).ok());
    EXPECT_EQ(worker_->Stats().leases_active, 0);
    EXPECT_EQ(worker_->Stats().pages_free, baseline_free_);
  }

  test::FakeNcclFabric fabric_;
  std::unique_ptr<model::LatentCache> prefill_cache_;
  std::unique_ptr<cache::SequenceTable> prefill_table_;
  std::unique_ptr<decode::DecodeWorker> worker_;
  std::unique_ptr<NcclReceiveSide> receive_side_;
  std::unique_ptr<LoopbackControl> control_;
  std::unique_ptr<NcclTransport> transport_;
  int64_t baseline_free_ = 0;
  int64_t last_device_bytes_ = 0;
};

TEST_F(NcclHandoffTest, RowsArriveVerifiedAndTheCommunicatorIsReused) {
  const std::string first = Lease();
  ASSERT_TRUE(Handoff(first).ok()) << control_->last_stream_status();
  const int64_t row_bytes = static_cast<int64_t>(prefill_cache_->row_bytes());
  EXPECT_EQ(last_device_bytes_, kPromptTokens * row_bytes * static_cast<int64_t>(prefill_cache_->mla_layers()));
  EXPECT_EQ(fabric_.joins(), 2) << "one communicator, two ranks";
  EXPECT_EQ(worker_->Stats().handoffs_admitted, 1);
  ExpectBaselineAfterRelease(first);

  const std::string second = Lease();
  ASSERT_TRUE(Handoff(second).ok()) << control_->last_stream_status();
  EXPECT_EQ(fabric_.joins(), 2) << "the second handoff reuses the pair's communicator";
  EXPECT_EQ(transport_->open_peers(), 1u);
  EXPECT_EQ(receive_side_->comms().size(), 1u);
  ExpectBaselineAfterRelease(second);
}

TEST_F(NcclHandoffTest, ACorruptedChunkIsRefusedAndThePairFormsAnew) {
  const std::string lease = Lease();
  fabric_.set_corrupt(true);
  const absl::Status sent = Handoff(lease);
  // The receiver's verdict; the sender hears it before its next chunk, or that chunk times out.
  EXPECT_TRUE(sent.code() == absl::StatusCode::kDataLoss || sent.code() == absl::StatusCode::kDeadlineExceeded) << sent;
  EXPECT_EQ(control_->last_stream_status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(transport_->open_peers(), 0u);
  EXPECT_EQ(receive_side_->comms().size(), 0u);
  // The lease took no cache: a retried handoff fills it over a fresh communicator.
  ASSERT_TRUE(Handoff(lease).ok()) << control_->last_stream_status();
  EXPECT_EQ(fabric_.joins(), 4);
  ExpectBaselineAfterRelease(lease);
}

TEST_F(NcclHandoffTest, AnnouncementsOutOfOrderOrRangeAreRefusedBeforeAnyReceive) {
  const std::string lease = Lease();
  HandoffHeader header = Header(lease);
  EXPECT_EQ(worker_->BeginHandoff(header).status().code(), absl::StatusCode::kFailedPrecondition)
      << "an NCCL handoff needs its OpenDeviceHandoff first";
  NcclBootstrap bootstrap;
  bootstrap.comm_key = "p|d|1";
  bootstrap.unique_id = *fabric_.NewUniqueId();
  bootstrap.init_timeout = absl::Minutes(1);
  bootstrap.rank = kNcclReceiverRank;
  ASSERT_TRUE(worker_->ExportForHandoff(lease, "nccl", "", ToProto(bootstrap)).ok());
  std::thread sender_rank([&] { ASSERT_TRUE(fabric_.Join(bootstrap, kNcclSenderRank).ok()); });
  sender_rank.join();
  const std::vector<RowsWritten> bad = {
      {0, 5, 4, 0},                   // does not start at token 0
      {0, 0, kPromptTokens + 1, 0},   // past the prompt
      {0, 0, 0, 0},                   // empty
      {7, 0, 4, 0},                   // no such MLA ordinal
      {-1, 0, 4, 0},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    auto receiver = worker_->BeginHandoff(header);
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    EXPECT_EQ((*receiver)->OnRowsWritten(bad[i]).code(), absl::StatusCode::kInvalidArgument) << "case " << i;
    (*receiver)->Abort(absl::InvalidArgumentError("bad announcement"));
  }
  auto receiver = worker_->BeginHandoff(header);
  ASSERT_TRUE(receiver.ok());
  EXPECT_EQ((*receiver)->OnLatentRows(LatentRows{0, 0, 1, std::string(64, 'x'), 0}).code(),
            absl::StatusCode::kInvalidArgument)
      << "rows as bytes in an NCCL handoff";
  (*receiver)->Abort(absl::InvalidArgumentError("bytes"));
  EXPECT_EQ(fabric_.recvs_posted(), 0) << "nothing was received into the lease's pages";
  ExpectBaselineAfterRelease(lease);
}

TEST_F(NcclHandoffTest, AChunkThatNeverArrivesIsAbortedAtItsDeadline) {
  NcclReceiveOptions receive;
  receive.chunk_timeout = absl::Milliseconds(50);
  receive.watchdog_poll = absl::Milliseconds(2);
  MakeReceiveSide(receive);
  NcclSendOptions send;
  send.chunk_timeout = absl::Milliseconds(50);
  send.watchdog_poll = absl::Milliseconds(2);
  MakeTransport(send);
  const std::string lease = Lease();
  fabric_.set_stall(true);
  EXPECT_EQ(Handoff(lease).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(control_->last_stream_status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(fabric_.aborts(), 2) << "both ranks' communicators aborted by their watchdogs";
  EXPECT_EQ(transport_->open_peers(), 0u);
  EXPECT_EQ(receive_side_->comms().size(), 0u);
  EXPECT_EQ(worker_->Stats().handoffs_admitted, 0);
  ExpectBaselineAfterRelease(lease);
}

TEST_F(NcclHandoffTest, AStreamThatEndsMidHandoffDropsTheCommunicator) {
  const std::string lease = Lease();
  EXPECT_EQ(Handoff(lease, [](CacheSender& sender) { sender.Cancel(); }).code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(control_->last_stream_status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(receive_side_->comms().size(), 0u) << "PeerDied on the decode side";
  EXPECT_EQ(transport_->open_peers(), 0u);
  ExpectBaselineAfterRelease(lease);
}

TEST_F(NcclHandoffTest, APeerGoneWhileAChunkWaitsAbortsIt) {
  const std::string lease = Lease();
  fabric_.set_stall(true);
  absl::Status sent;
  std::thread prefill([&] { sent = Handoff(lease); });
  fabric_.WaitForRecvsPosted(1);  // the decode side waits inside the first chunk
  control_->CancelStreams();      // ... when the prefill worker's stream goes away
  fabric_.WaitForAborts(1);       // PeerDied: its communicator aborted
  transport_->Forget("decode:1"); // the prefill side's own failure path unblocks its send
  prefill.join();
  EXPECT_EQ(sent.code(), absl::StatusCode::kDeadlineExceeded) << sent;
  EXPECT_EQ(control_->last_stream_status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(receive_side_->comms().size(), 0u);
  ExpectBaselineAfterRelease(lease);
}

}  // namespace
}  // namespace latentserve::transfer
