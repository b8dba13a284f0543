// The sequence table: who holds which pages and which KDA state.
//
// A Sequence is a page table into a PagePool (page ids in token order), the number of tokens
// whose rows are in those pages, and one recurrent state per KDA layer. The table makes,
// grows, forks, trims and checkpoints sequences; a Sequence is an owning handle: dropping it
// releases its page references, so the pool's reference counts decide when a page is free.
//
// Sharing: Fork gives the child the parent's pages (one more reference each) and a copy of
// its KDA state. Pages are written only by appending tokens; before a sequence writes into a
// page that someone else also references (the partial last page after a fork, or a page kept
// by a trim), PrepareAppend gives it a private copy first (copy-on-write), so neither side
// ever sees the other's new rows. Full pages of a shared prefix stay shared read-only.
//
// Checkpoints: a copy of every KDA layer's state at a token position. Latent rows can be cut
// at any token, recurrent state cannot, so a sequence resumes (Trim, or Fork at a checkpoint:
// prefix reuse) only where a checkpoint was taken.
//
// Threads: the table's counters are locked inside; device work (KDA copies, page copies) is
// enqueued on the pool's backend, so callers serialise it with their other use of that
// backend, as for Model::Forward. Lock order: SequenceTable::mu_ before PagePool::mu_.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/page_pool.h"
#include "kernels/backend.h"

namespace latentserve::cache {

// Shapes of one sequence's KDA state (f32): per KDA layer a recurrent state and conv tails
// (kernels::KdaStateView says their layouts).
struct KdaLayout {
  int64_t layers = 0;
  kernels::Shape recurrent = {0, 1, 1, 1};  // [Dk, Dk, H]
  kernels::Shape conv = {0, 1, 1, 1};       // [d_conv - 1, Di, 3]
  // Bytes of one layer's state: recurrent, then conv tails (the handoff's layout).
  int64_t layer_bytes() const;
};

class SequenceTable;

class Sequence {
 public:
  ~Sequence();
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  absl::Span<const int32_t> pages() const { return pages_; }    // page table, in token order
  int64_t cached_tokens() const { return cached_tokens_; }      // tokens whose rows are cached
  const std::vector<kernels::KdaStateView>& kda() const { return kda_; }  // one per KDA layer
  SequenceTable& table() const { return *table_; }

 private:
  friend class SequenceTable;
  explicit Sequence(SequenceTable* table) : table_(table) {}
  SequenceTable* table_;
  std::vector<int32_t> pages_;
  int64_t cached_tokens_ = 0;
  std::vector<kernels::KdaStateView> kda_;
};

// Every KDA layer's state of a sequence at `tokens()` cached tokens (device memory).
class KdaCheckpoint {
 public:
  ~KdaCheckpoint();
  int64_t tokens() const { return tokens_; }
  const std::vector<kernels::KdaStateView>& kda() const { return kda_; }
  SequenceTable& table() const { return *table_; }

 private:
  friend class SequenceTable;
  explicit KdaCheckpoint(SequenceTable* table) : table_(table) {}
  SequenceTable* table_;
  int64_t tokens_ = 0;
  std::vector<kernels::KdaStateView> kda_;
};

struct SequenceTableStats {
  int64_t sequences = 0;         // live Sequence handles
  int64_t checkpoints = 0;       // live KdaCheckpoints
  int64_t checkpoint_bytes = 0;  // their device memory
  int64_t pages_copied = 0;      // copy-on-write page copies so far
};

class SequenceTable {
 public:
  SequenceTable(PagePool& pool, const KdaLayout& kda);
  // Sequences and checkpoints must be dropped first (they point back here).
  ~SequenceTable();

  PagePool& pool() const { return pool_; }
  kernels::Backend& backend() const { return pool_.backend(); }
  const KdaLayout& kda_layout() const { return kda_; }

  // A sequence with no pages and zeroed KDA state.
  absl::StatusOr<std::unique_ptr<Sequence>> New();
  // Makes sure `sequence` holds pages for `total_tokens` tokens (a lease's reservation, or
  // room for the next token); ResourceExhausted changes nothing.
  absl::Status Reserve(Sequence& sequence, int64_t total_tokens);
  // Before appending `new_tokens` rows: reserves their pages and gives the sequence a private
  // copy of every shared page those rows land in. All or nothing.
  absl::Status PrepareAppend(Sequence& sequence, int64_t new_tokens);
  // The rows of `new_tokens` more tokens are now in the cache (after a forward pass, or once
  // a handoff has imported them). FailedPrecondition past the reserved pages.
  absl::Status Advance(Sequence& sequence, int64_t new_tokens);
  // Drops every token and page and zeroes the KDA state (the handle stays usable).
  void Reset(Sequence& sequence);

  // A new sequence sharing `parent`'s pages and tokens, with a copy of its KDA state.
  absl::StatusOr<std::unique_ptr<Sequence>> Fork(const Sequence& parent);
  // A new sequence sharing the pages of `parent`'s first checkpoint.tokens() tokens, with the
  // checkpoint's KDA state: `parent`'s prefix resumed at the checkpoint (prefix reuse). The
  // checkpoint must have been taken from `parent` or from a sequence sharing that prefix.
  absl::StatusOr<std::unique_ptr<Sequence>> Fork(const Sequence& parent, const KdaCheckpoint& at);
  // A read-only holder of the pages of `parent`'s first `tokens` tokens, with no KDA state
  // (a prefix cache's rows: resumed only through Fork at a checkpoint, never appended to).
  absl::StatusOr<std::unique_ptr<Sequence>> ShareRows(const Sequence& parent, int64_t tokens);
  // Copies every KDA layer's state of `sequence` at its current length.
  absl::StatusOr<std::unique_ptr<KdaCheckpoint>> Checkpoint(const Sequence& sequence);
  // A checkpoint at `tokens` whose state is still to be written (ImportKdaState per layer, or a
  // copy into KdaOf(checkpoint, i)): one that arrives by handoff, taken by the sender. Its
  // contents are zero until then.
  absl::StatusOr<std::unique_ptr<KdaCheckpoint>> NewCheckpoint(int64_t tokens);
  // Cuts `sequence` back to the checkpoint's length: pages past it are released, KDA state
  // is the checkpoint's. The checkpoint must be of this sequence's own history (or a fork's
  // shared prefix); InvalidArgument when it is longer than the sequence.
  absl::Status Trim(Sequence& sequence, const KdaCheckpoint& to);

  // One KDA layer's state as bytes (KdaLayout::layer_bytes, recurrent then conv tails),
  // through host memory; Import checks the size.
  absl::Status ExportKdaState(const Sequence& sequence, int64_t kda_index, std::string* out) const;
  absl::Status ImportKdaState(Sequence& sequence, int64_t kda_index, std::string_view bytes) const;
  absl::Status ImportKdaState(KdaCheckpoint& checkpoint, int64_t kda_index, std::string_view bytes) const;

  SequenceTableStats Stats() const;

 private:
  friend class Sequence;
  friend class KdaCheckpoint;
  absl::StatusOr<std::vector<kernels::KdaStateView>> AllocKda();
  void CopyKda(const std::vector<kernels::KdaStateView>& from, const std::vector<kernels::KdaStateView>& to);
  absl::Status ImportLayer(const std::vector<kernels::KdaStateView>& states, int64_t kda_index,
                           std::string_view bytes) const;
  void Dropped(Sequence& sequence);
  void Dropped(KdaCheckpoint& checkpoint);

  PagePool& pool_;
  const KdaLayout kda_;
  mutable std::mutex mu_;  // the counters below
  SequenceTableStats stats_;
};

}  // namespace latentserve::cache
