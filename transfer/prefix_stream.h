// Prefix reads (DecodeWorker.ReadPrefix): a prefill worker that computes a lease's long rest
// reads the prefix the lease resumed from on the decode worker (latent rows of [0, prefix) and
// the KDA state at its end), as a handoff in the other direction in the same messages, so the
// receiving side is the ordinary HandoffAssembler with every check it makes (layout, order,
// sizes, XXH64, completeness) and the sending side the same chunking.
//
// Sending (decode worker): SendPrefix reads the rows chunk by chunk under the caller's device
// lock, so the decode batch keeps stepping between chunks, and writes each through a
// StreamSender. Receiving (prefill worker): GrpcPrefixReader opens the stream with the
// internal credential and the read's deadline and feeds a CacheSink.
#pragma once

#include <functional>
#include <memory>
#include <mutex>

#include <grpcpp/security/credentials.h>

#include "absl/status/statusor.h"
#include "cache/sequence_table.h"
#include "latentserve/internal/v1/worker.pb.h"
#include "transfer/grpc_transport.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// Sends rows [0, header.prompt_tokens) of every MLA layer of `prefix`, then its KDA state, then
// End (first token 0), through `sender` (opened with `header`). Each chunk's device read runs
// under `device_mu`; `prefix` must not change meanwhile (a read-only share of the lease's rows).
absl::Status SendPrefix(CacheSender& sender, const HandoffHeader& header, const cache::Sequence& prefix,
                        std::mutex& device_mu);

// A CacheSender over a server stream: each payload becomes one ReadPrefixResponse written
// synchronously through `write` (false: the reader went away). Finish writes End and returns
// the bytes sent (the reader's verdict is its own status).
using PrefixWrite = std::function<bool(const internal::v1::ReadPrefixResponse&)>;
absl::StatusOr<std::unique_ptr<CacheSender>> OpenStreamSender(const HandoffHeader& header, PrefixWrite write);

class GrpcPrefixReader : public PrefixReader {
 public:
  GrpcPrefixReader(GrpcTransport::CredentialsProvider credentials = {}, GrpcTransport::CallDecorator decorate_call = {})
      : credentials_(std::move(credentials)), decorate_call_(std::move(decorate_call)) {}
  absl::Status Read(const std::string& target, const PrefixReadRequest& request, CacheSink& sink,
                    absl::Time deadline) override;

 private:
  GrpcTransport::CredentialsProvider credentials_;
  GrpcTransport::CallDecorator decorate_call_;
};

}  // namespace latentserve::transfer
