#include "common/tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/tokenizer/pretokenizer.h"
#include "common/tokenizer/unicode.h"

namespace latentserve::tokenizer {
namespace {

// Token attributes (llama.cpp's llama_token_attr subset that tokenisation reads).
enum Attr : uint8_t {
  kAttrUndefined = 0,
  kAttrNormal = 1 << 0,
  kAttrUnknown = 1 << 1,
  kAttrControl = 1 << 2,
  kAttrUserDefined = 1 << 3,
  kAttrUnused = 1 << 4,
  kAttrByte = 1 << 5,
};

uint8_t AttrFromType(int32_t type) {
  switch (static_cast<TokenType>(type)) {
    case TokenType::kNormal: return kAttrNormal;
    case TokenType::kUnknown: return kAttrUnknown;
    case TokenType::kControl: return kAttrControl;
    case TokenType::kUserDefined: return kAttrUserDefined;
    case TokenType::kUnused: return kAttrUnused;
    case TokenType::kByte: return kAttrByte;
    default: return kAttrUndefined;
  }
}

// Tokens llama.cpp marks as control by their text whatever their stored type (end-of-turn,
// end-of-generation and fill-in-the-middle markers of many model families, Kimi's among them).
constexpr std::string_view kControlByName[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "<end_of_utterance>", "<|eom_id|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>",
    "<eos>", "<turn|>", "<|tool_response>", "[e~[", "<|fim_prefix|>", "<fim-prefix>",
    "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>",
    "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>",
    "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>", "<|fim_pad|>", "<fim-pad>",
    "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
    "<reponame>", "<|file_sep|>",
};
// Tokens llama.cpp forces to user-defined (always split out, rendered even without special).
constexpr std::string_view kUserDefinedByName[] = {"<|channel|>", "<|message|>", "<|start|>",
                                                   "<|constrain|>"};

constexpr int32_t kNoRank = INT32_MAX;
constexpr size_t kScanMergeMaxSymbols = 64;  // longer words use the heap-based merge

struct MergeInfo {
  int32_t rank;
  int32_t result;  // symbol id of the merged text
};

inline uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Fragment {
  int32_t token;  // >= 0: a special token; -1: text [begin, end)
  size_t begin;
  size_t end;
};

// Scratch buffers reused across the words of one Encode call.
struct Scratch {
  std::vector<uint32_t> cps;
  std::vector<uint32_t> word_lengths;
  std::string word_bytes;
  std::vector<int32_t> symbols;
  std::vector<int32_t> ranks;
  std::vector<int32_t> results;
};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> tokens;  // raw vocabulary text
  std::vector<uint8_t> attrs;
  std::vector<std::string> pieces;  // decoded bytes, special tokens rendered as their text
  absl::flat_hash_map<std::string, int32_t> text_to_id;
  int32_t n_vocab = 0;

  // Symbols: ids < n_vocab are tokens; ids >= n_vocab stand for merge texts that are not tokens
  // (only in inconsistent vocabularies). virtual_fallback[id - n_vocab] is what such a symbol
  // emits if it survives to the end: the tokens of its single bytes.
  absl::flat_hash_map<std::string, int32_t> virtual_ids;
  std::vector<std::vector<int32_t>> virtual_fallback;
  std::vector<std::string> virtual_text;
  int32_t byte_symbol[256];
  absl::flat_hash_map<uint64_t, MergeInfo> merges;

  // Special tokens in partition priority order (longest text first), and a trie over their
  // texts: edge (node << 8 | byte) -> child node; terminal[node] = priority index or -1.
  std::vector<int32_t> specials;
  absl::flat_hash_map<uint64_t, int32_t> trie_edges;
  std::vector<int32_t> trie_terminal;
  bool special_first_byte[256] = {};

  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false, add_eos = false;

  int32_t Intern(const std::string& text);
  void BuildSpecials();
  std::vector<Fragment> Partition(std::string_view text, bool parse_special) const;
  void EncodeText(std::string_view text, Scratch* scratch, std::vector<int32_t>* out) const;
  void MergeWord(Scratch* scratch, std::vector<int32_t>* out) const;
  void MergeWordScan(Scratch* scratch) const;
  void MergeWordHeap(Scratch* scratch) const;
  void EmitSymbol(int32_t symbol, std::vector<int32_t>* out) const {
    if (symbol < n_vocab) {
      out->push_back(symbol);
    } else {
      const auto& fb = virtual_fallback[symbol - n_vocab];
      out->insert(out->end(), fb.begin(), fb.end());
    }
  }
  const MergeInfo* FindMerge(int32_t left, int32_t right) const {
    auto it = merges.find(PairKey(left, right));
    return it == merges.end() ? nullptr : &it->second;
  }
};

int32_t Tokenizer::Impl::Intern(const std::string& text) {
  if (auto it = text_to_id.find(text); it != text_to_id.end()) return it->second;
  if (auto it = virtual_ids.find(text); it != virtual_ids.end()) return it->second;
  const int32_t id = n_vocab + static_cast<int32_t>(virtual_fallback.size());
  // llama.cpp's fallback looks up each byte of the symbol's (byte-alphabet) text on its own.
  std::vector<int32_t> fallback;
  for (char c : text) {
    if (auto it = text_to_id.find(std::string(1, c)); it != text_to_id.end()) {
      fallback.push_back(it->second);
    }
  }
  virtual_fallback.push_back(std::move(fallback));
  virtual_text.push_back(text);
  virtual_ids.emplace(text, id);
  return id;
}

void Tokenizer::Impl::BuildSpecials() {
  for (int32_t id = 0; id < n_vocab; ++id) {
    if (attrs[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown)) specials.push_back(id);
  }
  // llama.cpp sorts by length only (std::sort, so equal lengths land in an unspecified order);
  // ties by id keep ours deterministic. Ties matter only for overlapping equal-length matches.
  std::stable_sort(specials.begin(), specials.end(), [&](int32_t a, int32_t b) {
    return tokens[a].size() > tokens[b].size();
  });
  trie_terminal.push_back(-1);  // root
  for (size_t prio = 0; prio < specials.size(); ++prio) {
    const std::string& text = tokens[specials[prio]];
    if (text.empty()) continue;
    special_first_byte[static_cast<uint8_t>(text[0])] = true;
    int32_t node = 0;
    for (char c : text) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
      auto it = trie_edges.find(key);
      if (it == trie_edges.end()) {
        const int32_t child = static_cast<int32_t>(trie_terminal.size());
        trie_terminal.push_back(-1);
        it = trie_edges.emplace(key, child).first;
      }
      node = it->second;
    }
    if (trie_terminal[node] < 0) trie_terminal[node] = static_cast<int32_t>(prio);
  }
}

// llama.cpp (tokenizer_st_partition) takes the special tokens one at a time in priority order
// and cuts every leftmost non-overlapping occurrence that lies wholly inside still-raw text. We
// find all occurrences in one trie pass, then replay that order over them.
std::vector<Fragment> Tokenizer::Impl::Partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  std::vector<std::vector<size_t>> occurrences;  // by priority: start offsets, ascending
  for (size_t pos = 0; pos < text.size(); ++pos) {
    if (!special_first_byte[static_cast<uint8_t>(text[pos])]) continue;
    int32_t node = 0;
    for (size_t k = pos; k < text.size(); ++k) {
      auto it = trie_edges.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[k]));
      if (it == trie_edges.end()) break;
      node = it->second;
      const int32_t prio = trie_terminal[node];
      if (prio < 0) continue;
      if (!parse_special && (attrs[specials[prio]] & (kAttrControl | kAttrUnknown))) continue;
      if (occurrences.size() <= static_cast<size_t>(prio)) occurrences.resize(prio + 1);
      occurrences[prio].push_back(pos);
    }
  }
  if (occurrences.empty()) {
    fragments.push_back({-1, 0, text.size()});
    return fragments;
  }
  std::vector<uint8_t> claimed(text.size(), 0);
  std::vector<std::pair<size_t, int32_t>> cuts;  // (start, priority)
  for (size_t prio = 0; prio < occurrences.size(); ++prio) {
    const size_t len = tokens[specials[prio]].size();
    size_t next_allowed = 0;
    for (size_t pos : occurrences[prio]) {
      if (pos < next_allowed) continue;
      if (std::find(claimed.begin() + pos, claimed.begin() + pos + len, 1) !=
          claimed.begin() + pos + len) {
        continue;
      }
      std::fill(claimed.begin() + pos, claimed.begin() + pos + len, 1);
      cuts.emplace_back(pos, static_cast<int32_t>(prio));
      next_allowed = pos + len;
    }
  }
  std::sort(cuts.begin(), cuts.end());
  size_t raw_begin = 0;
  for (const auto& [pos, prio] : cuts) {
    if (pos > raw_begin) fragments.push_back({-1, raw_begin, pos});
    const int32_t id = specials[prio];
    fragments.push_back({id, pos, pos + tokens[id].size()});
    raw_begin = pos + tokens[id].size();
  }
  if (raw_begin < text.size()) fragments.push_back({-1, raw_begin, text.size()});
  return fragments;
}

void Tokenizer::Impl::EncodeText(std::string_view text, Scratch* s, std::vector<int32_t>* out) const {
  s->cps.clear();
  s->word_lengths.clear();
  DecodeUtf8Lenient(text, &s->cps);
  SplitKimiK2(s->cps.data(), s->cps.size(), &s->word_lengths);
  size_t cp_index = 0;
  for (uint32_t len : s->word_lengths) {
    s->word_bytes.clear();
    for (uint32_t k = 0; k < len; ++k) AppendUtf8(s->cps[cp_index + k], &s->word_bytes);
    cp_index += len;
    MergeWord(s, out);
  }
}

void Tokenizer::Impl::MergeWord(Scratch* s, std::vector<int32_t>* out) const {
  const std::string& bytes = s->word_bytes;
  s->symbols.clear();
  for (char c : bytes) s->symbols.push_back(byte_symbol[static_cast<uint8_t>(c)]);
  if (s->symbols.size() > 1) {
    if (s->symbols.size() <= kScanMergeMaxSymbols) {
      MergeWordScan(s);
    } else {
      MergeWordHeap(s);
    }
  }
  for (int32_t symbol : s->symbols) EmitSymbol(symbol, out);
}

// Short words: keep the live symbols compact and rescan for the best pair each round.
void Tokenizer::Impl::MergeWordScan(Scratch* s) const {
  auto& sym = s->symbols;
  auto& rank = s->ranks;      // rank[i]: merge rank of (sym[i], sym[i+1])
  auto& result = s->results;  // result[i]: merged symbol of that pair
  const size_t n = sym.size();
  rank.resize(n - 1);
  result.resize(n - 1);
  auto update = [&](size_t i) {
    const MergeInfo* m = FindMerge(sym[i], sym[i + 1]);
    rank[i] = m ? m->rank : kNoRank;
    result[i] = m ? m->result : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) update(i);
  size_t live = n;
  while (live > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < live; ++i) {
      if (rank[i] < rank[best]) best = i;  // strict: leftmost wins ties
    }
    if (rank[best] == kNoRank) break;
    sym[best] = result[best];
    sym.erase(sym.begin() + best + 1);
    rank.erase(rank.begin() + best);
    result.erase(result.begin() + best);
    --live;
    if (best > 0) update(best - 1);
    if (best + 1 < live) update(best);
  }
}

// Long words (long runs of spaces, symbols or letters): a min-heap of candidate pairs over a
// linked list, stale entries skipped; same order as the scan (rank, then leftmost).
void Tokenizer::Impl::MergeWordHeap(Scratch* s) const {
  auto& sym = s->symbols;
  const int32_t n = static_cast<int32_t>(sym.size());
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank, left, right, left_symbol, right_symbol, result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    if (const MergeInfo* m = FindMerge(sym[left], sym[right])) {
      heap.push({m->rank, left, right, sym[left], sym[right], m->result});
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i, i + 1);
  std::vector<uint8_t> alive(n, 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        sym[c.left] != c.left_symbol || sym[c.right] != c.right_symbol) {
      continue;
    }
    sym[c.left] = c.result;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    push(prev[c.left], c.left);
    push(c.left, next[c.left]);
  }
  size_t out = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (alive[i]) sym[out++] = sym[i];
  }
  sym.resize(out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<Tokenizer> Tokenizer::FromVocab(VocabData vocab) {
  if (vocab.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.ggml.model '", vocab.model, "' is not supported (only byte-level BPE 'gpt2')"));
  }
  if (vocab.pre != "kimi-k2") {
    return absl::UnimplementedError(absl::StrCat("tokenizer.ggml.pre '", vocab.pre,
                                                 "' is not supported (only 'kimi-k2')"));
  }
  if (vocab.tokens.empty()) return absl::InvalidArgumentError("tokenizer.ggml.tokens is empty");
  if (vocab.tokens.size() >= static_cast<size_t>(INT32_MAX / 2)) {
    return absl::InvalidArgumentError("tokenizer.ggml.tokens is too large");
  }
  if (!vocab.token_types.empty() && vocab.token_types.size() < vocab.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "tokenizer.ggml.token_type has %d entries for %d tokens", vocab.token_types.size(),
        vocab.tokens.size()));
  }

  auto impl = std::make_unique<Impl>();
  Impl& t = *impl;
  t.n_vocab = static_cast<int32_t>(vocab.tokens.size());
  t.tokens = std::move(vocab.tokens);
  t.attrs.resize(t.n_vocab);
  for (int32_t id = 0; id < t.n_vocab; ++id) {
    if (t.tokens[id].empty()) t.tokens[id] = absl::StrCat("[EMPTY_", id, "]");  // as llama.cpp
    t.text_to_id[t.tokens[id]] = id;  // a duplicated text maps to its last id, as in llama.cpp
    t.attrs[id] = vocab.token_types.empty() ? uint8_t{kAttrNormal} : AttrFromType(vocab.token_types[id]);
  }
  for (std::string_view name : kControlByName) {
    if (auto it = t.text_to_id.find(std::string(name)); it != t.text_to_id.end()) {
      t.attrs[it->second] |= kAttrControl;
    }
  }
  for (std::string_view name : kUserDefinedByName) {
    if (auto it = t.text_to_id.find(std::string(name)); it != t.text_to_id.end()) {
      t.attrs[it->second] = kAttrUserDefined;
    }
  }

  for (int b = 0; b < 256; ++b) {
    std::string ch;
    AppendUtf8(ByteToCodepoint(static_cast<uint8_t>(b)), &ch);
    t.byte_symbol[b] = t.Intern(ch);
  }
  t.merges.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const std::string& merge = vocab.merges[rank];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) continue;  // llama.cpp keys it as ("", ""): never matches
    const std::string left = merge.substr(0, space);
    const std::string right = merge.substr(space + 1);
    if (left.empty() || right.empty()) continue;
    const int32_t left_id = t.Intern(left);
    const int32_t right_id = t.Intern(right);
    const int32_t result_id = t.Intern(left + right);
    t.merges.try_emplace(PairKey(left_id, right_id),
                         MergeInfo{static_cast<int32_t>(rank), result_id});  // first rank wins
  }

  // llama.cpp's BPE defaults: BOS = EOS = 11 unless the file says otherwise (if in range).
  auto resolve = [&](int64_t given, int32_t fallback) -> int32_t {
    if (given == -2) return fallback < t.n_vocab ? fallback : -1;
    if (given < 0) return -1;
    return given < t.n_vocab ? static_cast<int32_t>(given) : (fallback < t.n_vocab ? fallback : -1);
  };
  t.bos = resolve(vocab.bos_id, 11);
  t.eos = resolve(vocab.eos_id, 11);
  t.pad = resolve(vocab.pad_id, -1);
  t.add_bos = vocab.add_bos && t.bos >= 0;
  t.add_eos = vocab.add_eos && t.eos >= 0;

  // Pieces as llama.cpp's token_to_piece(special=true) renders them.
  t.pieces.resize(t.n_vocab);
  for (int32_t id = 0; id < t.n_vocab; ++id) {
    const uint8_t attr = t.attrs[id];
    const std::string& text = t.tokens[id];
    std::string& piece = t.pieces[id];
    if (attr & (kAttrControl | kAttrUnknown | kAttrUserDefined)) {
      piece = text;
    } else if (attr & kAttrNormal) {
      size_t offset = 0;
      while (offset < text.size()) {
        const uint32_t cp = DecodeUtf8Lenient(text, &offset);
        const int byte = CodepointToByte(cp);
        if (byte >= 0) {
          piece.push_back(static_cast<char>(byte));
        } else {  // llama.cpp's marker for a character outside the byte alphabet
          std::string utf8;
          AppendUtf8(cp, &utf8);
          absl::StrAppend(&piece, "[UNK_BYTE_0x");
          for (char c : utf8) absl::StrAppendFormat(&piece, "%02x", static_cast<uint8_t>(c));
          absl::StrAppend(&piece, text, "]");
        }
      }
    } else if (attr & kAttrByte) {  // "<0xAB>"
      if (text.size() >= 5) {
        piece.push_back(static_cast<char>(std::strtol(text.substr(3, 2).c_str(), nullptr, 16)));
      }
    }
  }
  t.BuildSpecials();
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special,
                                       bool add_special) const {
  const Impl& t = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && t.add_bos) out.push_back(t.bos);
  Scratch scratch;
  for (const Fragment& f : t.Partition(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
    } else {
      t.EncodeText(text.substr(f.begin, f.end - f.begin), &scratch, &out);
    }
  }
  if (add_special && t.add_eos) out.push_back(t.eos);
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids,
                                              bool render_special) const {
  const Impl& t = *impl_;
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= t.n_vocab) {
      return absl::InvalidArgumentError(
          absl::StrFormat("token id %d is out of range [0, %d)", id, t.n_vocab));
    }
    if (!render_special && (t.attrs[id] & (kAttrControl | kAttrUnknown))) continue;
    text += t.pieces[id];
  }
  return text;
}

const std::string& Tokenizer::Piece(int32_t id) const { return impl_->pieces.at(id); }
int32_t Tokenizer::vocab_size() const { return impl_->n_vocab; }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
bool Tokenizer::add_bos() const { return impl_->add_bos; }
bool Tokenizer::IsControl(int32_t id) const {
  return id >= 0 && id < impl_->n_vocab && (impl_->attrs[id] & kAttrControl);
}
const std::string& Tokenizer::TokenText(int32_t id) const { return impl_->tokens.at(id); }
int32_t Tokenizer::FindToken(std::string_view text) const {
  auto it = impl_->text_to_id.find(std::string(text));
  return it == impl_->text_to_id.end() ? -1 : it->second;
}

}  // namespace latentserve::tokenizer
