// gguf::File::Open on arbitrary bytes (written to a memfd, so the reader's own open + mmap
// path runs unchanged), then every accessor on whatever it accepted: typed getters on every
// key, every tensor's data (first and last byte, which must lie inside the mapping), and, when
// the tokenizer is built, Tokenizer::FromGguf plus a short Encode/Decode on the result.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/gguf/gguf.h"
#ifdef LATENTSERVE_FUZZ_TOKENIZER
#include "common/tokenizer/tokenizer.h"
#endif

namespace {

using latentserve::gguf::File;
using latentserve::gguf::ReaderLimits;

// Small limits keep hostile counts from turning into slow (but bounded) allocations.
ReaderLimits FuzzLimits() {
  ReaderLimits limits;
  limits.max_string_bytes = 1 << 16;
  limits.max_array_elements = 1 << 16;
  limits.max_kv_count = 1 << 12;
  limits.max_tensor_count = 1 << 12;
  return limits;
}

void Exercise(const File& file) {
  volatile uint64_t sink = 0;
  for (const auto& [key, value] : file.metadata()) {
    if (file.Find(key) == nullptr) std::abort();
    if (auto v = file.GetUint(key); v.ok()) sink = sink + *v;
    if (auto v = file.GetInt(key); v.ok()) sink = sink + static_cast<uint64_t>(*v);
    if (auto v = file.GetFloat(key); v.ok()) sink = sink + static_cast<uint64_t>(*v != 0);
    if (auto v = file.GetBool(key); v.ok()) sink = sink + *v;
    if (auto v = file.GetString(key); v.ok()) sink = sink + v->size();
    if (auto v = file.GetStringArray(key); v.ok()) sink = sink + v->size();
    if (auto v = file.GetIntArray(key); v.ok()) sink = sink + v->size();
    if (auto v = file.GetFloatArray(key); v.ok()) sink = sink + v->size();
  }
  for (const auto& tensor : file.tensors()) {
    if (file.FindTensor(tensor.name) == nullptr) std::abort();
    sink = sink + static_cast<uint64_t>(tensor.elements());
    if (tensor.nbytes > 0) {
      if (tensor.data == nullptr) std::abort();
      sink = sink + tensor.data[0] + tensor.data[tensor.nbytes - 1];
    }
  }
#ifdef LATENTSERVE_FUZZ_TOKENIZER
  if (file.Find("tokenizer.ggml.tokens") != nullptr) {
    auto tokenizer = latentserve::tokenizer::Tokenizer::FromGguf(file);
    if (tokenizer.ok()) {
      const auto ids = tokenizer->Encode("Hello, world! <|im_end|> 12345 \xE4\xB8\xAD\xFF", true, true);
      for (int32_t id : ids) {
        if (id < 0 || id >= tokenizer->vocab_size()) std::abort();
      }
      if (!tokenizer->Decode(ids).ok()) std::abort();
    }
  }
#endif
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("fuzz_gguf", 0);
  if (fd < 0) std::abort();
  if (ftruncate(fd, 0) != 0) std::abort();
  for (size_t written = 0; written < size;) {
    const ssize_t n = pwrite(fd, data + written, size - written, static_cast<off_t>(written));
    if (n <= 0) std::abort();
    written += static_cast<size_t>(n);
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto file = File::Open(path, FuzzLimits());
  if (file.ok()) Exercise(**file);
  return 0;
}
