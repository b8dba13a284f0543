// The CPU backend's device-transfer capabilities: its memory is host memory, so a copy to
// another CPU backend is a memcpy, and an exported handle is an address in this process.
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"

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

}  // namespace latentserve::kernels::cpu
