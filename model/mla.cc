// MLA layer in absorbed form (DESIGN.md §1): the cache holds only the latent row
// [RMSNorm(c_kv) (R), k_pe (Pr)] per token; queries are absorbed into that space and the
// attention output (R wide) is expanded per head by v_b.
#include <cmath>

#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;

absl::StatusOr<Tensor> MlaLayer(const BatchContext& ctx, const MlaWeights& w, const Tensor& pool, const Tensor& h) {
  kernels::Backend& b = ctx.backend;
  const ModelConfig& c = ctx.config;
  const int64_t n = ctx.tokens, H = c.n_heads, R = c.kv_lora_rank, Pn = c.qk_nope, Pr = c.qk_rope;
  const int64_t L = R + Pr;

  // Latent row of each new token: RMS-normalise the first R values, keep k_pe as is (NoPE).
  ASSIGN_OR_RETURN(std::vector<Tensor> in, Project(ctx, w.in, h));
  const Tensor latent = in[0].Reshape({L, n, 1, 1});
  b.RmsNorm(latent, w.kv_norm, c.rms_eps, latent);
  b.LatentStore(latent, ctx.latent, pool);

  // Absorbed query per head: [q_nope . k_b (R), q_pe (Pr)].
  const Tensor q = in[1].Reshape({Pn + Pr, H, n, 1});
  ASSIGN_OR_RETURN(Tensor q_nope_abs, ctx.F32({R, H, n, 1}));
  b.HeadMatMul(w.k_b, q, 0, q_nope_abs);
  ASSIGN_OR_RETURN(Tensor q_abs, ctx.F32({L, H, n, 1}));
  b.CopyColumns(q_nope_abs, 0, q_abs, 0, R);
  b.CopyColumns(q, Pn, q_abs, R, Pr);

  ASSIGN_OR_RETURN(Tensor attn_latent, ctx.F32({R, H, n, 1}));
  const float scale = 1.0f / std::sqrt(static_cast<float>(Pn + Pr));
  b.MlaAttention(q_abs, pool, ctx.latent, scale, attn_latent);

  ASSIGN_OR_RETURN(Tensor values, ctx.F32({c.v_head, H, n, 1}));
  b.HeadMatMul(w.v_b, attn_latent, 0, values);
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({c.hidden, n, 1, 1}));
  b.MatMul(w.out, values.Reshape({c.v_head * H, n, 1, 1}), out);
  return out;
}

}  // namespace latentserve::model
