#include "common/tokenizer/hf_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace latentserve::tokenizer {
namespace {

// tokenizer.json's pattern with the Java-style class intersections ([A&&[^B]]) rewritten as a
// negative lookahead, which PCRE2 supports.
constexpr char kPattern[] =
    "[\\p{Han}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?(?:(?!\\p{Han})[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}])*"
    "(?:(?!\\p{Han})[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}])+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?(?:(?!\\p{Han})[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}])+"
    "(?:(?!\\p{Han})[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}])*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)"
    "|\\s+";

}  // namespace

struct HfKimiRegex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

HfKimiRegex::HfKimiRegex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfKimiRegex::HfKimiRegex(HfKimiRegex&&) noexcept = default;
HfKimiRegex& HfKimiRegex::operator=(HfKimiRegex&&) noexcept = default;
HfKimiRegex::~HfKimiRegex() = default;

absl::StatusOr<HfKimiRegex> HfKimiRegex::Create() {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  auto impl = std::make_unique<Impl>();
  impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern), PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (impl->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InternalError(absl::StrCat("PCRE2 compile failed at ", error_offset, ": ",
                                            reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE);  // best effort; falls back to interpreter
  return HfKimiRegex(std::move(impl));
}

absl::StatusOr<std::vector<std::string>> HfKimiRegex::Split(std::string_view text) const {
  std::vector<std::string> words;
  pcre2_match_data* match = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  size_t offset = 0;
  size_t last_end = 0;
  uint32_t options = 0;
  while (offset <= text.size()) {
    const int rc = pcre2_match(impl_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                               offset, options, match, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(match);
      return absl::InvalidArgumentError(absl::StrCat("PCRE2 match error ", rc));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
    const size_t begin = ovector[0], end = ovector[1];
    if (begin > last_end) words.emplace_back(text.substr(last_end, begin - last_end));
    if (end > begin) words.emplace_back(text.substr(begin, end - begin));
    last_end = end;
    if (end == begin) {
      if (end >= text.size()) break;
      offset = end + 1;
      while (offset < text.size() && (static_cast<uint8_t>(text[offset]) & 0xC0) == 0x80) ++offset;
      options = 0;
    } else {
      offset = end;
      options = PCRE2_NO_UTF_CHECK;
    }
  }
  if (last_end < text.size()) words.emplace_back(text.substr(last_end));
  pcre2_match_data_free(match);
  return words;
}

}  // namespace latentserve::tokenizer
