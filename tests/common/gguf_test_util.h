// Helpers for GGUF tests: a little-endian byte builder and temp files.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace latentserve::gguf::testing {

// Builds GGUF bytes by hand, so tests can write any malformed file.
struct Bytes {
  std::string b;
  Bytes& U8(uint8_t v) { return Raw(&v, 1); }
  Bytes& U32(uint32_t v) { return Raw(&v, 4); }
  Bytes& I32(int32_t v) { return Raw(&v, 4); }
  Bytes& U64(uint64_t v) { return Raw(&v, 8); }
  Bytes& Str(const std::string& s) {
    U64(s.size());
    b.append(s);
    return *this;
  }
  Bytes& Raw(const void* p, size_t n) {
    b.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& Pad(size_t alignment) {
    while (b.size() % alignment) b.push_back('\0');
    return *this;
  }
  Bytes& Zeros(size_t n) {
    b.append(n, '\0');
    return *this;
  }
  // Header: magic, version, tensor count, kv count.
  Bytes& Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    b.append("GGUF", 4);
    U32(version);
    U64(tensors);
    return U64(kvs);
  }
  // A tensor info with the given dims.
  Bytes& Tensor(const std::string& name, std::initializer_list<uint64_t> ne, uint32_t type,
                uint64_t offset) {
    Str(name);
    U32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) U64(d);
    U32(type);
    return U64(offset);
  }
};

// A path private to this process: ctest runs each test in its own process, in parallel, and
// a file rewritten while another process has it mapped would fault there (SIGBUS).
inline std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/ls" + std::to_string(::getpid()) + "_" + name;
}

inline std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = TempPath(name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace latentserve::gguf::testing
