// The CPU reference backend: simple loops, f32 accumulation, multithreaded where it matters.
// Ops run to completion when enqueued, so Synchronize() has nothing to wait for.
#pragma once

#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace latentserve::kernels::cpu {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads);
  std::string name() const override { return "cpu"; }

  absl::StatusOr<Tensor> Alloc(DType dtype, Shape ne) override;
  absl::StatusOr<Tensor> ImportHost(DType dtype, Shape ne, const void* data) override;
  void Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) override;
  void Download(const Tensor& src, void* host, size_t bytes, size_t src_offset) override;
  void Synchronize() override {}
  void Zero(const Tensor& dst) override;
  void Copy(const Tensor& src, const Tensor& dst) override;
  void CopyColumns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col,
                   int64_t cols) override;

  void FillRandom(const Tensor& dst, uint64_t seed, float mean, float scale) override;
  void GetRows(const Tensor& table, const Tensor& ids, const Tensor& out) override;
  void MatMul(const Tensor& w, const Tensor& x, const Tensor& y) override;
  void HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) override;
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override;
  void AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y) override;
  void L2Norm(const Tensor& x, float eps, const Tensor& y) override;
  void Add(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void Mul(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void Sigmoid(const Tensor& x, const Tensor& y) override;
  void SwiGlu(const Tensor& gate, const Tensor& up, const Tensor& y) override;

  void ShortConvSilu(const Tensor& x, const Tensor& weight, int which, absl::Span<const SeqSlice> seqs,
                     absl::Span<const KdaStateView> states, const Tensor& y) override;
  void KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
               const Tensor& g) override;
  void KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                    const Tensor& beta, absl::Span<const SeqSlice> seqs,
                    absl::Span<const KdaStateView> states, int64_t chunk_tokens,
                    const Tensor& out) override;

  void LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs, const Tensor& pool) override;
  void MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs, float scale,
                    const Tensor& out) override;
  void CopyPage(const Tensor& src_pool, int32_t src_page, const Tensor& dst_pool, int32_t dst_page) override;

  // cpu_transfer.cc
  bool CopyToBackend(const Tensor& src, size_t src_offset, Backend& dst_backend, const Tensor& dst,
                     size_t dst_offset, size_t bytes) override;
  absl::StatusOr<MemoryHandle> ExportMemory(const Tensor& tensor) override;
  absl::StatusOr<Tensor> OpenMemory(const MemoryHandle& handle, DType dtype, Shape ne) override;
  absl::Status HashPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                             int64_t count, uint64_t* hashes) override;

  void MoeRoute(const Tensor& logits, const Tensor& bias, int64_t top_k, bool normalize, float scale,
                const Tensor& ids, const Tensor& weights) override;
  void MoeExperts(const Tensor& x, const MoeWeights& experts, const Tensor& ids, const Tensor& weights,
                  const Tensor& y) override;

  ThreadPool& pool() { return pool_; }

 private:
  // MoeExperts for q8_0 / q4_0 experts: writes each routed slot's expert output (slot
  // t * top_k + j) to slot_out [tokens * top_k][hidden]; routed[e] lists expert e's slots.
  void QuantExperts(const Tensor& x, const MoeWeights& experts, const std::vector<std::vector<int64_t>>& routed,
                    int64_t top_k, float* slot_out);

  ThreadPool pool_;
};

// Host address of a CPU tensor's first byte.
inline uint8_t* HostPtr(const Tensor& t) {
  return static_cast<uint8_t*>(t.buffer->address()) + t.offset;
}
inline float* F32(const Tensor& t) { return reinterpret_cast<float*>(HostPtr(t)); }

// Aborts with a message when an internal invariant does not hold.
#define LS_CHECK(cond)                                                              \
  do {                                                                              \
    if (!(cond)) ::latentserve::kernels::cpu::CheckFailed(#cond, __FILE__, __LINE__); \
  } while (0)
[[noreturn]] void CheckFailed(const char* what, const char* file, int line);

// f32 dot product (AVX2/FMA where available).
float Dot(const float* a, const float* b, int64_t n);
// y += alpha * x
void Axpy(float alpha, const float* x, float* y, int64_t n);

}  // namespace latentserve::kernels::cpu
