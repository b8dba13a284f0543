// The Backend ops with a default built from the other ops.
#include "kernels/backend.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::kernels {

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

absl::Status Backend::BeginCapture() {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

absl::StatusOr<std::unique_ptr<Backend::Graph>> Backend::EndCapture() {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

absl::Status Backend::Replay(const Graph&) {
  return absl::UnimplementedError(absl::StrCat("the ", name(), " backend does not record steps"));
}

}  // namespace latentserve::kernels
