// Unguessable identifiers (lease ids, generated credentials) from the kernel's CSPRNG.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace latentserve {

// `bytes` random bytes from getrandom(2) (falling back to /dev/urandom), as lowercase hex
// (2 * bytes characters). Never a seeded userspace generator: these ids are capabilities.
absl::StatusOr<std::string> SecureRandomHex(size_t bytes);

}  // namespace latentserve
