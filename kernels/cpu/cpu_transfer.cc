// The CPU backend's device-transfer capabilities: its memory is host memory, so a copy to
// another CPU backend is a memcpy, an exported handle is an address in this process, and rows
// are hashed in place (kernels/xxh64.h).
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/xxh64.h"

namespace latentserve::kernels::cpu {

bool CpuBackend::CopyToBackend(const Tensor& src, size_t src_offset, Backend& dst_backend, const Tensor& dst,
                               size_t dst_offset, size_t bytes) {
  if (dynamic_cast<CpuBackend*>(&dst_backend) == nullptr) return false;
  LS_CHECK(src_offset <= src.nbytes() && bytes <= src.nbytes() - src_offset);
  LS_CHECK(dst_offset <= dst.nbytes() && bytes <= dst.nbytes() - dst_offset);
  std::memmove(HostPtr(dst) + dst_offset, HostPtr(src) + src_offset, bytes);
  return true;
}

absl::StatusOr<Backend::MemoryHandle> CpuBackend::ExportMemory(const Tensor& tensor) {
  if (!tensor.defined()) return absl::InvalidArgumentError("cannot export an empty tensor");
  MemoryHandle handle;
  handle.kind = "host";
  const uintptr_t address = reinterpret_cast<uintptr_t>(HostPtr(tensor));
  handle.handle.assign(reinterpret_cast<const char*>(&address), sizeof(address));
  handle.bytes = tensor.nbytes();
  handle.process = static_cast<int64_t>(::getpid());
  return handle;
}

absl::StatusOr<Tensor> CpuBackend::OpenMemory(const MemoryHandle& handle, DType dtype, Shape ne) {
  if (handle.kind != "host" || handle.handle.size() != sizeof(uintptr_t)) {
    return absl::InvalidArgumentError(absl::StrCat("the cpu backend opens host memory handles, not '", handle.kind, "'"));
  }
  if (handle.process != static_cast<int64_t>(::getpid())) {
    return absl::InvalidArgumentError(absl::StrCat("host memory of process ", handle.process,
                                                   " cannot be opened in process ", ::getpid()));
  }
  Tensor probe;
  probe.dtype = dtype;
  probe.ne = ne;
  for (int64_t d : ne) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  if (probe.nbytes() > handle.bytes) {
    return absl::InvalidArgumentError(absl::StrCat("a tensor of ", probe.nbytes(), " bytes does not fit the ",
                                                   handle.bytes, "-byte exported memory"));
  }
  uintptr_t address = 0;
  std::memcpy(&address, handle.handle.data(), sizeof(address));
  return ImportHost(dtype, ne, reinterpret_cast<const void*>(address));
}

absl::Status CpuBackend::HashPagedRows(const Tensor& pool, absl::Span<const int32_t> page_table, int64_t first_token,
                                       int64_t count, uint64_t* hashes) {
  RETURN_IF_ERROR(CheckPagedRows(pool, page_table, first_token, count));
  const int64_t page_tokens = pool.ne[1];
  const size_t row_bytes = pool.row_bytes();
  const uint8_t* base = HostPtr(pool);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t token = first_token + i;
    const int64_t slot = static_cast<int64_t>(page_table[token / page_tokens]) * page_tokens + token % page_tokens;
    hashes[i] = xxh64::Hash(base + static_cast<size_t>(slot) * row_bytes, row_bytes);
  }
  return absl::OkStatus();
}

}  // namespace latentserve::kernels::cpu
