#include "cache/sequence_table.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace latentserve::cache {

int64_t KdaLayout::layer_bytes() const {
  const auto count = [](const kernels::Shape& ne) { return ne[0] * ne[1] * ne[2] * ne[3]; };
  return (count(recurrent) + count(conv)) * static_cast<int64_t>(sizeof(float));
}

Sequence::~Sequence() { table_->Dropped(*this); }

KdaCheckpoint::~KdaCheckpoint() { table_->Dropped(*this); }

SequenceTable::SequenceTable(PagePool& pool, const KdaLayout& kda) : pool_(pool), kda_(kda) {}

SequenceTable::~SequenceTable() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stats_.sequences != 0 || stats_.checkpoints != 0) {
    // A handle outliving its table would release pages through a dangling pointer later.
    std::fprintf(stderr, "latentserve: internal error: sequence table destroyed with %lld sequences and %lld "
                         "checkpoints alive\n", static_cast<long long>(stats_.sequences),
                 static_cast<long long>(stats_.checkpoints));
    std::abort();
  }
}

absl::StatusOr<std::vector<kernels::KdaStateView>> SequenceTable::AllocKda() {
  std::vector<kernels::KdaStateView> states;
  kernels::Backend& b = backend();
  for (int64_t i = 0; i < kda_.layers; ++i) {
    kernels::KdaStateView state;
    ASSIGN_OR_RETURN(state.recurrent, b.Alloc(DType::kF32, kda_.recurrent));
    ASSIGN_OR_RETURN(state.conv, b.Alloc(DType::kF32, kda_.conv));
    states.push_back(std::move(state));
  }
  return states;
}

void SequenceTable::CopyKda(const std::vector<kernels::KdaStateView>& from,
                            const std::vector<kernels::KdaStateView>& to) {
  for (size_t i = 0; i < from.size(); ++i) {
    backend().Copy(from[i].recurrent, to[i].recurrent);
    backend().Copy(from[i].conv, to[i].conv);
  }
}

absl::StatusOr<std::unique_ptr<Sequence>> SequenceTable::New() {
  ASSIGN_OR_RETURN(std::vector<kernels::KdaStateView> kda, AllocKda());
  for (const auto& state : kda) {
    backend().Zero(state.recurrent);
    backend().Zero(state.conv);
  }
  std::unique_ptr<Sequence> sequence(new Sequence(this));
  sequence->kda_ = std::move(kda);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.sequences++;
  return sequence;
}

void SequenceTable::Dropped(Sequence& sequence) {
  pool_.Release(sequence.pages_);
  sequence.pages_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.sequences--;
}

void SequenceTable::Dropped(KdaCheckpoint& checkpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.checkpoints--;
  stats_.checkpoint_bytes -= kda_.layer_bytes() * kda_.layers;
}

absl::Status SequenceTable::Reserve(Sequence& sequence, int64_t total_tokens) {
  if (total_tokens < 0) return absl::InvalidArgumentError("negative token count");
  const int64_t needed = pool_.PagesFor(total_tokens) - static_cast<int64_t>(sequence.pages_.size());
  if (needed <= 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<int32_t> pages, pool_.Allocate(needed));
  sequence.pages_.insert(sequence.pages_.end(), pages.begin(), pages.end());
  return absl::OkStatus();
}

absl::Status SequenceTable::PrepareAppend(Sequence& sequence, int64_t new_tokens) {
  if (new_tokens < 0) return absl::InvalidArgumentError("negative token count");
  if (new_tokens == 0) return absl::OkStatus();
  const int64_t page_tokens = pool_.page_tokens();
  const int64_t held = static_cast<int64_t>(sequence.pages_.size());
  const int64_t end = sequence.cached_tokens_ + new_tokens;
  const int64_t grow = std::max<int64_t>(0, pool_.PagesFor(end) - held);
  // Held pages the new rows land in that another sequence (or checkpointed prefix) shares.
  std::vector<int64_t> shared;
  for (int64_t i = sequence.cached_tokens_ / page_tokens; i < std::min(held, pool_.PagesFor(end)); ++i) {
    if (pool_.references(sequence.pages_[i]) > 1) shared.push_back(i);
  }
  if (grow == 0 && shared.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::vector<int32_t> fresh, pool_.Allocate(grow + static_cast<int64_t>(shared.size())));
  for (size_t s = 0; s < shared.size(); ++s) {
    const int32_t old_page = sequence.pages_[shared[s]];
    const int32_t copy = fresh[grow + s];
    for (int64_t layer = 0; layer < pool_.mla_layers(); ++layer) {
      backend().CopyPage(pool_.pool(layer), old_page, pool_.pool(layer), copy);
    }
    sequence.pages_[shared[s]] = copy;
    pool_.Release(absl::MakeConstSpan(&old_page, 1));
  }
  sequence.pages_.insert(sequence.pages_.end(), fresh.begin(), fresh.begin() + grow);
  if (!shared.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.pages_copied += static_cast<int64_t>(shared.size());
  }
  return absl::OkStatus();
}

absl::Status SequenceTable::Advance(Sequence& sequence, int64_t new_tokens) {
  const int64_t capacity = static_cast<int64_t>(sequence.pages_.size()) * pool_.page_tokens();
  if (new_tokens < 0 || new_tokens > capacity - sequence.cached_tokens_) {
    return absl::FailedPreconditionError(absl::StrCat("sequence of ", sequence.cached_tokens_, " tokens cannot grow by ",
                                                      new_tokens, ": its pages hold ", capacity));
  }
  sequence.cached_tokens_ += new_tokens;
  return absl::OkStatus();
}

void SequenceTable::Reset(Sequence& sequence) {
  pool_.Release(sequence.pages_);
  sequence.pages_.clear();
  sequence.cached_tokens_ = 0;
  for (const auto& state : sequence.kda_) {
    backend().Zero(state.recurrent);
    backend().Zero(state.conv);
  }
}

absl::StatusOr<std::unique_ptr<Sequence>> SequenceTable::Fork(const Sequence& parent) {
  if (parent.table_ != this) return absl::InvalidArgumentError("fork of a sequence of another table");
  ASSIGN_OR_RETURN(std::unique_ptr<Sequence> child, New());
  CopyKda(parent.kda_, child->kda_);
  pool_.Retain(parent.pages_);
  child->pages_ = parent.pages_;
  child->cached_tokens_ = parent.cached_tokens_;
  return child;
}

absl::StatusOr<std::unique_ptr<Sequence>> SequenceTable::Fork(const Sequence& parent, const KdaCheckpoint& at) {
  if (parent.table_ != this || at.table_ != this) {
    return absl::InvalidArgumentError("fork of a sequence or checkpoint of another table");
  }
  if (at.tokens_ > parent.cached_tokens_) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint at ", at.tokens_, " tokens is past the parent's ",
                                                   parent.cached_tokens_));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Sequence> child, New());
  CopyKda(at.kda_, child->kda_);
  child->pages_.assign(parent.pages_.begin(), parent.pages_.begin() + pool_.PagesFor(at.tokens_));
  pool_.Retain(child->pages_);
  child->cached_tokens_ = at.tokens_;
  return child;
}

absl::StatusOr<std::unique_ptr<Sequence>> SequenceTable::ShareRows(const Sequence& parent, int64_t tokens) {
  if (parent.table_ != this) return absl::InvalidArgumentError("rows of a sequence of another table");
  if (tokens < 0 || tokens > parent.cached_tokens_) {
    return absl::InvalidArgumentError(absl::StrCat("cannot share ", tokens, " tokens of a sequence of ",
                                                   parent.cached_tokens_));
  }
  std::unique_ptr<Sequence> holder(new Sequence(this));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.sequences++;
  }
  holder->pages_.assign(parent.pages_.begin(), parent.pages_.begin() + pool_.PagesFor(tokens));
  pool_.Retain(holder->pages_);
  holder->cached_tokens_ = tokens;
  return holder;
}

absl::StatusOr<std::unique_ptr<KdaCheckpoint>> SequenceTable::Checkpoint(const Sequence& sequence) {
  if (sequence.table_ != this) return absl::InvalidArgumentError("checkpoint of a sequence of another table");
  std::unique_ptr<KdaCheckpoint> checkpoint(new KdaCheckpoint(this));
  {
    std::lock_guard<std::mutex> lock(mu_);  // counted first: the destructor uncounts
    stats_.checkpoints++;
    stats_.checkpoint_bytes += kda_.layer_bytes() * kda_.layers;
  }
  ASSIGN_OR_RETURN(checkpoint->kda_, AllocKda());
  CopyKda(sequence.kda_, checkpoint->kda_);
  checkpoint->tokens_ = sequence.cached_tokens_;
  return checkpoint;
}

absl::StatusOr<std::unique_ptr<KdaCheckpoint>> SequenceTable::NewCheckpoint(int64_t tokens) {
  if (tokens <= 0) return absl::InvalidArgumentError(absl::StrCat("checkpoint at token ", tokens));
  std::unique_ptr<KdaCheckpoint> checkpoint(new KdaCheckpoint(this));
  {
    std::lock_guard<std::mutex> lock(mu_);  // counted first: the destructor uncounts
    stats_.checkpoints++;
    stats_.checkpoint_bytes += kda_.layer_bytes() * kda_.layers;
  }
  ASSIGN_OR_RETURN(checkpoint->kda_, AllocKda());
  for (const auto& state : checkpoint->kda_) {
    backend().Zero(state.recurrent);
    backend().Zero(state.conv);
  }
  checkpoint->tokens_ = tokens;
  return checkpoint;
}

absl::Status SequenceTable::Trim(Sequence& sequence, const KdaCheckpoint& to) {
  if (sequence.table_ != this || to.table_ != this) {
    return absl::InvalidArgumentError("trim with a sequence or checkpoint of another table");
  }
  if (to.tokens_ > sequence.cached_tokens_) {
    return absl::InvalidArgumentError(absl::StrCat("cannot trim a sequence of ", sequence.cached_tokens_,
                                                   " tokens to a checkpoint at ", to.tokens_));
  }
  const int64_t keep = pool_.PagesFor(to.tokens_);
  if (keep < static_cast<int64_t>(sequence.pages_.size())) {
    pool_.Release(absl::MakeConstSpan(sequence.pages_).subspan(keep));
    sequence.pages_.resize(keep);
  }
  sequence.cached_tokens_ = to.tokens_;
  CopyKda(to.kda_, sequence.kda_);
  return absl::OkStatus();
}

absl::Status SequenceTable::ExportKdaState(const Sequence& sequence, int64_t kda_index, std::string* out) const {
  if (kda_index < 0 || kda_index >= static_cast<int64_t>(sequence.kda_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("KDA layer index ", kda_index, " out of range"));
  }
  const kernels::KdaStateView& state = sequence.kda_[kda_index];
  out->resize(state.recurrent.nbytes() + state.conv.nbytes());
  backend().Download(state.recurrent, out->data(), state.recurrent.nbytes());
  backend().Download(state.conv, out->data() + state.recurrent.nbytes(), state.conv.nbytes());
  return absl::OkStatus();
}

absl::Status SequenceTable::ImportKdaState(Sequence& sequence, int64_t kda_index, std::string_view bytes) const {
  return ImportLayer(sequence.kda_, kda_index, bytes);
}

absl::Status SequenceTable::ImportKdaState(KdaCheckpoint& checkpoint, int64_t kda_index, std::string_view bytes) const {
  if (checkpoint.table_ != this) return absl::InvalidArgumentError("import into a checkpoint of another table");
  return ImportLayer(checkpoint.kda_, kda_index, bytes);
}

absl::Status SequenceTable::ImportLayer(const std::vector<kernels::KdaStateView>& states, int64_t kda_index,
                                        std::string_view bytes) const {
  if (kda_index < 0 || kda_index >= static_cast<int64_t>(states.size())) {
    return absl::InvalidArgumentError(absl::StrCat("KDA layer index ", kda_index, " out of range"));
  }
  const kernels::KdaStateView& state = states[kda_index];
  if (bytes.size() != state.recurrent.nbytes() + state.conv.nbytes()) {
    return absl::InvalidArgumentError(absl::StrCat("KDA state: got ", bytes.size(), " bytes, expected ",
                                                   state.recurrent.nbytes() + state.conv.nbytes()));
  }
  backend().Upload(bytes.data(), state.recurrent.nbytes(), state.recurrent);
  backend().Upload(bytes.data() + state.recurrent.nbytes(), state.conv.nbytes(), state.conv);
  return absl::OkStatus();
}

SequenceTableStats SequenceTable::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace latentserve::cache
