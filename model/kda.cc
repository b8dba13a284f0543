// KDA layer (Kimi Delta Attention): DESIGN.md §1.
#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;


absl::StatusOr<Tensor> KdaLayer(const BatchContext& ctx, const KdaWeights& w,
                                const std::vector<kernels::KdaStateView>& states, const Hidden& h) {
  kernels::Backend& b = ctx.backend;
  const int64_t n = ctx.tokens, H = ctx.config.n_heads, Dk = ctx.config.kda_head_dim;
  const int64_t Di = H * Dk;
  const kernels::Shape heads_shape = {Dk, H, n, 1};
  Tensor q, k, v;
  std::vector<Tensor> gates;  // f_a(h), g_a(h), beta logits
  if (w.qkv.stacked.defined() && n == 1) {
    // Decode: one matmul and one short conv for q, k and v together (stacked channels; the
    // conv state is laid out [q|k|v][channel][tap], the same order), then views. With all six
    // projections stacked (w.in) the gates' inputs come from the same matmul.
    Tensor proj;
    if (w.in.defined()) {
      ASSIGN_OR_RETURN(Tensor all, ctx.F32({3 * Di + w.gates.rows(), 1, 1, 1}));
      b.MatMul(w.in, h.x, h.rounded, all);
      proj = ColumnSlice(all, 0, 3 * Di);
      gates = PartColumns(all, 3 * Di, w.gates.parts);
    } else {
      ASSIGN_OR_RETURN(proj, ctx.F32({3 * Di, 1, 1, 1}));
      b.MatMul(w.qkv.stacked, h.x, h.rounded, proj);
    }
    ASSIGN_OR_RETURN(Tensor conv, ctx.F32({3 * Di, 1, 1, 1}));
    b.ShortConvSilu(proj, w.conv_qkv, 0, ctx.slices, states, conv);
    q = ColumnSlice(conv, 0, Di).Reshape(heads_shape);
    k = ColumnSlice(conv, Di, Di).Reshape(heads_shape);
    v = ColumnSlice(conv, 2 * Di, Di).Reshape(heads_shape);
    const Tensor qk = ColumnSlice(conv, 0, 2 * Di).Reshape({Dk, 2 * H, 1, 1});  // q and k are adjacent
    b.L2Norm(qk, ctx.config.rms_eps, qk);
  } else {  // several tokens (or q, k, v of different types): the three products, a conv each
    std::vector<Tensor> proj(3);
    for (Tensor& p : proj) {
      ASSIGN_OR_RETURN(p, ctx.F32({Di, n, 1, 1}));
    }
    b.MatMuls(w.qkv.parts, h.x, h.rounded, proj);
    Tensor* parts[3] = {&q, &k, &v};
    for (int which = 0; which < 3; ++which) {
      ASSIGN_OR_RETURN(*parts[which], ctx.F32({Di, n, 1, 1}));
      b.ShortConvSilu(proj[which], w.conv_qkv.RowSlice(which * Di, Di), which, ctx.slices, states, *parts[which]);
      *parts[which] = parts[which]->Reshape(heads_shape);
    }
    b.L2Norm(q.Reshape({Dk, H * n, 1, 1}), ctx.config.rms_eps, q.Reshape({Dk, H * n, 1, 1}));
    b.L2Norm(k.Reshape({Dk, H * n, 1, 1}), ctx.config.rms_eps, k.Reshape({Dk, H * n, 1, 1}));
  }

  // Low-rank decay and output-gate inputs and the mixing logits, all from h.
  if (gates.empty()) {
    ASSIGN_OR_RETURN(gates, Project(ctx, w.gates, h));
  }
  const Tensor &decay_low = gates[0], &gate_low = gates[1], &beta = gates[2];
  // Per-channel decay g = A * softplus(f_b(f_a(h)) + dt_bias); mixing beta = sigmoid(b(h)):
  // one op (one kernel per decode step on CUDA).
  ASSIGN_OR_RETURN(Tensor g, ctx.F32({Di, n, 1, 1}));
  b.MatMul(w.f_b, decay_low, g);
  b.KdaGateAndBeta(g, w.dt_bias, w.a, Dk, g, beta, beta);

  ASSIGN_OR_RETURN(Tensor o, ctx.F32(heads_shape));
  b.KdaAttention(q, k, v, g.Reshape(heads_shape), beta, ctx.slices, states, ctx.kda_chunk_tokens, o);

  // Output: RMSNorm per head, times sigmoid(g_b(g_a(h))) (one op), then o_proj.
  ASSIGN_OR_RETURN(Tensor gate, ctx.F32({Di, n, 1, 1}));
  b.MatMul(w.g_b, gate_low, gate);
  const Tensor per_head = o.Reshape({Dk, H * n, 1, 1});
  b.GatedRmsNorm(per_head, w.o_norm, ctx.config.rms_eps, gate.Reshape({Dk, H * n, 1, 1}), per_head);
  const Tensor flat = o.Reshape({Di, n, 1, 1});
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({ctx.config.hidden, n, 1, 1}));
  b.MatMul(w.out, flat, out);
  return out;
}

}  // namespace latentserve::model
