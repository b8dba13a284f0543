// The NCCL transport on two GPUs (CUDA builds, label "gpu"): a prefill side on device 0 (rank 0,
// pages of 12 tokens) hands a prompt's cache to a DecodeWorker on device 1 (rank 1, pages of
// 16) through real NCCL: the communicator forms from the bootstrap, every chunk arrives as one
// ncclRecv group in the lease's pages and is verified there (GPU row hashes), and a second
// handoff reuses the communicator. NCCL cannot form a two-rank communicator with both ranks on
// one GPU, so with fewer than two CUDA devices the test is skipped (GTEST_SKIP, said why).
#include <cuda_runtime.h>
#include <unistd.h>

#include <filesystem>

#include "common/status.h"
#include "decode/decode_worker.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/decode/loopback_control.h"
#include "tools/lib/test_model.h"
#include "transfer/handoff_writer.h"
#include "transfer/nccl_comm.h"
#include "transfer/nccl_receiver.h"
#include "transfer/nccl_sender.h"

namespace latentserve::transfer {
namespace {

TEST(NcclTwoGpuTest, ACacheMovesFromDeviceZeroToDeviceOneAndTheCommunicatorIsReused) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 2) {
    GTEST_SKIP() << "needs two CUDA devices (NCCL forms no two-rank communicator on one GPU); this machine has "
                 << devices;
  }
  KeepNvlsOff();
  const std::string path = (std::filesystem::temp_directory_path() / ("ls_nccl2_" + std::to_string(::getpid()) + ".gguf")).string();
  tools::TestModelOptions options = tools::TinyTestModel();
  options.out_path = path;
  options.layers = 5;
  options.mla_layers = {1, 4};
  ASSERT_TRUE(tools::WriteTestModel(options).ok());
  auto prefill_backend = *kernels::CreateBackend({"cuda", 1, 0});
  auto decode_backend = *kernels::CreateBackend({"cuda", 1, 1});
  auto prefill_model = *model::Model::Load(path, *prefill_backend);
  auto decode_model = *model::Model::Load(path, *decode_backend);
  std::filesystem::remove(path);
  model::LatentCacheOptions cache_options;
  cache_options.dtype = DType::kF16;
  cache_options.pages = 64;
  cache_options.page_tokens = 12;
  auto prefill_cache = *model::NewLatentCache(prefill_model->config(), *prefill_backend, cache_options);
  cache_options.page_tokens = 16;
  auto decode_cache = *model::NewLatentCache(decode_model->config(), *decode_backend, cache_options);
  cache::SequenceTable prefill_table(*prefill_cache, prefill_model->kda_layout());

  auto receive_plane = NewCudaNcclDataPlane(1);
  auto send_plane = NewCudaNcclDataPlane(0);
  NcclReceiveSide receive_side(*receive_plane, NcclReceiveOptions{});
  {
    decode::DecodeWorker worker(*decode_model, *decode_cache, "fp");
    worker.EnableNccl(&receive_side);
    const int64_t baseline_free = worker.Stats().pages_free;
    LoopbackControl control(worker);
    auto fetch = [&](const std::string&, const internal::v1::OpenDeviceHandoffRequest& request,
                     absl::Time) -> absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> {
      ASSIGN_OR_RETURN(decode::DeviceExport out,
                       worker.ExportForHandoff(request.lease_id(), request.transport(), request.host_id(), request.nccl()));
      internal::v1::OpenDeviceHandoffResponse answer;
      answer.set_export_id(out.export_id);
      answer.set_page_tokens(out.page_tokens);
      answer.set_pool_pages(out.pool_pages);
      answer.set_row_bytes(out.row_bytes);
      answer.set_cache_dtype(ToProtoDType(out.dtype));
      for (int32_t page : out.pages) answer.add_pages(page);
      return answer;
    };
    NcclTransport transport(control, TransportOffer{{"grpc", "nccl"}, "h", ""}, *send_plane, fetch);
    constexpr int64_t kPromptTokens = 300;
    for (int round = 0; round < 2; ++round) {
      auto lease = worker.ReserveLease("r", kPromptTokens + 8, absl::Minutes(5), "fp");
      ASSERT_TRUE(lease.ok()) << lease.status();
      auto sequence = *prefill_table.New();
      std::vector<int32_t> tokens(kPromptTokens);
      for (int64_t i = 0; i < kPromptTokens; ++i) tokens[i] = static_cast<int32_t>((5 * i + round) % prefill_model->vocab());
      ASSERT_TRUE(prefill_model->Prefill(*sequence, tokens, *prefill_cache, 512, false).ok());
      HandoffHeader header;
      header.request_id = "r";
      header.lease_id = *lease;
      header.model_fingerprint = "fp";
      DescribeLayout(prefill_table, &header);
      for (int64_t layer = 0; layer < prefill_model->config().n_layers; ++layer) {
        (prefill_model->config().is_mla[layer] ? header.mla_layers : header.kda_layers).push_back(static_cast<int32_t>(layer));
      }
      header.prompt_tokens = kPromptTokens;
      header.transport = "nccl";
      auto sender = transport.Open("decode:1", header, absl::Now() + absl::Minutes(2));
      ASSERT_TRUE(sender.ok()) << sender.status();
      HandoffWriter writer(**sender, header);
      ASSERT_TRUE(writer.SendRows(*sequence, 0, 100).ok());
      ASSERT_TRUE(writer.SendRows(*sequence, 100, kPromptTokens - 100).ok());
      ASSERT_TRUE(writer.SendKdaState(*sequence).ok());
      auto accepted = writer.Finish(1);
      ASSERT_TRUE(accepted.ok()) << accepted.status() << " / stream: " << control.last_stream_status();
      EXPECT_EQ((*sender)->device_bytes(),
                kPromptTokens * static_cast<int64_t>(prefill_cache->row_bytes() * prefill_cache->mla_layers()));
      EXPECT_EQ(transport.open_peers(), 1u) << "round " << round << ": one communicator per pair, reused";
      EXPECT_TRUE(worker.ReleaseLease(*lease).ok());
    }
    EXPECT_EQ(worker.Stats().handoffs_admitted, 2);
    EXPECT_EQ(worker.Stats().pages_free, baseline_free);
  }
}

}  // namespace
}  // namespace latentserve::transfer
