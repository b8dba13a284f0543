#include "http/openai_front.h"

#include <signal.h>

#include <httplib.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "http/openai_response.h"
#include "serving/security.h"

namespace latentserve::http {

void SendError(httplib::Response& response, const HttpError& error) {
  response.status = error.http_status;
  if (error.retry_after_s >= 0) response.set_header("Retry-After", absl::StrCat(error.retry_after_s));
  response.set_content(error.body, "application/json");
}

namespace {

void SendError(httplib::Response& response, grpc::StatusCode code, const std::string& message) {
  SendError(response, ErrorFor(code, message));
}

// "host:port" or "[v6]:port" -> host (brackets removed), port.
absl::Status SplitHostPort(const std::string& listen, std::string* host, int* port) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("--http-listen must be HOST:PORT, got '", listen, "'"));
  }
  *host = listen.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  if (!absl::SimpleAtoi(listen.substr(colon + 1), port) || *port < 0 || *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--http-listen port must be in [0, 65535], got '", listen, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

OpenAiFront::OpenAiFront(HttpFrontOptions options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      stub_(v1::Generation::NewStub(std::move(channel))),
      started_(absl::ToUnixSeconds(absl::Now())) {}

absl::StatusOr<std::unique_ptr<OpenAiFront>> OpenAiFront::Start(HttpFrontOptions options,
                                                                 std::shared_ptr<grpc::Channel> channel) {
  std::string host;
  int port = 0;
  if (absl::Status split = SplitHostPort(options.listen, &host, &port); !split.ok()) return split;
  if (options.threads <= 0 || options.max_body_bytes <= 0) {
    return absl::InvalidArgumentError("--http-threads and --http-max-body-bytes must be positive");
  }
  // A write to a client that went away must fail, not kill the process (OpenSSL writes with
  // write(2), which raises SIGPIPE; plain sockets use MSG_NOSIGNAL).
  signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<OpenAiFront> front(new OpenAiFront(std::move(options), std::move(channel)));
  const HttpFrontOptions& o = front->options_;
  if (!o.tls_cert.empty()) {
    front->server_ = std::make_unique<httplib::SSLServer>(o.tls_cert.c_str(), o.tls_key.c_str(),
                                                          o.tls_ca.empty() ? nullptr : o.tls_ca.c_str());
  } else {
    front->server_ = std::make_unique<httplib::Server>();
  }
  if (!front->server_->is_valid()) {
    return absl::InvalidArgumentError("HTTP front: cannot load the TLS certificate, key or CA (--tls-*)");
  }
  const int threads = o.threads;
  front->server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  front->server_->set_payload_max_length(static_cast<size_t>(o.max_body_bytes));
  front->server_->set_read_timeout(30, 0);   // a whole request body within 30 s
  front->server_->set_write_timeout(30, 0);  // a client that stops reading is dropped after 30 s
  front->server_->set_keep_alive_timeout(5);
  front->Route();
  const int bound = port == 0 ? front->server_->bind_to_any_port(host) : port;
  if (bound <= 0 || (port != 0 && !front->server_->bind_to_port(host, port))) {
    return absl::UnavailableError(absl::StrCat("HTTP front: cannot listen on ", o.listen));
  }
  front->address_ = absl::StrCat(absl::StrContains(host, ':') ? absl::StrCat("[", host, "]") : host, ":", bound);
  httplib::Server* server = front->server_.get();
  front->listener_ = std::thread([server] { server->listen_after_bind(); });  // bound: connects queue already
  return front;
}

OpenAiFront::~OpenAiFront() { Stop(); }

void OpenAiFront::Stop() {
  if (server_) server_->stop();
  if (listener_.joinable()) listener_.join();
}

void OpenAiFront::Route() {
  server_->set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    if (request.path == "/health" || Authorized(request, response)) return httplib::Server::HandlerResponse::Unhandled;
    return httplib::Server::HandlerResponse::Handled;
  });
  server_->Get("/health", [this](const httplib::Request&, httplib::Response& response) { Health(response); });
  server_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& response) { Models(response, ""); });
  server_->Get(R"(/v1/models/([^/]+))", [this](const httplib::Request& request, httplib::Response& response) {
    Models(response, request.matches[1].str());
  });
  server_->Post("/v1/completions", [this](const httplib::Request& request, httplib::Response& response) {
    Completion(request, response, false);
  });
  server_->Post("/v1/chat/completions", [this](const httplib::Request& request, httplib::Response& response) {
    Completion(request, response, true);
  });
  // Unknown paths, wrong methods, oversized bodies: httplib sets only a status; give it
  // OpenAI's error body.
  server_->set_error_handler([](const httplib::Request& request, httplib::Response& response) {
    if (!response.body.empty()) return;
    grpc::StatusCode code = grpc::StatusCode::NOT_FOUND;
    std::string message = absl::StrCat("no route ", request.method, " ", request.path);
    if (response.status == 413) {
      code = grpc::StatusCode::INVALID_ARGUMENT;
      message = "request body exceeds this server's limit (--http-max-body-bytes)";
    } else if (response.status == 400) {
      code = grpc::StatusCode::INVALID_ARGUMENT;
      message = "malformed HTTP request";
    }
    const int status = response.status;
    SendError(response, code, message);
    response.status = status;
  });
}

bool OpenAiFront::Authorized(const httplib::Request& request, httplib::Response& response) const {
  if (options_.bearer_token.empty()) return true;
  const std::string header = request.get_header_value("Authorization");
  if (serving::ConstantTimeEquals(header, absl::StrCat("Bearer ", options_.bearer_token))) return true;
  SendError(response, grpc::StatusCode::UNAUTHENTICATED,
            header.empty() ? "missing 'Authorization: Bearer <token>' header" : "invalid bearer token");
  return false;
}

void OpenAiFront::Health(httplib::Response& response) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  v1::GetModelInfoResponse info;
  grpc::Status status = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  bool prefill = false, decode = false;
  for (const v1::WorkerInfo& worker : info.workers()) {
    const bool usable = worker.alive() && !worker.draining();
    prefill |= usable && worker.role() == "prefill";
    decode |= usable && worker.role() == "decode";
  }
  if (!status.ok() || !prefill || !decode) {
    SendError(response, grpc::StatusCode::UNAVAILABLE,
              status.ok() ? "no live prefill and decode workers" : status.error_message());
    return;
  }
  response.set_content("{\"status\":\"ok\"}", "application/json");
}

std::string OpenAiFront::ServedModelName() {
  {
    std::lock_guard<std::mutex> lock(model_mu_);
    if (!model_name_.empty()) return model_name_;
  }
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::GetModelInfoResponse info;
  if (!stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return "";
  std::lock_guard<std::mutex> lock(model_mu_);
  model_name_ = info.model_name();
  return model_name_;
}

void OpenAiFront::Models(httplib::Response& response, const std::string& id) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::GetModelInfoResponse info;
  grpc::Status status = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return SendError(response, ErrorFor(status));
  if (info.model_name().empty()) {
    return SendError(response, grpc::StatusCode::UNAVAILABLE, "no worker has registered a model yet");
  }
  if (id.empty()) return response.set_content(ModelsBody(info.model_name(), started_), "application/json");
  if (id != info.model_name()) {
    return SendError(response, grpc::StatusCode::NOT_FOUND,
                     absl::StrCat("unknown model '", id, "'; this server serves '", info.model_name(), "'"));
  }
  response.set_content(ModelBody(info.model_name(), started_), "application/json");
}

}  // namespace latentserve::http
