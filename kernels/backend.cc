// The Backend ops with a default built from the other ops.
#include "kernels/backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::kernels {

// Two passes that the compiler keeps in registers: the maximum over 8 independent running
// maxima (one compare chain made std::max_element take ~0.2-0.5 ms on a 163,840-entry row),
// then its first index.
int32_t Argmax(absl::Span<const float> row) {
  const size_t n = row.size();
  if (n == 0) return 0;
  constexpr size_t kLanes = 8;
  float lanes[kLanes];
  for (float& lane : lanes) lane = row[0];
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) lanes[j] = lanes[j] < row[i + j] ? row[i + j] : lanes[j];
  }
  float best = lanes[0];
  for (float lane : lanes) best = best < lane ? lane : best;
  for (; i < n; ++i) best = best < row[i] ? row[i] : best;
  for (size_t k = 0; k < n; ++k) {
    if (row[k] == best) return static_cast<int32_t>(k);
  }
  return 0;  // the first entry is NaN: std::max_element's answer too
}

void Backend::ArgmaxRows(const Tensor& x, const Tensor& out) {
  const int64_t width = x.ne[0], rows = x.rows();
  if (x.dtype != DType::kF32 || out.dtype != DType::kI32 || out.elements() != rows) {
    std::fprintf(stderr, "ArgmaxRows: x must be f32 [D, rows] and out i32 [rows]\n");
    std::abort();  // a programming error of the caller, as for every op's shapes
  }
  std::vector<float> host(static_cast<size_t>(x.elements()));
  Download(x, host.data(), host.size() * sizeof(float));
  std::vector<int32_t> ids(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) ids[r] = Argmax(absl::MakeConstSpan(host).subspan(r * width, width));
  Upload(ids.data(), ids.size() * sizeof(int32_t), out);
}

absl::Status Backend::MlaAttentionHeads(const Tensor& q, const Tensor& k_b, const Tensor& v_b, const Tensor& pool,
                                        absl::Span<const LatentSeqView> seqs, float scale, const Tensor& out) {
  const int64_t Pn = k_b.ne[0], R = k_b.ne[1], H = k_b.ne[2], n = q.ne[2], L = pool.ne[0], Pr = L - R;
  // Absorbed query per head: [q_nope . k_b (R), q_pe (Pr)], one latent-space row per (token, head).
  ASSIGN_OR_RETURN(Tensor q_nope_abs, Alloc(DType::kF32, {R, H, n, 1}));
  HeadMatMul(k_b, q, 0, q_nope_abs);
  ASSIGN_OR_RETURN(Tensor q_abs, Alloc(DType::kF32, {L, H, n, 1}));
  CopyColumns(q_nope_abs, 0, q_abs, 0, R);
  CopyColumns(q, Pn, q_abs, R, Pr);
  ASSIGN_OR_RETURN(Tensor attn_latent, Alloc(DType::kF32, {R, H, n, 1}));
  MlaAttention(q_abs, pool, seqs, scale, attn_latent);
  HeadMatMul(v_b, attn_latent, 0, out);
  return absl::OkStatus();
}

void Backend::AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y) {
  Add(x, a, x);
  RmsNorm(x, w, eps, y);
}

absl::Status Backend::MoeExpertsWithShared(const Tensor& x, const Tensor& x_rounded, const MoeWeights& experts,
                                           const Tensor& ids, const Tensor& weights, const SharedExpert& shared,
                                           const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows(), ffn = shared.gate.ne[1];
  if (shared.gate.ne[0] != hidden || shared.up.ne != shared.gate.ne || shared.down.ne[0] != ffn ||
      shared.down.ne[1] != hidden || shared.gate.rows() != ffn || shared.down.rows() != hidden ||
      (shared.gate_up.defined() && (shared.gate_up.ne[0] != hidden || shared.gate_up.rows() != 2 * ffn))) {
    std::fprintf(stderr, "MoeExpertsWithShared: shared expert shapes do not match x [%lld, %lld]\n",
                 static_cast<long long>(hidden), static_cast<long long>(tokens));
    std::abort();  // a programming error of the model, as for every op's shapes
  }
  MoeExperts(x, x_rounded, experts, ids, weights, y);
  // The model's projection of one input by several weights (model/project.cc), op for op.
  Tensor gate, up;
  if (shared.gate_up.defined() && tokens == 1) {
    ASSIGN_OR_RETURN(Tensor both, Alloc(DType::kF32, {2 * ffn, 1, 1, 1}));
    MatMul(shared.gate_up, x, x_rounded, both);
    const Tensor rows = both.Reshape({1, 2 * ffn, 1, 1});
    gate = rows.RowSlice(0, ffn).Reshape({ffn, 1, 1, 1});
    up = rows.RowSlice(ffn, ffn).Reshape({ffn, 1, 1, 1});
  } else {
    ASSIGN_OR_RETURN(gate, Alloc(DType::kF32, {ffn, tokens, 1, 1}));
    MatMul(shared.gate, x, x_rounded, gate);
    ASSIGN_OR_RETURN(up, Alloc(DType::kF32, {ffn, tokens, 1, 1}));
    MatMul(shared.up, x, x_rounded, up);
  }
  SwiGlu(gate, up, gate);
  ASSIGN_OR_RETURN(Tensor out, Alloc(DType::kF32, {hidden, tokens, 1, 1}));
  MatMul(shared.down, gate, out);
  Add(y, out, y);
  return absl::OkStatus();
}

void Backend::GatedRmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& gate, const Tensor& y) {
  Sigmoid(gate, gate);
  RmsNorm(x, w, eps, y);
  Mul(y, gate, y);
}

void Backend::KdaGateAndBeta(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
                             const Tensor& g, const Tensor& beta_logits, const Tensor& beta) {
  KdaGate(f, dt_bias, a, head_dim, g);
  Sigmoid(beta_logits, beta);
}

absl::Status Backend::BeginCapture() {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

absl::StatusOr<std::unique_ptr<Backend::Graph>> Backend::EndCapture() {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

absl::Status Backend::Replay(const Graph&) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

bool Backend::CopyRunsToBackend(const Tensor& src, Backend& dst_backend, const Tensor& dst,
                                absl::Span<const CopyRun> runs, absl::Duration* device_time) {
  const absl::Time start = absl::Now();
  // Whether two backends have a direct path does not depend on the piece: the first run tells.
  for (size_t i = 0; i < runs.size(); ++i) {
    const CopyRun& r = runs[i];
    if (!CopyToBackend(src, r.src_offset, dst_backend, dst, r.dst_offset, r.bytes)) {
      if (i == 0) return false;
      std::fprintf(stderr, "CopyRunsToBackend: a direct copy failed after %zu of %zu runs\n", i, runs.size());
      std::abort();
    }
  }
  if (device_time != nullptr) {
    // Ordered on the destination too, so its event covers the copies.
    absl::StatusOr<std::unique_ptr<Event>> done = dst_backend.RecordEvent();
    if (done.ok()) (void)dst_backend.WaitEvent(**done);
    *device_time = absl::Now() - start;
  }
  return true;
}

absl::StatusOr<std::unique_ptr<Backend::Event>> Backend::RecordEvent() {
  Synchronize();
  return std::make_unique<Event>();
}

absl::Status Backend::WaitEvent(const Event&) { return absl::OkStatus(); }

absl::StatusOr<Backend::HostMemory> Backend::AllocHost(size_t bytes) {
  HostMemory buffer;
  buffer.data = std::shared_ptr<uint8_t>(new (std::nothrow) uint8_t[std::max<size_t>(bytes, 1)],
                                         std::default_delete<uint8_t[]>());
  if (!buffer.data) return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " host bytes"));
  buffer.bytes = bytes;
  return buffer;
}

absl::StatusOr<Backend::MemoryHandle> Backend::ExportMemory(const Tensor&) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend cannot export memory"));
}

absl::StatusOr<Tensor> Backend::OpenMemory(const MemoryHandle& handle, DType, Shape) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend cannot open ", handle.kind, " memory"));
}

absl::Status Backend::HashPagedRows(const Tensor&, absl::Span<const int32_t>, int64_t, int64_t, uint64_t*) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not hash rows"));
}

absl::Status CheckPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                            int64_t count) {
  if (!pool.defined() || pool.ne[1] <= 0 || pool.ne[2] <= 0) return absl::InvalidArgumentError("empty cache pool");
  const int64_t page_tokens = pool.ne[1];
  int64_t table_tokens = 0, end = 0;
  if (__builtin_mul_overflow(static_cast<int64_t>(page_table.size()), page_tokens, &table_tokens) ||
      first_token < 0 || count < 0 || __builtin_add_overflow(first_token, count, &end) || end > table_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("rows [", first_token, ", +", count, ") outside a page table of ",
                                                   page_table.size(), " pages of ", page_tokens, " tokens"));
  }
  if (count == 0) return absl::OkStatus();
  for (int64_t page = first_token / page_tokens; page <= (end - 1) / page_tokens; ++page) {
    if (page_table[page] < 0 || page_table[page] >= pool.ne[2]) {
      return absl::InvalidArgumentError(absl::StrCat("page ", page_table[page], " outside a pool of ", pool.ne[2],
                                                     " pages"));
    }
  }
  return absl::OkStatus();
}

int64_t CopyBetween(Backend& src_backend, const Tensor& src, size_t src_offset, Backend& dst_backend,
                    const Tensor& dst, size_t dst_offset, size_t bytes) {
  if (bytes == 0) return 0;
  if (src_backend.CopyToBackend(src, src_offset, dst_backend, dst, dst_offset, bytes)) return 0;
  // Staged through host memory in bounded pieces (pinned where the backends offer it).
  constexpr size_t kStagingBytes = size_t{8} << 20;
  const size_t piece = std::min(bytes, kStagingBytes);
  absl::StatusOr<Backend::HostMemory> staging = dst_backend.AllocHost(piece);
  std::vector<uint8_t> fallback;
  uint8_t* host = nullptr;
  if (staging.ok()) {
    host = staging->data.get();
  } else {
    fallback.resize(piece);
    host = fallback.data();
  }
  for (size_t done = 0; done < bytes; done += piece) {
    const size_t n = std::min(piece, bytes - done);
    src_backend.Download(src, host, n, src_offset + done);
    dst_backend.Upload(host, n, dst, dst_offset + done);
    dst_backend.Synchronize();  // the staging buffer is reused by the next piece
  }
  return static_cast<int64_t>(bytes);
}

}  // namespace latentserve::kernels
