#include "common/secure_random.h"

#include <errno.h>
#include <sys/random.h>

#include <fstream>
#include <vector>

namespace latentserve {
namespace {

bool FillFromGetrandom(unsigned char* out, size_t bytes) {
  size_t filled = 0;
  while (filled < bytes) {
    const ssize_t n = getrandom(out + filled, bytes - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;  // ENOSYS (old kernel, seccomp): try /dev/urandom
    }
    filled += static_cast<size_t>(n);
  }
  return true;
}

bool FillFromUrandom(unsigned char* out, size_t bytes) {
  std::ifstream in("/dev/urandom", std::ios::binary);
  return in && in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(bytes)) &&
         static_cast<size_t>(in.gcount()) == bytes;
}

}  // namespace

absl::StatusOr<std::string> SecureRandomHex(size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  if (!FillFromGetrandom(raw.data(), bytes) && !FillFromUrandom(raw.data(), bytes)) {
    return absl::UnavailableError("no kernel randomness: getrandom(2) and /dev/urandom both failed");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes);
  for (unsigned char b : raw) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

}  // namespace latentserve
