// transfer/nccl_comm.cc (CUDA builds, label "gpu"): a unique id is NCCL's 128 bytes, a
// malformed bootstrap is refused before NCCL sees it, a communicator that nobody joins is
// aborted at its init deadline (no hang), and rows of a CPU backend are refused.
#include "transfer/nccl_comm.h"

#include "gtest/gtest.h"

namespace latentserve::transfer {
namespace {

TEST(NcclCommTest, UniqueIdsAreNcclsSize) {
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), kNcclUniqueIdBytes);
}

TEST(NcclCommTest, MalformedBootstrapIsRefusedAndALonelyRankTimesOut) {
  NcclBootstrap bootstrap;
  bootstrap.comm_key = "lonely";
  bootstrap.unique_id = "short";
  bootstrap.init_timeout = absl::Milliseconds(500);
  EXPECT_EQ(CreateNcclComm(bootstrap, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  bootstrap.unique_id = *id;
  // Rank 1 never joins: the non-blocking init is aborted at the deadline instead of hanging.
  const absl::Status status = CreateNcclComm(bootstrap, 0, 0).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
}

class NotNccl : public NcclComm {
 public:
  void Abort() override {}
};

TEST(NcclCommTest, RowsOfACpuBackendAreRefused) {
  auto cpu = *kernels::CreateBackend({"cpu", 1, 0});
  kernels::Tensor pool = *cpu->Alloc(DType::kF16, {8, 4, 2, 1});
  NotNccl comm;
  const std::vector<int32_t> pages = {0, 1};
  EXPECT_EQ(NcclSendRuns(comm, *cpu, pool, pages, {{0, 4}}, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(NcclRecvRuns(comm, *cpu, pool, pages, {{0, 4}}, 0).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace latentserve::transfer
