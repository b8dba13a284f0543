// The CUDA IPC transport's parts that run without a GPU: the peer's OpenDeviceHandoff answer
// is validated field by field (hostile sizes, pages, handles), the choice of transport, what a
// CPU backend offers (auto falls back to gRPC, cuda-ipc is refused), and a CPU-only prefill
// worker refusing a device handoff cleanly without keeping anything open. The GPU path itself
// is tests/kernels/cuda_transfer_test.cc and scripts/device_transports.sh.
#include "transfer/cuda_ipc_transport.h"

#include <gtest/gtest.h>

#include "kernels/backend.h"
#include "transfer/transport_choice.h"

namespace latentserve::transfer {
namespace {

HandoffHeader Header() {
  HandoffHeader header;
  header.lease_id = "lease-1";
  header.cache_dtype = DType::kF16;
  header.latent_width = 64;
  header.row_bytes = 128;
  header.mla_layers = {1, 3};
  header.prompt_tokens = 40;
  return header;
}

internal::v1::OpenDeviceHandoffResponse Answer() {
  internal::v1::OpenDeviceHandoffResponse answer;
  answer.set_export_id("123-456");
  answer.set_page_tokens(16);
  answer.set_pool_pages(8);
  answer.set_row_bytes(128);
  answer.set_cache_dtype(internal::v1::CACHE_D_TYPE_F16);
  for (int i = 0; i < 2; ++i) {
    auto* pool = answer.add_pools();
    pool->set_kind("cuda-ipc");
    pool->set_handle(std::string(64, 'h'));
    pool->set_bytes(16 * 8 * 128);
    pool->set_process(99);
  }
  for (int page : {5, 2, 7}) answer.add_pages(page);
  return answer;
}

TEST(DeviceTargetTest, AValidAnswerGivesRowOffsets) {
  auto target = ValidateDeviceTarget(Answer(), Header());
  ASSERT_TRUE(target.ok()) << target.status();
  EXPECT_EQ(target->pools.size(), 2u);
  EXPECT_EQ(RowOffset(*target, 128, 0), 5 * 16 * 128);
  EXPECT_EQ(RowOffset(*target, 128, 17), (2 * 16 + 1) * 128);
  EXPECT_EQ(RowOffset(*target, 128, 39), (7 * 16 + 7) * 128);
}

TEST(DeviceTargetTest, HostileAnswersAreRefused) {
  struct Case {
    const char* what;
    std::function<void(internal::v1::OpenDeviceHandoffResponse&)> edit;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"no export id", [](auto& a) { a.clear_export_id(); }, absl::StatusCode::kInvalidArgument},
      {"another cache type", [](auto& a) { a.set_cache_dtype(internal::v1::CACHE_D_TYPE_Q8_0); },
       absl::StatusCode::kFailedPrecondition},
      {"unknown cache type", [](auto& a) { a.set_cache_dtype(static_cast<internal::v1::CacheDType>(77)); },
       absl::StatusCode::kInvalidArgument},
      {"another row size", [](auto& a) { a.set_row_bytes(256); }, absl::StatusCode::kFailedPrecondition},
      {"a pool missing", [](auto& a) { a.mutable_pools()->RemoveLast(); }, absl::StatusCode::kInvalidArgument},
      {"page size 0", [](auto& a) { a.set_page_tokens(0); }, absl::StatusCode::kInvalidArgument},
      {"page size 2^17", [](auto& a) { a.set_page_tokens(1 << 17); }, absl::StatusCode::kInvalidArgument},
      {"negative pool", [](auto& a) { a.set_pool_pages(-1); }, absl::StatusCode::kInvalidArgument},
      {"pool of 2^31 pages", [](auto& a) { a.set_pool_pages(int64_t{1} << 31); }, absl::StatusCode::kInvalidArgument},
      {"pool larger than its memory", [](auto& a) { a.set_pool_pages(9); }, absl::StatusCode::kInvalidArgument},
      {"the largest pool with memory a byte short",
       [](auto& a) {
         a.set_page_tokens(65536);
         a.set_pool_pages((int64_t{1} << 31) - 1);
         for (auto& p : *a.mutable_pools()) p.set_bytes(uint64_t{65536} * ((uint64_t{1} << 31) - 1) * 128 - 1);
       },
       absl::StatusCode::kInvalidArgument},
      {"handle of another kind", [](auto& a) { a.mutable_pools(0)->set_kind("host"); },
       absl::StatusCode::kInvalidArgument},
      {"oversized handle", [](auto& a) { a.mutable_pools(1)->set_handle(std::string(65, 'x')); },
       absl::StatusCode::kInvalidArgument},
      {"page outside the pool", [](auto& a) { a.set_pages(1, 8); }, absl::StatusCode::kInvalidArgument},
      {"negative page", [](auto& a) { a.set_pages(0, -3); }, absl::StatusCode::kInvalidArgument},
      {"too few pages for the prompt", [](auto& a) { a.mutable_pages()->RemoveLast(); },
       absl::StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    auto answer = Answer();
    c.edit(answer);
    EXPECT_EQ(ValidateDeviceTarget(answer, Header()).status().code(), c.code) << c.what;
  }
}

TEST(TransportChoiceTest, CudaIpcOnlyOnOneHostWhenBothOfferIt) {
  TransportOffer a{{"grpc", "cuda-ipc"}, "boot-1/h", "GPU-a"};
  TransportOffer b{{"grpc", "cuda-ipc"}, "boot-1/h", "GPU-a"};
  EXPECT_EQ(ChooseTransport(a, b), "cuda-ipc");
  b.host_id = "boot-2/h";
  EXPECT_EQ(ChooseTransport(a, b), "grpc") << "another host";
  b.host_id = a.host_id;
  b.transports = {"grpc"};
  EXPECT_EQ(ChooseTransport(a, b), "grpc") << "the decode worker does not offer it";
  a.host_id = b.host_id = "";
  a.transports = b.transports = {"grpc", "cuda-ipc"};
  EXPECT_EQ(ChooseTransport(a, b), "grpc") << "unknown hosts are never the same host";
  EXPECT_EQ(ChooseTransport({}, {}), "grpc");
  a.host_id = "boot-1/h";
  b.host_id = "boot-2/h";
  a.transports = b.transports = {"grpc", "nccl"};
  EXPECT_EQ(ChooseTransport(a, b), "nccl") << "both offer NCCL";
  b.transports = {"grpc", "cuda-ipc"};
  EXPECT_EQ(ChooseTransport(a, b), "grpc") << "only one offers NCCL";
  a.transports = b.transports = {"grpc", "cuda-ipc", "nccl"};
  b.host_id = a.host_id;
  EXPECT_EQ(ChooseTransport(a, b), "cuda-ipc") << "one host: CUDA IPC first";
}

TEST(TransportChoiceTest, ACpuBackendOffersGrpcOnly) {
  auto backend = *kernels::CreateBackend({"cpu", 1, 0});
  auto automatic = OfferFor("auto", *backend);
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ(automatic->transports, std::vector<std::string>{"grpc"});
  EXPECT_EQ(automatic->gpu_uuid, "");
  EXPECT_EQ(OfferFor("grpc", *backend)->transports, std::vector<std::string>{"grpc"});
  EXPECT_EQ(OfferFor("cuda-ipc", *backend).status().code(), absl::StatusCode::kFailedPrecondition);
  // NCCL: refused on a build without it, and on a CPU backend even where it is built.
  EXPECT_EQ(OfferFor("nccl", *backend).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(OfferFor("nccl", *backend, /*nccl_built=*/true).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(OfferFor("carrier-pigeon", *backend).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(HostId().empty());
  EXPECT_EQ(HostId(), HostId());
}

TEST(CudaIpcTransportTest, ACpuWorkerRefusesADeviceHandoffAndKeepsNothingOpen) {
  auto backend = *kernels::CreateBackend({"cpu", 1, 0});
  GrpcTransport control;
  int fetches = 0;
  CudaIpcTransport transport(*backend, control, {{"grpc"}, "h", ""}, {}, {},
                             [&](const std::string&, const internal::v1::OpenDeviceHandoffRequest& request,
                                 absl::Time) -> absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> {
                               fetches++;
                               EXPECT_EQ(request.lease_id(), "lease-1");
                               EXPECT_EQ(request.transport(), "cuda-ipc");
                               return Answer();
                             });
  auto sender = transport.Open("127.0.0.1:1", Header(), absl::Now() + absl::Seconds(5));
  EXPECT_EQ(fetches, 1);
  EXPECT_EQ(sender.status().code(), absl::StatusCode::kInvalidArgument) << sender.status();  // host handles only
  EXPECT_EQ(transport.open_peers(), 0u);
}

TEST(CudaIpcTransportTest, APeerErrorOrBadAnswerEndsTheOpen) {
  auto backend = *kernels::CreateBackend({"cpu", 1, 0});
  GrpcTransport control;
  absl::Status next = absl::AbortedError("lease lease-1 is unknown");
  CudaIpcTransport transport(*backend, control, {{"grpc"}, "h", ""}, {}, {},
                             [&](const std::string&, const internal::v1::OpenDeviceHandoffRequest&,
                                 absl::Time) -> absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> {
                               if (!next.ok()) return next;
                               auto answer = Answer();
                               answer.set_pages(0, 1000);
                               return answer;
                             });
  EXPECT_EQ(transport.Open("x:1", Header(), absl::Now()).status().code(), absl::StatusCode::kAborted);
  next = absl::OkStatus();
  EXPECT_EQ(transport.Open("x:1", Header(), absl::Now()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(transport.open_peers(), 0u);
}

TEST(SelectingTransportTest, WithoutCudaIpcTheHeaderFallsBackToGrpc) {
  struct Recording : CacheTransport {
    std::string name() const override { return "rec"; }
    absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string&, const HandoffHeader& header,
                                                      absl::Time) override {
      seen = header.transport;
      return absl::UnavailableError("recorded");
    }
    std::string seen = "unset";
  } grpc;
  SelectingTransport selecting(&grpc, nullptr);
  HandoffHeader header = Header();
  header.transport = "cuda-ipc";
  EXPECT_EQ(selecting.Open("x:1", header, absl::Now()).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(grpc.seen, "") << "a worker without CUDA IPC sends a plain gRPC handoff";
}

}  // namespace
}  // namespace latentserve::transfer
