// Byte-level BPE tokenizer for Kimi (tokenizer.ggml.model "gpt2", pre "kimi-k2"), producing the
// same token ids as llama.cpp for every input, invalid UTF-8 included.
//
// Encode pipeline (each step mirrors llama.cpp's llama_vocab::impl::tokenize):
//  1. Special-token partition: control / user-defined / unknown tokens are cut out of the raw
//     bytes, longest token first (user-defined ones always; control and unknown ones only when
//     parse_special). The rest stays text.
//  2. Each text fragment is decoded leniently to code points (unicode.h) and split into words by
//     the kimi-k2 pre-tokenizer (pretokenizer.h).
//  3. Each word's UTF-8 bytes become one symbol per byte; adjacent symbols are merged lowest
//     merge rank first (leftmost on ties) until no listed merge applies.
//  4. A final symbol that is not a vocabulary token is emitted byte by byte (bytes with no token
//     are dropped); this only happens with inconsistent vocabularies.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace latentserve::gguf {
class File;
}

namespace latentserve::tokenizer {

// GGUF tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// Everything a Tokenizer is built from (what the GGUF tokenizer.ggml.* keys hold).
struct VocabData {
  std::vector<std::string> tokens;      // id -> text in the GPT-2 byte alphabet (specials raw)
  std::vector<int32_t> token_types;     // TokenType per id; empty = all normal
  std::vector<std::string> merges;      // "left right", rank = index
  std::string model = "gpt2";           // tokenizer.ggml.model
  std::string pre = "kimi-k2";          // tokenizer.ggml.pre
  int64_t bos_id = -2;                  // -2: not given (llama.cpp's BPE default 11), -1: none
  int64_t eos_id = -2;                  // likewise
  int64_t pad_id = -1;                  // -1: none
  bool add_bos = false;                 // tokenizer.ggml.add_bos_token
  bool add_eos = false;                 // tokenizer.ggml.add_eos_token
};

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* from a GGUF (a vocab-only file is enough).
  static absl::StatusOr<Tokenizer> FromGguf(const gguf::File& file);
  static absl::StatusOr<Tokenizer> FromVocab(VocabData vocab);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text`. parse_special: text such as "<|im_end|>" becomes the control token
  // (llama_tokenize's parse_special). add_special: prepend BOS / append EOS when the vocabulary
  // asks for it (llama_tokenize's add_special; node-llama-cpp's model.tokenize passes false).
  std::vector<int32_t> Encode(std::string_view text, bool parse_special,
                              bool add_special = false) const;

  // The exact bytes of `ids`. render_special=false drops control/unknown tokens (llama.cpp's
  // detokenize with special=false). Ids out of range are an error.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids,
                                     bool render_special = true) const;
  // Bytes of one token (empty for unused/undefined tokens; may be a partial UTF-8 sequence).
  const std::string& Piece(int32_t id) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the vocabulary has none
  int32_t eos_id() const;
  int32_t pad_id() const;
  bool add_bos() const;
  // Control tokens (including tokens llama.cpp promotes to control by name, e.g. "<|im_end|>").
  bool IsControl(int32_t id) const;
  const std::string& TokenText(int32_t id) const;  // raw vocabulary text
  // Id of the token whose vocabulary text is `text` (e.g. "<|im_end|>"), or -1.
  int32_t FindToken(std::string_view text) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace latentserve::tokenizer
