#include "router/text_codec.h"

#include "common/status.h"

#ifdef LATENTSERVE_HAVE_TOKENIZER
#include "common/gguf/gguf.h"
#include "common/tokenizer/chat_format.h"
#include "common/tokenizer/detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#endif

namespace latentserve::router {

#ifdef LATENTSERVE_HAVE_TOKENIZER
namespace {

class TokenizerCodec : public TextCodec {
 public:
  explicit TokenizerCodec(tokenizer::Tokenizer tok) : tokenizer_(std::move(tok)) {}

  std::vector<int32_t> EncodeText(const std::string& text) const override {
    return tokenizer_.Encode(text, /*parse_special=*/false, /*add_special=*/true);
  }
  std::vector<int32_t> EncodeTextContinuation(const std::string& text) const override {
    return tokenizer_.Encode(text, /*parse_special=*/false, /*add_special=*/false);
  }
  std::vector<int32_t> EncodeChat(const v1::ChatMessages& chat) const override {
    std::vector<tokenizer::ChatMessage> messages;
    for (const auto& m : chat.messages()) messages.push_back({m.role(), m.content()});
    const bool add_generation_prompt = chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
    return tokenizer_.Encode(tokenizer::FormatChat(messages, add_generation_prompt), /*parse_special=*/true);
  }
  int32_t eos_id() const override { return tokenizer_.eos_id(); }

  class DecoderStream : public Stream {
   public:
    explicit DecoderStream(const tokenizer::Tokenizer& tok) : decoder_(tok, /*render_special=*/false) {}
    std::string Push(int32_t id) override {
      auto text = decoder_.Push(id);
      return text.ok() ? *text : std::string();
    }
    std::string Flush() override { return decoder_.Flush(); }

   private:
    tokenizer::StreamingDecoder decoder_;
  };
  std::unique_ptr<Stream> NewStream() const override { return std::make_unique<DecoderStream>(tokenizer_); }

 private:
  tokenizer::Tokenizer tokenizer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TextCodec>> TextCodec::Load(const std::string& gguf_path) {
  ASSIGN_OR_RETURN(auto file, gguf::File::Open(gguf_path));
  ASSIGN_OR_RETURN(tokenizer::Tokenizer tok, tokenizer::Tokenizer::FromGguf(*file));
  return std::unique_ptr<TextCodec>(new TokenizerCodec(std::move(tok)));
}
#else
absl::StatusOr<std::unique_ptr<TextCodec>> TextCodec::Load(const std::string&) {
  return absl::UnimplementedError(
      "text and chat prompts need the tokenizer, which this build of latentserve lacks; send token ids "
      "(GenerateRequest.tokens / --prompt-tokens)");
}
#endif

// Proto3 strings must be UTF-8; the detokeniser passes bytes that can never become valid
// through (a model may emit them), so they become U+FFFD here.
std::string ValidUtf8(const std::string& bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char c = static_cast<unsigned char>(bytes[i]);
    int len = c < 0x80 ? 1 : c >= 0xC2 && c < 0xE0 ? 2 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    bool ok = len > 0 && i + len <= bytes.size();
    for (int k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(bytes[i + k]) & 0xC0) == 0x80;
    if (ok && len == 3) {
      const unsigned char c1 = static_cast<unsigned char>(bytes[i + 1]);
      ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 >= 0xA0);
    } else if (ok && len == 4) {
      const unsigned char c1 = static_cast<unsigned char>(bytes[i + 1]);
      ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 >= 0x90);
    }
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

}  // namespace latentserve::router
