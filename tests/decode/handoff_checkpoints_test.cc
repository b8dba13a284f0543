// KDA checkpoints inside prompts that arrive by handoff (issue 14): the decode worker asks for
// them on ReserveLease, a real PrefillWorker ends its chunks at their positions and hands off
// the state there (in process as views, and as checksummed bytes), the decode worker keeps them
// with the prompt, and later prompts sharing part of it resume at the last one at or before the
// shared prefix with the greedy tokens of a fresh run. Hostile handoffs (a position that is not
// a multiple, out of order, beyond the prompt, too many, a wrong size or checksum, layers out of
// order, an incomplete checkpoint at End, a checkpoint nobody asked for) are refused, and the
// lease, once released, leaves no page or checkpoint behind (the worker's table aborts on a
// leaked checkpoint when it is destroyed).
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/status.h"
#include "decode/decode_worker.h"
#include "gtest/gtest.h"
#include "model/sampler.h"
#include "prefill/prefill_worker.h"
#include "tests/model/tiny_model_fixture.h"
#include "transfer/checksum.h"
#include "transfer/handoff_writer.h"
#include "transfer/inproc_transport.h"

namespace latentserve::decode {
namespace {

constexpr int64_t kPageTokens = 16;
constexpr int64_t kInterval = 24;  // not a multiple of the page: checkpoints fall mid-page

// A byte transport without a network: each chunk goes to the sink's receiver as bytes (the
// writer downloads, hashes and slices them as for gRPC).
class LoopbackBytes : public transfer::CacheTransport {
 public:
  explicit LoopbackBytes(transfer::CacheSink* sink) : sink_(sink) {}
  std::string name() const override { return "bytes"; }
  absl::StatusOr<std::unique_ptr<transfer::CacheSender>> Open(const std::string&, const transfer::HandoffHeader& header,
                                                              absl::Time) override {
    ASSIGN_OR_RETURN(std::unique_ptr<transfer::CacheReceiver> receiver, sink_->BeginHandoff(header));
    return std::unique_ptr<transfer::CacheSender>(new Sender(std::move(receiver)));
  }

 private:
  class Sender : public transfer::CacheSender {
   public:
    explicit Sender(std::unique_ptr<transfer::CacheReceiver> receiver) : receiver_(std::move(receiver)) {}
    absl::Status SendLatentRows(transfer::LatentRows chunk) override { return Fail(receiver_->OnLatentRows(chunk)); }
    absl::Status SendKdaState(transfer::KdaStateBytes chunk) override {
      if (chunk.view) return absl::InternalError("views on a byte transport");
      return Fail(receiver_->OnKdaState(chunk));
    }
    absl::StatusOr<int64_t> Finish(const transfer::HandoffEnd& end) override {
      RETURN_IF_ERROR(Fail(receiver_->Finish(end)));
      return end.payload_bytes;
    }
    void Cancel() override { receiver_->Abort(absl::CancelledError("cancelled")); }

   private:
    absl::Status Fail(absl::Status status) {
      if (!status.ok()) receiver_->Abort(status);
      return status;
    }
    std::unique_ptr<transfer::CacheReceiver> receiver_;
  };
  transfer::CacheSink* sink_;
};

class HandoffCheckpoints : public test::TinyModelFixture</*seed=*/7, kPageTokens, /*pages=*/256> {
 protected:
  void SetUp() override {
    TinyModelFixture::SetUp();
    model::LatentCacheOptions options;
    options.dtype = DType::kF32;
    options.page_tokens = 8;  // the prefill worker's pages differ: rows are token-addressed
    options.pages = 128;
    prefill_cache_ = *model::NewLatentCache(model_->config(), *backend_, options);
    DecodePrefixOptions prefix;
    prefix.budget_bytes = int64_t{1} << 30;
    prefix.checkpoint_interval_tokens = kInterval;
    prefix.local_prefill_max_tokens = 0;  // every rest comes by handoff
    worker_ = std::make_unique<DecodeWorker>(*model_, *cache_, "fp", absl::Minutes(1), prefix);
  }
  void TearDown() override {
    worker_.reset();
    TinyModelFixture::TearDown();
  }
  std::vector<int32_t> RandomTokens(std::mt19937& rng, int64_t count) {
    std::vector<int32_t> tokens(count);
    for (auto& t : tokens) t = static_cast<int32_t>(rng() % model_->vocab());
    return tokens;
  }
  std::vector<int32_t> FreshGreedy(const std::vector<int32_t>& tokens, int steps) {
    auto sequence = *table_->New();
    auto logits = model_->Prefill(*sequence, tokens, *cache_, 512, false);
    std::vector<int32_t> out;
    for (int i = 0; i < steps && logits.ok(); ++i) {
      out.push_back(model::Argmax(*logits));
      model::BatchEntry entry{sequence.get(), absl::MakeConstSpan(&out.back(), 1), false};
      logits = model_->Forward({entry}, *cache_);
    }
    return out;
  }
  // Reserves, prefills through a PrefillWorker over `transport`, decodes: the greedy tokens.
  std::vector<int32_t> Answer(transfer::CacheTransport& transport, const std::vector<int32_t>& prompt, int steps,
                              LeaseReuse* reuse) {
    auto lease = worker_->ReserveLease("r", static_cast<int64_t>(prompt.size()) + 16, absl::Minutes(1), "fp", "me",
                                       prompt, reuse);
    EXPECT_TRUE(lease.ok()) << lease.status();
    if (!lease.ok()) return {};
    prefill::PrefillWorker prefill(*model_, *prefill_cache_, transport, "fp", /*chunk_tokens=*/20);
    prefill::PrefillJob job;
    job.request_id = "r";
    job.lease_id = *lease;
    job.decode_worker = "decode";
    job.tokens = prompt;
    job.cached_tokens = reuse->cached_tokens;  // no prefix reader: computed whole, handed off from there
    job.checkpoint_interval_tokens = reuse->checkpoint_interval_tokens;
    bool transfer_failed = false;
    auto prefilled = prefill.Run(job, nullptr, [] { return false; }, &transfer_failed);
    EXPECT_TRUE(prefilled.ok()) << prefilled.status();
    if (!prefilled.ok()) return {};
    const int64_t inside = reuse->checkpoint_interval_tokens > 0
                               ? (static_cast<int64_t>(prompt.size()) - 1) / reuse->checkpoint_interval_tokens -
                                     reuse->cached_tokens / reuse->checkpoint_interval_tokens
                               : 0;
    EXPECT_EQ(prefilled->checkpoints_sent, inside);
    std::vector<int32_t> got = {prefilled->first_token};
    DecodeParams params;
    params.lease_id = *lease;
    params.caller = "me";
    params.max_new_tokens = steps - 1;
    auto finish = worker_->Decode(
        params, [&](const std::vector<int32_t>& t) { got.insert(got.end(), t.begin(), t.end()); return true; },
        [] { return false; });
    EXPECT_TRUE(finish.ok()) << finish.status();
    return got;
  }
  transfer::HandoffHeader HeaderFor(const std::string& lease, int64_t prompt_tokens) {
    transfer::HandoffHeader header;
    header.request_id = "r";
    header.lease_id = lease;
    header.model_fingerprint = "fp";
    transfer::DescribeLayout(*table_, &header);
    const model::ModelConfig& config = model_->config();
    for (int64_t layer = 0; layer < config.n_layers; ++layer) {
      (config.is_mla[layer] ? header.mla_layers : header.kda_layers).push_back(static_cast<int32_t>(layer));
    }
    header.prompt_tokens = prompt_tokens;
    return header;
  }

  std::unique_ptr<model::LatentCache> prefill_cache_;
  std::unique_ptr<DecodeWorker> worker_;
};

TEST_F(HandoffCheckpoints, HandedOffPromptsResumeAtTheirInteriorCheckpoints) {
  std::mt19937 rng(14);
  transfer::InProcTransport views;
  views.AddSink("decode", worker_.get());
  LoopbackBytes bytes(worker_.get());
  const std::vector<int32_t> document = RandomTokens(rng, 100);
  LeaseReuse reuse;
  EXPECT_EQ(Answer(views, document, 4, &reuse), FreshGreedy(document, 4));
  EXPECT_EQ(reuse.checkpoint_interval_tokens, kInterval);
  // 24, 48, 72, 96 and the end.
  EXPECT_EQ(worker_->Stats().prefix.checkpoints, 5);
  // Shared lengths: before the first checkpoint, at one, between (mid-page too), past the end.
  const std::vector<std::pair<int64_t, int64_t>> shared_to_resume = {{10, 0}, {24, 24}, {47, 24}, {50, 48},
                                                                     {73, 72}, {99, 96}, {100, 100}};
  int round = 0;
  for (const auto& [shared, resume] : shared_to_resume) {
    std::vector<int32_t> prompt(document.begin(), document.begin() + shared);
    const std::vector<int32_t> question = RandomTokens(rng, 30 + rng() % 40);
    prompt.insert(prompt.end(), question.begin(), question.end());
    transfer::CacheTransport& transport = round++ % 2 == 0 ? static_cast<transfer::CacheTransport&>(bytes) : views;
    const std::vector<int32_t> got = Answer(transport, prompt, 5, &reuse);
    EXPECT_EQ(reuse.cached_tokens, resume) << "shared " << shared;
    EXPECT_EQ(got, FreshGreedy(prompt, 5)) << "shared " << shared << " via " << transport.name();
  }
  const DecodeStats stats = worker_->Stats();
  EXPECT_EQ(stats.pages_free + stats.prefix.pages, stats.pages_total);
  EXPECT_EQ(stats.leases_active + stats.sequences_active, 0);
}

TEST_F(HandoffCheckpoints, NoRoomForCheckpointsDoublesTheInterval) {
  const cache::KdaLayout& kda = table_->kda_layout();
  const int64_t checkpoint_bytes = kda.layer_bytes() * kda.layers;
  const int64_t page_bytes = static_cast<int64_t>(cache_->page_bytes_per_layer()) * cache_->mla_layers();
  worker_.reset();
  DecodePrefixOptions prefix;
  // 100 tokens: 7 pages, the end checkpoint and two more, not four.
  prefix.budget_bytes = 7 * page_bytes + 3 * checkpoint_bytes;
  prefix.checkpoint_interval_tokens = kInterval;
  prefix.local_prefill_max_tokens = 0;
  worker_ = std::make_unique<DecodeWorker>(*model_, *cache_, "fp", absl::Minutes(1), prefix);
  std::mt19937 rng(15);
  LeaseReuse reuse;
  auto lease = worker_->ReserveLease("r", 120, absl::Minutes(1), "fp", "me", RandomTokens(rng, 100), &reuse);
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(reuse.checkpoint_interval_tokens, 2 * kInterval);  // 48 and 96
  ASSERT_TRUE(worker_->ReleaseLease(*lease, "me").ok());
}

// One hostile handoff: the lease's header, then `chunks` of KDA state; the first refusal (or
// End's) must be `code`, after which the lease is released and nothing stays behind.
struct Hostile {
  std::string what;
  std::vector<transfer::KdaStateBytes> chunks;
  absl::StatusCode code;
  bool end = false;            // send End after the chunks (an incomplete checkpoint)
  bool keep_prompt = true;     // false: a lease that asked for no checkpoint
  int64_t header_prompt = 100;  // the header may claim more tokens than the lease's prompt
};

TEST_F(HandoffCheckpoints, HostileCheckpointsAreRefusedAndTheLeaseLeavesNothing) {
  std::mt19937 rng(16);
  const std::vector<int32_t> prompt = RandomTokens(rng, 100);
  transfer::HandoffHeader layout = HeaderFor("", 100);
  const int64_t layer_bytes = layout.kda_state_bytes;
  const int64_t layers = static_cast<int64_t>(layout.kda_layers.size());
  ASSERT_GT(layers, 1);
  const auto piece = [&](int64_t position, int32_t kda, int64_t offset, int64_t size) {
    transfer::KdaStateBytes chunk;
    chunk.kda_index = kda;
    chunk.offset = offset;
    chunk.position = position;
    chunk.data = std::string(static_cast<size_t>(size), '\x11');
    chunk.checksum = transfer::Xxh64(chunk.data);
    return chunk;
  };
  const auto whole = [&](int64_t position) {  // a complete, well-formed checkpoint
    std::vector<transfer::KdaStateBytes> out;
    for (int32_t k = 0; k < layers; ++k) out.push_back(piece(position, k, 0, layer_bytes));
    return out;
  };
  const auto join = [](std::vector<transfer::KdaStateBytes> a, const std::vector<transfer::KdaStateBytes>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  auto corrupt = piece(24, 0, 0, layer_bytes);
  corrupt.checksum ^= 1;
  auto final_state = piece(0, 0, 0, layer_bytes);
  const std::vector<Hostile> cases = {
      {"not a multiple of the interval", {piece(30, 0, 0, layer_bytes)}, absl::StatusCode::kInvalidArgument},
      {"out of order", join(whole(48), {piece(24, 0, 0, layer_bytes)}), absl::StatusCode::kInvalidArgument},
      {"repeated", join(whole(24), {piece(24, 0, 0, layer_bytes)}), absl::StatusCode::kInvalidArgument},
      {"beyond the prompt", {piece(120, 0, 0, layer_bytes)}, absl::StatusCode::kInvalidArgument},
      {"negative position", {piece(-24, 0, 0, layer_bytes)}, absl::StatusCode::kInvalidArgument},
      {"more bytes than a layer", {piece(24, 0, 0, layer_bytes + 1)}, absl::StatusCode::kInvalidArgument},
      {"empty piece", {piece(24, 0, 0, 0)}, absl::StatusCode::kInvalidArgument},
      {"gap in the bytes", {piece(24, 0, 8, 8)}, absl::StatusCode::kInvalidArgument},
      {"checksum", {corrupt}, absl::StatusCode::kDataLoss},
      {"layers out of order", {piece(24, 1, 0, layer_bytes)}, absl::StatusCode::kInvalidArgument},
      {"next checkpoint before this one is whole", {piece(24, 0, 0, layer_bytes), piece(48, 0, 0, layer_bytes)},
       absl::StatusCode::kInvalidArgument},
      {"checkpoint after the final state", {final_state, piece(24, 0, 0, layer_bytes)},
       absl::StatusCode::kInvalidArgument},
      {"final state inside a checkpoint", {piece(24, 0, 0, layer_bytes), final_state},
       absl::StatusCode::kInvalidArgument},
      {"more than the lease asked for", join(join(join(whole(24), whole(48)), join(whole(72), whole(96))), whole(120)),
       absl::StatusCode::kInvalidArgument, false, true, 130},
      {"incomplete at End", {piece(24, 0, 0, layer_bytes)}, absl::StatusCode::kDataLoss, true},
      {"none asked for", {piece(24, 0, 0, layer_bytes)}, absl::StatusCode::kInvalidArgument, false, false},
  };
  const int64_t free_before = cache_->free_pages();
  for (const Hostile& c : cases) {
    LeaseReuse reuse;
    auto lease = worker_->ReserveLease("r", 140, absl::Minutes(1), "fp", "me", prompt, &reuse, c.keep_prompt);
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_EQ(reuse.checkpoint_interval_tokens, c.keep_prompt ? kInterval : 0) << c.what;
    auto receiver = worker_->BeginHandoff(HeaderFor(*lease, c.header_prompt));
    ASSERT_TRUE(receiver.ok()) << receiver.status();
    absl::Status status;
    for (const auto& chunk : c.chunks) {
      status = (*receiver)->OnKdaState(chunk);
      if (!status.ok()) break;
    }
    if (status.ok() && c.end) status = (*receiver)->Finish({0, 0, 0});
    EXPECT_EQ(status.code(), c.code) << c.what << ": " << status;
    EXPECT_NE(status.message().find("checkpoint"), absl::string_view::npos) << c.what << ": " << status;
    (*receiver)->Abort(status);  // what a transport does with a refused chunk
    receiver->reset();
    // The lease waits for a retried handoff; the router releases it.
    ASSERT_TRUE(worker_->ReleaseLease(*lease, "me").ok()) << c.what;
    EXPECT_EQ(cache_->free_pages(), free_before) << c.what;
  }
  const DecodeStats stats = worker_->Stats();
  EXPECT_EQ(stats.leases_active, 0);
  EXPECT_EQ(stats.prefix.entries, 0);
  EXPECT_EQ(stats.handoffs_admitted, 0);
}

}  // namespace
}  // namespace latentserve::decode
