// Text <-> tokens for the router: the model's tokenizer (common/tokenizer) when it is built
// and the GGUF has one. Kept behind this small class so the router builds without it.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "latentserve/v1/generate.pb.h"

namespace latentserve::router {

class TextCodec {
 public:
  // Unimplemented when latentserve was built without the tokenizer; the GGUF's errors else.
  static absl::StatusOr<std::unique_ptr<TextCodec>> Load(const std::string& gguf_path);
  virtual ~TextCodec() = default;

  virtual std::vector<int32_t> EncodeText(const std::string& text) const = 0;
  // Text that continues earlier tokens (a session's suffix): no BOS / EOS added.
  virtual std::vector<int32_t> EncodeTextContinuation(const std::string& text) const = 0;
  virtual std::vector<int32_t> EncodeChat(const v1::ChatMessages& chat) const = 0;
  virtual int32_t eos_id() const = 0;  // -1: none

  // Incremental detokeniser for one stream.
  class Stream {
   public:
    virtual ~Stream() = default;
    virtual std::string Push(int32_t id) = 0;
    virtual std::string Flush() = 0;
  };
  virtual std::unique_ptr<Stream> NewStream() const = 0;
};

// Holds back text that may be the start of a stop string; reports a match.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    for (const auto& s : stops_) hold_ = std::max(hold_, s.empty() ? size_t{0} : s.size() - 1);
  }
  // Appends text; returns what can be emitted now. *matched when a stop string appeared
  // (the text before it is returned, nothing after).
  std::string Push(const std::string& text, bool* matched) {
    pending_ += text;
    for (const auto& s : stops_) {
      if (s.empty()) continue;
      const size_t at = pending_.find(s);
      if (at != std::string::npos) {
        *matched = true;
        std::string out = pending_.substr(0, at);
        pending_.clear();
        return out;
      }
    }
    if (pending_.size() <= hold_) return "";
    std::string out = pending_.substr(0, pending_.size() - hold_);
    pending_.erase(0, pending_.size() - hold_);
    return out;
  }
  std::string Flush() { return std::exchange(pending_, std::string()); }

 private:
  std::vector<std::string> stops_;
  size_t hold_ = 0;
  std::string pending_;
};

// Proto3 strings must be UTF-8; the detokeniser passes bytes that can never become valid
// through (a model may emit them), so they become U+FFFD here.
std::string ValidUtf8(const std::string& bytes);

}  // namespace latentserve::router
