#include "tools/lib/weight_mix.h"

#include <cstdio>

#include "absl/strings/match.h"

namespace latentserve::tools {

std::optional<WeightTypeChoice> ParseWeightType(std::string_view name) {
  if (name == "q4_k_m") return WeightTypeChoice{DType::kQ4_K, WeightMix::kQ4_K_M};
  if (name == "q5_k_m") return WeightTypeChoice{DType::kQ5_K, WeightMix::kQ5_K_M};
  const std::optional<DType> type = ParseDType(name);
  if (!type || *type == DType::kI32) return std::nullopt;
  return WeightTypeChoice{*type, WeightMix::kNone};
}

namespace {

bool MoreBits(int64_t il, int64_t layers) {
  return il < layers / 8 || il >= 7 * layers / 8 || (il - layers / 8) % 3 == 2;
}

// The layer index of "blk.N....", or -1.
int64_t LayerOf(const std::string& name) {
  long long il = -1;
  return std::sscanf(name.c_str(), "blk.%lld.", &il) == 1 ? il : -1;
}

}  // namespace

DType MatrixType(const WeightTypeChoice& choice, const std::string& name, int64_t width, int64_t layers) {
  DType type = choice.base;
  if (choice.mix != WeightMix::kNone) {
    const int64_t il = LayerOf(name);
    const bool upgraded_role = absl::StrContains(name, ".attn_v.") || absl::StrContains(name, ".ffn_down");
    if (name == "output.weight" || (upgraded_role && il >= 0 && MoreBits(il, layers))) type = DType::kQ6_K;
  }
  if (width % Traits(type).block_elements != 0) type = SuperBlockFallback(type);
  if (width % Traits(type).block_elements != 0) type = DType::kF32;
  return type;
}

uint32_t FileType(const WeightTypeChoice& choice) {
  switch (choice.mix) {
    case WeightMix::kQ4_K_M: return 15;
    case WeightMix::kQ5_K_M: return 17;
    case WeightMix::kNone: break;
  }
  switch (choice.base) {
    case DType::kF32: return 0;
    case DType::kF16: return 1;
    case DType::kQ4_0: return 2;
    case DType::kQ8_0: return 7;
    case DType::kQ5_0: return 8;
    case DType::kQ5_1: return 9;
    case DType::kQ4_K: return 14;  // Q4_K_S: K-quants without upgrades
    case DType::kQ5_K: return 16;  // Q5_K_S
    case DType::kQ6_K: return 18;
    case DType::kBF16: return 32;
    case DType::kI32: break;
  }
  return 0;
}

}  // namespace latentserve::tools
