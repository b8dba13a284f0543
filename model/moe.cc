// FFN layers: dense SwiGLU (leading layers) and MoE with sigmoid routing, a selection-only
// bias, renormalised and scaled weights, plus an unscaled shared expert.
#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;

namespace {

absl::StatusOr<Tensor> SwiGluFfn(const BatchContext& ctx, const Projections& gate_up, const Tensor& down_w,
                                 const Hidden& h) {
  kernels::Backend& b = ctx.backend;
  ASSIGN_OR_RETURN(std::vector<Tensor> gu, Project(ctx, gate_up, h));
  b.SwiGlu(gu[0], gu[1], gu[0]);
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({ctx.config.hidden, ctx.tokens, 1, 1}));
  b.MatMul(down_w, gu[0], out);
  return out;
}

}  // namespace

absl::StatusOr<Tensor> FfnLayer(const BatchContext& ctx, const FfnWeights& w, bool moe, const Hidden& h) {
  if (!moe) return SwiGluFfn(ctx, w.gate_up, w.down, h);
  kernels::Backend& b = ctx.backend;
  const ModelConfig& c = ctx.config;
  const int64_t n = ctx.tokens, k = c.n_experts_used;
  ASSIGN_OR_RETURN(Tensor logits, ctx.F32({c.n_experts, n, 1, 1}));
  b.MatMul(w.router, h.x, h.rounded, logits);
  ASSIGN_OR_RETURN(Tensor ids, b.Alloc(DType::kI32, {k, n, 1, 1}));
  ASSIGN_OR_RETURN(Tensor weights, ctx.F32({k, n, 1, 1}));
  b.MoeRoute(logits, w.router_bias, k, c.expert_weights_norm, c.expert_weights_scale, ids, weights);
  ASSIGN_OR_RETURN(Tensor out, ctx.F32({c.hidden, n, 1, 1}));
  if (w.shared_gate_up.parts.empty()) {
    b.MoeExperts(h.x, h.rounded, w.experts, ids, weights, out);
    return out;
  }
  // One op for routed and shared experts: backends run the shared expert with the routed ones
  // where that saves kernels (CUDA at decode); the default is MoeExperts, SwiGluFfn's ops, Add.
  const kernels::SharedExpert shared{w.shared_gate_up.parts[0], w.shared_gate_up.parts[1], w.shared_down,
                                     w.shared_gate_up.stacked};
  RETURN_IF_ERROR(b.MoeExpertsWithShared(h.x, h.rounded, w.experts, ids, weights, shared, out));
  return out;
}

}  // namespace latentserve::model
