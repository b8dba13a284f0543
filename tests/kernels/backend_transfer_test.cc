// The Backend's device-transfer capabilities on the CPU backend, and their host fallbacks
// (a backend that overrides none of them): copies between backends, events, host memory,
// asynchronous copies, exported memory.
#include <unistd.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace latentserve::kernels {
namespace {

// A CPU backend that keeps every default of the transfer capabilities: the fallbacks.
class PlainBackend final : public Backend {
 public:
  std::string name() const override { return "plain"; }
  absl::StatusOr<Tensor> Alloc(DType dtype, Shape ne) override { return cpu_.Alloc(dtype, ne); }
  absl::StatusOr<Tensor> ImportHost(DType dtype, Shape ne, const void* data) override {
    return cpu_.ImportHost(dtype, ne, data);
  }
  void Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) override {
    uploaded += bytes;
    cpu_.Upload(host, bytes, dst, dst_offset);
  }
  void Download(const Tensor& src, void* host, size_t bytes, size_t src_offset) override {
    downloaded += bytes;
    cpu_.Download(src, host, bytes, src_offset);
  }
  void Synchronize() override { synchronized++; }
  void Zero(const Tensor& dst) override { cpu_.Zero(dst); }
  void Copy(const Tensor& src, const Tensor& dst) override { cpu_.Copy(src, dst); }
  void CopyColumns(const Tensor&, int64_t, const Tensor&, int64_t, int64_t) override {}
  void FillRandom(const Tensor&, uint64_t, float, float) override {}
  void GetRows(const Tensor&, const Tensor&, const Tensor&) override {}
  void MatMul(const Tensor&, const Tensor&, const Tensor&) override {}
  void HeadMatMul(const Tensor&, const Tensor&, int64_t, const Tensor&) override {}
  void RmsNorm(const Tensor&, const Tensor&, float, const Tensor&) override {}
  void L2Norm(const Tensor&, float, const Tensor&) override {}
  void Add(const Tensor&, const Tensor&, const Tensor&) override {}
  void Mul(const Tensor&, const Tensor&, const Tensor&) override {}
  void Sigmoid(const Tensor&, const Tensor&) override {}
  void SwiGlu(const Tensor&, const Tensor&, const Tensor&) override {}
  void ShortConvSilu(const Tensor&, const Tensor&, int, absl::Span<const SeqSlice>, absl::Span<const KdaStateView>,
                     const Tensor&) override {}
  void KdaGate(const Tensor&, const Tensor&, const Tensor&, int64_t, const Tensor&) override {}
  void KdaAttention(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    absl::Span<const SeqSlice>, absl::Span<const KdaStateView>, int64_t, const Tensor&) override {}
  void LatentStore(const Tensor&, absl::Span<const LatentSeqView>, const Tensor&) override {}
  void MlaAttention(const Tensor&, const Tensor&, absl::Span<const LatentSeqView>, float, const Tensor&) override {}
  void CopyPage(const Tensor&, int32_t, const Tensor&, int32_t) override {}
  void MoeRoute(const Tensor&, const Tensor&, int64_t, bool, float, const Tensor&, const Tensor&) override {}
  void MoeExperts(const Tensor&, const MoeWeights&, const Tensor&, const Tensor&, const Tensor&) override {}

  size_t uploaded = 0, downloaded = 0;
  int synchronized = 0;

 private:
  cpu::CpuBackend cpu_{1};
};

std::vector<uint8_t> Bytes(Backend& backend, const Tensor& t) {
  std::vector<uint8_t> out(t.nbytes());
  backend.Download(t, out.data(), out.size(), 0);
  return out;
}

Tensor Filled(Backend& backend, int64_t n, uint8_t first) {
  Tensor t = *backend.Alloc(DType::kF32, {n, 1, 1, 1});
  std::vector<uint8_t> bytes(t.nbytes());
  std::iota(bytes.begin(), bytes.end(), first);
  backend.Upload(bytes.data(), bytes.size(), t, 0);
  return t;
}

TEST(BackendTransfer, CpuBackendsCopyDirectly) {
  cpu::CpuBackend a(1), b(1);
  Tensor src = Filled(a, 64, 1);
  Tensor dst = *b.Alloc(DType::kF32, {64, 1, 1, 1});
  b.Zero(dst);
  EXPECT_EQ(CopyBetween(a, src, 16, b, dst, 32, 100), 0) << "CPU to CPU needs no staging";
  const std::vector<uint8_t> s = Bytes(a, src), d = Bytes(b, dst);
  EXPECT_EQ(std::vector<uint8_t>(d.begin() + 32, d.begin() + 132), std::vector<uint8_t>(s.begin() + 16, s.begin() + 116));
  EXPECT_EQ(d[31], 0);
  EXPECT_EQ(d[132], 0);
  EXPECT_EQ(CopyBetween(a, src, 0, a, src, 4, 8), 0) << "within one backend (overlapping) too";
  EXPECT_EQ(Bytes(a, src)[4], s[0]);
}

TEST(BackendTransfer, CopyRunsCopyEveryPieceOrRefuseWithoutADirectPath) {
  cpu::CpuBackend a(1), b(1);
  Tensor src = Filled(a, 64, 1);
  Tensor dst = *b.Alloc(DType::kF32, {64, 1, 1, 1});
  b.Zero(dst);
  const std::vector<Backend::CopyRun> runs = {{0, 200, 10}, {100, 0, 7}, {30, 64, 0}, {250, 100, 6}};
  ASSERT_TRUE(a.CopyRunsToBackend(src, b, dst, runs, nullptr));
  const std::vector<uint8_t> s = Bytes(a, src), d = Bytes(b, dst);
  std::vector<uint8_t> want(d.size(), 0);
  for (const auto& r : runs) std::copy_n(s.begin() + r.src_offset, r.bytes, want.begin() + r.dst_offset);
  EXPECT_EQ(d, want);
  PlainBackend plain;
  Tensor plain_dst = *plain.Alloc(DType::kF32, {64, 1, 1, 1});
  EXPECT_FALSE(a.CopyRunsToBackend(src, plain, plain_dst, runs, nullptr)) << "no direct path: the caller stages";
  EXPECT_TRUE(a.CopyRunsToBackend(src, b, dst, {}, nullptr)) << "nothing to copy";
}

TEST(BackendTransfer, WithoutADirectPathCopiesStageThroughTheHost) {
  PlainBackend plain;
  cpu::CpuBackend cpu(1);
  Tensor src = Filled(plain, 64, 3);
  Tensor dst = *cpu.Alloc(DType::kF32, {64, 1, 1, 1});
  plain.downloaded = 0;
  EXPECT_EQ(CopyBetween(plain, src, 0, cpu, dst, 0, 256), 256);
  EXPECT_EQ(plain.downloaded, 256u);
  EXPECT_EQ(Bytes(cpu, dst), Bytes(plain, src));
  Tensor back = *plain.Alloc(DType::kF32, {64, 1, 1, 1});
  plain.uploaded = 0;
  EXPECT_EQ(CopyBetween(cpu, dst, 0, plain, back, 0, 256), 256) << "the CPU backend has no path into this one";
  EXPECT_EQ(plain.uploaded, 256u);
  EXPECT_EQ(Bytes(plain, back), Bytes(cpu, dst));
}

TEST(BackendTransfer, EventsHostMemoryAndAsyncCopiesHaveWorkingDefaults) {
  PlainBackend plain;
  auto event = plain.RecordEvent();
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(plain.synchronized, 1) << "the default event synchronises when recorded";
  EXPECT_TRUE(plain.WaitEvent(**event).ok());
  auto host = plain.AllocHost(1000);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->bytes, 1000u);
  EXPECT_FALSE(host->pinned);
  Tensor t = Filled(plain, 8, 9);
  plain.DownloadAsync(t, host->data.get(), 32, 0);
  ASSERT_TRUE(plain.WaitEvent(**plain.RecordEvent()).ok());
  EXPECT_EQ(host->data.get()[0], 9);
  host->data.get()[0] = 200;
  plain.UploadAsync(host->data.get(), 1, t, 4);
  EXPECT_EQ(Bytes(plain, t)[4], 200);
  EXPECT_EQ(plain.ExportMemory(t).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(BackendTransfer, CpuMemoryHandlesOpenInTheExportingProcessOnly) {
  cpu::CpuBackend a(1), b(1);
  Tensor t = Filled(a, 16, 5);
  auto handle = a.ExportMemory(t);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_EQ(handle->kind, "host");
  EXPECT_EQ(handle->bytes, t.nbytes());
  auto opened = b.OpenMemory(*handle, DType::kF32, {8, 2, 1, 1});
  ASSERT_TRUE(opened.ok()) << opened.status();
  const uint8_t value = 77;
  b.Upload(&value, 1, *opened, 3);
  EXPECT_EQ(Bytes(a, t)[3], 77) << "the opened tensor is the exported memory";
  EXPECT_EQ(b.OpenMemory(*handle, DType::kF32, {32, 1, 1, 1}).status().code(), absl::StatusCode::kInvalidArgument)
      << "larger than the export";
  Backend::MemoryHandle foreign = *handle;
  foreign.process = ::getpid() + 1;
  EXPECT_EQ(b.OpenMemory(foreign, DType::kF32, {16, 1, 1, 1}).status().code(), absl::StatusCode::kInvalidArgument);
  foreign = *handle;
  foreign.kind = "cuda-ipc";
  EXPECT_EQ(b.OpenMemory(foreign, DType::kF32, {16, 1, 1, 1}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace latentserve::kernels
