// The CUDA backend's device-transfer capabilities (needs a GPU: label "gpu"): a copy between
// two CUDA backends stages nothing through the host and is ordered on both streams; events,
// pinned host memory and asynchronous copies; CUDA IPC export of exportable memory.
#include <algorithm>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace latentserve::kernels {
namespace {

class CudaTransfer : public ::testing::Test {
 protected:
  void SetUp() override {
    auto a = CreateBackend({"cuda", 0, 0});
    if (!a.ok()) GTEST_SKIP() << a.status();
    a_ = std::move(*a);
    b_ = *CreateBackend({"cuda", 0, 0});
  }
  std::vector<uint8_t> Bytes(Backend& backend, const Tensor& t) {
    std::vector<uint8_t> out(t.nbytes());
    backend.Download(t, out.data(), out.size(), 0);
    return out;
  }
  std::unique_ptr<Backend> a_, b_;
};

TEST_F(CudaTransfer, CopyBetweenTwoCudaBackendsSkipsTheHost) {
  const int64_t n = 1 << 20;
  std::vector<uint8_t> bytes(n * 4);
  std::iota(bytes.begin(), bytes.end(), 0);
  Tensor src = *a_->Alloc(DType::kF32, {n, 1, 1, 1});
  a_->Upload(bytes.data(), bytes.size(), src, 0);
  Tensor dst = *b_->Alloc(DType::kF32, {n, 1, 1, 1});
  b_->Zero(dst);
  EXPECT_EQ(CopyBetween(*a_, src, 64, *b_, dst, 128, 1000000), 0);
  // The copy is ordered after the source's upload and before the destination's download.
  const std::vector<uint8_t> got = Bytes(*b_, dst);
  EXPECT_TRUE(std::equal(got.begin() + 128, got.begin() + 128 + 1000000, bytes.begin() + 64));
  EXPECT_EQ(got[127], 0);
  // The source's later work waits for the copy: overwrite the source right after a copy.
  CopyBetween(*a_, src, 0, *b_, dst, 0, 4096);
  a_->Zero(src);
  const std::vector<uint8_t> after = Bytes(*b_, dst);
  EXPECT_TRUE(std::equal(after.begin(), after.begin() + 4096, bytes.begin()));
  auto cpu = *CreateBackend({"cpu", 1, 0});
  Tensor host_side = *cpu->Alloc(DType::kF32, {n, 1, 1, 1});
  EXPECT_EQ(CopyBetween(*b_, dst, 0, *cpu, host_side, 0, 4096), 4096) << "CUDA to CPU stages through the host";
}

TEST_F(CudaTransfer, EventsPinnedMemoryAndAsyncCopies) {
  auto host = a_->AllocHost(1 << 20);
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_TRUE(host->pinned);
  std::iota(host->data.get(), host->data.get() + 4096, 0);
  Tensor t = *a_->Alloc(DType::kF32, {1024, 1, 1, 1});
  a_->UploadAsync(host->data.get(), 4096, t, 0);
  a_->DownloadAsync(t, host->data.get() + 8192, 4096, 0);
  auto event = a_->RecordEvent();
  ASSERT_TRUE(event.ok()) << event.status();
  ASSERT_TRUE(a_->WaitEvent(**event).ok());
  EXPECT_TRUE(std::equal(host->data.get(), host->data.get() + 4096, host->data.get() + 8192));
  auto other = b_->RecordEvent();
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(a_->WaitEvent(**other).ok()) << "an event of another CUDA backend";
}

TEST_F(CudaTransfer, OnlyExportableMemoryExportsAndHandlesOpenElsewhere) {
  Tensor pooled = *a_->Alloc(DType::kF32, {256, 1, 1, 1});
  EXPECT_EQ(a_->ExportMemory(pooled).status().code(), absl::StatusCode::kFailedPrecondition);
  Tensor exportable = *a_->AllocExportable(DType::kF32, {256, 1, 1, 1});
  auto handle = a_->ExportMemory(exportable);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(handle->kind, "cuda-ipc");
  EXPECT_GE(handle->bytes, exportable.nbytes());
  EXPECT_EQ(b_->OpenMemory(*handle, DType::kF32, {256, 1, 1, 1}).status().code(), absl::StatusCode::kInvalidArgument)
      << "CUDA IPC handles open in another process";
}

}  // namespace
}  // namespace latentserve::kernels
