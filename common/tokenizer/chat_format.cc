#include "common/tokenizer/chat_format.h"

#include "absl/strings/str_cat.h"

namespace latentserve::tokenizer {

std::string FormatChat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) {
    if (m.role == "system") {
      out += "<|im_system|>system<|im_middle|>";
    } else if (m.role == "user") {
      out += "<|im_user|>user<|im_middle|>";
    } else if (m.role == "assistant") {
      out += "<|im_assistant|>assistant<|im_middle|>";
    } else if (m.role == "tool") {
      out += "<|im_system|>tool<|im_middle|>";
    }
    absl::StrAppend(&out, m.content, "<|im_end|>");
  }
  if (add_generation_prompt) out += "<|im_assistant|>assistant<|im_middle|>";
  return out;
}

}  // namespace latentserve::tokenizer
