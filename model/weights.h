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

// Several projections of the same input, parts[i] [E, rows_i]. When the file gives them one
// type they are loaded into one stacked tensor [E, sum rows_i] (`stacked` defined) and the
// parts are views of it, so one matmul can serve all of them (model/layers.h Project).
struct Projections {
  Tensor stacked;
  std::vector<Tensor> parts;
  int64_t rows() const;  // sum of the parts' rows
};

struct KdaWeights {
  Projections qkv;                 // q, k, v: [E, Di] each
  Tensor conv_qkv;                 // [d_conv, 3 Di] f32 (taps fastest; channels q, k, v)
  Projections gates;               // f_a [E, Dk] (decay), g_a [E, Dk] (output gate), beta [E, H]
  // When all six share a type: q, k, v, f_a, g_a, beta stacked in that order [E, 3 Di + 2 Dk
  // + H], qkv's and gates' tensors views of it, so a decode step projects h once.
  Tensor in;
  Tensor f_b;                      // [Dk, Di]: decay gate, low rank
  Tensor a;                        // [H] f32: A = -exp(A_log)
  Tensor dt_bias;                  // [Di] f32
  Tensor g_b;                      // [Dk, Di]: output gate, low rank
  Tensor o_norm;                   // [Dk] f32
  Tensor out;                      // [Di, E]
};

struct MlaWeights {
  Projections in;   // kv_a [E, R + Pr] (the latent row), q [E, H * (Pn + Pr)]
  Tensor kv_norm;   // [R] f32
  Tensor k_b;       // [Pn, R, H]
  Tensor v_b;       // [R, Dv, H]
  Tensor out;       // [H * Dv, E]
};

struct FfnWeights {
  // Dense layers: gate and up [E, F] (gate_up), down [F, E]. MoE layers: router, bias,
  // experts, and the shared expert's gate and up [E, Fs] (shared_gate_up; no parts when
  // the file has no shared expert) and down [Fs, E].
  Projections gate_up;
  Tensor down;
  Tensor router;        // [E, X]
  Tensor router_bias;   // [X] f32 (selection only)
  kernels::MoeWeights experts;
  Projections shared_gate_up;
  Tensor shared_down;
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
