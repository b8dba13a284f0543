// The needle model's readable vocabulary: every word of needle_words.inc, with a leading
// space, is one token. Merges are prefix chains (" v", " va", " vau", ...) listed before any
// merge without a leading space, so at every step of BPE the only mergeable pair inside a
// word is (prefix so far, next letter): each listed word ends as a single token.
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "tools/lib/needle_model.h"

namespace latentserve::tools {
namespace {

#define NEEDLE_WORDS(name, ...) const char* const name[] = {__VA_ARGS__};
#include "tools/lib/needle_words.inc"
#undef NEEDLE_WORDS

struct WordGroup {
  const char* const* words;
  size_t count;
};

template <size_t N>
WordGroup Group(const char* const (&words)[N]) {
  return WordGroup{words, N};
}

const WordGroup kGroups[] = {
    Group(kNeedleStarters), Group(kNeedleAdjectives), Group(kNeedleNouns),
    Group(kNeedleVerbs),    Group(kNeedleAdverbs),    Group(kNeedlePrepositions),
    Group(kNeedleLinks),    Group(kNeedleFactWords),  Group(kNeedleNames),
    Group(kNeedleDigits),
};

// Same control tokens, same order, as the random test models (BuildTestVocab).
const char* const kControl[] = {"<|im_end|>",    "<|im_user|>",   "<|im_assistant|>",
                                "<|im_system|>", "<|im_middle|>", "[BOS]",
                                "[EOS]",         "[PAD]"};

// Tokens and merges without the control tokens and the reserved fill.
void BuildWords(std::vector<std::string>* tokens, std::vector<std::string>* merges) {
  const std::vector<std::string> byte_text = ByteTokenTexts();
  absl::flat_hash_set<std::string> known(byte_text.begin(), byte_text.end());
  *tokens = byte_text;
  auto chain = [&](const std::string& bytes) {
    std::string current = byte_text[static_cast<unsigned char>(bytes[0])];
    for (size_t i = 1; i < bytes.size(); ++i) {
      const std::string& next = byte_text[static_cast<unsigned char>(bytes[i])];
      std::string merged = current + next;
      if (known.insert(merged).second) {
        merges->push_back(current + " " + next);
        tokens->push_back(merged);
      }
      current = std::move(merged);
    }
  };
  for (const WordGroup& group : kGroups) {
    for (size_t i = 0; i < group.count; ++i) chain(std::string(" ") + group.words[i]);
  }
  chain("\n\n");  // paragraph break; no space-led pair can contain it
}

}  // namespace

int64_t NeedleVocabMinimum() {
  std::vector<std::string> tokens, merges;
  BuildWords(&tokens, &merges);
  return static_cast<int64_t>(tokens.size() + sizeof(kControl) / sizeof(kControl[0]));
}

absl::StatusOr<TestVocab> BuildNeedleVocab(int64_t vocab_size) {
  TestVocab v;
  BuildWords(&v.tokens, &v.merges);
  v.token_types.assign(v.tokens.size(), 1);
  if (vocab_size < NeedleVocabMinimum()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the needle vocabulary needs --vocab >= ", NeedleVocabMinimum(), ", got ", vocab_size));
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

}  // namespace latentserve::tools
