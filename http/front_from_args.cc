// --http-listen and its flags -> a running OpenAiFront (http/openai_front.h).
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "http/openai_front.h"
#include "serving/security.h"

namespace latentserve::http {

absl::StatusOr<std::unique_ptr<OpenAiFront>> StartOpenAiFrontFromArgs(const Args& args, grpc::Server& server) {
  if (!args.Has("http-listen")) {
    for (const char* flag : {"http-port-file", "http-max-body-bytes", "http-threads"}) {
      if (args.Has(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --http-listen"));
    }
    return nullptr;
  }
  HttpFrontOptions options;
  options.listen = args.Get("http-listen");
  ASSIGN_OR_RETURN(options.max_body_bytes, args.GetInt("http-max-body-bytes", options.max_body_bytes));
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("http-threads", options.threads));
  if (threads <= 0 || threads > 4096) return absl::InvalidArgumentError("--http-threads must be in [1, 4096]");
  options.threads = static_cast<int>(threads);
  // The gRPC API's TLS files and token: one identity, one credential, for both fronts.
  options.tls_cert = args.Get("tls-cert");
  options.tls_key = args.Get("tls-key");
  options.tls_ca = args.Get("tls-ca");
  if (args.Has("auth-token-file")) {
    if (options.tls_cert.empty()) {
      return absl::InvalidArgumentError(
          "--auth-token-file needs --tls-cert/--tls-key: a bearer token sent in plaintext can be read off the wire");
    }
    ASSIGN_OR_RETURN(options.bearer_token, serving::ReadTokenFile(args.Get("auth-token-file")));
  }
  if (options.tls_cert.empty() && !options.tls_ca.empty()) {
    return absl::InvalidArgumentError("--tls-ca on the HTTP front needs --tls-cert/--tls-key");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<OpenAiFront> front,
                   OpenAiFront::Start(std::move(options), server.InProcessChannel(grpc::ChannelArguments())));
  std::printf("HTTP (OpenAI API) listening on %s\n", front->address().c_str());
  std::fflush(stdout);
  if (args.Has("http-port-file")) {
    const std::string path = args.Get("http-port-file");
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp);
      out << front->address() << "\n";
      if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write --http-port-file ", path));
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot write --http-port-file ", path));
    }
  }
  return front;
}

}  // namespace latentserve::http
