// Fixtures shared by the op tests: CPU ops against host formulas (test_cpu_ops.cc,
// test_cpu_kquant_ops.cc), and the CUDA backend against the CPU on the same host data
// (test_backend_ops.cc, test_backend_kquant_ops.cc). Each test file keeps its own seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace latentserve::kernels::op_test {

// NMSE thresholds: f32 arithmetic in a different order lands near 1e-12..1e-10; paths that
// round activations to 16 bits (cuBLAS f16/bf16 GEMMs for many columns) near 1e-6..1e-5.
constexpr double kExact = 1e-9;
constexpr double kHalfActivations = 1e-4;

inline double Nmse(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return num / std::max(den, 1e-30);
}

inline double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 1e-12;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / den;
}

// Host bytes of `values` (rows of ne[0]) in `dtype`'s stored layout.
inline std::vector<uint8_t> StoredBytes(const Tensor& t, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(t.nbytes());
  for (int64_t r = 0; r < t.rows(); ++r) {
    QuantizeRow(t.dtype, values.data() + r * t.ne[0], bytes.data() + r * t.row_bytes(), t.ne[0]);
  }
  return bytes;
}

// Routing ids i32 [top_k, tokens]: top_k distinct experts per token, random, in random order.
inline std::vector<int32_t> RandomRouting(int64_t experts, int64_t top_k, int64_t tokens, std::mt19937& rng) {
  std::vector<int32_t> all(experts), ids;
  for (int64_t e = 0; e < experts; ++e) all[e] = static_cast<int32_t>(e);
  for (int64_t t = 0; t < tokens; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    ids.insert(ids.end(), all.begin(), all.begin() + top_k);
  }
  return ids;
}

// MoeExperts, then the shared expert by MatMul (one on the stacked gate_up for one token),
// SwiGlu, MatMul and Add: the ops the model ran before Backend::MoeExpertsWithShared, which its
// default must reproduce bitwise.
inline void MoeThenSharedOps(Backend& b, const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                             const Tensor& ids, const Tensor& weights, const SharedExpert& shared, const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows(), ffn = shared.gate.ne[1];
  b.MoeExperts(x, x_rounded, experts, ids, weights, y);
  Tensor gate, up;
  if (shared.gate_up.defined() && tokens == 1) {
    const Tensor both = *b.Alloc(DType::kF32, {2 * ffn, 1, 1, 1});
    b.MatMul(shared.gate_up, x, x_rounded, both);
    gate = both.Reshape({1, 2 * ffn, 1, 1}).RowSlice(0, ffn).Reshape({ffn, 1, 1, 1});
    up = both.Reshape({1, 2 * ffn, 1, 1}).RowSlice(ffn, ffn).Reshape({ffn, 1, 1, 1});
  } else {
    gate = *b.Alloc(DType::kF32, {ffn, tokens, 1, 1});
    b.MatMul(shared.gate, x, x_rounded, gate);
    up = *b.Alloc(DType::kF32, {ffn, tokens, 1, 1});
    b.MatMul(shared.up, x, x_rounded, up);
  }
  b.SwiGlu(gate, up, gate);
  const Tensor out = *b.Alloc(DType::kF32, {hidden, tokens, 1, 1});
  b.MatMul(shared.down, gate, out);
  b.Add(y, out, y);
}

// The CPU backend alone.
class CpuOpsFixture : public ::testing::Test {
 protected:
  explicit CpuOpsFixture(uint32_t seed) : rng_(seed) {}
  void SetUp() override { backend_ = *CreateBackend({"cpu", 2, 0}); }
  Tensor Make(DType dtype, Shape ne, const std::vector<float>& values) {
    Tensor t = *backend_->Alloc(dtype, ne);
    const std::vector<uint8_t> bytes = StoredBytes(t, values);
    backend_->Upload(bytes.data(), bytes.size(), t);
    return t;
  }
  Tensor F32(Shape ne, const std::vector<float>& values) { return Make(DType::kF32, ne, values); }
  Tensor Zeros(Shape ne) {
    Tensor t = *backend_->Alloc(DType::kF32, ne);
    backend_->Zero(t);
    return t;
  }
  std::vector<float> Read(const Tensor& t) {
    std::vector<float> out(t.elements());
    backend_->Download(t, out.data(), out.size() * 4);
    return out;
  }
  std::vector<uint8_t> Bytes(const Tensor& t) {
    std::vector<uint8_t> b(t.nbytes());
    backend_->Download(t, b.data(), b.size());
    return b;
  }
  std::vector<float> Random(size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng_);
    return v;
  }
  std::unique_ptr<Backend> backend_;
  std::mt19937 rng_;
};

// Sets an environment variable for a scope (a failed ASSERT returns without leaking it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// The CUDA backend against the CPU on the same host data; skipped where no GPU is visible.
class BackendPairFixture : public ::testing::Test {
 protected:
  explicit BackendPairFixture(uint32_t seed) : rng_(seed) {}
  void SetUp() override {
    auto gpu = CreateBackend({"cuda", 0, 0});
    if (!gpu.ok()) GTEST_SKIP() << gpu.status();
    gpu_ = std::move(*gpu);
    cpu_ = *CreateBackend({"cpu", 2, 0});
  }
  // The same host data on both backends.
  struct Pair {
    Tensor cpu, gpu;
  };
  Pair Make(DType dtype, Shape ne, const std::vector<float>& values) {
    Pair p{*cpu_->Alloc(dtype, ne), *gpu_->Alloc(dtype, ne)};
    const std::vector<uint8_t> bytes = StoredBytes(p.cpu, values);
    cpu_->Upload(bytes.data(), bytes.size(), p.cpu);
    gpu_->Upload(bytes.data(), bytes.size(), p.gpu);
    return p;
  }
  Pair F32(Shape ne, const std::vector<float>& v) { return Make(DType::kF32, ne, v); }
  // New f32 values for an existing pair (both backends).
  void Set(const Pair& p, const std::vector<float>& v) {
    cpu_->Upload(v.data(), v.size() * 4, p.cpu);
    gpu_->Upload(v.data(), v.size() * 4, p.gpu);
  }
  Pair Poisoned(Shape ne) {  // outputs start as NaN so an unwritten element fails
    return F32(ne, std::vector<float>(ne[0] * ne[1] * ne[2] * ne[3], NAN));
  }
  Pair Ints(Shape ne, const std::vector<int32_t>& v) {
    Pair p{*cpu_->Alloc(DType::kI32, ne), *gpu_->Alloc(DType::kI32, ne)};
    cpu_->Upload(v.data(), v.size() * 4, p.cpu);
    gpu_->Upload(v.data(), v.size() * 4, p.gpu);
    return p;
  }
  // `views` again, reading their pages from one [stride, B] page plan on the GPU (what the
  // model's forward plans once per step: model/batch_plan.h); `plan` holds its memory.
  std::vector<LatentSeqView> Planned(std::vector<LatentSeqView> views, Tensor* plan) {
    int64_t stride = 1;
    for (const LatentSeqView& v : views) stride = std::max<int64_t>(stride, int64_t(v.page_table.size()));
    // Unused entries hold a page id out of range: a kernel that read past its table would fail.
    std::vector<int32_t> host(stride * views.size(), 1 << 30);
    for (size_t b = 0; b < views.size(); ++b) {
      std::copy(views[b].page_table.begin(), views[b].page_table.end(), host.begin() + b * stride);
    }
    *plan = *gpu_->Alloc(DType::kI32, {stride, int64_t(views.size()), 1, 1});
    gpu_->Upload(host.data(), host.size() * 4, *plan);
    for (size_t b = 0; b < views.size(); ++b) {
      views[b].page_plan = plan;
      views[b].plan_column = int64_t(b);
    }
    return views;
  }
  // A weight's CPU copy dequantised to f32 (the reference for kernels that keep f32 / f16
  // activations, where the CPU's own quantised path rounds activations to 8 bits).
  Tensor Dequantised(const Pair& w) {
    std::vector<uint8_t> bytes(w.cpu.nbytes());
    cpu_->Download(w.cpu, bytes.data(), bytes.size());
    std::vector<float> values(w.cpu.elements());
    for (int64_t r = 0; r < w.cpu.rows(); ++r) {
      DequantizeRow(w.cpu.dtype, bytes.data() + r * w.cpu.row_bytes(), values.data() + r * w.cpu.ne[0], w.cpu.ne[0]);
    }
    Tensor t = *cpu_->Alloc(DType::kF32, w.cpu.ne);
    cpu_->Upload(values.data(), values.size() * 4, t);
    return t;
  }
  // A GPU tensor's bytes (bitwise comparisons between GPU paths).
  std::vector<uint8_t> GpuBytes(const Tensor& t) {
    std::vector<uint8_t> out(t.nbytes());
    gpu_->Download(t, out.data(), out.size());
    return out;
  }
  std::vector<float> Read(Backend& b, const Tensor& t) {
    std::vector<float> out(t.elements());
    b.Download(t, out.data(), out.size() * 4);
    return out;
  }
  void Expect(const Pair& p, double threshold, const std::string& what) {
    const double nmse = Nmse(Read(*gpu_, p.gpu), Read(*cpu_, p.cpu));
    EXPECT_LE(nmse, threshold) << what;
    RecordProperty(what, std::to_string(nmse));
  }
  // An MLA decode step (LatentStore of one new row per sequence, then MlaAttention with
  // `heads` heads) recorded once over `pool`, sequence s holding cached[s] rows in the pages
  // tables[s], then replayed once per entry of `advances` at positions cached[s] + advance
  // (read from device memory, DeviceStep; page tables `stride` entries apart, 0: the longest
  // table), each replay's output against the CPU's same step.
  void CheckRecordedMlaStep(const Pair& pool, const std::vector<std::vector<int32_t>>& tables,
                            const std::vector<int64_t>& cached, int64_t heads, int64_t stride,
                            const std::vector<int64_t>& advances, const std::string& what) {
    constexpr int64_t kWidth = 576, kValue = 512;
    const float scale = 1.0f / std::sqrt(192.0f);
    const int64_t n = static_cast<int64_t>(cached.size());
    for (const auto& t : tables) stride = std::max<int64_t>(stride, int64_t(t.size()));
    std::vector<int32_t> device_tables(stride * n, 0);
    for (int64_t s = 0; s < n; ++s) std::copy(tables[s].begin(), tables[s].end(), device_tables.begin() + s * stride);
    DeviceStep device{*gpu_->Alloc(DType::kI32, {n, 1, 1, 1}), *gpu_->Alloc(DType::kI32, {stride, n, 1, 1})};
    gpu_->Upload(device_tables.data(), device_tables.size() * 4, device.page_tables);
    Pair fresh = F32({kWidth, n, 1, 1}, std::vector<float>(kWidth * n, 0.0f));
    Pair q = F32({kWidth, heads, n, 1}, std::vector<float>(kWidth * heads * n, 0.0f));
    Tensor out_gpu = *gpu_->Alloc(DType::kF32, {kValue, heads, n, 1});
    std::vector<LatentSeqView> recorded;
    for (int64_t s = 0; s < n; ++s) recorded.push_back({tables[s], cached[s], s, 1, &device});
    ASSERT_TRUE(gpu_->BeginCapture().ok());
    gpu_->LatentStore(fresh.gpu, recorded, pool.gpu);
    gpu_->MlaAttention(q.gpu, pool.gpu, recorded, scale, out_gpu);
    auto graph = gpu_->EndCapture();
    ASSERT_TRUE(graph.ok()) << graph.status();
    for (size_t replay = 0; replay < advances.size(); ++replay) {
      std::vector<LatentSeqView> views;
      std::vector<int32_t> positions(n);
      for (int64_t s = 0; s < n; ++s) {
        views.push_back({tables[s], cached[s] + advances[replay], s, 1});
        positions[s] = static_cast<int32_t>(cached[s] + advances[replay]);
      }
      Set(fresh, Random(kWidth * n, -2, 2));
      Set(q, Random(kWidth * heads * n, -0.3f, 0.3f));
      gpu_->Upload(positions.data(), positions.size() * 4, device.positions);
      Pair out = Poisoned({kValue, heads, n, 1});
      cpu_->LatentStore(fresh.cpu, views, pool.cpu);
      cpu_->MlaAttention(q.cpu, pool.cpu, views, scale, out.cpu);
      ASSERT_TRUE(gpu_->Replay(**graph).ok());
      gpu_->Copy(out_gpu, out.gpu);
      Expect(out, 1e-5, what + ", replay " + std::to_string(replay));
    }
  }
  std::vector<float> Random(size_t n, float lo = -1, float hi = 1) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng_);
    return v;
  }
  std::unique_ptr<Backend> cpu_, gpu_;
  std::mt19937 rng_;
};

}  // namespace latentserve::kernels::op_test
