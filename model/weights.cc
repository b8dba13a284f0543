#include "model/weights.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace latentserve::model {
namespace {

std::string ShapeString(const std::vector<int64_t>& ne) { return absl::StrCat("[", absl::StrJoin(ne, ", "), "]"); }

// Where weights come from: a GGUF file, or random values made on the backend.
class Source {
 public:
  virtual ~Source() = default;
  // `name` with `shape`; `f32_only` for small parameters the math needs in full precision.
  virtual absl::StatusOr<Tensor> Get(const std::string& name, std::vector<int64_t> shape,
                                     bool f32_only = false) = 0;
  // Matrices [width, rows[i]] stacked along their rows (ne[1]) in one tensor.
  // FailedPrecondition when their types differ (the caller then keeps them apart).
  virtual absl::StatusOr<Tensor> GetStacked(const std::vector<std::string>& names, int64_t width,
                                            const std::vector<int64_t>& rows, bool f32_only = false) = 0;
};


class RandomSource final : public Source {
 public:
  RandomSource(kernels::Backend& backend, DType matrix_type, uint64_t seed, uint64_t* bytes)
      : backend_(backend), matrix_type_(matrix_type), seed_(seed), bytes_(bytes) {}

  absl::StatusOr<Tensor> Get(const std::string& name, std::vector<int64_t> shape, bool f32_only) override {
    kernels::Shape ne = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size() && i < 4; ++i) ne[i] = shape[i];
    ASSIGN_OR_RETURN(Tensor t, backend_.Alloc(Type(shape, f32_only), ne));
    Fill(name, t);
    return t;
  }

  absl::StatusOr<Tensor> GetStacked(const std::vector<std::string>& names, int64_t width,
                                    const std::vector<int64_t>& rows, bool f32_only) override {
    int64_t total = 0;
    for (int64_t r : rows) total += r;
    ASSIGN_OR_RETURN(Tensor t, backend_.Alloc(Type({width, total}, f32_only), {width, total, 1, 1}));
    // Each part gets the values Get would have given it alone.
    for (size_t i = 0, first = 0; i < names.size(); first += rows[i], ++i) {
      Fill(names[i], t.RowSlice(static_cast<int64_t>(first), rows[i]));
    }
    return t;
  }

 private:
  DType Type(const std::vector<int64_t>& shape, bool f32_only) const {
    const bool matrix = !f32_only && shape.size() >= 2 && shape[0] % 32 == 0;
    if (!matrix) return DType::kF32;
    // Widths a K-quant's 256-value block does not divide: llama.cpp's fallback (SuperBlockFallback).
    return shape[0] % Traits(matrix_type_).block_elements == 0 ? matrix_type_ : SuperBlockFallback(matrix_type_);
  }

  void Fill(const std::string& name, const Tensor& t) {
    const kernels::Shape& ne = t.ne;
    // Scales keep activations O(1): matrices ~ 1/sqrt(fan_in), norms ~ 1, decays negative.
    float mean = 0, scale = 1.0f / std::sqrt(static_cast<float>(ne[0]));
    if (name.find("norm") != std::string::npos) mean = 1.0f, scale = 0.1f;
    if (name.find("ssm_a") != std::string::npos) mean = -1.0f, scale = 0.5f;
    if (name.find("ssm_dt") != std::string::npos || name.find("conv1d") != std::string::npos) scale = 0.5f;
    if (name.find("exp_probs_b") != std::string::npos) scale = 0.01f;
    if (name == "token_embd.weight") scale = 1.0f;
    backend_.FillRandom(t, seed_ + (counter_++) * 1000003ull, mean, scale);
    *bytes_ += t.nbytes();
  }

  kernels::Backend& backend_;
  DType matrix_type_;
  uint64_t seed_;
  uint64_t* bytes_;
  uint64_t counter_ = 0;
};

class Loader final : public Source {
 public:
  Loader(const gguf::File& file, kernels::Backend& backend, uint64_t* bytes)
      : file_(file), backend_(backend), bytes_(bytes) {}

  // Loads `name` expecting `shape` (trailing 1s in the file are ignored).
  absl::StatusOr<Tensor> Get(const std::string& name, std::vector<int64_t> shape, bool f32_only = false) override {
    ASSIGN_OR_RETURN(const gguf::TensorInfo* info, Find(name, shape, f32_only));
    kernels::Shape ne = {1, 1, 1, 1};
    for (size_t i = 0; i < shape.size() && i < 4; ++i) ne[i] = shape[i];
    *bytes_ += info->nbytes;
    return backend_.ImportHost(info->type, ne, info->data);
  }

  absl::StatusOr<Tensor> GetStacked(const std::vector<std::string>& names, int64_t width,
                                    const std::vector<int64_t>& rows, bool f32_only) override {
    std::vector<const gguf::TensorInfo*> infos;
    int64_t total = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      ASSIGN_OR_RETURN(const gguf::TensorInfo* info, Find(names[i], {width, rows[i]}, f32_only));
      if (!infos.empty() && info->type != infos.front()->type) {
        return absl::FailedPreconditionError(absl::StrCat("'", names[i], "' is ", DTypeName(info->type), ", '",
                                                          names[0], "' is ", DTypeName(infos.front()->type)));
      }
      infos.push_back(info);
      total += rows[i];
    }
    ASSIGN_OR_RETURN(Tensor t, backend_.Alloc(infos.front()->type, {width, total, 1, 1}));
    size_t offset = 0;
    for (const gguf::TensorInfo* info : infos) {
      backend_.Upload(info->data, info->nbytes, t, offset);
      offset += info->nbytes;
      *bytes_ += info->nbytes;
    }
    return t;
  }

 private:
  // `name`, checked against `shape` (and f32 when asked).
  absl::StatusOr<const gguf::TensorInfo*> Find(const std::string& name, const std::vector<int64_t>& shape,
                                               bool f32_only) {
    const gguf::TensorInfo* info = file_.FindTensor(name);
    if (info == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("model file lacks tensor '", name, "'"));
    }
    std::vector<int64_t> have = info->ne;
    while (have.size() > 1 && have.back() == 1) have.pop_back();
    std::vector<int64_t> want = shape;
    while (want.size() > 1 && want.back() == 1) want.pop_back();
    // Conv weights may be stored as [d_conv, 1, Di]; drop interior 1s for the comparison.
    if (have != want) {
      std::vector<int64_t> squeezed_have, squeezed_want;
      for (int64_t d : have) if (d != 1) squeezed_have.push_back(d);
      for (int64_t d : want) if (d != 1) squeezed_want.push_back(d);
      if (squeezed_have != squeezed_want) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", ShapeString(info->ne),
                                                       ", expected ", ShapeString(shape)));
      }
    }
    if (f32_only && info->type != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' must be f32, found ", DTypeName(info->type)));
    }
    // The kernels read weights as f32, f16, bf16, q8_0, q4_0, q5_0, q5_1, q4_k, q5_k or q6_k; an integer tensor used to load
    // and abort the process at its first request.
    if (info->type == DType::kI32) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has type ", DTypeName(info->type),
                                                     ": weights must be f32, f16, bf16, q8_0, q4_0, q5_0, q5_1, q4_k, q5_k or q6_k"));
    }
    return info;
  }

  const gguf::File& file_;
  kernels::Backend& backend_;
  uint64_t* bytes_;
};

}  // namespace

namespace {

absl::StatusOr<Weights> Build(Source& l, const ModelConfig& c, int64_t vocab, uint64_t* bytes);

}  // namespace

absl::StatusOr<Weights> Weights::Load(const gguf::File& file, const ModelConfig& c, kernels::Backend& backend) {
  const gguf::TensorInfo* embd = file.FindTensor("token_embd.weight");
  if (embd == nullptr || embd->ne.size() < 2) {
    return absl::InvalidArgumentError("model file lacks a 2-D tensor 'token_embd.weight'");
  }
  uint64_t bytes = 0;
  Loader l(file, backend, &bytes);
  return Build(l, c, embd->ne[1], &bytes);
}

absl::StatusOr<Weights> Weights::Random(const ModelConfig& c, kernels::Backend& backend, DType matrix_type,
                                        uint64_t seed) {
  uint64_t bytes = 0;
  RandomSource source(backend, matrix_type, seed, &bytes);
  return Build(source, c, c.vocab, &bytes);
}

int64_t Projections::rows() const {
  int64_t total = 0;
  for (const Tensor& part : parts) total += part.ne[1];
  return total;
}

namespace {

// Projections of `rows[i]` rows each, views of `all` from its row `first` on.
Projections ViewsOf(const Tensor& all, int64_t first, const std::vector<int64_t>& rows) {
  Projections p;
  int64_t total = 0;
  for (int64_t r : rows) {
    p.parts.push_back(all.RowSlice(first + total, r));
    total += r;
  }
  p.stacked = all.RowSlice(first, total);
  return p;
}

// Projections `names` [width, rows[i]]: stacked when they share a type, else one by one.
absl::StatusOr<Projections> LoadProjections(Source& l, const std::vector<std::string>& names, int64_t width,
                                            const std::vector<int64_t>& rows) {
  Projections p;
  auto stacked = l.GetStacked(names, width, rows);
  if (stacked.ok()) return ViewsOf(*stacked, 0, rows);
  if (!absl::IsFailedPrecondition(stacked.status())) return stacked.status();
  for (size_t i = 0; i < names.size(); ++i) {  // mixed types: one matmul each
    ASSIGN_OR_RETURN(Tensor part, l.Get(names[i], {width, rows[i]}));
    p.parts.push_back(std::move(part));
  }
  return p;
}

// Creates every tensor through `l`; `bytes` is the counter the source adds to.
absl::StatusOr<Weights> Build(Source& l, const ModelConfig& c, int64_t vocab, uint64_t* bytes) {
  Weights w;
  const int64_t E = c.hidden, H = c.n_heads, Dk = c.kda_head_dim, Di = c.kda_inner();
  const int64_t R = c.kv_lora_rank, Pn = c.qk_nope, Pr = c.qk_rope, Dv = c.v_head;
  ASSIGN_OR_RETURN(w.token_embd, l.Get("token_embd.weight", {E, vocab}));
  ASSIGN_OR_RETURN(w.output_norm, l.Get("output_norm.weight", {E}, true));
  ASSIGN_OR_RETURN(w.output, l.Get("output.weight", {E, vocab}));
  w.layers.resize(c.n_layers);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights& L = w.layers[i];
    auto n = [i](const char* suffix) { return absl::StrCat("blk.", i, ".", suffix); };
    ASSIGN_OR_RETURN(L.attn_norm, l.Get(n("attn_norm.weight"), {E}, true));
    ASSIGN_OR_RETURN(L.ffn_norm, l.Get(n("ffn_norm.weight"), {E}, true));
    if (c.is_mla[i]) {
      MlaWeights& m = L.mla;
      ASSIGN_OR_RETURN(m.in, LoadProjections(l, {n("attn_kv_a_mqa.weight"), n("attn_q.weight")}, E,
                                             {R + Pr, H * (Pn + Pr)}));
      ASSIGN_OR_RETURN(m.kv_norm, l.Get(n("attn_kv_a_norm.weight"), {R}, true));
      ASSIGN_OR_RETURN(m.k_b, l.Get(n("attn_k_b.weight"), {Pn, R, H}));
      ASSIGN_OR_RETURN(m.v_b, l.Get(n("attn_v_b.weight"), {R, Dv, H}));
      ASSIGN_OR_RETURN(m.out, l.Get(n("attn_output.weight"), {H * Dv, E}));
    } else {
      KdaWeights& k = L.kda;
      // q, k, v, f_a, g_a, beta in one tensor when they share a type; else q, k, v stacked if
      // they agree, the gates likewise.
      auto in = l.GetStacked({n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight"), n("ssm_f_a.weight"),
                              n("ssm_g_a.weight"), n("ssm_beta.weight")},
                             E, {Di, Di, Di, Dk, Dk, H});
      if (in.ok()) {
        k.in = *std::move(in);
        k.qkv = ViewsOf(k.in, 0, {Di, Di, Di});
        k.gates = ViewsOf(k.in, 3 * Di, {Dk, Dk, H});
      } else if (!absl::IsFailedPrecondition(in.status())) {
        return in.status();
      }
      ASSIGN_OR_RETURN(k.conv_qkv, l.GetStacked({n("ssm_conv1d_q.weight"), n("ssm_conv1d_k.weight"),
                                                 n("ssm_conv1d_v.weight")},
                                                c.conv_kernel, {Di, Di, Di}, true));
      if (!k.in.defined()) {
        ASSIGN_OR_RETURN(k.qkv, LoadProjections(l, {n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight")},
                                                E, {Di, Di, Di}));
        ASSIGN_OR_RETURN(k.gates, LoadProjections(l, {n("ssm_f_a.weight"), n("ssm_g_a.weight"),
                                                      n("ssm_beta.weight")},
                                                  E, {Dk, Dk, H}));
      }
      ASSIGN_OR_RETURN(k.f_b, l.Get(n("ssm_f_b.weight"), {Dk, Di}));
      ASSIGN_OR_RETURN(k.a, l.Get(n("ssm_a"), {H}, true));
      ASSIGN_OR_RETURN(k.dt_bias, l.Get(n("ssm_dt.bias"), {Di}, true));
      ASSIGN_OR_RETURN(k.g_b, l.Get(n("ssm_g_b.weight"), {Dk, Di}));
      ASSIGN_OR_RETURN(k.o_norm, l.Get(n("ssm_norm.weight"), {Dk}, true));
      ASSIGN_OR_RETURN(k.out, l.Get(n("attn_output.weight"), {Di, E}));
    }
    FfnWeights& f = L.ffn;
    if (!c.is_moe(i)) {
      ASSIGN_OR_RETURN(f.gate_up, LoadProjections(l, {n("ffn_gate.weight"), n("ffn_up.weight")}, E, {c.ffn, c.ffn}));
      ASSIGN_OR_RETURN(f.down, l.Get(n("ffn_down.weight"), {c.ffn, E}));
    } else {
      const int64_t X = c.n_experts, Fe = c.expert_ffn;
      const int64_t Fs = Fe * std::max<int64_t>(1, c.n_shared_experts);
      ASSIGN_OR_RETURN(f.router, l.Get(n("ffn_gate_inp.weight"), {E, X}));
      ASSIGN_OR_RETURN(f.router_bias, l.Get(n("exp_probs_b.bias"), {X}, true));
      ASSIGN_OR_RETURN(f.experts.gate_exps, l.Get(n("ffn_gate_exps.weight"), {E, Fe, X}));
      ASSIGN_OR_RETURN(f.experts.up_exps, l.Get(n("ffn_up_exps.weight"), {E, Fe, X}));
      ASSIGN_OR_RETURN(f.experts.down_exps, l.Get(n("ffn_down_exps.weight"), {Fe, E, X}));
      const bool shared = c.n_shared_experts > 0;
      if (shared) {
        ASSIGN_OR_RETURN(f.shared_gate_up,
                         LoadProjections(l, {n("ffn_gate_shexp.weight"), n("ffn_up_shexp.weight")}, E, {Fs, Fs}));
        ASSIGN_OR_RETURN(f.shared_down, l.Get(n("ffn_down_shexp.weight"), {Fs, E}));
      }
    }
  }
  w.bytes = *bytes;
  return w;
}

}  // namespace

}  // namespace latentserve::model
