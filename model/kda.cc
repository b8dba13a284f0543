// KDA layer (Kimi Delta Attention): DESIGN.md §1.
#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;

absl::StatusOr<Tensor> KdaLayer(const BatchContext& ctx, const KdaWeights& w,
                                const std::vector<kernels::KdaStateView>& states, const Tensor& h) {
  kernels::Backend& b = ctx.backend;
  const int64_t n = ctx.tokens, H = ctx.config.n_heads, Dk = ctx.config.kda_head_dim;
  const int64_t Di = H * Dk;
  Tensor conv_out[3];
  const Tensor* proj_w[3] = {&w.q, &w.k, &w.v};
  const Tensor* conv_w[3] = {&w.conv_q, &w.conv_k, &w.conv_v};
  ASSIGN_OR_RETURN(Tensor proj, ctx.F32({Di, n, 1, 1}));
  for (int which = 0; which < 3; ++which) {
    b.MatMul(*proj_w[which], h, proj);
    ASSIGN_OR_RETURN(conv_out[which], ctx.F32({Di, n, 1, 1}));
    b.ShortConvSilu(proj, *conv_w[which], which, ctx.slices, states, conv_out[which]);
  }
  const kernels::Shape heads_shape = {Dk, H, n, 1};
  Tensor q = conv_out[0].Reshape(heads_shape), k = conv_out[1].Reshape(heads_shape);
  Tensor v = conv_out[2].Reshape(heads_shape);
  b.L2Norm(q.Reshape({Dk, H * n, 1, 1}), ctx.config.rms_eps, q.Reshape({Dk, H * n, 1, 1}));
  b.L2Norm(k.Reshape({Dk, H * n, 1, 1}), ctx.config.rms_eps, k.Reshape({Dk, H * n, 1, 1}));

  // Per-channel decay g = A * softplus(f_b(f_a(h)) + dt_bias); mixing beta = sigmoid(b(h)).
  ASSIGN_OR_RETURN(Tensor low, ctx.F32({Dk, n, 1, 1}));
  ASSIGN_OR_RETURN(Tensor g, ctx.F32({Di, n, 1, 1}));
  b.MatMul(w.f_a, h, low);
  b.MatMul(w.f_b, low, g);
  b.KdaGate(g, w.dt_bias, w.a, Dk, g);
  ASSIGN_OR_RETURN(Tensor beta, ctx.F32({H, n, 1, 1}));
  b.MatMul(w.beta, h, beta);
  b.Sigmoid(beta, beta);

  ASSIGN_OR_RETURN(Tensor o, ctx.F32(heads_shape));
  b.KdaAttention(q, k, v, g.Reshape(heads_shape), beta, ctx.slices, states, ctx.kda_chunk_tokens, o);

  // Output: RMSNorm per head, times sigmoid(g_b(g_a(h))), then o_proj.
  ASSIGN_OR_RETURN(Tensor gate, ctx.F32({Di, n, 1, 1}));
  b.MatMul(w.g_a, h, low);
  b.MatMul(w.g_b, low, gate);
  b.Sigmoid(gate, gate);
  const Tensor per_head = o.Reshape({Dk, H * n, 1, 1});
  b.RmsNorm(per_head, w.o_norm, ctx.config.rms_eps, per_head);
  const Tensor flat = o.Reshape({Di, n, 1, 1});
  b.Mul(flat, gate, flat);
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({ctx.config.hidden, n, 1, 1}));
  b.MatMul(w.out, flat, out);
  return out;
}

}  // namespace latentserve::model
