#include "model/config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::model {
namespace {

constexpr char kArch[] = "kimi-linear";

std::string Key(const char* suffix) { return absl::StrCat(kArch, ".", suffix); }

absl::StatusOr<int64_t> RequirePositive(const gguf::File& f, const char* suffix) {
  auto value = f.GetInt(Key(suffix));
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", value.status().message()));
  }
  if (*value <= 0 || *value > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", Key(suffix), " = ", *value, " is out of range"));
  }
  return *value;
}

}  // namespace

int64_t ModelConfig::mla_layer_count() const {
  int64_t n = 0;
  for (bool m : is_mla) n += m;
  return n;
}

absl::StatusOr<ModelConfig> ModelConfig::FromGguf(const gguf::File& f) {
  auto arch = f.GetString("general.architecture");
  if (!arch.ok()) return absl::InvalidArgumentError("model metadata: general.architecture is missing");
  if (*arch != kArch) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported architecture '", *arch, "' (expected kimi-linear)"));
  }
  ModelConfig c;
  ASSIGN_OR_RETURN(c.n_layers, RequirePositive(f, "block_count"));
  ASSIGN_OR_RETURN(c.hidden, RequirePositive(f, "embedding_length"));
  ASSIGN_OR_RETURN(c.n_heads, RequirePositive(f, "attention.head_count"));
  ASSIGN_OR_RETURN(c.kv_lora_rank, RequirePositive(f, "attention.kv_lora_rank"));
  ASSIGN_OR_RETURN(int64_t key_mla, RequirePositive(f, "attention.key_length_mla"));
  ASSIGN_OR_RETURN(c.v_head, RequirePositive(f, "attention.value_length_mla"));
  ASSIGN_OR_RETURN(c.qk_rope, RequirePositive(f, "rope.dimension_count"));
  ASSIGN_OR_RETURN(c.conv_kernel, RequirePositive(f, "ssm.conv_kernel"));
  ASSIGN_OR_RETURN(c.kda_head_dim, RequirePositive(f, "kda.head_dim"));
  ASSIGN_OR_RETURN(c.n_experts, RequirePositive(f, "expert_count"));
  ASSIGN_OR_RETURN(c.n_experts_used, RequirePositive(f, "expert_used_count"));
  ASSIGN_OR_RETURN(c.expert_ffn, RequirePositive(f, "expert_feed_forward_length"));
  if (key_mla <= c.qk_rope) {
    return absl::InvalidArgumentError("model metadata: attention.key_length_mla must exceed rope.dimension_count");
  }
  c.qk_nope = key_mla - c.qk_rope;
  if (c.n_experts_used > c.n_experts) {
    return absl::InvalidArgumentError("model metadata: expert_used_count exceeds expert_count");
  }
  if (c.conv_kernel < 2) return absl::InvalidArgumentError("model metadata: ssm.conv_kernel must be >= 2");
  c.n_shared_experts = f.GetInt(Key("expert_shared_count")).value_or(0);
  c.n_dense_layers = f.GetInt(Key("leading_dense_block_count")).value_or(0);
  c.ffn = f.GetInt(Key("feed_forward_length")).value_or(0);
  c.context_length = f.GetInt(Key("context_length")).value_or(0);
  c.expert_weights_scale = static_cast<float>(f.GetFloat(Key("expert_weights_scale")).value_or(1.0));
  c.expert_weights_norm = f.GetBool(Key("expert_weights_norm")).value_or(true);
  c.rms_eps = static_cast<float>(f.GetFloat(Key("attention.layer_norm_rms_epsilon")).value_or(1e-5));
  // Written so that NaN fails the check too (every comparison with NaN is false).
  if (!(std::isfinite(c.rms_eps) && c.rms_eps > 0 && c.rms_eps <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", Key("attention.layer_norm_rms_epsilon"), " = ",
                                                   c.rms_eps, " must be finite and in (0, 1]"));
  }
  if (!(std::isfinite(c.expert_weights_scale) && c.expert_weights_scale > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: ", Key("expert_weights_scale"), " = ",
                                                   c.expert_weights_scale, " must be finite and positive"));
  }
  c.expert_gating_func = f.GetInt(Key("expert_gating_func")).value_or(2);
  if (c.expert_gating_func != 2) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: expert_gating_func ", c.expert_gating_func,
                                                   " is not supported (Kimi-Linear uses 2 = sigmoid)"));
  }
  if (c.n_dense_layers < 0 || c.n_dense_layers > c.n_layers) {
    return absl::InvalidArgumentError("model metadata: leading_dense_block_count out of range");
  }
  if (c.n_dense_layers > 0 && c.ffn <= 0) {
    return absl::InvalidArgumentError("model metadata: feed_forward_length is required for dense layers");
  }
  auto kv_heads = f.GetIntArray(Key("attention.head_count_kv"));
  if (!kv_heads.ok()) {
    return absl::InvalidArgumentError(
        "model metadata: kimi-linear.attention.head_count_kv must be a per-layer array (0 = KDA, >0 = MLA)");
  }
  if (static_cast<int64_t>(kv_heads->size()) != c.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("model metadata: attention.head_count_kv has ", kv_heads->size(),
                                                   " entries for ", c.n_layers, " layers"));
  }
  for (int64_t h : *kv_heads) c.is_mla.push_back(h > 0);
  return c;
}

ModelConfig ModelConfig::KimiLinear48B() {
  ModelConfig c;
  c.n_layers = 27;
  c.hidden = 2304;
  c.vocab = 163840;
  c.context_length = 1048576;
  c.n_heads = 32;
  c.is_mla.assign(27, false);
  for (int layer : {3, 7, 11, 15, 19, 23, 26}) c.is_mla[layer] = true;
  c.kv_lora_rank = 512;
  c.qk_rope = 64;
  c.qk_nope = 128;
  c.v_head = 128;
  c.kda_head_dim = 128;
  c.conv_kernel = 4;
  c.ffn = 9216;
  c.n_experts = 256;
  c.n_experts_used = 8;
  c.expert_ffn = 1024;
  c.n_shared_experts = 1;
  c.n_dense_layers = 1;
  c.expert_weights_scale = 2.446f;
  return c;
}

}  // namespace latentserve::model
