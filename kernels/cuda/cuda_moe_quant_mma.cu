// The routed experts of a batched decode step (at most 64 tokens, so at most 64 rows an expert)
// on q4_0 / q8_0 weights: the f16 tensor-core products (quant_mma.h) grouped per expert, each
// expert's weights read once for all its rows. The prefill's grouped GEMMs take 128-row tiles,
// mostly padding at these sizes (ncu, batch 32: 6.4 of 13.6 ms of a step's kernel time,
// docs/benchmarks.md). After the routing sort: x's rows as f16 fragments per expert, the gate
// and up products [experts][rows][ffn], silu(gate) * up as fragments, the down products written
// to slot order, the weighted slot sum.
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/quant_mma.h"

namespace latentserve::kernels::cuda {

bool CudaBackend::MoeExpertsQuantMma(const Tensor& x, const MoeWeights& experts, const MoeRouting& routing,
                                 const Tensor& weights, const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows(), top_k = weights.ne[0];
  const int64_t ffn = experts.gate_exps.ne[1], n_experts = experts.gate_exps.ne[2];
  const DType gate_type = experts.gate_exps.dtype, down_type = experts.down_exps.dtype;
  const auto quantised = [](DType t) { return t == DType::kQ4_0 || t == DType::kQ8_0; };
  if (!QuantMmaEnabled() || tokens > kQuantMmaMaxColumns || !quantised(gate_type) ||
      experts.up_exps.dtype != gate_type || !quantised(down_type) || hidden % 256 != 0 || ffn % 256 != 0 ||
      reinterpret_cast<uintptr_t>(DevPtr(x)) % 16 != 0) {
    return false;
  }
  QuantMmaGroups groups;
  groups.counts = routing.counts;
  groups.first_row = routing.first_row;
  groups.row_slot = routing.row_slot;
  groups.top_k = static_cast<int>(top_k);
  groups.experts = static_cast<int>(n_experts);
  groups.x_tiles = static_cast<int>(QuantMmaTiles(tokens));
  // Slot 6: x's rows as fragments, silu(gate) * up as fragments, the gate and up products, the
  // slot rows.
  const size_t x_bytes = AlignUp256(GroupedFragmentBytes(hidden, groups));
  const size_t act_bytes = AlignUp256(GroupedFragmentBytes(ffn, groups));
  const size_t gu_bytes = AlignUp256(static_cast<size_t>(n_experts) * groups.x_tiles * 8 * ffn * 4);
  auto* work = static_cast<uint8_t*>(Scratch(6, x_bytes + act_bytes + 2 * gu_bytes + routing.slots * hidden * 4));
  auto* gate = reinterpret_cast<float*>(work + x_bytes + act_bytes);
  auto* up = reinterpret_cast<float*>(work + x_bytes + act_bytes + gu_bytes);
  auto* slot_out = reinterpret_cast<float*>(work + x_bytes + act_bytes + 2 * gu_bytes);
  LaunchGroupedFragments(stream_, DevF32(x), nullptr, hidden, groups, work);
  LaunchGroupedQuantMma(stream_, groups, gate_type, DevPtr(experts.gate_exps), experts.gate_exps.row_bytes(), hidden,
                        ffn, work, false, gate);
  LaunchGroupedQuantMma(stream_, groups, gate_type, DevPtr(experts.up_exps), experts.up_exps.row_bytes(), hidden, ffn,
                        work, false, up);
  LaunchGroupedFragments(stream_, gate, up, ffn, groups, work + x_bytes);
  LaunchGroupedQuantMma(stream_, groups, down_type, DevPtr(experts.down_exps), experts.down_exps.row_bytes(), ffn,
                        hidden, work + x_bytes, true, slot_out);
  WeightedSlotSum(slot_out, weights, y);
  return true;
}

}  // namespace latentserve::kernels::cuda
