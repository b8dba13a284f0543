#include "cache/prefix_cache.h"

#include <algorithm>
#include <set>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/token_hash.h"

namespace latentserve::cache {

PrefixCache::PrefixCache(SequenceTable& table, const PrefixCacheOptions& options) : table_(table), options_(options) {}

PrefixCache::~PrefixCache() {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();
}

PrefixMatch PrefixCache::Find(absl::Span<const int32_t> tokens) const {
  PrefixMatch best;
  if (tokens.size() < 2) return best;
  // The prompt's last token is always computed: its logits give the first sampled token.
  const int64_t limit_all = static_cast<int64_t>(tokens.size()) - 1;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t best_used = 0;
  for (const auto& [id, entry] : entries_) {
    const size_t n = std::min(entry.tokens.size(), tokens.size());
    const int64_t shared = std::mismatch(tokens.begin(), tokens.begin() + n, entry.tokens.begin()).first - tokens.begin();
    const int64_t limit = std::min(shared, limit_all);
    for (auto it = entry.checkpoints.rbegin(); it != entry.checkpoints.rend(); ++it) {
      const int64_t at = (*it)->tokens();
      if (at > limit) continue;
      if (at > best.resume_tokens || (at == best.resume_tokens && at > 0 && entry.last_used > best_used)) {
        best = {id, shared, at};
        best_used = entry.last_used;
      }
      break;
    }
  }
  return best;
}

absl::StatusOr<std::unique_ptr<Sequence>> PrefixCache::Resume(const PrefixMatch& match) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.lookups++;
  auto it = entries_.find(match.entry);
  if (it == entries_.end()) return absl::NotFoundError("the cached prefix was evicted");
  Entry& entry = it->second;
  const KdaCheckpoint* at = nullptr;
  for (const auto& checkpoint : entry.checkpoints) {
    if (checkpoint->tokens() == match.resume_tokens) at = checkpoint.get();
  }
  if (at == nullptr || match.resume_tokens <= 0) return absl::NotFoundError("no checkpoint at that position");
  ASSIGN_OR_RETURN(std::unique_ptr<Sequence> sequence, table_.Fork(*entry.rows, *at));
  entry.last_used = ++clock_;
  counters_.hits++;
  counters_.hit_tokens += match.resume_tokens;
  return sequence;
}

void PrefixCache::CountMiss() {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.lookups++;
}

absl::StatusOr<int64_t> PrefixCache::Insert(absl::Span<const int32_t> tokens, const Sequence& sequence,
                                            std::vector<std::unique_ptr<KdaCheckpoint>> checkpoints, bool pinned) {
  if (!enabled()) return absl::FailedPreconditionError("the prefix cache is off (no memory budget)");
  const int64_t length = static_cast<int64_t>(tokens.size());
  if (length <= 0 || length > sequence.cached_tokens()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot keep ", length, " tokens of a sequence of ",
                                                   sequence.cached_tokens()));
  }
  for (size_t i = 0; i < checkpoints.size(); ++i) {
    const int64_t at = checkpoints[i]->tokens();
    if (at <= 0 || at > length || (i > 0 && at <= checkpoints[i - 1]->tokens())) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint at ", at, " is not inside the ", length,
                                                     "-token prefix in ascending order"));
    }
  }
  if (checkpoints.empty() || checkpoints.back()->tokens() != length) {
    return absl::InvalidArgumentError("a kept prefix needs a checkpoint at its end");
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, entry] : entries_) {
    if (entry.tokens.size() == tokens.size() && std::equal(tokens.begin(), tokens.end(), entry.tokens.begin())) {
      entry.last_used = ++clock_;
      entry.pinned = entry.pinned || pinned;
      return id;  // the checkpoints given are dropped by the caller's vector going out of scope
    }
  }
  Entry entry;
  entry.tokens.assign(tokens.begin(), tokens.end());
  ASSIGN_OR_RETURN(entry.rows, table_.ShareRows(sequence, length));
  entry.checkpoints = std::move(checkpoints);
  entry.pinned = pinned;
  entry.last_used = ++clock_;
  const int64_t id = next_id_++;
  entries_.emplace(id, std::move(entry));
  int64_t pages = 0, checkpoint_count = 0;
  while (UsageBytesLocked(&pages, &checkpoint_count) > options_.budget_bytes) {
    if (!EvictOneLocked(id)) {
      entries_.erase(id);
      return absl::ResourceExhaustedError(absl::StrCat(
          "a ", length, "-token prefix does not fit the prefix cache's memory budget (", options_.budget_bytes,
          " bytes) next to the pinned prefixes; close sessions or raise --prefix-cache-mib"));
    }
  }
  return id;
}

absl::Status PrefixCache::SetPinned(int64_t entry, bool pinned) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(entry);
  if (it == entries_.end()) return absl::NotFoundError("the cached prefix is gone");
  it->second.pinned = pinned;
  it->second.last_used = ++clock_;
  return absl::OkStatus();
}

int64_t PrefixCache::FindExact(absl::Span<const int32_t> tokens) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, entry] : entries_) {
    if (entry.tokens.size() == tokens.size() && std::equal(tokens.begin(), tokens.end(), entry.tokens.begin())) {
      return id;
    }
  }
  return -1;
}

int64_t PrefixCache::EntryBytes(int64_t entry) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(entry);
  if (it == entries_.end()) return 0;
  const PagePool& pool = table_.pool();
  const KdaLayout& kda = table_.kda_layout();
  return static_cast<int64_t>(it->second.rows->pages().size()) * pool.page_bytes_per_layer() * pool.mla_layers() +
         static_cast<int64_t>(it->second.checkpoints.size()) * kda.layer_bytes() * kda.layers;
}

void PrefixCache::Erase(int64_t entry) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.erase(entry);
}

bool PrefixCache::Contains(int64_t entry) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(entry) > 0;
}

bool PrefixCache::MakeRoom(int64_t pages) {
  std::lock_guard<std::mutex> lock(mu_);
  while (table_.pool().free_pages() < pages) {
    if (!EvictOneLocked(-1)) return false;
  }
  return true;
}

int64_t PrefixCache::UsageBytesLocked(int64_t* pages, int64_t* checkpoints) const {
  std::unordered_set<int32_t> distinct;
  int64_t count = 0;
  for (const auto& [id, entry] : entries_) {
    distinct.insert(entry.rows->pages().begin(), entry.rows->pages().end());
    count += static_cast<int64_t>(entry.checkpoints.size());
  }
  *pages = static_cast<int64_t>(distinct.size());
  *checkpoints = count;
  const PagePool& pool = table_.pool();
  const int64_t page_bytes = static_cast<int64_t>(pool.page_bytes_per_layer()) * pool.mla_layers();
  const KdaLayout& kda = table_.kda_layout();
  return *pages * page_bytes + count * kda.layer_bytes() * kda.layers;
}

bool PrefixCache::EvictOneLocked(int64_t keep) {
  auto victim = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == keep || it->second.pinned) continue;
    if (victim == entries_.end() || it->second.last_used < victim->second.last_used) victim = it;
  }
  if (victim == entries_.end()) return false;
  entries_.erase(victim);
  counters_.evictions++;
  return true;
}

std::vector<uint64_t> PrefixCache::BlockHashes(int64_t block_tokens, int64_t max_hashes) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const Entry*> order;
  for (const auto& [id, entry] : entries_) order.push_back(&entry);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) { return a->last_used > b->last_used; });
  std::vector<uint64_t> hashes;
  std::set<uint64_t> seen;
  for (const Entry* entry : order) {
    // Only blocks up to the entry's last checkpoint can be resumed from; later ones still
    // share pages but would be recomputed, so they do not attract placement.
    const int64_t usable = entry->checkpoints.empty() ? 0 : entry->checkpoints.back()->tokens();
    for (uint64_t h : PrefixBlockHashes(absl::MakeConstSpan(entry->tokens).first(usable), block_tokens,
                                        max_hashes - static_cast<int64_t>(hashes.size()))) {
      if (seen.insert(h).second) hashes.push_back(h);
    }
    if (static_cast<int64_t>(hashes.size()) >= max_hashes) break;
  }
  return hashes;
}

PrefixCacheStats PrefixCache::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PrefixCacheStats stats = counters_;
  stats.entries = static_cast<int64_t>(entries_.size());
  for (const auto& [id, entry] : entries_) stats.pinned_entries += entry.pinned ? 1 : 0;
  stats.bytes = UsageBytesLocked(&stats.pages, &stats.checkpoints);
  const KdaLayout& kda = table_.kda_layout();
  stats.checkpoint_bytes = stats.checkpoints * kda.layer_bytes() * kda.layers;
  return stats;
}

}  // namespace latentserve::cache
