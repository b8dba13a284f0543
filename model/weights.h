// Kimi-Linear weights as backend tensors, checked against the config when loaded.
// Names and ggml shapes follow KIMI_GGUF.md.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/gguf/gguf.h"
#include "kernels/backend.h"
#include "model/config.h"

namespace latentserve::model {

using kernels::Tensor;

struct KdaWeights {
  // q, k and v projections stacked: [E, 3 Di] (rows q, then k, then v), so one matmul and
  // one short conv serve all three. Files whose q, k, v differ in type keep them apart in
  // q, k, v [E, Di] (qkv undefined).
  Tensor qkv;
  Tensor q, k, v;
  Tensor conv_qkv;                 // [d_conv, 3 Di] f32 (taps fastest; channels q, k, v)
  Tensor f_a, f_b;                 // [E, Dk], [Dk, Di]: decay gate (low rank)
  Tensor beta;                     // [E, H]
  Tensor a;                        // [H] f32: A = -exp(A_log)
  Tensor dt_bias;                  // [Di] f32
  Tensor g_a, g_b;                 // [E, Dk], [Dk, Di]: output gate (low rank)
  Tensor o_norm;                   // [Dk] f32
  Tensor out;                      // [Di, E]
};

struct MlaWeights {
  Tensor q;         // [E, H * (Pn + Pr)]
  Tensor kv_a;      // [E, R + Pr]
  Tensor kv_norm;   // [R] f32
  Tensor k_b;       // [Pn, R, H]
  Tensor v_b;       // [R, Dv, H]
  Tensor out;       // [H * Dv, E]
};

struct FfnWeights {
  // Dense layers: gate/up [E, F], down [F, E]. MoE layers: router, bias, experts, shared.
  Tensor gate, up, down;
  Tensor router;        // [E, X]
  Tensor router_bias;   // [X] f32 (selection only)
  kernels::MoeWeights experts;
  Tensor shared_gate, shared_up, shared_down;  // [E, Fs], [E, Fs], [Fs, E]; may be undefined
};

struct LayerWeights {
  Tensor attn_norm, ffn_norm;  // [E]
  KdaWeights kda;              // KDA layers
  MlaWeights mla;              // MLA layers
  FfnWeights ffn;
};

struct Weights {
  Tensor token_embd;   // [E, V]
  Tensor output_norm;  // [E]
  Tensor output;       // [E, V]
  std::vector<LayerWeights> layers;
  uint64_t bytes = 0;  // total weight bytes

  // Creates backend tensors for every weight, validating names, shapes and types.
  static absl::StatusOr<Weights> Load(const gguf::File& file, const ModelConfig& config,
                                      kernels::Backend& backend);
  // Random weights of `config`'s shape made directly in backend memory (matrices in
  // `matrix_type`), for full-size runs without a file.
  static absl::StatusOr<Weights> Random(const ModelConfig& config, kernels::Backend& backend, DType matrix_type,
                                        uint64_t seed);
};

}  // namespace latentserve::model
