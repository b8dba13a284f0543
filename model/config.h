// Kimi-Linear hyper-parameters, read from the `kimi-linear.*` GGUF keys (KIMI_GGUF.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/gguf/gguf.h"

namespace latentserve::model {

struct ModelConfig {
  int64_t n_layers = 0;           // block_count
  int64_t hidden = 0;             // embedding_length (E)
  int64_t vocab = 0;              // rows of token_embd
  int64_t context_length = 0;     // trained context (informational)
  int64_t n_heads = 0;            // attention.head_count (H), shared by KDA and MLA
  std::vector<bool> is_mla;       // per layer: head_count_kv > 0
  float rms_eps = 1e-5f;          // attention.layer_norm_rms_epsilon
  // MLA
  int64_t kv_lora_rank = 0;       // R: latent width
  int64_t qk_rope = 0;            // Pr: rope.dimension_count (used unrotated: NoPE)
  int64_t qk_nope = 0;            // Pn: key_length_mla - Pr
  int64_t v_head = 0;             // Dv: value_length_mla
  // KDA
  int64_t kda_head_dim = 0;       // Dk
  int64_t conv_kernel = 0;        // ssm.conv_kernel
  // FFN / MoE
  int64_t ffn = 0;                // feed_forward_length (dense layers)
  int64_t n_experts = 0;          // X
  int64_t n_experts_used = 0;     // top-k
  int64_t expert_ffn = 0;         // Fe
  int64_t n_shared_experts = 0;
  int64_t n_dense_layers = 0;     // leading_dense_block_count
  float expert_weights_scale = 1.0f;
  bool expert_weights_norm = true;
  int64_t expert_gating_func = 2;  // 2 = sigmoid (the only one Kimi uses)

  int64_t latent_width() const { return kv_lora_rank + qk_rope; }  // 576 for the real model
  int64_t kda_inner() const { return n_heads * kda_head_dim; }
  int64_t mla_layer_count() const;
  int64_t kda_layer_count() const { return n_layers - mla_layer_count(); }
  bool is_moe(int64_t layer) const { return layer >= n_dense_layers; }

  static absl::StatusOr<ModelConfig> FromGguf(const gguf::File& file);
  // The published Kimi-Linear-48B-A3B shape.
  static ModelConfig KimiLinear48B();
};

}  // namespace latentserve::model
