#include "model/model.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "model/batch_plan.h"
#include "model/layers.h"
#include "model/plan.h"

namespace latentserve::model {

using kernels::Tensor;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path, kernels::Backend& backend) {
  std::unique_ptr<Model> model(new Model(backend));
  ASSIGN_OR_RETURN(model->file_, gguf::File::Open(path));
  ASSIGN_OR_RETURN(model->config_, ModelConfig::FromGguf(*model->file_));
  ASSIGN_OR_RETURN(model->weights_, Weights::Load(*model->file_, model->config_, backend));
  model->config_.vocab = model->weights_.token_embd.ne[1];
  if (auto declared = model->file_->GetInt("kimi-linear.vocab_size"); declared.ok() && *declared != model->config_.vocab) {
    return absl::InvalidArgumentError(absl::StrCat("kimi-linear.vocab_size is ", *declared,
                                                   " but token_embd has ", model->config_.vocab, " rows"));
  }
  // Issue 17, 9: ids past the tokenizer's last token decoded to nothing, so a smaller
  // vocabulary silently dropped generated tokens. (A file without a vocabulary serves ids.)
  if (auto tokens = model->file_->GetStringArray("tokenizer.ggml.tokens");
      tokens.ok() && static_cast<int64_t>(tokens->size()) < model->config_.vocab) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.ggml.tokens has ", tokens->size(),
                                                   " tokens but token_embd has ", model->config_.vocab,
                                                   " rows: generated ids past the vocabulary could not be decoded"));
  }
  model->IndexLayers();
  return model;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Random(const ModelConfig& config, kernels::Backend& backend,
                                                     DType matrix_type, uint64_t seed) {
  std::unique_ptr<Model> model(new Model(backend));
  model->config_ = config;
  ASSIGN_OR_RETURN(model->weights_, Weights::Random(config, backend, matrix_type, seed));
  model->IndexLayers();
  return model;
}

void Model::IndexLayers() {
  int64_t kda = 0, mla = 0;
  for (int64_t i = 0; i < config_.n_layers; ++i) {
    const bool is_mla = config_.is_mla[i];
    kda_index_.push_back(is_mla ? -1 : kda++);
    mla_index_.push_back(is_mla ? mla++ : -1);
  }
}

int64_t Model::KdaStateBytes() const { return PlanMemory(config_, 0, DType::kF32, 0).kda_state_bytes; }

cache::KdaLayout Model::kda_layout() const {
  const ModelConfig& c = config_;
  cache::KdaLayout layout;
  layout.layers = c.kda_layer_count();
  layout.recurrent = {c.kda_head_dim, c.kda_head_dim, c.n_heads, 1};
  layout.conv = {c.conv_kernel - 1, c.kda_inner(), 3, 1};
  return layout;
}

absl::Status Model::ValidateTokens(absl::Span<const int32_t> tokens) const {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary [0, ", config_.vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Model::PrepareBatch(absl::Span<const BatchEntry> batch, LatentCache& cache) const {
  const ModelConfig& c = config_;
  if (batch.empty()) return absl::InvalidArgumentError("empty batch");
  if (cache.mla_layers() != c.mla_layer_count()) {
    return absl::FailedPreconditionError("latent cache was made for another model");
  }
  for (const BatchEntry& entry : batch) {
    if (entry.sequence == nullptr || entry.tokens.empty()) {
      return absl::InvalidArgumentError("every batch entry needs a sequence and at least one token");
    }
    RETURN_IF_ERROR(ValidateTokens(entry.tokens));
    if (static_cast<int64_t>(entry.sequence->kda().size()) != c.kda_layer_count()) {
      return absl::FailedPreconditionError("sequence was not made by this model");
    }
    if (&entry.sequence->table().pool() != &cache) {
      return absl::FailedPreconditionError("sequence holds pages of another latent cache");
    }
  }
  // Pages first so a failure changes nothing.
  for (const BatchEntry& entry : batch) {
    RETURN_IF_ERROR(entry.sequence->table().PrepareAppend(*entry.sequence, static_cast<int64_t>(entry.tokens.size())));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Model::Forward(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                                  const ForwardOptions& options) const {
  RETURN_IF_ERROR(PrepareBatch(batch, cache));
  const auto forward_start = std::chrono::steady_clock::now();
  int64_t m = 0;
  ASSIGN_OR_RETURN(Tensor logits, Enqueue(batch, cache, options, nullptr, &m));
  for (const BatchEntry& entry : batch) {
    RETURN_IF_ERROR(entry.sequence->table().Advance(*entry.sequence, static_cast<int64_t>(entry.tokens.size())));
  }
  std::vector<float> host(static_cast<size_t>(config_.vocab * m));
  const auto issued = std::chrono::steady_clock::now();
  backend_.Download(logits, host.data(), host.size() * sizeof(float));
  if (options.profile) {
    const auto downloaded = std::chrono::steady_clock::now();
    options.profile->enqueue += std::chrono::duration<double>(issued - forward_start).count();
    options.profile->wait += std::chrono::duration<double>(downloaded - issued).count();
  }
  return host;
}

absl::StatusOr<Tensor> Model::EnqueueDecodeStep(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                                const DecodeStepInputs& step) const {
  const int64_t n = static_cast<int64_t>(batch.size());
  for (const BatchEntry& entry : batch) {
    if (entry.tokens.size() != 1 || entry.all_logits) {
      return absl::InvalidArgumentError("a recorded decode step takes one token per sequence");
    }
    const int64_t needed = cache.PagesFor(entry.sequence->cached_tokens() + 1);
    if (needed > static_cast<int64_t>(entry.sequence->pages().size()) || needed > step.device.page_tables.ne[0]) {
      return absl::FailedPreconditionError("decode step pages are not reserved");
    }
  }
  if (step.ids.elements() != n || step.device.positions.elements() != n || step.device.page_tables.rows() != n) {
    return absl::InvalidArgumentError("decode step inputs do not match the batch");
  }
  int64_t m = 0;
  return Enqueue(batch, cache, {}, &step, &m);
}

absl::StatusOr<Tensor> Model::Enqueue(absl::Span<const BatchEntry> batch, LatentCache& cache,
                                      const ForwardOptions& options, const DecodeStepInputs* step,
                                      int64_t* output_count) const {
  const ModelConfig& c = config_;
  std::vector<int32_t> ids;
  std::vector<int32_t> output_rows;  // batch columns whose logits are returned
  BatchContext ctx{backend_, c, 0, {}, {}, 0, {}};
  bool any_multi_token = false;
  for (const BatchEntry& entry : batch) {
    const int64_t first = static_cast<int64_t>(ids.size());
    const int64_t count = static_cast<int64_t>(entry.tokens.size());
    ids.insert(ids.end(), entry.tokens.begin(), entry.tokens.end());
    ctx.slices.push_back({first, count});
    ctx.latent.push_back({entry.sequence->pages(), entry.sequence->cached_tokens(), first, count,
                          step ? &step->device : nullptr});
    any_multi_token |= count > 1;
    if (entry.all_logits) {
      for (int64_t t = 0; t < count; ++t) output_rows.push_back(static_cast<int32_t>(first + t));
    } else {
      output_rows.push_back(static_cast<int32_t>(first + count - 1));
    }
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  ctx.tokens = n;
  if (c.mla_layer_count() > 0) RETURN_IF_ERROR(PlanPages(ctx, step));
  ctx.kda_chunk_tokens = any_multi_token ? options.kda_chunk_tokens : 0;

  // Optional profiling: charge the time since the last mark to one part.
  auto last_mark = std::chrono::steady_clock::now();
  auto mark = [&](double ForwardProfile::*part) {
    if (options.profile == nullptr || !options.profile_parts) return;
    backend_.Synchronize();
    const auto now = std::chrono::steady_clock::now();
    options.profile->*part += std::chrono::duration<double>(now - last_mark).count();
    last_mark = now;
  };
  if (options.profile) ++options.profile->forwards;
  Tensor id_tensor;
  if (step != nullptr) {
    id_tensor = step->ids;
  } else {
    ASSIGN_OR_RETURN(id_tensor, backend_.Alloc(DType::kI32, {n, 1, 1, 1}));
    backend_.Upload(ids.data(), ids.size() * sizeof(int32_t), id_tensor);
  }
  ASSIGN_OR_RETURN(Tensor x, ctx.F32({c.hidden, n, 1, 1}));
  backend_.GetRows(weights_.token_embd, id_tensor, x);
  ASSIGN_OR_RETURN(Tensor h, ctx.F32({c.hidden, n, 1, 1}));

  mark(&ForwardProfile::embed);
  // x += each layer's attention and FFN output; the add, the next RMSNorm and (for quantised
  // readers) its rounding are one op (AddNormFor).
  const auto attn_reader = [&](int64_t layer) -> const Tensor& {
    const LayerWeights& w = weights_.layers[layer];
    return c.is_mla[layer] ? w.mla.in.parts[0] : w.kda.qkv.parts[0];
  };
  Hidden attn_h{h, Tensor()};
  if (c.n_layers > 0) {
    backend_.RmsNorm(x, weights_.layers[0].attn_norm, c.rms_eps, h);
    ASSIGN_OR_RETURN(attn_h, RoundFor(backend_, h, attn_reader(0)));
  }
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    const LayerWeights& w = weights_.layers[layer];
    mark(&ForwardProfile::norms);
    Tensor attn;
    if (c.is_mla[layer]) {
      ASSIGN_OR_RETURN(attn, MlaLayer(ctx, w.mla, cache.pool(mla_index_[layer]), attn_h));
      mark(&ForwardProfile::mla);
    } else {
      std::vector<kernels::KdaStateView> states;
      for (const BatchEntry& entry : batch) states.push_back(entry.sequence->kda()[kda_index_[layer]]);
      ASSIGN_OR_RETURN(attn, KdaLayer(ctx, w.kda, states, attn_h));
      mark(&ForwardProfile::kda);
    }
    const Tensor& ffn_reader = c.is_moe(layer) ? w.ffn.experts.gate_exps : w.ffn.gate_up.parts[0];
    ASSIGN_OR_RETURN(const Hidden ffn_h, AddNormFor(backend_, x, attn, w.ffn_norm, c.rms_eps, h, ffn_reader));
    mark(&ForwardProfile::norms);
    ASSIGN_OR_RETURN(Tensor ffn, FfnLayer(ctx, w.ffn, c.is_moe(layer), ffn_h));
    mark(c.is_moe(layer) ? &ForwardProfile::moe : &ForwardProfile::ffn_dense);
    if (layer + 1 < c.n_layers) {
      ASSIGN_OR_RETURN(attn_h, AddNormFor(backend_, x, ffn, weights_.layers[layer + 1].attn_norm, c.rms_eps, h,
                                          attn_reader(layer + 1)));
    } else {
      backend_.Add(x, ffn, x);
    }
  }

  const int64_t m = static_cast<int64_t>(output_rows.size());
  ASSIGN_OR_RETURN(Tensor rows, backend_.Alloc(DType::kI32, {m, 1, 1, 1}));
  backend_.Upload(output_rows.data(), output_rows.size() * sizeof(int32_t), rows);
  ASSIGN_OR_RETURN(Tensor selected, ctx.F32({c.hidden, m, 1, 1}));
  backend_.GetRows(x, rows, selected);
  backend_.RmsNorm(selected, weights_.output_norm, c.rms_eps, selected);
  ASSIGN_OR_RETURN(Tensor logits, ctx.F32({c.vocab, m, 1, 1}));
  backend_.MatMul(weights_.output, selected, logits);
  mark(&ForwardProfile::head);
  *output_count = m;
  return logits;
}

absl::StatusOr<std::vector<float>> Model::Prefill(Sequence& sequence, absl::Span<const int32_t> tokens,
                                                  LatentCache& cache, int64_t chunk_tokens, bool all_logits,
                                                  const std::function<void(int64_t, int64_t)>& on_chunk,
                                                  const ForwardOptions& options) const {
  if (tokens.empty()) return absl::InvalidArgumentError("empty prompt");
  if (chunk_tokens <= 0) chunk_tokens = static_cast<int64_t>(tokens.size());
  RETURN_IF_ERROR(ValidateTokens(tokens));
  if (&sequence.table().pool() != &cache) {
    return absl::FailedPreconditionError("sequence holds pages of another latent cache");
  }
  // Reserve the whole prompt up front: running out of pages half-way would waste the work.
  RETURN_IF_ERROR(sequence.table().Reserve(sequence, sequence.cached_tokens() + static_cast<int64_t>(tokens.size())));
  std::vector<float> logits;
  for (int64_t first = 0; first < static_cast<int64_t>(tokens.size()); first += chunk_tokens) {
    const int64_t count = std::min<int64_t>(chunk_tokens, tokens.size() - first);
    const bool last = first + count == static_cast<int64_t>(tokens.size());
    BatchEntry entry{&sequence, tokens.subspan(first, count), all_logits};
    ASSIGN_OR_RETURN(std::vector<float> chunk_logits, Forward({entry}, cache, options));
    if (all_logits) {
      logits.insert(logits.end(), chunk_logits.begin(), chunk_logits.end());
    } else if (last) {
      logits = std::move(chunk_logits);
    }
    if (on_chunk) on_chunk(first, count);
  }
  return logits;
}

}  // namespace latentserve::model
