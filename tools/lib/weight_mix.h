// Which type each tensor of a generated test model gets: one --weight-type for every matrix, or
// a per-tensor mix in the manner of llama.cpp's Q4_K_M / Q5_K_M presets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/dtype.h"

namespace latentserve::tools {

enum class WeightMix {
  kNone,    // every quantisable matrix in the base type
  kQ4_K_M,  // base q4_k; q6_k for output.weight and for attn_v / ffn_down* on "more bits" layers
  kQ5_K_M,  // base q5_k; the same q6_k tensors
};

struct WeightTypeChoice {
  DType base = DType::kF32;
  WeightMix mix = WeightMix::kNone;
};

// --weight-type: a dtype name (f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k) or a mix
// (q4_k_m, q5_k_m); nullopt for anything else.
std::optional<WeightTypeChoice> ParseWeightType(std::string_view name);

// The type of a quantisable matrix `name` (ne[0] = width) in a model of `layers` layers.
// Layer il gets the q6_k upgrades of a mix when il < layers / 8, il >= 7 layers / 8, or
// (il - layers / 8) % 3 == 2 (llama.cpp's use_more_bits). A width that the chosen type's block
// does not divide falls back as llama.cpp's quantiser does (q4_k -> q5_0, q5_k -> q5_1,
// q6_k -> q8_0; SuperBlockFallback), then anything to f32.
DType MatrixType(const WeightTypeChoice& choice, const std::string& name, int64_t width, int64_t layers);

// ggml's llama_ftype for general.file_type.
uint32_t FileType(const WeightTypeChoice& choice);

}  // namespace latentserve::tools
