// The prefix cache: finished prompts kept for reuse (DESIGN.md "Document sessions / prefix
// reuse").
//
// An entry is a prompt's token ids, a read-only holder of its latent rows (pages shared
// with whoever else references them; SequenceTable::ShareRows) and KDA checkpoints at chosen
// positions inside it (at least its end). A new prompt resumes from the last checkpoint at or
// before the end of the prefix it shares with an entry, and never at its own last token (the
// caller needs that token's logits): Fork shares the pages up to the checkpoint and copies its
// KDA state, the partial page is copied on first write (copy-on-write in the table), and only
// the rest is computed. Recurrent state cannot be cut, so the checkpoint positions decide how
// much of a shared prefix is reusable.
//
// Memory: an entry costs its pages (counted once however many entries share them) plus its
// checkpoints (KdaLayout::layer_bytes x layers each: ~43 MiB for the full-size model). The sum
// stays within budget_bytes: inserting evicts least recently used unpinned entries; pinned
// entries (sessions) are never evicted for room and an insert that cannot fit fails. Pages the
// cache holds are also given back when the pool runs short (MakeRoom), so cached prefixes never
// refuse a request pages it would otherwise get.
//
// Threads: one internal lock; the device work (forks, checkpoint copies, dropping entries)
// runs on the table's backend, so callers serialise these calls with their other use of that
// backend (the decode worker's backend_mu_). Lock order: caller's backend lock, then
// PrefixCache::mu_, then the table's and pool's locks.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/sequence_table.h"

namespace latentserve::cache {

struct PrefixCacheOptions {
  int64_t budget_bytes = 0;                 // prefix pages + checkpoints held at most; 0: no cache
  int64_t checkpoint_interval_tokens = 0;   // callers that compute a prompt checkpoint every N tokens; 0: end only
};

// Where a prompt can resume.
struct PrefixMatch {
  int64_t entry = -1;         // entry id; -1: nothing reusable
  int64_t shared_tokens = 0;  // tokens the prompt shares with the entry
  int64_t resume_tokens = 0;  // the checkpoint it resumes at (<= shared_tokens, < the prompt's length)
};

struct PrefixCacheStats {
  int64_t entries = 0;
  int64_t pinned_entries = 0;
  int64_t pages = 0;             // distinct pages the entries hold
  int64_t checkpoints = 0;
  int64_t checkpoint_bytes = 0;
  int64_t bytes = 0;             // pages x page bytes (all MLA layers) + checkpoint_bytes: what the budget bounds
  int64_t lookups = 0;           // Resume calls
  int64_t hits = 0;              // ... that resumed from a checkpoint
  int64_t hit_tokens = 0;        // tokens those hits did not compute
  int64_t evictions = 0;         // entries dropped for room (budget or pool pages)
};

class PrefixCache {
 public:
  PrefixCache(SequenceTable& table, const PrefixCacheOptions& options);
  // Drops every entry (call with the backend serialised, as for the other calls).
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  bool enabled() const { return options_.budget_bytes > 0; }
  const PrefixCacheOptions& options() const { return options_; }

  // The best place to resume `tokens` (the furthest usable checkpoint over every entry).
  PrefixMatch Find(absl::Span<const int32_t> tokens) const;
  // A new sequence holding `tokens`' reusable prefix: the pages of `match` (from Find) up to
  // its checkpoint, and the checkpoint's KDA state. Counts a lookup (and a hit). NotFound
  // when the entry has gone since Find (the caller computes the whole prompt).
  absl::StatusOr<std::unique_ptr<Sequence>> Resume(const PrefixMatch& match);
  // Counts a lookup that found nothing usable.
  void CountMiss();

  // Keeps the first tokens.size() rows of `sequence` read-only, with `checkpoints` (taken of
  // it or of the prefix it shares, positions ascending, the last at tokens.size()). An entry
  // with the same tokens is refreshed (and pinned if asked) instead. Evicts LRU unpinned
  // entries to stay within budget; ResourceExhausted (nothing kept) when pinned entries leave
  // no room. Returns the entry id.
  absl::StatusOr<int64_t> Insert(absl::Span<const int32_t> tokens, const Sequence& sequence,
                                 std::vector<std::unique_ptr<KdaCheckpoint>> checkpoints, bool pinned = false);
  // Pins or unpins an entry; NotFound when it has gone.
  absl::Status SetPinned(int64_t entry, bool pinned);
  // The entry holding exactly `tokens`; -1 when none does.
  int64_t FindExact(absl::Span<const int32_t> tokens) const;
  // Bytes one entry holds on its own account (all its pages, shared or not, + its
  // checkpoints); 0 when it has gone.
  int64_t EntryBytes(int64_t entry) const;
  // Drops an entry (its pages go back as soon as no sequence forked from it holds them).
  void Erase(int64_t entry);
  bool Contains(int64_t entry) const;
  // Evicts LRU unpinned entries until the pool has `pages` free or none is left; true when it has.
  bool MakeRoom(int64_t pages);

  // Chained hashes of the page-aligned blocks of every entry (common/token_hash.h), at most
  // `max_hashes` in all, most recently used entries first: what the router matches prompts on.
  std::vector<uint64_t> BlockHashes(int64_t block_tokens, int64_t max_hashes) const;
  PrefixCacheStats Stats() const;

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    std::unique_ptr<Sequence> rows;                         // read-only holder of the prompt's pages
    std::vector<std::unique_ptr<KdaCheckpoint>> checkpoints;  // ascending positions
    bool pinned = false;
    uint64_t last_used = 0;
  };
  // Bytes the entries hold (distinct pages + checkpoints). mu_ held.
  int64_t UsageBytesLocked(int64_t* pages, int64_t* checkpoints) const;
  // Drops the least recently used unpinned entry other than `keep`; false when there is none.
  bool EvictOneLocked(int64_t keep);

  SequenceTable& table_;
  const PrefixCacheOptions options_;
  mutable std::mutex mu_;
  std::map<int64_t, Entry> entries_;
  int64_t next_id_ = 1;
  uint64_t clock_ = 0;  // LRU order
  PrefixCacheStats counters_;
};

}  // namespace latentserve::cache
