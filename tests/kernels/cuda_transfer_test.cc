// The CUDA backend's device-transfer capabilities (needs a GPU: label "gpu"): a copy between
// two CUDA backends stages nothing through the host and is ordered on both streams; events,
// pinned host memory and asynchronous copies; CUDA IPC export of exportable memory; row hashes
// (HashPagedRows) equal to the CPU backend's and libxxhash's.
#include <algorithm>
#include <numeric>
#include <vector>

#include <xxhash.h>

#include <random>

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

// The batched copy (one kernel for a chunk's page runs): every run lands, nothing else is
// written, aligned runs (the vector path) and odd ones (the byte path), more runs than one
// launch takes, and the source's later work waits for it.
TEST_F(CudaTransfer, CopyRunsScatterEveryRunAndNothingElse) {
  const int64_t n = 1 << 20;
  std::vector<uint8_t> bytes(n * 4);
  std::mt19937 rng(7);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  Tensor src = *a_->Alloc(DType::kF32, {n, 1, 1, 1});
  a_->Upload(bytes.data(), bytes.size(), src, 0);
  for (const bool aligned : {true, false}) {
    Tensor dst = *b_->Alloc(DType::kF32, {n, 1, 1, 1});
    b_->Zero(dst);
    // 1,200 page-sized runs (more than one launch's 512) to shuffled destination pages.
    const size_t row = aligned ? 1152 : 1153, page = 3 * row;
    const size_t pages = bytes.size() / page;
    std::vector<size_t> order(pages);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<Backend::CopyRun> runs;
    std::vector<uint8_t> want(bytes.size(), 0);
    for (size_t i = 0; i < 1200 && i < pages; ++i) {
      const size_t length = (i % 5 == 0) ? row : page;  // some partial pages
      runs.push_back({i * page, order[i] * page, length});
      std::copy_n(bytes.begin() + i * page, length, want.begin() + order[i] * page);
    }
    absl::Duration took;
    ASSERT_TRUE(a_->CopyRunsToBackend(src, *b_, dst, runs, &took));
    EXPECT_GT(took, absl::ZeroDuration()) << "the copies' device time";
    EXPECT_TRUE(Bytes(*b_, dst) == want) << (aligned ? "16-byte runs" : "odd runs");
  }
  // Ordered like CopyToBackend: zeroing the source right after does not reach the copy.
  Tensor dst = *b_->Alloc(DType::kF32, {n, 1, 1, 1});
  const std::vector<Backend::CopyRun> one = {{0, 0, bytes.size()}};
  ASSERT_TRUE(a_->CopyRunsToBackend(src, *b_, dst, one, nullptr));
  a_->Zero(src);
  EXPECT_TRUE(Bytes(*b_, dst) == bytes);
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

// The kernel (four threads per row, aligned and byte loads) against the CPU backend and
// libxxhash: the model's f16 rows over many pages, q8_0's 612-byte rows, short odd rows.
TEST_F(CudaTransfer, RowHashesEqualTheCpuBackendsAndLibxxhash) {
  auto cpu = *CreateBackend({"cpu", 1, 0});
  for (auto [dtype, width] : std::vector<std::pair<DType, int64_t>>{{DType::kF16, 576}, {DType::kQ8_0, 576},
                                                                   {DType::kF16, 35}, {DType::kF32, 3}}) {
    const int64_t page_tokens = 64, pool_pages = 40;
    Tensor on_gpu = *a_->Alloc(dtype, {width, page_tokens, pool_pages, 1});
    Tensor on_cpu = *cpu->Alloc(dtype, {width, page_tokens, pool_pages, 1});
    std::vector<uint8_t> bytes(on_gpu.nbytes());
    std::mt19937 rng(static_cast<uint32_t>(width) + static_cast<uint32_t>(dtype));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    a_->Upload(bytes.data(), bytes.size(), on_gpu, 0);
    cpu->Upload(bytes.data(), bytes.size(), on_cpu, 0);
    std::vector<int32_t> table(pool_pages);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), rng);
    for (auto [first, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 2560}, {37, 1000}, {2559, 1}}) {
      std::vector<uint64_t> gpu_hashes(count), cpu_hashes(count);
      ASSERT_TRUE(a_->HashPagedRows(on_gpu, table, first, count, gpu_hashes.data()).ok());
      ASSERT_TRUE(cpu->HashPagedRows(on_cpu, table, first, count, cpu_hashes.data()).ok());
      EXPECT_EQ(gpu_hashes, cpu_hashes) << DTypeName(dtype) << " width " << width << " rows " << first << "+" << count;
      const int64_t t = first + count - 1;
      const size_t slot = static_cast<size_t>(table[t / page_tokens] * page_tokens + t % page_tokens);
      EXPECT_EQ(gpu_hashes.back(), XXH64(bytes.data() + slot * on_gpu.row_bytes(), on_gpu.row_bytes(), 0));
    }
  }
  Tensor pool = *a_->Alloc(DType::kF16, {8, 4, 2, 1});
  uint64_t out[8];
  const std::vector<int32_t> bad = {0, 2};
  EXPECT_EQ(a_->HashPagedRows(pool, bad, 0, 8, out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace latentserve::kernels
