#include "common/tokenizer/detokenizer.h"

#include <vector>

#include "common/status.h"
#include "common/tokenizer/unicode.h"

namespace latentserve::tokenizer {

size_t IncompleteUtf8Suffix(const std::string& bytes) {
  const size_t n = bytes.size();
  // Walk back over at most 3 continuation bytes to the lead byte of the last sequence.
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const uint8_t b = static_cast<uint8_t>(bytes[n - back]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte
    const size_t need = Utf8SequenceLength(b);
    if (need <= 1 || back >= need) return 0;  // ASCII, invalid lead, or complete
    // Reject prefixes that can never complete (overlong / surrogate / > U+10FFFF starts).
    if (b == 0xC0 || b == 0xC1 || b > 0xF4) return 0;
    if (back >= 2) {
      const uint8_t b1 = static_cast<uint8_t>(bytes[n - back + 1]);
      if ((b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 > 0x9F) || (b == 0xF0 && b1 < 0x90) ||
          (b == 0xF4 && b1 > 0x8F)) {
        return 0;
      }
    }
    return back;
  }
  return 0;
}

absl::StatusOr<std::string> StreamingDecoder::Push(int32_t id) {
  ASSIGN_OR_RETURN(std::string piece, tokenizer_.Decode(std::vector<int32_t>{id}, render_special_));
  pending_ += piece;
  const size_t hold = IncompleteUtf8Suffix(pending_);
  std::string ready = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return ready;
}

std::string StreamingDecoder::Flush() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace latentserve::tokenizer
