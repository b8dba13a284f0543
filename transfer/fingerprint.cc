#include "transfer/fingerprint.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {

absl::StatusOr<std::string> ModelFingerprint(const std::string& gguf_path) {
  std::ifstream in(gguf_path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model file ", gguf_path));
  const int64_t size = static_cast<int64_t>(in.tellg());
  in.seekg(0);
  std::string head(static_cast<size_t>(std::min<int64_t>(size, 8 << 20)), '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  if (!in) return absl::DataLossError(absl::StrCat("cannot read model file ", gguf_path));
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(Xxh64(head, static_cast<uint64_t>(size))));
  return std::string(hex);
}

}  // namespace latentserve::transfer
