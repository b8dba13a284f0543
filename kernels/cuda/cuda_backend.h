// The CUDA backend: every op enqueued on one stream; memory from CUDA's stream-ordered pool
// (cudaMallocAsync), so no op pays for cudaMalloc; GEMMs through cuBLAS; our own kernels for
// the rest. Every op has a CPU reference (kernels/cpu) and an op test against it.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace latentserve::kernels::cuda {

[[noreturn]] void CudaFailed(const char* what, const char* detail, const char* file, int line);
#define CUDA_OK(expr)                                                                     \
  do {                                                                                    \
    cudaError_t e_ = (expr);                                                              \
    if (e_ != cudaSuccess) ::latentserve::kernels::cuda::CudaFailed(#expr, cudaGetErrorString(e_), __FILE__, __LINE__); \
  } while (0)
#define CUBLAS_OK(expr)                                                                   \
  do {                                                                                    \
    cublasStatus_t s_ = (expr);                                                           \
    if (s_ != CUBLAS_STATUS_SUCCESS) ::latentserve::kernels::cuda::CudaFailed(#expr, cublasGetStatusString(s_), __FILE__, __LINE__); \
  } while (0)
#define LAUNCH_OK() CUDA_OK(cudaGetLastError())
#define CU_CHECK(cond)                                                                     \
  do {                                                                                    \
    if (!(cond)) ::latentserve::kernels::cuda::CudaFailed(#cond, "internal check", __FILE__, __LINE__); \
  } while (0)

class BlockCache;         // cuda_backend.cu
struct RecordingMemory;   // cuda_graph.h
struct QuantMmaPart;      // quant_mma.h
struct MoeRouting;        // moe_routing.h

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }

  absl::StatusOr<Tensor> Alloc(DType dtype, Shape ne) override;
  absl::StatusOr<Tensor> ImportHost(DType dtype, Shape ne, const void* data) override;
  void Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) override;
  void Download(const Tensor& src, void* host, size_t bytes, size_t src_offset) override;
  void Synchronize() override;
  void Zero(const Tensor& dst) override;
  void Copy(const Tensor& src, const Tensor& dst) override;
  void CopyColumns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col, int64_t cols) override;

  void FillRandom(const Tensor& dst, uint64_t seed, float mean, float scale) override;
  int64_t PeakMemoryBytes() const override;
  void GetRows(const Tensor& table, const Tensor& ids, const Tensor& out) override;
  void MatMul(const Tensor& w, const Tensor& x, const Tensor& y) override;
  absl::StatusOr<Tensor> RoundActivations(const Tensor& x) override;
  absl::StatusOr<Tensor> AddRmsNormRounded(const Tensor& x, const Tensor& a, const Tensor& w, float eps,
                                           const Tensor& y) override;
  void MatMul(const Tensor& w, const Tensor& x, const Tensor& x_rounded, const Tensor& y) override;
  // q4_0 / q8_0 weights at 9..64 columns: every product in one f16 tensor-core launch (quant_mma.h).
  void MatMuls(absl::Span<const Tensor> w, const Tensor& x, const Tensor& x_rounded,
               absl::Span<const Tensor> y) override;
  // One CTA per row, CUB's block argmax (cuda_argmax.cu).
  void ArgmaxRows(const Tensor& x, const Tensor& out) override;
  void HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) override;
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override;
  // RmsNorm's vector kernel with the add folded in (cuda_dense.cu); otherwise Add + RmsNorm.
  void AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y) override;
  // RmsNorm's vector kernel with the gate applied to its output (cuda_dense.cu).
  void GatedRmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& gate, const Tensor& y) override;
  void L2Norm(const Tensor& x, float eps, const Tensor& y) override;
  void Add(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void Mul(const Tensor& a, const Tensor& b, const Tensor& y) override;
  void Sigmoid(const Tensor& x, const Tensor& y) override;
  void SwiGlu(const Tensor& gate, const Tensor& up, const Tensor& y) override;

  // The short conv (sequences of few tokens in one pass), the gate, the gate with beta's
  // sigmoid (cuda_kda_gate_conv.cu).
  void ShortConvSilu(const Tensor& x, const Tensor& weight, int which, absl::Span<const SeqSlice> seqs,
                     absl::Span<const KdaStateView> states, const Tensor& y) override;
  void KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim, const Tensor& g) override;
  void KdaGateAndBeta(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim, const Tensor& g,
                      const Tensor& beta_logits, const Tensor& beta) override;
  void KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                    absl::Span<const SeqSlice> seqs, absl::Span<const KdaStateView> states, int64_t chunk_tokens,
                    const Tensor& out) override;

  void LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs, const Tensor& pool) override;
  void MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs, float scale,
                    const Tensor& out) override;
  // Long query chunks in the MHA form (cuda_mla_prefill.cu), the rest through the absorbed
  // default; LATENTSERVE_MLA_FORM=absorbed|mha|auto overrides the choice (benchmarks).
  absl::Status MlaAttentionHeads(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                                 absl::Span<const LatentSeqView> seqs, float scale, const Tensor& out) override;
  void CopyPage(const Tensor& src_pool, int32_t src_page, const Tensor& dst_pool, int32_t dst_page) override;

  // Device-transfer capabilities (cuda_transfer.cu).
  bool CopyToBackend(const Tensor& src, size_t src_offset, Backend& dst_backend, const Tensor& dst,
                     size_t dst_offset, size_t bytes) override;
  bool CopyRunsToBackend(const Tensor& src, Backend& dst_backend, const Tensor& dst,
                         absl::Span<const CopyRun> runs, absl::Duration* device_time) override;
  absl::StatusOr<std::unique_ptr<Event>> RecordEvent() override;
  absl::Status WaitEvent(const Event& event) override;
  absl::StatusOr<HostMemory> AllocHost(size_t bytes) override;
  void DownloadAsync(const Tensor& src, void* host, size_t bytes, size_t src_offset) override;
  void UploadAsync(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) override;
  absl::StatusOr<Tensor> AllocExportable(DType dtype, Shape ne) override;
  absl::StatusOr<MemoryHandle> ExportMemory(const Tensor& tensor) override;
  absl::StatusOr<Tensor> OpenMemory(const MemoryHandle& handle, DType dtype, Shape ne) override;
  std::string DeviceUuid() const override;
  // XXH64 of paged rows, four threads per row (cuda_row_hash.cu).
  absl::Status HashPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                             int64_t count, uint64_t* hashes) override;

  void MoeRoute(const Tensor& logits, const Tensor& bias, int64_t top_k, bool normalize, float scale,
                const Tensor& ids, const Tensor& weights) override;
  void MoeExperts(const Tensor& x, const MoeWeights& experts, const Tensor& ids, const Tensor& weights,
                  const Tensor& y) override;
  void MoeExperts(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts, const Tensor& ids,
                  const Tensor& weights, const Tensor& y) override;
  // At decode the shared expert runs as one more slot per token of the decode expert kernels
  // (MoeExpertsDecode); otherwise the base class's ops.
  absl::Status MoeExpertsWithShared(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                                    const Tensor& ids, const Tensor& weights, const SharedExpert& shared,
                                    const Tensor& y) override;

  // One sequence's new queries: absorbed attention as tensor-core GEMMs with a flash-style
  // online softmax over key tiles (cuda_mla_gemm.cu).
  void MlaGemmAttention(const Tensor& q, const Tensor& pool, const LatentSeqView& seq, float scale,
                           const Tensor& out);
  // Decode steps (one new token per sequence) over the pages in place, all sequences in one
  // launch (cuda_mla_decode.cu). False when the shapes are not its own (the caller then takes
  // the gather path); LATENTSERVE_MLA_DECODE=gather forces that path (benchmarks).
  bool MlaDecodePaged(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs, float scale,
                      const Tensor& out);
  // Its decode case (few query rows): flash-decoding over key chunks, every chunk in parallel.
  // q16 [rows x width], keys [whole chunks x width] (f16, padding zeroed), out [rows x value_dim].
  void MlaDecodeChunks(const __half* q16, const __half* keys, int64_t keys_total, int64_t width, int64_t heads,
                       int64_t rows, int64_t first_position, float scale, int64_t value_dim, float* out);

  // One sequence's new queries in the MHA form: keys and values expanded per head from the
  // latent rows (f16 GEMM), then the flash-attention kernel (cuda_mla_prefill.cu).
  void MlaMhaAttention(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                       const LatentSeqView& seq, float scale, const Tensor& out);
  // k_b and v_b of one layer as one f16 matrix [H x (Pn + Dv)] x R (rows: output features),
  // built on first use and kept for the backend's lifetime (8 MiB per layer at full size).
  const __half* MlaExpansionWeights(const Tensor& k_b, const Tensor& v_b);

  // MoE prefill as grouped GEMMs with the routing sort on the device (cuda_moe_grouped.cu).
  // Returns false, having enqueued nothing, for weight types or shapes it does not take
  // (f32 weights, gate/up of different types, hidden or ffn not a multiple of 32).
  bool MoeExpertsGrouped(const Tensor& x, const MoeWeights& experts, const Tensor& ids, const Tensor& weights,
                         const Tensor& y);
  // The routing sort of MoeExpertsGrouped (cuda_moe_routing.cu): ids [top_k, tokens] sorted by
  // expert on the device, arrays in scratch slot 5.
  MoeRouting SortSlotsByExpert(const Tensor& ids, int64_t tokens, int64_t n_experts);
  // y[:, t] = sum_j weights[j, t] * slot_out[t * top_k + j], in slot order (slot_out: f32 [slots, hidden]).
  void WeightedSlotSum(const float* slot_out, const Tensor& weights, const Tensor& y);
  // At most 64 tokens on q4_0 / q8_0 experts: the tensor-core experts after `routing`
  // (cuda_moe_quant_mma.cu).
  // Returns false, having enqueued nothing, where they do not apply.
  bool MoeExpertsQuantMma(const Tensor& x, const MoeWeights& experts, const MoeRouting& routing,
                          const Tensor& weights, const Tensor& y);
  // MoE decode (few slots) with warp dot products over each slot's expert rows, the ids read on
  // the device (cuda_moe_decode.cu); with `shared`, its expert as one more slot per token, added
  // after each token's weighted sum. Returns false, having enqueued nothing, for too many slots,
  // types without decode kernels, or a shared expert of other types or sizes than the experts.
  bool MoeExpertsDecode(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts, const Tensor& ids,
                        const Tensor& weights, const SharedExpert* shared, const Tensor& y);

  // KDA prefill in the chunked (WY) form for head dimension 128 (cuda_kda_chunk.cu); returns
  // false, doing nothing, for shapes it is not built for (the caller runs the recurrence).
  // KdaAttention gives it the sequences with at least kKdaChunkedMinTokens new tokens: a chunk
  // costs about as much as 8 recurrent steps (estimated: ~7 us of parallel preparation plus
  // ~1.5 us in the sequential state pass, against ~1.5 us per recurrent token).
  bool KdaChunkedAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g, const Tensor& beta,
                           absl::Span<const SeqSlice> seqs, absl::Span<const KdaStateView> states, const Tensor& out);
  static constexpr int64_t kKdaChunkedMinTokens = 8;

  // Recorded steps as CUDA graphs (cuda_graph.cu). While recording, Alloc, Scratch and the
  // uploads take memory that belongs to the recording; Download and Synchronize are refused.
  bool CanCapture() const override { return true; }
  void ProfilerStart() override;
  void ProfilerStop() override;
  absl::Status BeginCapture() override;
  absl::StatusOr<std::unique_ptr<Graph>> EndCapture() override;
  absl::Status Replay(const Graph& graph) override;
  bool capturing() const { return capture_ != nullptr; }
  // Marks the recording in progress as failed (EndCapture returns `why`).
  void CaptureRefused(const std::string& why);

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // Device scratch valid until the next call that asks for scratch of the same slot.
  void* Scratch(int slot, size_t bytes);
  // Whether Scratch(slot, bytes) needs no new memory, or the device has that much free with
  // 1 GiB to spare.
  bool ScratchFits(int slot, size_t bytes);
  static constexpr int kScratchSlots = 18;
  // Slots: 0-7 the absorbed MLA GEMM path (cuda_mla_gemm.cu), 8-12 the MHA prefill
  // (cuda_mla_prefill.cu), 13-15 the paged decode (cuda_mla_decode.cu), 16 the chunked KDA
  // workspace (hundreds of MB); 3 and 4 also carry small per-op uploads (KDA, MLA token maps);
  // 17 the MoE weights dequantised ahead (cuda_moe_predequant.cu: GBs, only when chosen).
  static constexpr int kKdaWorkspaceSlot = 16;
  // Copies a small host array to device scratch `slot` (stream-ordered).
  void* UploadScratch(int slot, const void* host, size_t bytes);
  // Sequence `seq`'s page ids on the device: its column of the forward's page plan, or (no
  // plan: op tests) page_table uploaded to scratch `slot`.
  const int32_t* SeqPages(const LatentSeqView& seq, int slot);
  // One device table for all of `seqs` when they share a page plan: its address, and in
  // *offsets each sequence's first element in it. Null when they do not share one.
  static const int32_t* SharedPlan(absl::Span<const LatentSeqView> seqs, std::vector<int32_t>* offsets);
  // y[N, M] = w[K, N]^T x[K, M] for a weight view (rows of any dtype) and device f32 x, y.
  // x_rounded: x rounded by RoundActivations (RoundedFor's layout at 1..8 columns, which the
  // q4_0 / q8_0 GEMVs use; FragmentsFor's at 9..64, which the tensor-core products use), or null.
  void Gemm(DType wtype, const void* w, size_t w_row_bytes, int64_t K, int64_t N, const float* x, int64_t M, float* y,
            const void* x_rounded = nullptr);
  // x_rounded's device bytes when it is RoundActivations' layout for x's shape and the GEMVs
  // (at most kRoundedMaxColumns columns), else null.
  const void* RoundedFor(const Tensor& x, const Tensor& x_rounded);
  // The f16 tensor-core products (quant_mma.h) of x (m columns, device f32; `fragments` its
  // rounded copy or null) by every part's weights, in one launch; false where they do not apply.
  bool QuantMmaProducts(DType wtype, size_t row_bytes, int64_t k, absl::Span<const QuantMmaPart> parts, const float* x,
                        int64_t m, const void* fragments);
  // The same for the tensor-core product's fragments (quant_mma.h: 9..64 columns).
  const void* FragmentsFor(const Tensor& x, const Tensor& x_rounded);

 private:
  int device_;
  int sms_ = 1;  // the device's multiprocessors
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  struct ScratchSlot {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  std::vector<ScratchSlot> scratch_;
  std::map<std::pair<const void*, const void*>, void*> mla_expansion_;  // (k_b, v_b) -> f16 matrix
  std::shared_ptr<BlockCache> block_cache_;  // freed tensor memory for reuse (cuda_backend.cu)
  // Pinned staging for small per-op uploads (page tables, routing indices): a pageable
  // cudaMemcpyAsync would make the host wait for the stream, serialising launch and execution.
  struct Staging {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;  // the copy that last read this entry
  };
  std::vector<Staging> staging_;
  size_t next_staging_ = 0;
  // f32 copies of non-f32 per-head weights (HeadMatMul's k_b / v_b), made once per weight
  // buffer (the weak pointer tells a live weight from a new tensor at a freed address).
  const float* F32Weights(const Tensor& w);
  std::map<const void*, std::pair<std::weak_ptr<Buffer>, float*>> f32_weights_;
  cudaStream_t aux_stream_ = nullptr;  // one-time work that must stay out of a recording
  cudaStream_t copy_stream_ = nullptr;  // CopyRunsToBackend's copies (a destination on this device)
  std::unique_ptr<RecordingMemory> capture_;  // set between BeginCapture and EndCapture
  void HoldFreedBlocks(bool hold);            // no stream frees while recording
  void* cublas_workspace_ = nullptr;          // fixed, so recorded GEMMs never allocate
  // Device counters at 0 that a kernel takes tickets from and leaves at 0 again: at least
  // `count` of them, one array per use (kernels of two uses may overlap under dependent
  // launch). Arrays outgrown stay allocated until the backend goes: recorded steps keep their
  // addresses. Uses: the paged MLA decode's ticket per sequence (mla_decode_merge.cuh), the
  // tensor-core product's ticket per row tile when its reduction is split (cuda_matmul_mma.cu).
  struct TicketArrays {
    std::vector<int*> arrays;  // the newest (largest) last
    int64_t count = 0;
  };
  int* Tickets(TicketArrays& use, int64_t count);
  TicketArrays mla_tickets_, mma_tickets_;
};

inline uint8_t* DevPtr(const Tensor& t) { return static_cast<uint8_t*>(t.buffer->address()) + t.offset; }
inline float* DevF32(const Tensor& t) { return reinterpret_cast<float*>(DevPtr(t)); }

// Positions [0, count) of a sequence's cached rows (pool [L, page_tokens, n_pages], any cache
// type; `pages` its page table on the device) as dense f16 rows [count][L] (cuda_mla_prefill.cu).
void GatherLatentRows(cudaStream_t stream, const Tensor& pool, const int32_t* pages, int64_t count, __half* rows);

// Launch helpers implemented in the .cu files (all on the backend's stream).
inline int Blocks(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }
// y[:, t] = sum_j weights[j, t] * slot_out[t * top_k + j] in slot order, then + shared_out[:, t]
// where shared_out is not null (cuda_moe_decode.cu; a programmatic dependent launch).
void LaunchMoeWeightedSum(cudaStream_t stream, const float* slot_out, const float* weights, int64_t hidden,
                          int64_t top_k, int64_t tokens, const float* shared_out, float* y);

}  // namespace latentserve::kernels::cuda
