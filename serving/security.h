// Transport security and admission for the serving processes.
//
// TLS: certificates come from files and are re-read while running (grpc's
// FileWatcherCertificateProvider), so rotating a Secret needs no restart. A server given
// --tls-ca requires and verifies client certificates (mutual TLS); a channel given
// --tls-cert/--tls-key presents one. The same files serve a worker as server identity and
// as client identity on its internal channels (registration, cache transfer).
//
// Authentication: a bearer token (--auth-token-file) checked by an AuthMetadataProcessor
// on the public Generation API; the token is compared in constant time and never logged.
//
// Authorization of the internal APIs (WorkerRegistry on the router; PrefillWorker,
// DecodeWorker and WorkerStats on workers): only cluster components may call them, proven
// by an internal token (--internal-token-file, sent as `latentserve-internal-token`
// metadata) or, under mutual TLS, by a client certificate whose CN is one of
// --internal-peer-cn. The public bearer token never grants internal access.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/auth_metadata_processor.h>

#include "absl/status/statusor.h"
#include "common/args.h"

namespace latentserve::serving {

// The flag names below, for Args::Parse.
extern const std::set<std::string> kTlsFlags;  // tls-cert, tls-key, tls-ca

struct TlsFiles {
  std::string cert;  // PEM certificate chain (this side's identity)
  std::string key;   // PEM private key of `cert`
  std::string ca;    // PEM roots that verify the peer
  bool enabled() const { return !cert.empty() || !ca.empty(); }
};

// Checks that the flags make sense together and the files are readable.
absl::StatusOr<TlsFiles> TlsFilesFromArgs(const Args& args);

// Insecure when `files` is empty. A server needs cert + key; with ca it requires client certs.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files);
// Insecure when `files` is empty; TLS needs ca; cert + key add a client certificate.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& files);

// Credentials for the process's internal channels (router <-> workers). Insecure until set.
void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);
std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials();

// Reads a token file (surrounding whitespace trimmed); InvalidArgument when empty.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Accepts calls carrying `authorization: Bearer <token>`; UNAUTHENTICATED otherwise. Calls
// to the methods of `exempt_services` (e.g. the worker registry, health) pass without a
// token: those are protected by mutual TLS instead.
class BearerTokenProcessor : public grpc::AuthMetadataProcessor {
 public:
  BearerTokenProcessor(std::string token, std::set<std::string> exempt_services);
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext* context, OutputMetadata* consumed,
                       OutputMetadata* response) override;

 private:
  const std::string expected_;  // "Bearer <token>"
  const std::set<std::string> exempt_services_;
};

// Metadata key that carries the internal token on internal calls.
inline constexpr const char* kInternalTokenMetadata = "latentserve-internal-token";

// The flags below, for Args::Parse.
extern const std::set<std::string> kInternalAuthFlags;  // internal-token-file, internal-peer-cn

// Who counts as a cluster component. Empty (no token, no names) = every caller does: the
// plaintext loopback mode of a split deployment without any credential configured.
struct InternalAuthConfig {
  std::string token;                 // shared secret of the cluster components ("" = none)
  std::set<std::string> peer_cns;    // verified client-certificate CNs of cluster components
  bool empty() const { return token.empty() && peer_cns.empty(); }
};

// From --internal-token-file / --internal-peer-cn. A CN list needs --tls-ca (the server
// must verify client certificates for a CN to mean anything).
absl::StatusOr<InternalAuthConfig> InternalAuthFromArgs(const Args& args);

// Checks the callers of a server's internal methods; one per process, shared by its servers.
class InternalAuthorizer {
 public:
  explicit InternalAuthorizer(InternalAuthConfig config) : config_(std::move(config)) {}
  // OK for a cluster component (or anyone, when nothing is configured). Otherwise
  // UNAUTHENTICATED when the caller presented no credential at all, PERMISSION_DENIED when it
  // presented one that is not a cluster component's (a public token, a client certificate,
  // a wrong internal token). `method` names the RPC in the message.
  grpc::Status Check(const grpc::ServerContext& context, const char* method) const;
  // True when the caller proved to be a cluster component by a credential (not merely
  // because nothing is configured).
  bool Verified(const grpc::ServerContext& context) const;
  bool open() const { return config_.empty(); }

 private:
  bool TokenMatches(const grpc::ServerContext& context) const;
  bool PeerCnMatches(const grpc::ServerContext& context) const;
  const InternalAuthConfig config_;
};

// The token this process sends on its own internal calls (router -> workers, workers ->
// router, prefill -> decode). Empty until set: calls then carry no internal token.
void SetInternalCallToken(std::string token);
// Adds the internal token (when set) to an internal call's metadata.
void AttachInternalCredential(grpc::ClientContext& context);

// A worker address from the wire (registration, a prefill's decode_worker): HOST:PORT or
// [IPV6]:PORT, port 1..65535, host of letters, digits, '.', '-', '_' only. No gRPC target
// schemes (unix:, dns:, ipv4:...): a caller must not make a component dial a local socket or
// resolve arbitrary names (server-side request forgery).
absl::Status ValidateWorkerAddress(const std::string& address);

// Constant-time equality (no early exit on the first differing byte; lengths may leak).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// The HTTP front (http/) calls the Generation API in process on behalf of HTTP clients and
// names each one, so an HTTP client gets the same per-client limits as a gRPC caller.
// ClientIdentity believes that name only from a call that also carries this process's random
// forwarding key, which never leaves the process. Attaches both to `context`.
void AttachForwardedClient(grpc::ClientContext& context, const std::string& client);

// Who a call comes from, for per-client limits: the verified certificate's common name when
// there is one, else the peer's IP address (without its port).
std::string ClientIdentity(const grpc::ServerContext& context);

// Bounds concurrent streams per client; 0 = unlimited.
class StreamLimiter {
 public:
  explicit StreamLimiter(int64_t max_per_client) : max_per_client_(max_per_client) {}
  bool TryAcquire(const std::string& client);
  void Release(const std::string& client);
  int64_t max_per_client() const { return max_per_client_; }

 private:
  const int64_t max_per_client_;
  std::mutex mu_;
  std::map<std::string, int64_t> active_;
};

}  // namespace latentserve::serving
