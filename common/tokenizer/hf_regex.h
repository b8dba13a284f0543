// The kimi-k2 pre-tokenizer regex from Kimi's tokenizer.json, run with PCRE2 (UTF + UCP).
// Not used for encoding: llama.cpp (our reference) runs a hand-written scanner that differs
// from this regex (see pretokenizer.h). This exists to measure and document those differences
// (tests/tokenizer) and as a diagnostic for callers comparing against Hugging Face tokenizers.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace latentserve::tokenizer {

class HfKimiRegex {
 public:
  static absl::StatusOr<HfKimiRegex> Create();
  HfKimiRegex(HfKimiRegex&&) noexcept;
  HfKimiRegex& operator=(HfKimiRegex&&) noexcept;
  ~HfKimiRegex();

  // Words of valid UTF-8 `text` in order; their concatenation is `text`. Fails on invalid UTF-8.
  absl::StatusOr<std::vector<std::string>> Split(std::string_view text) const;

 private:
  struct Impl;
  explicit HfKimiRegex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace latentserve::tokenizer
