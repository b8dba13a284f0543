#include "transfer/checksum.h"

#include <xxhash.h>

#include <new>

namespace latentserve::transfer {

uint64_t Xxh64(std::string_view bytes, uint64_t seed) { return XXH64(bytes.data(), bytes.size(), seed); }

void Xxh64Hasher::FreeState::operator()(XXH64_state_s* state) const { XXH64_freeState(state); }

Xxh64Hasher::Xxh64Hasher(uint64_t seed) : state_(XXH64_createState()) {
  if (state_ == nullptr) throw std::bad_alloc();
  XXH64_reset(state_.get(), seed);
}

Xxh64Hasher::~Xxh64Hasher() = default;
Xxh64Hasher::Xxh64Hasher(Xxh64Hasher&&) noexcept = default;
Xxh64Hasher& Xxh64Hasher::operator=(Xxh64Hasher&&) noexcept = default;

void Xxh64Hasher::Update(std::string_view bytes) { XXH64_update(state_.get(), bytes.data(), bytes.size()); }

uint64_t Xxh64Hasher::Digest() const { return XXH64_digest(state_.get()); }

}  // namespace latentserve::transfer
