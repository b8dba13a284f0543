// OpenAI-compatible HTTP front of the public Generation API (router and `serve`):
// POST /v1/completions, POST /v1/chat/completions (server-sent events when "stream"),
// GET /v1/models, GET /health.
//
// It is a translator, not a second implementation: every request becomes one call of
// latentserve.v1.Generation over an in-process channel to this process's own gRPC server,
// so placement, limits (prompt size, per-client streams), deadlines and errors are exactly
// the gRPC API's. What it adds is what HTTP needs: the bearer token (checked here, on every
// request, with the gRPC API's token), a bound on request bodies, OpenAI's JSON shapes and
// HTTP status codes, and noticing a client that went away (a failed write; a silent stream
// writes an SSE comment, a non-streaming answer a JSON space, every `probe_interval`).
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/args.h"
#include "latentserve/v1/generate.grpc.pb.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace latentserve::http {

struct HttpError;  // http/openai_response.h
// Writes `error` as the response: its status, OpenAI's error body, Retry-After when it has one.
void SendError(httplib::Response& response, const HttpError& error);

struct HttpFrontOptions {
  std::string listen;                 // HOST:PORT, [IPV6]:PORT; port 0: any free port
  std::string tls_cert, tls_key;      // HTTPS when set (the gRPC API's certificate)
  std::string tls_ca;                 // when set, clients must present a certificate it signed
  std::string bearer_token;           // when set, every /v1 request must carry it
  int64_t max_body_bytes = 32 << 20;  // larger request bodies are refused (413)
  int threads = 64;                   // connections served at once (each stream holds one)
  absl::Duration probe_interval = absl::Seconds(1);  // how soon a vanished client is noticed
};

class OpenAiFront {
 public:
  // Binds and starts serving; `channel` reaches the Generation service.
  static absl::StatusOr<std::unique_ptr<OpenAiFront>> Start(HttpFrontOptions options,
                                                            std::shared_ptr<grpc::Channel> channel);
  ~OpenAiFront();  // Stop()
  // Stops accepting, ends open streams (their calls are cancelled) and joins the threads.
  void Stop();
  // host:port actually bound.
  const std::string& address() const { return address_; }

 private:
  OpenAiFront(HttpFrontOptions options, std::shared_ptr<grpc::Channel> channel);
  void Route();
  bool Authorized(const httplib::Request& request, httplib::Response& response) const;
  void Health(httplib::Response& response);
  // GET /v1/models (`id` empty) and /v1/models/{id}.
  void Models(httplib::Response& response, const std::string& id);
  void Completion(const httplib::Request& request, httplib::Response& response, bool chat);
  // The served model's name (GetModelInfo, remembered once known).
  std::string ServedModelName();

  const HttpFrontOptions options_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::unique_ptr<httplib::Server> server_;
  std::string address_;
  std::thread listener_;
  const int64_t started_ = 0;  // Unix seconds: "created" of the model object
  std::mutex model_mu_;
  std::string model_name_;  // guarded by model_mu_
};

// Starts the front when --http-listen is given (else nullptr), with the process's TLS files
// (--tls-cert/--tls-key/--tls-ca) and token (--auth-token-file), over an in-process channel
// to `server`; writes the bound address to --http-port-file when given.
absl::StatusOr<std::unique_ptr<OpenAiFront>> StartOpenAiFrontFromArgs(const Args& args, grpc::Server& server);

}  // namespace latentserve::http
