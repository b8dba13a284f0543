// Text <-> tokens for the router: the model's tokenizer (common/tokenizer) when it is built
// and the GGUF has one. Kept behind this small class so the router builds without it.
#pragma once

#include <memory>
#include <string>
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

}  // namespace latentserve::router
