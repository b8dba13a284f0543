// The NCCL side of the NCCL transport (built only with LATENTSERVE_CUDA; library
// latentserve_transfer_nccl): unique ids, communicators formed without blocking (so the
// watchdog can abort one whose peer never joins) and one chunk's runs as one group of
// ncclSend / ncclRecv on the CUDA backend's stream, straight from / into cache pages.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/backend.h"
#include "transfer/nccl_transport.h"

namespace latentserve::transfer {

// A fresh ncclUniqueId (kNcclUniqueIdBytes), made by the sender (rank 0).
absl::StatusOr<std::string> NewNcclUniqueId();

// Joins the communicator of `bootstrap` as `rank` on CUDA device `device`, non-blocking
// (ncclConfig_t.blocking = 0), polling until it forms; past bootstrap.init_timeout it is
// aborted (DeadlineExceeded). NCCL's environment (NCCL_SOCKET_IFNAME, ...) applies as usual.
absl::StatusOr<std::shared_ptr<NcclComm>> CreateNcclComm(const NcclBootstrap& bootstrap, int rank, int device);

// The NCCL transport's data plane on CUDA device `device`: the functions below, each posted
// group followed by a CUDA event on the backend's stream that Done() queries (with the
// communicator's async error), so a waiting host thread can notice a dead peer.
std::unique_ptr<NcclDataPlane> NewCudaNcclDataPlane(int device);

// One chunk of one MLA layer as one NCCL group: for every run, row bytes from (send) or into
// (receive) the pages of `pool` ([W, page_tokens, n_pages], the backend's) of a sequence with
// `page_table`, to / from rank `peer`, on the CUDA backend's stream (ordered with its other
// work; the caller records an event to learn when it is done). FailedPrecondition for a
// backend other than CUDA; InvalidArgument for rows outside the table or pool.
absl::Status NcclSendRuns(NcclComm& comm, kernels::Backend& backend, const kernels::Tensor& pool,
                          absl::Span<const int32_t> page_table, const std::vector<NcclRun>& runs, int peer);
absl::Status NcclRecvRuns(NcclComm& comm, kernels::Backend& backend, const kernels::Tensor& pool,
                          absl::Span<const int32_t> page_table, const std::vector<NcclRun>& runs, int peer);

}  // namespace latentserve::transfer
