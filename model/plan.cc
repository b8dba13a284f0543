#include "model/plan.h"

#include "model/latent_cache.h"

namespace latentserve::model {

int64_t WeightBytes(const ModelConfig& c, DType wt) {
  auto matrix = [&](int64_t rows_len, int64_t rows) {
    // Widths the type's block does not divide: K-quants fall back as llama.cpp's quantiser does
    // (SuperBlockFallback), then f32 (as make-test-model and --random-weights do).
    DType type = rows_len % Traits(wt).block_elements == 0 ? wt : SuperBlockFallback(wt);
    if (rows_len % Traits(type).block_elements != 0) type = DType::kF32;
    return RowBytes(type, rows_len) * rows;
  };
  const int64_t E = c.hidden, H = c.n_heads, Dk = c.kda_head_dim, Di = c.kda_inner();
  const int64_t R = c.kv_lora_rank, Pn = c.qk_nope, Pr = c.qk_rope, Dv = c.v_head;
  int64_t bytes = 2 * matrix(E, c.vocab) + E * 4;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    bytes += 2 * E * 4;
    if (c.is_mla[i]) {
      bytes += matrix(E, H * (Pn + Pr)) + matrix(E, R + Pr) + R * 4 + matrix(Pn, R * H) + matrix(R, Dv * H) +
               matrix(H * Dv, E);
    } else {
      bytes += 3 * matrix(E, Di) + 3 * c.conv_kernel * Di * 4 + 2 * (matrix(E, Dk) + matrix(Dk, Di)) +
               matrix(E, H) + H * 4 + Di * 4 + Dk * 4 + matrix(Di, E);
    }
    if (!c.is_moe(i)) {
      bytes += 2 * matrix(E, c.ffn) + matrix(c.ffn, E);
    } else {
      const int64_t Fs = c.expert_ffn * (c.n_shared_experts > 0 ? c.n_shared_experts : 0);
      bytes += matrix(E, c.n_experts) + c.n_experts * 4;
      bytes += 2 * matrix(E, c.expert_ffn * c.n_experts) + matrix(c.expert_ffn, E * c.n_experts);
      if (Fs > 0) bytes += 2 * matrix(E, Fs) + matrix(Fs, E);
    }
  }
  return bytes;
}

MemoryPlan PlanMemory(const ModelConfig& c, int64_t context_tokens, DType cache_type, int64_t weights_bytes) {
  MemoryPlan plan;
  plan.context_tokens = context_tokens;
  plan.latent_cache_bytes = LatentBytesPerToken(c, cache_type) * context_tokens;
  const int64_t per_layer = c.n_heads * c.kda_head_dim * c.kda_head_dim + (c.conv_kernel - 1) * c.kda_inner() * 3;
  plan.kda_state_bytes = per_layer * c.kda_layer_count() * 4;
  plan.weights_bytes = weights_bytes;
  plan.mha_cache_bytes_f16 =
      c.mla_layer_count() * c.n_heads * (c.qk_nope + c.qk_rope + c.v_head) * 2 * context_tokens;
  return plan;
}

}  // namespace latentserve::model
