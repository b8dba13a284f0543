#include "transfer/device_handoff.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "common/grpc_status.h"
#include "common/status.h"
#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "transfer/checksum.h"

namespace latentserve::transfer {

DeviceTargetFetcher OpenDeviceHandoffRpc(GrpcTransport::CredentialsProvider credentials,
                                         GrpcTransport::CallDecorator decorate_call) {
  return [credentials, decorate_call](const std::string& target, const internal::v1::OpenDeviceHandoffRequest& request,
                                      absl::Time deadline) -> absl::StatusOr<internal::v1::OpenDeviceHandoffResponse> {
    grpc::ChannelArguments args;
    SetInternalKeepalive(args);
    auto creds = credentials ? credentials() : nullptr;
    auto stub = internal::v1::DecodeWorker::NewStub(
        grpc::CreateCustomChannel(target, creds ? creds : grpc::InsecureChannelCredentials(), args));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(5))));
    if (decorate_call) decorate_call(context);
    internal::v1::OpenDeviceHandoffResponse response;
    grpc::Status status = stub->OpenDeviceHandoff(&context, request, &response);
    if (!status.ok()) return FromGrpc(status);
    return response;
  };
}

absl::Status SendKdaStateAsBytes(CacheSender& control, const KdaStateBytes& chunk, int64_t kda_state_bytes,
                                 int64_t* extra_chunks) {
  if (!chunk.view || chunk.view->backend == nullptr) return absl::InternalError("a device sender takes views");
  const kernels::KdaStateView& state = chunk.view->state;
  const size_t recurrent = state.recurrent.nbytes(), conv = state.conv.nbytes();
  if (static_cast<int64_t>(recurrent + conv) != kda_state_bytes) {
    return absl::FailedPreconditionError("KDA state of another size than the header's");
  }
  std::string bytes(recurrent + conv, '\0');
  chunk.view->backend->Download(state.recurrent, bytes.data(), recurrent);
  chunk.view->backend->Download(state.conv, bytes.data() + recurrent, conv);
  for (size_t offset = 0; offset < bytes.size(); offset += kMaxChunkBytes) {
    KdaStateBytes piece;
    piece.kda_index = chunk.kda_index;
    piece.offset = static_cast<int64_t>(offset);
    piece.position = chunk.position;  // a checkpoint's state goes the same way as the final one
    piece.data = bytes.substr(offset, kMaxChunkBytes);
    piece.checksum = Xxh64(piece.data);
    if (offset > 0) (*extra_chunks)++;
    RETURN_IF_ERROR(control.SendKdaState(std::move(piece)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> DeviceCacheSender::Finish(const HandoffEnd& end) {
  HandoffEnd adjusted = end;
  adjusted.chunks += extra_chunks_;
  absl::StatusOr<int64_t> accepted = control_->Finish(adjusted);
  if (!accepted.ok()) (void)Failed(accepted.status());
  return accepted;
}

absl::Status DeviceCacheSender::Failed(absl::Status status) {
  if (!status.ok() && forget_peer_) {
    forget_peer_();
    forget_peer_ = nullptr;
  }
  return status;
}

}  // namespace latentserve::transfer
