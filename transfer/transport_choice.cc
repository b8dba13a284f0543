#include "transfer/transport_choice.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace latentserve::transfer {
namespace {

bool Offers(const TransportOffer& offer, const std::string& name) {
  return std::find(offer.transports.begin(), offer.transports.end(), name) != offer.transports.end();
}

// Whether `backend` can hand device memory to another process (a probe: one small exportable
// allocation and its export; the CPU backend's "host" handles only work in its own process).
bool CanExport(kernels::Backend& backend) {
  auto tensor = backend.AllocExportable(DType::kF32, {256, 1, 1, 1});
  if (!tensor.ok()) return false;
  auto handle = backend.ExportMemory(*tensor);
  return handle.ok() && handle->kind == "cuda-ipc";
}

}  // namespace

std::string HostId() {
  std::string boot_id;
  std::ifstream file("/proc/sys/kernel/random/boot_id");
  std::getline(file, boot_id);
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  if (boot_id.empty() && host[0] == '\0') return "";
  return absl::StrCat(absl::StripAsciiWhitespace(boot_id), "/", host);
}

absl::StatusOr<TransportOffer> OfferFor(const std::string& flag, kernels::Backend& backend, bool nccl_built) {
  TransportOffer offer;
  offer.host_id = HostId();
  offer.gpu_uuid = backend.DeviceUuid();
  offer.transports.push_back("grpc");
  if (flag == "grpc") return offer;
  if (flag == "nccl") {
    if (!nccl_built) {
      return absl::FailedPreconditionError("--transport nccl: this binary is built without NCCL (build with "
                                           "-DLATENTSERVE_CUDA=ON); use auto, grpc or cuda-ipc");
    }
    if (backend.name() != "cuda") {
      return absl::FailedPreconditionError(absl::StrCat("--transport nccl moves the cache between CUDA devices: it needs "
                                                        "--backend cuda, not ", backend.name()));
    }
    offer.transports.push_back("nccl");
    return offer;
  }
  if (flag != "auto" && flag != "cuda-ipc") {
    return absl::InvalidArgumentError(absl::StrCat("--transport must be one of ", kTransportFlagValues, ", got '",
                                                   flag, "'"));
  }
  const bool exports = CanExport(backend);
  if (flag == "cuda-ipc" && !exports) {
    return absl::FailedPreconditionError(absl::StrCat("--transport cuda-ipc needs a backend that exports device memory "
                                                      "(--backend cuda on a CUDA build); the ", backend.name(),
                                                      " backend cannot (use --transport auto or grpc)"));
  }
  if (exports && !offer.host_id.empty()) offer.transports.push_back("cuda-ipc");
  return offer;
}

std::string ChooseTransport(const TransportOffer& prefill, const TransportOffer& decode) {
  if (Offers(prefill, "cuda-ipc") && Offers(decode, "cuda-ipc") && !prefill.host_id.empty() &&
      prefill.host_id == decode.host_id) {
    return "cuda-ipc";
  }
  if (Offers(prefill, "nccl") && Offers(decode, "nccl")) return "nccl";
  return "grpc";
}

}  // namespace latentserve::transfer
