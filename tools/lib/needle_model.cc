// Hand-built needle weights (docs/needle.md derives every constant used here).
//
// Layer 0 (KDA) writes the previous token's code into the hidden state: its short conv
// passes only the previous token into v, the delta rule with one fixed key and beta = 1 makes
// o_t = v_t exactly, and o_proj folds the (SiLU(z), SiLU(-z)) channel pairs back into z.
// The first MLA layer queries with this token's code against keys holding the previous
// token's code (NoPE: content only), so the position right after an earlier occurrence of the
// current token wins the softmax; its value is that position's own code, which o_proj writes
// into the answer subspace that the output head reads. Every other layer, expert and FFN
// writes zero.
#include "tools/lib/needle_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::tools {
namespace {

using L = NeedleLayout;
constexpr int64_t kD = L::kCodeDim;
constexpr float kEps = 1e-5f;              // attention.layer_norm_rms_epsilon of test models
constexpr float kKdaPreActivation = 4.0f;  // |z| of the value channels before SiLU
constexpr float kBetaLogit = 32.0f;        // sigmoid(32) == 1.0f
constexpr float kMatchScore = 96.0f;       // scaled q.k of an exact match (others <= 48)
constexpr float kAnswerLogit = 64.0f;      // logit of the retrieved token on a clean match
constexpr float kEosFraction = 0.8f;       // EOS logit as a fraction of kAnswerLogit

float Silu(float z) { return z / (1.0f + std::exp(-z)); }

// Codeword of message m (16 bits) in the second-order Reed-Muller code RM(2,5): bit x of
// the word is a0 + sum a_i x_i + sum a_ij x_i x_j (mod 2) at the point x in {0,1}^5. Distinct
// codewords differ in >= 8 of 32 places, so the +-1 forms of two tokens correlate <= 1/2.
uint32_t ReedMullerCodeword(uint32_t m) {
  uint32_t word = 0;
  for (uint32_t x = 0; x < kD; ++x) {
    uint32_t bit = m & 1u;
    int next = 1;
    for (int i = 0; i < L::kCodeBits; ++i, ++next) bit ^= ((m >> next) & 1u) & ((x >> i) & 1u);
    for (int i = 0; i < L::kCodeBits; ++i) {
      for (int j = i + 1; j < L::kCodeBits; ++j, ++next) {
        bit ^= ((m >> next) & 1u) & ((x >> i) & 1u) & ((x >> j) & 1u);
      }
    }
    word |= bit << x;
  }
  return word;
}

}  // namespace

TestModelOptions NeedleTestModel() {
  TestModelOptions o;
  o.name = "kimi-linear-needle";
  o.layers = 2;
  o.mla_layers = {1};
  o.hidden = 192;
  o.heads = 1;  // the construction uses head 0 of each attention; one keeps CPU tests quick
  o.kda_head_dim = 64;
  o.kv_lora_rank = 64;
  o.qk_nope = 16;
  o.qk_rope = 64;
  o.v_head = 32;
  o.experts = 4;
  o.experts_used = 2;
  o.expert_ffn = 32;
  o.ffn = 64;
  o.vocab = (NeedleVocabMinimum() + 63) / 64 * 64;
  o.context = 131072;
  o.needle = true;
  return o;
}

absl::Status ValidateNeedleShape(const TestModelOptions& o) {
  auto at_least = [](const char* flag, int64_t value, int64_t minimum) -> absl::Status {
    if (value >= minimum) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("the needle construction needs --", flag, " >= ", minimum, ", got ", value));
  };
  RETURN_IF_ERROR(at_least("hidden", o.hidden, L::kMinHidden));
  RETURN_IF_ERROR(at_least("kda-head-dim", o.kda_head_dim, 2 * kD));
  RETURN_IF_ERROR(at_least("kv-lora-rank", o.kv_lora_rank, 2 * kD));
  RETURN_IF_ERROR(at_least("qk-rope", o.qk_rope, 2 * kD));
  RETURN_IF_ERROR(at_least("v-head", o.v_head, kD));
  RETURN_IF_ERROR(at_least("conv-kernel", o.conv_kernel, 2));
  std::vector<int64_t> mla = o.mla_layers.empty() ? o.DefaultMlaLayers() : o.mla_layers;
  if (mla.empty() || *std::min_element(mla.begin(), mla.end()) == 0) {
    return absl::InvalidArgumentError(
        "the needle construction needs layer 0 to be KDA and at least one MLA layer after it");
  }
  return absl::OkStatus();
}

absl::StatusOr<NeedleWeights> NeedleWeights::Create(const TestModelOptions& o,
                                                    const TestVocab& vocab) {
  RETURN_IF_ERROR(ValidateNeedleShape(o));
  NeedleWeights w;
  w.o_ = o;
  if (w.o_.mla_layers.empty()) w.o_.mla_layers = o.DefaultMlaLayers();
  w.is_mla_.assign(o.layers, false);
  for (int64_t il : w.o_.mla_layers) w.is_mla_[il] = true;
  w.shift_layer_ = 0;
  w.retrieval_layer_ = *std::min_element(w.o_.mla_layers.begin(), w.o_.mla_layers.end());

  const size_t n = vocab.tokens.size();
  w.code_.assign(n, 0);
  w.coded_.assign(n, false);
  w.readable_.assign(n, false);
  uint32_t next_message = 0;
  for (size_t t = 0; t < n; ++t) {
    if (vocab.token_types[t] != 1 && vocab.token_types[t] != 3) continue;
    if (next_message >= L::kMaxCodedTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("the needle construction codes at most ", L::kMaxCodedTokens, " tokens"));
    }
    w.code_[t] = ReedMullerCodeword(next_message++);
    w.coded_[t] = true;
    w.readable_[t] = vocab.token_types[t] == 1;
  }
  w.eos_id_ = vocab.eos_id;

  const float E = static_cast<float>(o.hidden);
  // Layer 0's input: 32 code ones + the constant; the MLA input adds 32 previous-code +-1s.
  w.this_norm_ = 1.0f / std::sqrt((kD + 1) / E + kEps);
  w.mla_norm_ = 1.0f / std::sqrt((2 * kD + 1) / E + kEps);
  const float dk = static_cast<float>(o.kda_head_dim);
  const float pair = Silu(kKdaPreActivation) * Silu(kKdaPreActivation) +
                     Silu(-kKdaPreActivation) * Silu(-kKdaPreActivation);
  const float head_rms = std::sqrt(dk * (kD * pair / (dk * dk) + kEps));
  // previous = gate (1/2) * w_o * (SiLU(z) - SiLU(-z)) / head_rms = 2 w_o / head_rms = 1.
  w.kda_out_scale_ = head_rms / 2.0f;
  // Final hidden on a clean match: 32 + 1 + 32 + 64 entries of magnitude 1.
  const float final_rms = std::sqrt((4 * kD + 1) / E + kEps);
  w.answer_row_ = kAnswerLogit * final_rms / kD;
  w.eos_row_ = kEosFraction * kAnswerLogit * final_rms;
  return w;
}

int64_t NeedleWeights::Layer(const std::string& name, std::string* suffix) const {
  if (!absl::StartsWith(name, "blk.")) {
    *suffix = name;
    return -1;
  }
  const size_t dot = name.find('.', 4);
  *suffix = name.substr(dot + 1);
  return std::atoll(name.substr(4, dot - 4).c_str());
}

void NeedleWeights::Row(const std::string& name, const std::vector<int64_t>& ne, int64_t row,
                        float* out) const {
  const int64_t width = ne[0];
  std::fill(out, out + width, 0.0f);
  std::string suffix;
  const int64_t layer = Layer(name, &suffix);
  if (absl::EndsWith(suffix, "norm.weight") && suffix != "ssm_norm.weight" &&
      suffix != "attn_kv_a_norm.weight") {
    std::fill(out, out + width, 1.0f);  // attn_norm, ffn_norm, output_norm
    return;
  }
  if (layer < 0) {
    const size_t token = static_cast<size_t>(row);
    if (suffix == "token_embd.weight") {
      out[L::kOne] = 1.0f;
      if (!coded_[token]) return;
      for (int64_t i = 0; i < kD; ++i) {
        const float bit = static_cast<float>((code_[token] >> i) & 1u);
        out[L::kThis + i] = bit;
        out[L::kThisComplement + i] = 1.0f - bit;
      }
    } else if (suffix == "output.weight") {
      if (static_cast<int32_t>(token) == eos_id_) out[L::kOne] = eos_row_;
      if (!readable_[token]) return;
      for (int64_t i = 0; i < kD; ++i) {
        const float bit = static_cast<float>((code_[token] >> i) & 1u);
        out[L::kAnswer + i] = answer_row_ * bit;
        out[L::kAnswerNegated + i] = answer_row_ * (1.0f - bit);
      }
    }
    return;
  }
  if (is_mla_[layer]) {
    MlaRow(layer == retrieval_layer_, suffix, row, out, width);
  } else {
    KdaRow(layer == shift_layer_, suffix, row, out, width);
  }
  // FFN, router and expert tensors stay zero: they add nothing to the residual stream.
}

void NeedleWeights::KdaRow(bool active, const std::string& suffix, int64_t row, float* out,
                           int64_t width) const {
  const int64_t dk = o_.kda_head_dim;
  if (suffix == "ssm_a") {
    out[0] = -1.0f;  // mild decay; the delta rule below makes o_t independent of it
  } else if (suffix == "ssm_norm.weight") {
    std::fill(out, out + width, 1.0f);
  } else if (!active) {
    return;
  } else if (suffix == "attn_q.weight" || suffix == "attn_k.weight") {
    if (row % dk == 0) out[L::kOne] = 1.0f;  // q = k = e_0 in every head after L2Norm
  } else if (suffix == "attn_v.weight") {
    // Head 0, channel i: +z of code position i; channel kD + i: -z of the same position.
    const float w = kKdaPreActivation / this_norm_;
    if (row < kD) {
      out[L::kThis + row] = w;
      out[L::kThisComplement + row] = -w;
    } else if (row < 2 * kD) {
      out[L::kThis + row - kD] = -w;
      out[L::kThisComplement + row - kD] = w;
    }
  } else if (suffix == "ssm_conv1d_q.weight" || suffix == "ssm_conv1d_k.weight") {
    out[width - 1] = 1.0f;  // the current token only
  } else if (suffix == "ssm_conv1d_v.weight") {
    out[width - 2] = 1.0f;  // the previous token only
  } else if (suffix == "ssm_beta.weight") {
    out[L::kOne] = kBetaLogit / this_norm_;  // beta = 1: each step overwrites the value
  } else if (suffix == "attn_output.weight") {
    if (row >= L::kPrevious && row < L::kPrevious + kD) {
      const int64_t i = row - L::kPrevious;
      out[i] = kda_out_scale_;  // SiLU(z) - SiLU(-z) = z
      out[kD + i] = -kda_out_scale_;
    }
  }
  // ssm_f_a / ssm_f_b / ssm_dt.bias (decay = -softplus(0)), ssm_g_a / ssm_g_b (gate = 1/2): 0.
}

void NeedleWeights::MlaRow(bool active, const std::string& suffix, int64_t row, float* out,
                           int64_t width) const {
  const int64_t R = o_.kv_lora_rank, Pn = o_.qk_nope, Dv = o_.v_head;
  if (suffix == "attn_kv_a_norm.weight") {
    // 32 of R latent values are 1 before the norm; this weight makes them 1 after it.
    std::fill(out, out + width, active ? std::sqrt(static_cast<float>(kD) / R + kEps) : 1.0f);
    return;
  }
  if (!active) return;
  if (suffix == "attn_q.weight") {
    // Head 0's NoPE "rope" part: +-(2c-1) of this token against keys c, 1-c.
    const int64_t head = row / (Pn + o_.qk_rope), within = row % (Pn + o_.qk_rope) - Pn;
    if (head != 0 || within < 0 || within >= 2 * kD) return;
    const float scale = std::sqrt(static_cast<float>(Pn + o_.qk_rope));
    const float w = kMatchScore * scale / (kD * mla_norm_);
    const float sign = within < kD ? 1.0f : -1.0f;
    out[L::kThis + within % kD] = sign * w;
    out[L::kThisComplement + within % kD] = -sign * w;
  } else if (suffix == "attn_kv_a_mqa.weight") {
    if (row < 2 * kD) {
      out[L::kThis + row] = 1.0f / mla_norm_;  // latent: c then 1-c of this token
    } else if (row >= R && row < R + 2 * kD) {
      // Key: c (then 1-c) of the previous token as (1 +- (2c-1)) / 2, values 0 or 1.
      const int64_t i = (row - R) % kD;
      const float sign = row - R < kD ? 1.0f : -1.0f;
      const float w = 1.0f / (2.0f * mla_norm_);
      out[L::kPrevious + i] = sign * w;
      out[L::kOne] = w;
    }
  } else if (suffix == "attn_v_b.weight") {
    const int64_t head = row / Dv, i = row % Dv;
    if (head == 0 && i < kD) {
      out[i] = 1.0f;  // value i = c_i - (1 - c_i) = 2c_i - 1
      out[kD + i] = -1.0f;
    }
  } else if (suffix == "attn_output.weight") {
    if (row >= L::kAnswer && row < L::kAnswer + kD) out[row - L::kAnswer] = 1.0f;
    if (row >= L::kAnswerNegated && row < L::kAnswerNegated + kD)
      out[row - L::kAnswerNegated] = -1.0f;
  }
  // attn_k_b stays zero: the NoPE part of every query is zero.
}

}  // namespace latentserve::tools
