// Kimi chat template, exactly as llama.cpp renders LLM_CHAT_TEMPLATE_KIMI_K2 (llama-chat.cpp):
//   system    -> <|im_system|>system<|im_middle|>{content}<|im_end|>
//   user      -> <|im_user|>user<|im_middle|>{content}<|im_end|>
//   assistant -> <|im_assistant|>assistant<|im_middle|>{content}<|im_end|>
//   tool      -> <|im_system|>tool<|im_middle|>{content}<|im_end|>
//   other roles: no header, just {content}<|im_end|> (llama.cpp does the same)
// followed, when add_generation_prompt, by <|im_assistant|>assistant<|im_middle|>.
// No default system prompt is inserted (the HF Jinja template adds one; llama.cpp's built-in
// renderer does not, and we match llama.cpp). Tokenise the result with parse_special = true.
#pragma once

#include <string>
#include <vector>

namespace latentserve::tokenizer {

struct ChatMessage {
  std::string role;     // "system", "user", "assistant", "tool"
  std::string content;
};

std::string FormatChat(const std::vector<ChatMessage>& messages,
                       bool add_generation_prompt = true);

}  // namespace latentserve::tokenizer
