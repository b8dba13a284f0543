#include "serving/security.h"

#include <fstream>
#include <iterator>
#include <string_view>
#include <vector>

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/secure_random.h"
#include "serving/metrics.h"

namespace latentserve::serving {
namespace {

// How often the certificate files are re-read.
constexpr unsigned int kCertRefreshSeconds = 30;

absl::Status CheckReadable(const std::string& flag, const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", path, ": cannot read the file"));
  return absl::OkStatus();
}

std::shared_ptr<grpc::experimental::FileWatcherCertificateProvider> Provider(const TlsFiles& files) {
  if (files.cert.empty()) {
    return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(files.ca, kCertRefreshSeconds);
  }
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(files.key, files.cert, files.ca,
                                                                             kCertRefreshSeconds);
}

std::mutex internal_mu;
std::shared_ptr<grpc::ChannelCredentials>* internal_credentials = nullptr;
std::string* internal_call_token = nullptr;

// The values of metadata `key` in a call (normally zero or one).
std::vector<std::string_view> MetadataValues(const grpc::ServerContext& context, const char* key) {
  std::vector<std::string_view> out;
  const auto& metadata = context.client_metadata();
  for (auto [it, end] = metadata.equal_range(key); it != end; ++it) {
    out.emplace_back(it->second.data(), it->second.size());
  }
  return out;
}

}  // namespace

const std::set<std::string> kTlsFlags = {"tls-cert", "tls-key", "tls-ca"};
const std::set<std::string> kInternalAuthFlags = {"internal-token-file", "internal-peer-cn"};

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::StatusOr<InternalAuthConfig> InternalAuthFromArgs(const Args& args) {
  InternalAuthConfig config;
  if (args.Has("internal-token-file")) {
    absl::StatusOr<std::string> token = ReadTokenFile(args.Get("internal-token-file"));
    if (!token.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--internal-token-file: ",
          absl::StripPrefix(token.status().message(), "--auth-token-file ")));
    }
    config.token = *std::move(token);
  }
  for (absl::string_view cn : absl::StrSplit(args.Get("internal-peer-cn"), ',', absl::SkipWhitespace())) {
    config.peer_cns.emplace(absl::StripAsciiWhitespace(cn));
  }
  if (!config.peer_cns.empty() && args.Get("tls-ca").empty()) {
    return absl::InvalidArgumentError(
        "--internal-peer-cn needs --tls-ca: only a server that verifies client certificates knows the caller's CN");
  }
  return config;
}

absl::Status ValidateWorkerAddress(const std::string& address) {
  const auto bad = [&](const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("worker address '", address.substr(0, 128), "' ", why,
                                                   ": expected HOST:PORT or [IPV6]:PORT"));
  };
  if (address.empty() || address.size() > 255) return bad("is empty or too long");
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return bad("has no port");
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) < 1 || std::stoi(port) > 65535) {
    return bad("has no port in 1..65535");
  }
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']' || host.find_first_not_of("0123456789abcdefABCDEF:.", 1) != host.size() - 1) {
      return bad("has a malformed IPv6 host");
    }
    return absl::OkStatus();
  }
  for (char c : host) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
      return bad("has a host that is not a DNS name or IPv4 address (no scheme such as unix:)");
    }
  }
  return absl::OkStatus();
}

bool InternalAuthorizer::TokenMatches(const grpc::ServerContext& context) const {
  if (config_.token.empty()) return false;
  for (std::string_view value : MetadataValues(context, kInternalTokenMetadata)) {
    if (ConstantTimeEquals(value, config_.token)) return true;
  }
  return false;
}

bool InternalAuthorizer::PeerCnMatches(const grpc::ServerContext& context) const {
  if (config_.peer_cns.empty()) return false;
  auto auth = context.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return false;
  for (const auto& name : auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME)) {
    if (config_.peer_cns.count(std::string(name.data(), name.size()))) return true;
  }
  return false;
}

bool InternalAuthorizer::Verified(const grpc::ServerContext& context) const {
  return TokenMatches(context) || PeerCnMatches(context);
}

grpc::Status InternalAuthorizer::Check(const grpc::ServerContext& context, const char* method) const {
  if (config_.empty() || Verified(context)) return grpc::Status::OK;
  Metrics::Get().internal_auth_failures_total.Increment();
  auto auth = context.auth_context();
  const bool has_certificate = auth && auth->IsPeerAuthenticated();
  const bool has_token = !MetadataValues(context, kInternalTokenMetadata).empty() ||
                         !MetadataValues(context, "authorization").empty();
  if (!has_certificate && !has_token) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        absl::StrCat(method, " is internal: it needs the cluster's internal credential"));
  }
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat(method, " is internal to the cluster: the caller's credential is not a cluster "
                                           "component's (internal token or component certificate)"));
}

void SetInternalCallToken(std::string token) {
  std::lock_guard<std::mutex> lock(internal_mu);
  if (!internal_call_token) internal_call_token = new std::string();
  *internal_call_token = std::move(token);
}

void AttachInternalCredential(grpc::ClientContext& context) {
  std::lock_guard<std::mutex> lock(internal_mu);
  if (internal_call_token && !internal_call_token->empty()) context.AddMetadata(kInternalTokenMetadata, *internal_call_token);
}

absl::StatusOr<TlsFiles> TlsFilesFromArgs(const Args& args) {
  TlsFiles files{args.Get("tls-cert"), args.Get("tls-key"), args.Get("tls-ca")};
  if (files.cert.empty() != files.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!files.cert.empty()) {
    if (absl::Status s = CheckReadable("tls-cert", files.cert); !s.ok()) return s;
    if (absl::Status s = CheckReadable("tls-key", files.key); !s.ok()) return s;
  }
  if (!files.ca.empty()) {
    if (absl::Status s = CheckReadable("tls-ca", files.ca); !s.ok()) return s;
  }
  return files;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureServerCredentials();
  if (files.cert.empty()) return absl::InvalidArgumentError("a TLS server needs --tls-cert and --tls-key");
  grpc::experimental::TlsServerCredentialsOptions options(Provider(files));
  options.watch_identity_key_cert_pairs();
  if (!files.ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& files) {
  if (!files.enabled()) return grpc::InsecureChannelCredentials();
  if (files.ca.empty()) return absl::InvalidArgumentError("a TLS client needs --tls-ca to verify the server");
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(Provider(files));
  options.watch_root_certs();
  if (!files.cert.empty()) options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

void SetInternalChannelCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  std::lock_guard<std::mutex> lock(internal_mu);
  if (!internal_credentials) internal_credentials = new std::shared_ptr<grpc::ChannelCredentials>();
  *internal_credentials = std::move(credentials);
}

std::shared_ptr<grpc::ChannelCredentials> InternalChannelCredentials() {
  std::lock_guard<std::mutex> lock(internal_mu);
  if (internal_credentials && *internal_credentials) return *internal_credentials;
  return grpc::InsecureChannelCredentials();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("--auth-token-file ", path, ": cannot read the file"));
  std::string token(std::istreambuf_iterator<char>(in), {});
  token = std::string(absl::StripAsciiWhitespace(token));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--auth-token-file ", path, " is empty"));
  return token;
}

BearerTokenProcessor::BearerTokenProcessor(std::string token, std::set<std::string> exempt_services)
    : expected_(absl::StrCat("Bearer ", token)), exempt_services_(std::move(exempt_services)) {}

grpc::Status BearerTokenProcessor::Process(const InputMetadata& auth_metadata, grpc::AuthContext*,
                                           OutputMetadata* consumed, OutputMetadata*) {
  auto path = auth_metadata.find(":path");
  if (path != auth_metadata.end()) {
    const std::string method(path->second.data(), path->second.size());  // "/pkg.Service/Method"
    const size_t slash = method.find('/', 1);
    if (slash != std::string::npos && exempt_services_.count(method.substr(1, slash - 1))) return grpc::Status::OK;
  }
  auto header = auth_metadata.find("authorization");
  const bool ok = header != auth_metadata.end() &&
                  ConstantTimeEquals(std::string_view(header->second.data(), header->second.size()), expected_);
  if (!ok) {
    Metrics::Get().router_auth_failures_total.Increment();
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        header == auth_metadata.end() ? "missing 'authorization: Bearer <token>' metadata"
                                                      : "invalid bearer token");
  }
  consumed->insert({std::string(header->first.data(), header->first.size()),
                    std::string(header->second.data(), header->second.size())});
  return grpc::Status::OK;
}

namespace {

constexpr const char* kForwardedClientMetadata = "latentserve-forwarded-client";
constexpr const char* kForwardedKeyMetadata = "latentserve-forwarded-key";

// Random per process; "" (matching nothing) should the kernel's generator fail.
const std::string& ForwardingKey() {
  static const std::string key = [] {
    auto hex = SecureRandomHex(16);
    return hex.ok() ? "fk-" + *hex : std::string();
  }();
  return key;
}

}  // namespace

void AttachForwardedClient(grpc::ClientContext& context, const std::string& client) {
  if (ForwardingKey().empty()) return;
  context.AddMetadata(kForwardedClientMetadata, client);
  context.AddMetadata(kForwardedKeyMetadata, ForwardingKey());
}

std::string ClientIdentity(const grpc::ServerContext& context) {
  if (auto auth = context.auth_context()) {
    for (const auto& name : auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME)) {
      return absl::StrCat("cn:", std::string(name.data(), name.size()));
    }
  }
  const std::vector<std::string_view> forwarded = MetadataValues(context, kForwardedClientMetadata);
  const std::vector<std::string_view> key = MetadataValues(context, kForwardedKeyMetadata);
  if (forwarded.size() == 1 && key.size() == 1 && ConstantTimeEquals(key[0], ForwardingKey())) {
    return absl::StrCat("http:", std::string(forwarded[0]));
  }
  std::string peer = context.peer();  // "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:..."
  const size_t colon = peer.rfind(':');
  if (colon != std::string::npos && (absl::StartsWith(peer, "ipv4:") || absl::StartsWith(peer, "ipv6:"))) {
    peer.resize(colon);
  }
  return peer;
}

bool StreamLimiter::TryAcquire(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t& active = active_[client];
  if (max_per_client_ > 0 && active >= max_per_client_) return false;
  active++;
  return true;
}

void StreamLimiter::Release(const std::string& client) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(client);
  if (it != active_.end() && --it->second <= 0) active_.erase(it);
}

}  // namespace latentserve::serving
