// MLA layer (DESIGN.md §1): the cache holds only the latent row [RMSNorm(c_kv) (R), k_pe (Pr)]
// per token; the backend attends over those rows in the absorbed form (queries taken into the
// latent space, outputs expanded by v_b) or the MHA form (keys and values expanded per head).
#include <cmath>

#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;

absl::StatusOr<Tensor> MlaLayer(const BatchContext& ctx, const MlaWeights& w, const Tensor& pool, const Hidden& h) {
  kernels::Backend& b = ctx.backend;
  const ModelConfig& c = ctx.config;
  const int64_t n = ctx.tokens, H = c.n_heads, R = c.kv_lora_rank, Pn = c.qk_nope, Pr = c.qk_rope;
  const int64_t L = R + Pr;

  // Latent row of each new token: RMS-normalise the first R values, keep k_pe as is (NoPE).
  ASSIGN_OR_RETURN(std::vector<Tensor> in, Project(ctx, w.in, h));
  const Tensor latent = in[0].Reshape({L, n, 1, 1});
  b.RmsNorm(latent, w.kv_norm, c.rms_eps, latent);
  b.LatentStore(latent, ctx.latent, pool);

  // Attention per head over the cached rows; the backend picks the absorbed or MHA form.
  const Tensor q = in[1].Reshape({Pn + Pr, H, n, 1});
  ASSIGN_OR_RETURN(Tensor values, ctx.F32({c.v_head, H, n, 1}));
  const float scale = 1.0f / std::sqrt(static_cast<float>(Pn + Pr));
  RETURN_IF_ERROR(b.MlaAttentionHeads(q, w.k_b, w.v_b, pool, ctx.latent, scale, values));
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({c.hidden, n, 1, 1}));
  b.MatMul(w.out, values.Reshape({c.v_head * H, n, 1, 1}), out);
  return out;
}

}  // namespace latentserve::model
