// Incremental detokenisation for streaming responses: a token may end in the middle of a UTF-8
// character (byte-level BPE splits multi-byte characters freely), so bytes that may still
// become a valid character are held until the next token completes them.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/tokenizer/tokenizer.h"

namespace latentserve::tokenizer {

class StreamingDecoder {
 public:
  // `tokenizer` must outlive the decoder. render_special as in Tokenizer::Decode.
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool render_special = true)
      : tokenizer_(tokenizer), render_special_(render_special) {}

  // Appends token `id` and returns the text that is now complete: every byte except a trailing
  // incomplete-but-valid UTF-8 prefix. Bytes that can never be valid UTF-8 are passed through
  // (the concatenation of all outputs plus Flush() equals Decode() of all ids, byte for byte).
  absl::StatusOr<std::string> Push(int32_t id);
  // Returns whatever is held (an unfinished sequence at the end of the stream) and resets.
  std::string Flush();
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  bool render_special_;
  std::string pending_;
};

// Number of bytes at the end of `bytes` that form an incomplete but so far valid UTF-8
// sequence (0..3).
size_t IncompleteUtf8Suffix(const std::string& bytes);

}  // namespace latentserve::tokenizer
