// gRPC transport: one DecodeWorker.ReceiveCache client stream per handoff.
//
// The sender queues chunks for a writer thread, so the prefill keeps computing while bytes
// move; when more than `max_queued_bytes` are queued, Send* blocks (backpressure) instead of
// buffering an unbounded cache in memory. The call carries the handoff deadline.
//
// Zero-copy send: each chunk goes out as a grpc::ByteBuffer on the ReceiveCache method whose
// bytes are exactly the ReceiveCacheRequest serialisation (same typed message, same XXH64
// field), but whose payload slice points at the chunk's own string instead of a serialised
// copy of it. The receiving side is the generated typed reader (one parse copy), so decode
// workers need no change. Measured on loopback: docs/benchmarks-serving.md.
#pragma once

#include <functional>
#include <memory>

#include <grpcpp/security/credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>

#include "latentserve/internal/v1/worker.pb.h"
#include "transfer/transport.h"

namespace latentserve::transfer {

// Keeps this process's large transfer buffers (1 MiB chunks: exported rows, gRPC read slices,
// parsed payloads) in the malloc heap instead of a fresh mmap per chunk. With glibc's defaults
// every chunk costs ~256 page faults, page clearing and an munmap: about a third of the CPU
// time of a transfer on loopback. Sets M_MMAP_THRESHOLD 32 MiB and M_TRIM_THRESHOLD 64 MiB
// (so up to 64 MiB of freed heap may stay mapped per arena), once per process, unless
// GLIBC_TUNABLES already sets glibc.malloc.* options. GrpcTransport's constructor and
// ServeReceiveCache call it.
void TuneAllocatorForCacheStreaming();

// Keepalive for the client side of every internal channel (router -> workers, prefill ->
// decode, workers -> router): a ping every 2 s while a call is open, the connection closed
// (calls UNAVAILABLE) when one goes unanswered for 2 s. A frozen peer (SIGSTOP, a hung host)
// then fails its streams within seconds instead of holding them until their deadlines; a
// slow but live peer answers pings and is left alone. Servers allow these pings
// (AllowInternalKeepalivePings).
void SetInternalKeepalive(grpc::ChannelArguments& args);
// The server side: accept a ping every second from a client with open calls.
void AllowInternalKeepalivePings(grpc::ServerBuilder& builder);

class GrpcTransport : public CacheTransport {
 public:
  // Returns the credentials for the channel to a decode worker (TLS / mTLS when the process
  // has certificates); asked at each Open so reloaded certificates apply. Empty = insecure.
  using CredentialsProvider = std::function<std::shared_ptr<grpc::ChannelCredentials>()>;
  // Adds per-call credentials (the internal token) to each ReceiveCache call. Empty = none.
  using CallDecorator = std::function<void(grpc::ClientContext&)>;

  explicit GrpcTransport(int64_t max_queued_bytes = 32 << 20, CredentialsProvider credentials = {},
                         CallDecorator decorate_call = {})
      : max_queued_bytes_(max_queued_bytes), credentials_(std::move(credentials)),
        decorate_call_(std::move(decorate_call)) {
    TuneAllocatorForCacheStreaming();
  }
  std::string name() const override { return "grpc"; }
  absl::StatusOr<std::unique_ptr<CacheSender>> Open(const std::string& target, const HandoffHeader& header,
                                                    absl::Time deadline) override;

 private:
  int64_t max_queued_bytes_;
  CredentialsProvider credentials_;
  CallDecorator decorate_call_;
};

// Server side of DecodeWorker.ReceiveCache: reads the stream and feeds `sink`.
grpc::Status ServeReceiveCache(CacheSink& sink, grpc::ServerContext* context,
                               grpc::ServerReader<internal::v1::ReceiveCacheRequest>* reader, internal::v1::ReceiveCacheResponse* response);
// Its body over any source of messages: `read` fills the next one (false: the stream ended),
// `cancelled` says whether the sender cancelled. tests/fuzz/fuzz_handoff.cc drives it.
grpc::Status ReceiveCacheMessages(CacheSink& sink, const std::function<bool(internal::v1::ReceiveCacheRequest*)>& read,
                                  const std::function<bool()>& cancelled, internal::v1::ReceiveCacheResponse* response);

// The ReceiveCacheRequest carrying `chunk`, encoded without copying its payload (the buffer
// takes the string over). Byte-for-byte the protobuf serialisation; exposed for tests.
grpc::ByteBuffer EncodeLatentRows(LatentRows chunk);
grpc::ByteBuffer EncodeKdaState(KdaStateBytes chunk);

// The handoff header's wire form; FromProto checks the transport name and the dtype.
void ToProto(const HandoffHeader& header, internal::v1::CacheHandoffHeader* proto);
// The other handoff messages' fields but the payload bytes (every stream that carries a handoff
// message, the gRPC transport's and the prefix read's, fills them here).
void ToProto(const LatentRows& chunk, internal::v1::LatentRowsChunk* proto);
void ToProto(const KdaStateBytes& chunk, internal::v1::KdaStateChunk* proto);
void ToProto(const RowsWritten& written, internal::v1::LatentRowsWritten* proto);
void ToProto(const HandoffEnd& end, internal::v1::CacheHandoffEnd* proto);
absl::StatusOr<HandoffHeader> FromProto(const internal::v1::CacheHandoffHeader& proto);

internal::v1::CacheDType ToProtoDType(DType dtype);
absl::StatusOr<DType> FromProtoDType(internal::v1::CacheDType dtype);

}  // namespace latentserve::transfer
