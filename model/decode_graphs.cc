#include "model/decode_graphs.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/status.h"
#include "model/layers.h"
#include "model/sampler.h"

namespace latentserve::model {

using kernels::Tensor;

struct DecodeGraphs::Recording {
  std::vector<const void*> key;
  int64_t batch = 0;
  int64_t stride = 0;  // page-table entries per sequence
  Tensor inputs;       // i32 [B ids | B positions | stride x B page tables]
  DecodeStepInputs step;
  Tensor logits;       // [vocab, B], memory of the recording
  Tensor tokens;       // i32 [B]: each row's Argmax, the recording's last op
  std::unique_ptr<kernels::Backend::Graph> graph;
};

DecodeGraphs::DecodeGraphs(const Model& model, LatentCache& cache) : model_(model), cache_(cache) {
  const char* env = std::getenv("LATENTSERVE_CUDA_GRAPHS");
  if (env != nullptr && std::strcmp(env, "0") == 0) disabled_ = "LATENTSERVE_CUDA_GRAPHS=0";
  if (!model.backend().CanCapture()) disabled_ = "the backend does not record steps";
}

DecodeGraphs::~DecodeGraphs() = default;

std::vector<const void*> DecodeGraphs::KeyOf(absl::Span<const BatchEntry> batch) const {
  std::vector<const void*> key;
  for (const BatchEntry& entry : batch) {
    key.push_back(entry.sequence);
    for (const kernels::KdaStateView& state : entry.sequence->kda()) {
      key.push_back(state.recurrent.buffer.get());
      key.push_back(state.conv.buffer.get());
    }
  }
  return key;
}

absl::Status DecodeGraphs::Record(absl::Span<const BatchEntry> batch, int64_t stride) {
  current_.reset();  // its memory goes before the new recording takes some
  kernels::Backend& backend = model_.backend();
  auto recording = std::make_unique<Recording>();
  const int64_t n = static_cast<int64_t>(batch.size());
  recording->key = KeyOf(batch);
  recording->batch = n;
  recording->stride = stride;
  ASSIGN_OR_RETURN(recording->inputs, backend.Alloc(DType::kI32, {2 * n + stride * n, 1, 1, 1}));
  recording->step.ids = ColumnSlice(recording->inputs, 0, n);
  recording->step.device.positions = ColumnSlice(recording->inputs, n, n);
  recording->step.device.page_tables = ColumnSlice(recording->inputs, 2 * n, stride * n).Reshape({stride, n, 1, 1});
  ASSIGN_OR_RETURN(recording->tokens, backend.Alloc(DType::kI32, {n, 1, 1, 1}));
  RETURN_IF_ERROR(backend.BeginCapture());
  absl::StatusOr<Tensor> logits = model_.EnqueueDecodeStep(batch, cache_, recording->step);
  if (logits.ok()) backend.ArgmaxRows(*logits, recording->tokens);
  absl::StatusOr<std::unique_ptr<kernels::Backend::Graph>> graph = backend.EndCapture();
  RETURN_IF_ERROR(logits.status());
  RETURN_IF_ERROR(graph.status());
  recording->logits = *std::move(logits);
  recording->graph = *std::move(graph);
  current_ = std::move(recording);
  ++recordings_;
  return absl::OkStatus();
}

absl::StatusOr<DecodeGraphs::Recording*> DecodeGraphs::Run(absl::Span<const BatchEntry> batch) {
  bool recordable = disabled_.empty() && !batch.empty();
  for (const BatchEntry& entry : batch) {
    recordable = recordable && entry.sequence != nullptr && entry.tokens.size() == 1 && !entry.all_logits;
  }
  const auto unrecorded = [&]() -> absl::StatusOr<Recording*> {
    ASSIGN_OR_RETURN(forward_logits_, model_.Forward(batch, cache_));
    return nullptr;
  };
  if (!recordable) return unrecorded();
  RETURN_IF_ERROR(model_.PrepareBatch(batch, cache_));
  const int64_t n = static_cast<int64_t>(batch.size());
  int64_t pages = 1;
  for (const BatchEntry& entry : batch) pages = std::max<int64_t>(pages, entry.sequence->pages().size());
  if (!current_ || current_->key != KeyOf(batch) || pages > current_->stride) {
    // Room for the page tables to grow 2x before the next recording (at most the whole cache).
    const int64_t stride = std::min<int64_t>(std::max<int64_t>(2 * pages, 16), std::max(pages, cache_.total_pages()));
    if (absl::Status recorded = Record(batch, stride); !recorded.ok()) {
      disabled_ = std::string(recorded.message());
      std::fprintf(stderr, "latentserve: decode steps run unrecorded: %s\n", disabled_.c_str());
      current_.reset();
      return unrecorded();
    }
  }
  Recording& r = *current_;
  std::vector<int32_t> inputs(static_cast<size_t>(2 * n + r.stride * n), 0);
  for (int64_t b = 0; b < n; ++b) {
    const Sequence& sequence = *batch[b].sequence;
    inputs[b] = batch[b].tokens[0];
    inputs[n + b] = static_cast<int32_t>(sequence.cached_tokens());
    std::copy(sequence.pages().begin(), sequence.pages().end(), inputs.begin() + 2 * n + b * r.stride);
  }
  kernels::Backend& backend = model_.backend();
  backend.Upload(inputs.data(), inputs.size() * sizeof(int32_t), r.inputs);
  RETURN_IF_ERROR(backend.Replay(*r.graph));
  ++replays_;
  for (const BatchEntry& entry : batch) RETURN_IF_ERROR(entry.sequence->table().Advance(*entry.sequence, 1));
  return &r;
}

absl::StatusOr<absl::Span<const float>> DecodeGraphs::Step(absl::Span<const BatchEntry> batch) {
  ASSIGN_OR_RETURN(Recording* r, Run(batch));
  if (r == nullptr) return absl::MakeConstSpan(forward_logits_);
  kernels::Backend& backend = model_.backend();
  const size_t count = static_cast<size_t>(model_.vocab() * r->batch);
  if (logits_.bytes < count * sizeof(float)) {
    ASSIGN_OR_RETURN(logits_, backend.AllocHost(count * sizeof(float)));
  }
  auto* host = reinterpret_cast<float*>(logits_.data.get());
  backend.Download(r->logits, host, count * sizeof(float));
  return absl::MakeConstSpan(host, count);
}

absl::StatusOr<absl::Span<const int32_t>> DecodeGraphs::GreedyStep(absl::Span<const BatchEntry> batch,
                                                                   kernels::cpu::ThreadPool* pool) {
  for (const BatchEntry& entry : batch) {
    if (entry.tokens.size() != 1 || entry.all_logits) {
      return absl::InvalidArgumentError("a greedy step takes one token a sequence and its last logits");
    }
  }
  ASSIGN_OR_RETURN(Recording* r, Run(batch));
  if (r == nullptr) {
    forward_tokens_.assign(batch.size(), 0);
    ArgmaxRows(forward_logits_, model_.vocab(), absl::MakeSpan(forward_tokens_), pool);
    return absl::MakeConstSpan(forward_tokens_);
  }
  kernels::Backend& backend = model_.backend();
  const size_t bytes = static_cast<size_t>(r->batch) * sizeof(int32_t);
  if (tokens_.bytes < bytes) {
    ASSIGN_OR_RETURN(tokens_, backend.AllocHost(bytes));
  }
  auto* host = reinterpret_cast<int32_t*>(tokens_.data.get());
  backend.Download(r->tokens, host, bytes);
  return absl::MakeConstSpan(host, static_cast<size_t>(r->batch));
}

}  // namespace latentserve::model
