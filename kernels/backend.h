// kernels::Backend: the only way the model computes.
//
// Every op is enqueued on the backend's stream and may run asynchronously; results are
// visible to the host only after Download() or Synchronize(). Activations are f32; weight
// tensors may be any DType. All tensors are contiguous, shapes in ggml order ([ne0, ne1, ...],
// ne0 fastest). Ops validate shapes with CHECK-style aborts: shape errors are programming
// errors of the model, never user input (user input is validated above this layer).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace latentserve::kernels {

// One sequence's slice of a batch for the stateful ops (KDA, MLA): its tokens are the
// `token_count` consecutive columns starting at `first_token` of the batch tensors.
struct SeqSlice {
  int64_t first_token = 0;
  int64_t token_count = 0;
};

// Per-sequence KDA recurrent state (f32).
struct KdaStateView {
  Tensor recurrent;  // [Dk (key), Dk (value), H]: S[k, v, h], the delta-rule state
  Tensor conv;       // [d_conv - 1, Di, 3]: the last d_conv-1 inputs of the q, k, v convs
};

// A decode step (one new token per sequence) that reads what changes from step to step out
// of device memory, so that one recorded step (a Graph) serves every later step of the same
// batch: sequence b stores its new row at position positions[b], sees positions
// [0, positions[b]], and its pages are page_tables[0 : stride, b].
struct DeviceStep {
  Tensor positions;    // i32 [B]
  Tensor page_tables;  // i32 [stride, B]
};

// Per-sequence view of the paged latent cache of one MLA layer.
struct LatentSeqView {
  absl::Span<const int32_t> page_table;  // page ids, in token order
  int64_t cached_tokens = 0;             // tokens already in the cache before this batch
  int64_t first_token = 0;               // batch column of this sequence's first new token
  int64_t token_count = 0;               // new tokens (already stored by LatentStore)
  // Set for recorded decode steps (token_count 1, first_token == its index in `device`):
  // backends that record read the position and pages there at run time; the fields above
  // hold the values of the step being recorded (what a backend that runs ops at once uses).
  const DeviceStep* device = nullptr;
  // The forward's page plan (model/batch_plan.h): every sequence's page table uploaded once
  // per step into one i32 [stride, B] tensor that every MLA layer reads; this sequence's pages
  // are its column `plan_column`. Null: a backend that needs the pages on the device uploads
  // page_table itself (what op tests that build views by hand get).
  const Tensor* page_plan = nullptr;
  int64_t plan_column = 0;
};

struct MoeWeights {
  Tensor gate_exps;  // [E, Fe, X]
  Tensor up_exps;    // [E, Fe, X]
  Tensor down_exps;  // [Fe, E, X]
};

// An MoE layer's shared expert (every token, weight 1), 2-d tensors of any types.
struct SharedExpert {
  Tensor gate;     // [E, Fs]
  Tensor up;       // [E, Fs]
  Tensor down;     // [Fs, E]
  Tensor gate_up;  // [E, 2 Fs]: gate's rows then up's, when one tensor holds both (else empty)
};

// The first index of the largest value, std::max_element's answer: ties go to the first, -0
// and +0 are equal, NaN never wins (a row that starts with NaN gives 0, as max_element does).
// Greedy sampling on the host and Backend::ArgmaxRows on every backend give this index.
int32_t Argmax(absl::Span<const float> row);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual absl::StatusOr<Tensor> Alloc(DType dtype, Shape ne) = 0;
  // A tensor over host memory that outlives it (e.g. an mmapped GGUF). Backends that cannot
  // read host memory copy it; the CPU backend wraps it without copying.
  virtual absl::StatusOr<Tensor> ImportHost(DType dtype, Shape ne, const void* data) = 0;
  virtual void Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset = 0) = 0;
  // Waits for pending work, then copies.
  virtual void Download(const Tensor& src, void* host, size_t bytes, size_t src_offset = 0) = 0;
  virtual void Synchronize() = 0;
  virtual void Zero(const Tensor& dst) = 0;
  virtual void Copy(const Tensor& src, const Tensor& dst) = 0;  // same dtype and size
  // For every row r (both f32, same row count): dst[r][dst_col + i] = src[r][src_col + i],
  // i < cols. Used to assemble and split rows without host access.
  virtual void CopyColumns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col,
                           int64_t cols) = 0;

  // Pseudo-random contents from a hash of (seed, element index), the same on every backend:
  // float types uniform in [mean - scale, mean + scale]; q8_0 / q4_0 random quants whose
  // values span [-scale, scale]. Lets a full-size model exist without a 50-100 GB file.
  virtual void FillRandom(const Tensor& dst, uint64_t seed, float mean, float scale) = 0;
  // Peak bytes of memory the backend has held for tensors (-1 when not tracked).
  virtual int64_t PeakMemoryBytes() const { return -1; }

  // ---- device transfer (optional capabilities; the defaults go through the host) ----
  // What device transports (transfer/) build on. Every default is correct on any backend,
  // only slower: a backend overrides what its device does natively.
  //
  // Copies `bytes` from `src` (this backend's) at src_offset to `dst`, a tensor of
  // `dst_backend` (possibly this one), without a host round trip, ordered after the work
  // already enqueued on both backends; later work on either is ordered after the copy.
  // Returns false when the two backends have no direct path (kernels::CopyBetween then
  // stages through host memory). CPU: memcpy between CPU backends; CUDA: a device-to-device
  // or peer copy between CUDA backends.
  virtual bool CopyToBackend(const Tensor& src, size_t src_offset, Backend& dst_backend, const Tensor& dst,
                             size_t dst_offset, size_t bytes) {
    return false;
  }
  // One piece of a batched copy: `bytes` from `src_offset` of the source to `dst_offset` of
  // the destination.
  struct CopyRun {
    size_t src_offset = 0;
    size_t dst_offset = 0;
    size_t bytes = 0;
  };
  // CopyToBackend for many pieces at once (a handoff chunk's page runs): same ordering, same
  // return rule, every run inside both tensors. CUDA on one device: one gather-scatter kernel
  // on a stream of its own (ordered after the work enqueued on both backends so far, before the
  // work enqueued later) instead of a copy call and two stream orderings per piece (a chunk of
  // 64-token pages is ~128 pieces of ~72 KiB). With `device_time`, returns once the copies are done and sets the time they took on
  // the device (the host's clock from enqueue to completion where the backend has no timer).
  // Default: CopyToBackend per run.
  virtual bool CopyRunsToBackend(const Tensor& src, Backend& dst_backend, const Tensor& dst,
                                 absl::Span<const CopyRun> runs, absl::Duration* device_time);
  // A point in this backend's stream: WaitEvent blocks the host until the work enqueued
  // before RecordEvent has finished. Default: RecordEvent synchronises (the event is then
  // already complete). CUDA: cudaEventRecord / cudaEventSynchronize.
  class Event {
   public:
    virtual ~Event() = default;
  };
  virtual absl::StatusOr<std::unique_ptr<Event>> RecordEvent();
  virtual absl::Status WaitEvent(const Event& event);
  // Host memory that the device copies to and from at full speed (pinned on CUDA:
  // cudaMallocHost); default: ordinary aligned host memory, `pinned` false.
  struct HostMemory {
    std::shared_ptr<uint8_t> data;
    size_t bytes = 0;
    bool pinned = false;
  };
  virtual absl::StatusOr<HostMemory> AllocHost(size_t bytes);
  // Copies that return before they are done: the host memory must stay valid (and, for a
  // download, unread) until an event recorded after them completes. Defaults: Download /
  // Upload, which finish before returning.
  virtual void DownloadAsync(const Tensor& src, void* host, size_t bytes, size_t src_offset = 0) {
    Download(src, host, bytes, src_offset);
  }
  virtual void UploadAsync(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset = 0) {
    Upload(host, bytes, dst, dst_offset);
  }
  // Memory another process (or backend) can open: `kind` names the mechanism ("host": an
  // address valid in process `process` only; "cuda-ipc": a cudaIpcMemHandle_t), `handle`
  // its bytes, `bytes` the size. The exporter keeps the tensor alive while the handle is used.
  struct MemoryHandle {
    std::string kind;
    std::string handle;
    uint64_t bytes = 0;
    int64_t process = 0;  // exporting process id
  };
  // A tensor whose memory ExportMemory accepts (CUDA: cudaMalloc instead of the stream-ordered
  // pool). Default: Alloc.
  virtual absl::StatusOr<Tensor> AllocExportable(DType dtype, Shape ne) { return Alloc(dtype, ne); }
  // Default: Unimplemented (the backend's memory cannot be shared; transports stage it).
  virtual absl::StatusOr<MemoryHandle> ExportMemory(const Tensor& tensor);
  // A tensor of `dtype` and shape `ne` over an exported allocation; InvalidArgument when the
  // handle is of another kind or process, or smaller than the tensor.
  virtual absl::StatusOr<Tensor> OpenMemory(const MemoryHandle& handle, DType dtype, Shape ne);
  // XXH64 (seed 0) of latent rows where they live, gathered through a page table: the device
  // transports' checksum (transfer/checksum.h RowsChecksum) without reading the rows back.
  // `pool` is a paged cache [W, page_tokens, n_pages, 1] of any dtype, one row = the W values
  // of one token (pool.row_bytes() bytes); token t is at slot t % page_tokens of page
  // page_table[t / page_tokens]. hashes[i] = XXH64(row of token first_token + i), i < count,
  // ordered after the work already enqueued; returns once they are in host memory.
  // InvalidArgument for tokens outside the table or pages outside the pool (CheckPagedRows).
  // Default: Unimplemented (callers read the rows back and hash them on the host).
  // CPU: kernels/xxh64.h per row; CUDA: four threads per row (cuda_row_hash.cu).
  virtual absl::Status HashPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                                     int64_t count, uint64_t* hashes);
  // The device's identity for peers choosing a transport (CUDA: "GPU-" + its UUID, as
  // nvidia-smi prints it); empty for host memory.
  virtual std::string DeviceUuid() const { return ""; }

  // ---- recorded steps (optional: CUDA graphs) ----
  // Between BeginCapture and EndCapture the backend records the ops enqueued instead of
  // running them. Upload keeps a copy of its bytes (every replay uploads the same bytes);
  // tensors allocated meanwhile belong to the recording and live as long as it does; Download
  // and Synchronize cannot be recorded (EndCapture then fails, naming them), nor can an op
  // whose work depends on host values that a DeviceStep does not carry. Replay runs the
  // recorded work again, in stream order with everything else.
  class Graph {
   public:
    virtual ~Graph() = default;
  };
  virtual bool CanCapture() const { return false; }
  // The span a profiler started with profiling off records (ncu --profile-from-start off):
  // from ProfilerStart to ProfilerStop. CUDA: cudaProfilerStart / Stop; default: nothing.
  virtual void ProfilerStart() {}
  virtual void ProfilerStop() {}
  virtual absl::Status BeginCapture();
  virtual absl::StatusOr<std::unique_ptr<Graph>> EndCapture();
  virtual absl::Status Replay(const Graph& graph);

  // ---- dense ----
  // out[:, i] = table[:, ids[i]] converted to f32. table [E, V] any dtype; ids i32 [n].
  virtual void GetRows(const Tensor& table, const Tensor& ids, const Tensor& out) = 0;
  // y[N, M] = w[K, N]^T x[K, M]  (y[n, m] = sum_k w[k, n] x[k, m]); f32 accumulation.
  virtual void MatMul(const Tensor& w, const Tensor& x, const Tensor& y) = 0;
  // x (f32 [K, M]) rounded once to the form that q4_0 / q8_0 products meet it in (CUDA: 8-bit
  // blocks of 32 at decode widths, f16 tensor-core fragments at 9..64 columns), for MatMul and
  // MoeExperts calls that pass it as `x_rounded`: several products of one input (a decode
  // step's projections of a normalised hidden state) then share one rounding pass instead of
  // each rounding x again. Empty when the backend rounds inside each product
  // (the CPU) or when it does not pay (many columns); an empty x_rounded means "round x".
  // The copy is valid until x is written again.
  virtual absl::StatusOr<Tensor> RoundActivations(const Tensor& x) { return Tensor(); }
  virtual void MatMul(const Tensor& w, const Tensor& x, const Tensor& x_rounded, const Tensor& y) {
    MatMul(w, x, y);
  }
  // Several products of one x (a layer's projections of one normalised input): y[i] =
  // w[i]^T x, x_rounded as for MatMul. Default: one MatMul each. CUDA: at a batched decode
  // step's widths on q4_0 / q8_0 weights, one launch for all of them.
  virtual void MatMuls(absl::Span<const Tensor> w, const Tensor& x, const Tensor& x_rounded,
                       absl::Span<const Tensor> y) {
    for (size_t i = 0; i < w.size() && i < y.size(); ++i) MatMul(w[i], x, x_rounded, y[i]);
  }
  // out (i32 [rows]) = the index of each row's largest value in x (f32 [D, rows]), as Argmax
  // above finds it: greedy decoding's tokens without the logits leaving the device (a batch of
  // 32 rows of 163,840 is 21 MB). Default: through the host, which a recording cannot hold (a
  // backend that records steps overrides it).
  virtual void ArgmaxRows(const Tensor& x, const Tensor& out);
  // Per head h: y[:, h, t] = w[:, :, h]^T x[x_offset : x_offset + K, h, t].
  // w [K, N, H]; x [Kx >= x_offset + K, H, T]; y [N, H, T].
  virtual void HeadMatMul(const Tensor& w, const Tensor& x, int64_t x_offset, const Tensor& y) = 0;
  // Each row of x ([D, rows]): its first w.ne0 values are RMS-normalised and scaled by w;
  // the remaining values are copied unchanged.
  virtual void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) = 0;
  // The residual add and the next norm in one op (one kernel per decode step instead of two):
  // x (f32 [D, rows]) += a (as many elements), then y = RmsNorm(x, w, eps) of the updated x.
  // y may be x. Default: Add(x, a, x) then RmsNorm(x, w, eps, y). CPU: bitwise that pair;
  // CUDA: one vectorised kernel where RmsNorm's vector path applies.
  virtual void AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y);
  // AddRmsNorm, and y rounded as RoundActivations(y) rounds it (CUDA: in the same kernel).
  virtual absl::StatusOr<Tensor> AddRmsNormRounded(const Tensor& x, const Tensor& a, const Tensor& w, float eps,
                                                   const Tensor& y) {
    AddRmsNorm(x, a, w, eps, y);
    return RoundActivations(y);
  }
  // The KDA output norm in one op: y = RmsNorm(x, w, eps) * sigmoid(gate), element-wise (gate
  // holds x's elements in x's order). y may be x, not gate; gate is consumed (the default leaves
  // sigmoid(gate) in it). Default: Sigmoid(gate, gate), RmsNorm, Mul (CPU: bitwise those ops);
  // CUDA: RmsNorm's vector kernel with the gate applied, bitwise its three kernels.
  virtual void GatedRmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& gate, const Tensor& y);
  // Each row of x scaled to unit L2 norm: x / max(|x|, eps).
  virtual void L2Norm(const Tensor& x, float eps, const Tensor& y) = 0;
  virtual void Add(const Tensor& a, const Tensor& b, const Tensor& y) = 0;
  virtual void Mul(const Tensor& a, const Tensor& b, const Tensor& y) = 0;
  virtual void Sigmoid(const Tensor& x, const Tensor& y) = 0;
  // y = silu(gate) * up
  virtual void SwiGlu(const Tensor& gate, const Tensor& up, const Tensor& y) = 0;

  // ---- KDA ----
  // Causal depthwise conv over time then SiLU, per sequence, carrying the conv tail.
  // x, y [Di, n]; weight [d_conv, Di] (taps fastest, last tap = current token);
  // states[s].conv[:, :, which] holds the d_conv-1 inputs before the slice.
  virtual void ShortConvSilu(const Tensor& x, const Tensor& weight, int which,
                             absl::Span<const SeqSlice> seqs,
                             absl::Span<const KdaStateView> states, const Tensor& y) = 0;
  // g[c, t] = a[c / Dk] * softplus(f[c, t] + dt_bias[c]).  f, g [Di, n]; dt_bias [Di]; a [H].
  virtual void KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
                       const Tensor& g) = 0;
  // KdaGate and the mixing logits' sigmoid, beta = sigmoid(beta_logits) ([H, n]), in one op.
  // Default: KdaGate then Sigmoid (CPU: bitwise that pair); CUDA: one kernel over both ranges,
  // bitwise the pair's kernels.
  virtual void KdaGateAndBeta(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
                              const Tensor& g, const Tensor& beta_logits, const Tensor& beta);
  // The gated delta rule per head, updating each sequence's recurrent state:
  //   S = diag(exp(g_t)) S;  u = beta_t (v_t - S^T k_t);  S += k_t u^T;  o_t = S^T q_t / sqrt(Dk)
  // q, k (L2-normalised), v, g, out: [Dk, H, n]; beta [H, n] (already sigmoid).
  // chunk_tokens > 0 selects the chunked (WY) form with that chunk length; 0 the recurrence.
  virtual void KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                            const Tensor& beta, absl::Span<const SeqSlice> seqs,
                            absl::Span<const KdaStateView> states, int64_t chunk_tokens,
                            const Tensor& out) = 0;

  // ---- MLA over the paged latent cache ----
  // Writes latent rows (f32 [L, n]) into the cache pool (dtype of the pool, [L, page_tokens,
  // n_pages]) at positions cached_tokens.. of each sequence.
  virtual void LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs,
                           const Tensor& pool) = 0;
  // Absorbed-form causal attention. q [L, H, n] (the absorbed query, same layout as a latent
  // row); new token t of a sequence sees cache positions [0, cached_tokens + t].
  // out[:, h, t] = sum_p softmax_p(scale * q[:, h, t] . row_p) * row_p[0:value_dim].
  // out [value_dim, H, n].
  virtual void MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs,
                            float scale, const Tensor& out) = 0;
  // The attention core of an MLA layer from un-absorbed queries. q [Pn + Pr, H, n] (per head
  // the no-position part, then the rotary part); k_b [Pn, R, H]; v_b [R, Dv, H]; pool rows
  // [R (normalised c_kv), Pr (k_pe)]; out [Dv, H, n]. With row_p the cached row at position p:
  //   k_p,h = [k_b[:, :, h] row_p[0:R], row_p[R:]],  v_p,h = v_b[:, :, h]^T row_p[0:R]
  //   out[:, h, t] = sum_{p <= cached + t} softmax_p(scale * q[:, h, t] . k_p,h) v_p,h
  // Backends choose the form per sequence. The default here is the absorbed form (queries
  // taken into the latent space, MlaAttention over the rows, values expanded after); the
  // CUDA backend expands keys and values per head for long query chunks and runs one flash
  // attention kernel over them (the MHA form: 320 instead of 1,088 multiply-adds per
  // (query, key, head)). Fails only when scratch memory cannot be allocated.
  virtual absl::Status MlaAttentionHeads(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                                         absl::Span<const LatentSeqView> seqs, float scale, const Tensor& out);
  // Copies whole cache pages between pools or within one (copy-on-write of a shared page).
  virtual void CopyPage(const Tensor& src_pool, int32_t src_page, const Tensor& dst_pool,
                        int32_t dst_page) = 0;

  // ---- MoE ----
  // Sigmoid routing: p = sigmoid(logits); choose top_k by p + bias; weights = p[chosen],
  // renormalised to sum 1 when `normalize`, times `scale`.
  // logits [X, n]; bias [X]; ids i32 [top_k, n]; weights f32 [top_k, n].
  virtual void MoeRoute(const Tensor& logits, const Tensor& bias, int64_t top_k, bool normalize,
                        float scale, const Tensor& ids, const Tensor& weights) = 0;
  // y[:, t] = sum_j weights[j, t] * down_e(silu(gate_e x_t) * up_e x_t), e = ids[j, t];
  // computed grouped by expert. x, y [E, n].
  virtual void MoeExperts(const Tensor& x, const MoeWeights& experts, const Tensor& ids,
                          const Tensor& weights, const Tensor& y) = 0;
  // The same with x's rounded copy from RoundActivations (empty: none).
  virtual void MoeExperts(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                          const Tensor& ids, const Tensor& weights, const Tensor& y) {
    MoeExperts(x, experts, ids, weights, y);
  }
  // MoeExperts plus the shared expert: y[:, t] = routed[:, t] + down_s(silu(gate_s x_t) * up_s x_t),
  // added per element after the routed weighted sum (the float order of MoeExperts then Add).
  // Fails only when memory for the intermediates cannot be allocated. Default: exactly that
  // sequence of ops (MoeExperts; gate and up by MatMul, one on gate_up for one token; SwiGlu;
  // MatMul by down; Add), so the CPU's results are those of the separate ops, bitwise. CUDA, at
  // decode: the shared expert as one more slot per token in the decode expert kernels.
  virtual absl::Status MoeExpertsWithShared(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                                            const Tensor& ids, const Tensor& weights, const SharedExpert& shared,
                                            const Tensor& y);
};

// Backend factory: "cpu" (always) and "cuda" (when built with LATENTSERVE_CUDA).
struct BackendOptions {
  std::string kind = "cpu";
  int threads = 0;  // CPU worker threads; 0 = hardware concurrency
  int device = 0;   // CUDA device ordinal
};
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

// HashPagedRows' argument checks, overflow-safe: a 4-d pool, first_token >= 0, count >= 0,
// tokens [first_token, +count) inside page_table, every page they touch in [0, pool.ne[2]).
absl::Status CheckPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                            int64_t count);

// Copies `bytes` from a tensor of `src_backend` to a tensor of `dst_backend` (the same or
// another backend): directly when src_backend.CopyToBackend can, else through a host staging
// buffer. Returns the bytes that went through host memory (0 for a direct copy).
int64_t CopyBetween(Backend& src_backend, const Tensor& src, size_t src_offset, Backend& dst_backend,
                    const Tensor& dst, size_t dst_offset, size_t bytes);

}  // namespace latentserve::kernels
