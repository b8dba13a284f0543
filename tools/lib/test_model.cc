#include "tools/lib/test_model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/gguf/gguf.h"
#include "common/status.h"
#include "tools/lib/needle_model.h"
#include "tools/lib/weight_mix.h"

namespace latentserve::tools {

namespace {

constexpr const char* kArch = "kimi-linear";

// How a tensor's values are drawn. Scales keep activations O(1) through the layers.
enum class Init {
  kMatrix,     // N(0, 1/sqrt(ne[0])): ne[0] is the input (fan-in) dimension in ggml
  kEmbedding,  // N(0, 1)
  kNorm,       // 1 + 0.1 N(0, 1)
  kConv,       // U(-0.5, 0.5)
  kSsmA,       // -exp(U(0, 1.5)): A = -exp(A_log), one per head
  kDtBias,     // 0.1 N(0, 1)
  kSmallBias,  // 0.05 N(0, 1): expert selection bias
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> ne;
  Init init;
  bool quantizable;  // a weight matrix that takes --weight-type (weight_mix.h)
};

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Stable across platforms (std::hash is not), so a seed names the same weights everywhere.
uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

std::string Layer(int64_t il, const char* suffix) { return absl::StrCat("blk.", il, ".", suffix); }

// One row of a tensor. Each row has its own generator (seeded from the tensor and row), so
// rows can be produced in parallel and the file does not depend on the thread count.
void GenerateRow(Init init, uint64_t tensor_seed, int64_t row_index, float* row, int64_t width) {
  std::mt19937_64 rng(SplitMix64(tensor_seed + static_cast<uint64_t>(row_index)));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const float matrix_std = 1.0f / std::sqrt(static_cast<float>(width));
  for (int64_t i = 0; i < width; ++i) {
    float x = 0;
    switch (init) {
      case Init::kMatrix: x = matrix_std * normal(rng); break;
      case Init::kEmbedding: x = normal(rng); break;
      case Init::kNorm: x = 1.0f + 0.1f * normal(rng); break;
      case Init::kConv: x = uniform(rng) - 0.5f; break;
      case Init::kSsmA: x = -std::exp(1.5f * uniform(rng)); break;
      case Init::kDtBias: x = 0.1f * normal(rng); break;
      case Init::kSmallBias: x = 0.05f * normal(rng); break;
    }
    row[i] = x;
  }
}

std::vector<TensorSpec> TensorSpecs(const TestModelOptions& o) {
  const int64_t E = o.hidden, H = o.heads, Dk = o.kda_head_dim, Di = H * Dk;
  const int64_t R = o.kv_lora_rank, Pn = o.qk_nope, Pr = o.qk_rope, Dv = o.v_head;
  const int64_t X = o.experts, Fe = o.expert_ffn, Fs = o.expert_ffn * o.shared_experts;
  const std::set<int64_t> mla(o.mla_layers.begin(), o.mla_layers.end());

  std::vector<TensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> ne, Init init, bool quantizable = false) {
    specs.push_back(TensorSpec{std::move(name), std::move(ne), init, quantizable});
  };
  add("token_embd.weight", {E, o.vocab}, Init::kEmbedding, true);
  add("output_norm.weight", {E}, Init::kNorm);
  add("output.weight", {E, o.vocab}, Init::kMatrix, true);
  for (int64_t il = 0; il < o.layers; ++il) {
    add(Layer(il, "attn_norm.weight"), {E}, Init::kNorm);
    if (mla.count(il)) {
      add(Layer(il, "attn_q.weight"), {E, H * (Pn + Pr)}, Init::kMatrix, true);
      add(Layer(il, "attn_kv_a_mqa.weight"), {E, R + Pr}, Init::kMatrix, true);
      add(Layer(il, "attn_kv_a_norm.weight"), {R}, Init::kNorm);
      add(Layer(il, "attn_k_b.weight"), {Pn, R, H}, Init::kMatrix, true);
      add(Layer(il, "attn_v_b.weight"), {R, Dv, H}, Init::kMatrix, true);
      add(Layer(il, "attn_output.weight"), {H * Dv, E}, Init::kMatrix, true);
    } else {
      for (const char* p : {"q", "k", "v"}) {
        add(Layer(il, absl::StrCat("attn_", p, ".weight").c_str()), {E, Di}, Init::kMatrix, true);
      }
      for (const char* p : {"q", "k", "v"}) {
        add(Layer(il, absl::StrCat("ssm_conv1d_", p, ".weight").c_str()), {o.conv_kernel, 1, Di},
            Init::kConv);
      }
      add(Layer(il, "ssm_f_a.weight"), {E, Dk}, Init::kMatrix, true);
      add(Layer(il, "ssm_f_b.weight"), {Dk, Di}, Init::kMatrix, true);
      add(Layer(il, "ssm_beta.weight"), {E, H}, Init::kMatrix, true);
      add(Layer(il, "ssm_a"), {1, H, 1, 1}, Init::kSsmA);
      add(Layer(il, "ssm_dt.bias"), {Di}, Init::kDtBias);
      add(Layer(il, "ssm_g_a.weight"), {E, Dk}, Init::kMatrix, true);
      add(Layer(il, "ssm_g_b.weight"), {Dk, Di}, Init::kMatrix, true);
      add(Layer(il, "ssm_norm.weight"), {Dk}, Init::kNorm);
      add(Layer(il, "attn_output.weight"), {Di, E}, Init::kMatrix, true);
    }
    add(Layer(il, "ffn_norm.weight"), {E}, Init::kNorm);
    if (il < o.dense_layers) {
      add(Layer(il, "ffn_gate.weight"), {E, o.ffn}, Init::kMatrix, true);
      add(Layer(il, "ffn_up.weight"), {E, o.ffn}, Init::kMatrix, true);
      add(Layer(il, "ffn_down.weight"), {o.ffn, E}, Init::kMatrix, true);
    } else {
      // The router stays f32, as llama.cpp's quantizer leaves it.
      add(Layer(il, "ffn_gate_inp.weight"), {E, X}, Init::kMatrix, false);
      add(Layer(il, "exp_probs_b.bias"), {X}, Init::kSmallBias);
      add(Layer(il, "ffn_gate_exps.weight"), {E, Fe, X}, Init::kMatrix, true);
      add(Layer(il, "ffn_up_exps.weight"), {E, Fe, X}, Init::kMatrix, true);
      add(Layer(il, "ffn_down_exps.weight"), {Fe, E, X}, Init::kMatrix, true);
      if (Fs > 0) {
        add(Layer(il, "ffn_gate_shexp.weight"), {E, Fs}, Init::kMatrix, true);
        add(Layer(il, "ffn_up_shexp.weight"), {E, Fs}, Init::kMatrix, true);
        add(Layer(il, "ffn_down_shexp.weight"), {Fs, E}, Init::kMatrix, true);
      }
    }
  }
  return specs;
}

absl::Status Validate(const TestModelOptions& o) {
  auto positive = [](const char* flag, int64_t v) -> absl::Status {
    if (v <= 0 || v > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be in 1..2^24, got ", v));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("layers", o.layers));
  RETURN_IF_ERROR(positive("hidden", o.hidden));
  RETURN_IF_ERROR(positive("heads", o.heads));
  RETURN_IF_ERROR(positive("kda-head-dim", o.kda_head_dim));
  RETURN_IF_ERROR(positive("kv-lora-rank", o.kv_lora_rank));
  RETURN_IF_ERROR(positive("qk-nope", o.qk_nope));
  RETURN_IF_ERROR(positive("qk-rope", o.qk_rope));
  RETURN_IF_ERROR(positive("v-head", o.v_head));
  RETURN_IF_ERROR(positive("experts", o.experts));
  RETURN_IF_ERROR(positive("experts-used", o.experts_used));
  RETURN_IF_ERROR(positive("expert-ffn", o.expert_ffn));
  RETURN_IF_ERROR(positive("ffn", o.ffn));
  RETURN_IF_ERROR(positive("conv-kernel", o.conv_kernel));
  RETURN_IF_ERROR(positive("context", o.context));
  if (o.out_path.empty()) return absl::InvalidArgumentError("--out is required");
  if (o.experts_used > o.experts) {
    return absl::InvalidArgumentError(absl::StrCat("--experts-used ", o.experts_used,
                                                   " exceeds --experts ", o.experts));
  }
  if (o.shared_experts < 0 || o.shared_experts > 64) {
    return absl::InvalidArgumentError("--shared-experts must be in 0..64");
  }
  if (o.dense_layers < 0 || o.dense_layers > o.layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--dense-layers must be in 0..", o.layers, ", got ", o.dense_layers));
  }
  if (o.vocab < 264 || o.vocab > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--vocab must be in 264..2^24 (256 byte tokens + 8 control tokens), got ", o.vocab));
  }
  std::set<int64_t> seen;
  for (int64_t il : o.mla_layers) {
    if (il < 0 || il >= o.layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("MLA layer ", il, " is outside 0..", o.layers - 1));
    }
    if (!seen.insert(il).second) {
      return absl::InvalidArgumentError(absl::StrCat("MLA layer ", il, " is listed twice"));
    }
  }
  if (o.weight_type == DType::kI32) return absl::InvalidArgumentError("--weight-type i32 is not a weight type");
  return absl::OkStatus();
}

// GPT-2's reversible byte -> printable unicode code point map.
std::vector<uint32_t> ByteToCodepoint() {
  std::vector<uint32_t> map(256, 0);
  std::vector<bool> direct(256, false);
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) map[b] = direct[b] ? static_cast<uint32_t>(b) : next++;
  return map;
}

std::string Utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Source strings for the merges, most common first: English words and code fragments.
const char* const kMergeSources[] = {
    " t", " a", "he", "in", "re", "on", " the", "er", " s", "at", " w", " o", "en", " c", "it",
    "is", "an", "or", "es", " b", "ed", " f", "ing", " p", "ou", " an", "al", "ar", " to", " m",
    " of", " in", " d", " h", " and", "ic", "as", "le", " th", "ion", "om", "ll", "ent", " n",
    " l", "st", " re", "ve", " e", "ro", "ly", " be", " g", " T", "ct", " S", "id", "ot", " I",
    "ut", "et", " A", " is", " on", "im", "am", "ow", "ay", "ad", "se", " that", " C", "ig",
    " for", "ac", " y", "ver", "ur", " u", "ld", " st", " M", "'s", " he", " it", "ation", "ith",
    "ir", "ce", " you", "il", " B", " wh", "ol", " P", " with", " 1", "ter", "ch", " as", " we",
    " (", "nd", "ill", " D", "if", " 2", "ag", "ers", "ke", " \"", " H", "em", " con", " W",
    " R", "her", " was", " r", "od", " F", "ul", "ate", " at", "ri", "pp", "ore", " The", " se",
    "us", " pro", " ha", "um", " are", " de", "ain", "and", " or", "igh", "est", "ist", "ab",
    "rom", " N", "th", " com", " G", "un", "op", "00", " L", " not", "ess", " ex", " v", "res",
    " E", "ew", "ity", "ant", " by", "el", "os", "ort", "oc", "qu", " from", " have", " su",
    "ive", "ould", " sh", " this", "nt", "ra", "pe", "ight", "art", "ment", "al", " al", "ust",
    "end", "--", "all", " O", "ack", " ch", " le", "ies", "red", "ard", "ore", " K", "ome",
    "    ", "        ", "\n", "\n\n", "  ", "\t", " =", " ==", " !=", " {", " }", "();", "()",
    "->", "::", " //", " #", "#include", " return", " def", " if", " else", " for", " while",
    " int", " const", " void", " self", " class", " import", " std", " None", " true", " false",
    " null", " function", " let", " var", " new", " public", " static", " string", " auto",
    " print", "self.", "std::", "):", "\",", "\":", " [", "],", "[]", "{}", " +", " -", " *",
    " /", " <", " >", " &&", " ||", "0", "1", " 0", "10", "12", "20", "100", "2023", "2024",
};

}  // namespace

std::vector<int64_t> TestModelOptions::DefaultMlaLayers() const {
  std::vector<int64_t> out;
  for (int64_t il = 3; il < layers; il += 4) out.push_back(il);
  if (layers > 0 && (out.empty() || out.back() != layers - 1)) out.push_back(layers - 1);
  return out;
}

TestModelOptions TinyTestModel() {
  TestModelOptions o;
  o.mla_layers = {1, 3};
  return o;
}

TestModelOptions KimiLinear48BA3B() {
  TestModelOptions o;
  o.name = "kimi-linear-48b-a3b-random";
  o.layers = 27;
  o.hidden = 2304;
  o.heads = 32;
  o.kda_head_dim = 128;
  o.kv_lora_rank = 512;
  o.qk_nope = 128;
  o.qk_rope = 64;
  o.v_head = 128;
  o.experts = 256;
  o.experts_used = 8;
  o.expert_ffn = 1024;
  o.ffn = 9216;
  o.shared_experts = 1;
  o.dense_layers = 1;
  o.conv_kernel = 4;
  o.mla_layers = {3, 7, 11, 15, 19, 23, 26};
  o.vocab = 163840;
  o.context = 1048576;
  return o;
}

absl::StatusOr<TestModelOptions> TestModelPreset(const std::string& name) {
  if (name == "tiny") return TinyTestModel();
  if (name == "kimi-linear-48b-a3b") return KimiLinear48BA3B();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --config '", name, "' (known: tiny, kimi-linear-48b-a3b)"));
}

std::vector<std::string> ByteTokenTexts() {
  const std::vector<uint32_t> byte_map = ByteToCodepoint();
  std::vector<std::string> texts(256);
  for (int b = 0; b < 256; ++b) texts[b] = Utf8(byte_map[b]);
  return texts;
}

absl::StatusOr<TestVocab> BuildTestVocab(int64_t vocab_size) {
  static const char* const kControl[] = {"<|im_end|>",    "<|im_user|>", "<|im_assistant|>",
                                         "<|im_system|>", "<|im_middle|>", "[BOS]",
                                         "[EOS]",         "[PAD]"};
  constexpr int64_t kControlCount = sizeof(kControl) / sizeof(kControl[0]);
  if (vocab_size < 256 + kControlCount) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab size ", vocab_size, " is below the minimum ", 256 + kControlCount));
  }
  TestVocab v;
  absl::flat_hash_set<std::string> known;
  const std::vector<uint32_t> byte_map = ByteToCodepoint();
  std::vector<std::string> byte_text(256);
  for (int b = 0; b < 256; ++b) {
    byte_text[b] = Utf8(byte_map[b]);
    v.tokens.push_back(byte_text[b]);
    v.token_types.push_back(1);
    known.insert(byte_text[b]);
  }
  // Each merge joins the token built so far (a prefix of the source) with the next byte, so
  // both halves are always in the vocabulary and their concatenation is the new token.
  const int64_t merge_budget = vocab_size - 256 - kControlCount;
  for (const char* source : kMergeSources) {
    const std::string bytes(source);
    std::string current = byte_text[static_cast<unsigned char>(bytes[0])];
    for (size_t i = 1; i < bytes.size(); ++i) {
      if (static_cast<int64_t>(v.merges.size()) >= merge_budget) break;
      const std::string& next = byte_text[static_cast<unsigned char>(bytes[i])];
      std::string merged = current + next;
      if (!known.count(merged)) {
        v.merges.push_back(current + " " + next);
        v.tokens.push_back(merged);
        v.token_types.push_back(1);
        known.insert(merged);
      }
      current = std::move(merged);
    }
  }
  for (const char* text : kControl) {
    const int32_t id = static_cast<int32_t>(v.tokens.size());
    if (std::string(text) == "[BOS]") v.bos_id = id;
    if (std::string(text) == "<|im_end|>") v.eos_id = id;
    if (std::string(text) == "[PAD]") v.pad_id = id;
    v.tokens.push_back(text);
    v.token_types.push_back(3);
  }
  for (int64_t i = 0; static_cast<int64_t>(v.tokens.size()) < vocab_size; ++i) {
    v.tokens.push_back(absl::StrCat("<|reserved_token_", i, "|>"));
    v.token_types.push_back(5);
  }
  return v;
}

absl::Status WriteTestModel(const TestModelOptions& options, TestModelSummary* summary) {
  TestModelOptions o = options;
  if (o.mla_layers.empty()) o.mla_layers = o.DefaultMlaLayers();
  RETURN_IF_ERROR(Validate(o));
  std::sort(o.mla_layers.begin(), o.mla_layers.end());
  ASSIGN_OR_RETURN(TestVocab vocab, o.needle ? BuildNeedleVocab(o.vocab) : BuildTestVocab(o.vocab));
  std::optional<NeedleWeights> needle;
  if (o.needle) {
    ASSIGN_OR_RETURN(needle, NeedleWeights::Create(o, vocab));
  }

  gguf::Writer w;
  const std::string p = absl::StrCat(kArch, ".");
  w.SetString("general.architecture", kArch);
  w.SetString("general.name", o.name);
  const WeightTypeChoice choice{o.weight_type, o.weight_mix};
  w.SetUint32("general.file_type", FileType(choice));
  w.SetUint32(p + "block_count", static_cast<uint32_t>(o.layers));
  w.SetUint32(p + "context_length", static_cast<uint32_t>(o.context));
  w.SetUint32(p + "embedding_length", static_cast<uint32_t>(o.hidden));
  w.SetUint32(p + "feed_forward_length", static_cast<uint32_t>(o.ffn));
  w.SetUint32(p + "vocab_size", static_cast<uint32_t>(o.vocab));
  w.SetUint32(p + "attention.head_count", static_cast<uint32_t>(o.heads));
  std::vector<int32_t> head_count_kv(o.layers, 0);
  for (int64_t il : o.mla_layers) head_count_kv[il] = 1;
  w.SetArrayInt32(p + "attention.head_count_kv", head_count_kv);
  w.SetFloat32(p + "attention.layer_norm_rms_epsilon", 1e-5f);
  w.SetUint32(p + "attention.key_length", static_cast<uint32_t>(o.kv_lora_rank + o.qk_rope));
  w.SetUint32(p + "attention.value_length", static_cast<uint32_t>(o.kv_lora_rank));
  w.SetUint32(p + "attention.key_length_mla", static_cast<uint32_t>(o.qk_nope + o.qk_rope));
  w.SetUint32(p + "attention.value_length_mla", static_cast<uint32_t>(o.v_head));
  w.SetUint32(p + "attention.kv_lora_rank", static_cast<uint32_t>(o.kv_lora_rank));
  w.SetUint32(p + "rope.dimension_count", static_cast<uint32_t>(o.qk_rope));
  w.SetUint32(p + "ssm.conv_kernel", static_cast<uint32_t>(o.conv_kernel));
  w.SetUint32(p + "kda.head_dim", static_cast<uint32_t>(o.kda_head_dim));
  w.SetUint32(p + "expert_count", static_cast<uint32_t>(o.experts));
  w.SetUint32(p + "expert_used_count", static_cast<uint32_t>(o.experts_used));
  w.SetUint32(p + "expert_feed_forward_length", static_cast<uint32_t>(o.expert_ffn));
  w.SetUint32(p + "expert_shared_count", static_cast<uint32_t>(o.shared_experts));
  w.SetUint32(p + "leading_dense_block_count", static_cast<uint32_t>(o.dense_layers));
  w.SetFloat32(p + "expert_weights_scale", 2.446f);
  w.SetBool(p + "expert_weights_norm", true);
  w.SetUint32(p + "expert_gating_func", 2);  // sigmoid

  w.SetString("tokenizer.ggml.model", "gpt2");
  w.SetString("tokenizer.ggml.pre", "kimi-k2");
  w.SetArrayString("tokenizer.ggml.tokens", vocab.tokens);
  w.SetArrayInt32("tokenizer.ggml.token_type", vocab.token_types);
  w.SetArrayString("tokenizer.ggml.merges", vocab.merges);
  w.SetUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(vocab.bos_id));
  w.SetUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(vocab.eos_id));
  w.SetUint32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(vocab.pad_id));
  w.SetBool("tokenizer.ggml.add_bos_token", false);
  w.SetBool("tokenizer.ggml.add_eos_token", false);

  const std::vector<TensorSpec> specs = TensorSpecs(o);
  std::vector<DType> types;
  uint64_t parameters = 0;
  for (const TensorSpec& s : specs) {
    const bool quantize = s.quantizable && s.ne.size() >= 2;
    types.push_back(quantize ? MatrixType(choice, s.name, s.ne[0], o.layers) : DType::kF32);
    for (const auto& [suffix, type] : o.type_overrides) {
      if (absl::EndsWith(s.name, suffix)) types.back() = type;
    }
    RETURN_IF_ERROR(w.AddTensor(s.name, types.back(), s.ne));
    int64_t n = 1;
    for (int64_t d : s.ne) n *= d;
    parameters += static_cast<uint64_t>(n);
  }
  RETURN_IF_ERROR(w.Begin(o.out_path));

  const int threads = o.threads > 0 ? o.threads
                                    : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<uint8_t> packed;
  for (size_t t = 0; t < specs.size(); ++t) {
    const TensorSpec& s = specs[t];
    const uint64_t tensor_seed = SplitMix64(o.seed ^ SplitMix64(Fnv1a(s.name)));
    const int64_t width = s.ne[0];
    int64_t rows = 1;
    for (size_t d = 1; d < s.ne.size(); ++d) rows *= s.ne[d];
    const int64_t row_bytes = RowBytes(types[t], width);
    // Rows are generated in batches of ~16 MiB, split over threads, then written in order.
    const int64_t batch_rows = std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, width * 4));
    for (int64_t first = 0; first < rows; first += batch_rows) {
      const int64_t count = std::min(batch_rows, rows - first);
      packed.resize(static_cast<size_t>(count * row_bytes));
      const int workers = static_cast<int>(std::min<int64_t>(threads, count));
      auto work = [&](int worker) {
        std::vector<float> row(width);
        for (int64_t r = worker; r < count; r += workers) {
          if (needle) {
            needle->Row(s.name, s.ne, first + r, row.data());
          } else {
            GenerateRow(s.init, tensor_seed, first + r, row.data(), width);
          }
          QuantizeRow(types[t], row.data(), packed.data() + r * row_bytes, width);
        }
      };
      if (workers <= 1 || count * width < (int64_t{1} << 16)) {
        for (int worker = 0, n = workers; worker < n; ++worker) work(worker);
      } else {
        std::vector<std::thread> pool;
        for (int worker = 1; worker < workers; ++worker) pool.emplace_back(work, worker);
        work(0);
        for (std::thread& th : pool) th.join();
      }
      RETURN_IF_ERROR(w.WriteTensorData(packed.data(), packed.size()));
    }
  }
  RETURN_IF_ERROR(w.Finish());

  struct stat st;
  const uint64_t file_bytes = ::stat(o.out_path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  if (summary) {
    summary->parameters = parameters;
    summary->file_bytes = file_bytes;
    summary->tensors = specs.size();
  }
  return absl::OkStatus();
}

}  // namespace latentserve::tools
