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
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

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
