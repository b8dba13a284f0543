// Tokenizer::FromGguf: the tokenizer.ggml.* keys of a GGUF (kept apart from tokenizer.cc so
// users of FromVocab do not link the GGUF reader).
#include <climits>

#include "common/gguf/gguf.h"
#include "common/status.h"
#include "common/tokenizer/tokenizer.h"

namespace latentserve::tokenizer {

absl::StatusOr<Tokenizer> Tokenizer::FromGguf(const gguf::File& file) {
  VocabData vocab;
  ASSIGN_OR_RETURN(vocab.model, file.GetString("tokenizer.ggml.model"));
  if (auto pre = file.GetString("tokenizer.ggml.pre"); pre.ok()) {
    vocab.pre = *pre;
  } else if (absl::IsNotFound(pre.status())) {
    vocab.pre = "default";
  } else {
    return pre.status();
  }
  ASSIGN_OR_RETURN(vocab.tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(std::vector<int64_t> types, file.GetIntArray("tokenizer.ggml.token_type"));
    vocab.token_types.assign(types.begin(), types.end());
  }
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    ASSIGN_OR_RETURN(vocab.merges, file.GetStringArray("tokenizer.ggml.merges"));
  }
  auto optional_id = [&](const char* key, int64_t* out) -> absl::Status {
    if (file.Find(key) == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN(const uint64_t id, file.GetUint(key));
    *out = id > static_cast<uint64_t>(INT32_MAX) ? INT32_MAX : static_cast<int64_t>(id);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(optional_id("tokenizer.ggml.bos_token_id", &vocab.bos_id));
  RETURN_IF_ERROR(optional_id("tokenizer.ggml.eos_token_id", &vocab.eos_id));
  RETURN_IF_ERROR(optional_id("tokenizer.ggml.padding_token_id", &vocab.pad_id));
  auto optional_bool = [&](const char* key, bool* out) -> absl::Status {
    if (file.Find(key) == nullptr) return absl::OkStatus();
    ASSIGN_OR_RETURN(*out, file.GetBool(key));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(optional_bool("tokenizer.ggml.add_bos_token", &vocab.add_bos));
  RETURN_IF_ERROR(optional_bool("tokenizer.ggml.add_eos_token", &vocab.add_eos));
  return FromVocab(std::move(vocab));
}

}  // namespace latentserve::tokenizer
