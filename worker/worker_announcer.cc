#include "worker/worker_announcer.h"

#include <grpcpp/grpcpp.h>

#include "latentserve/internal/v1/worker.grpc.pb.h"
#include "serving/security.h"
#include "transfer/grpc_transport.h"

namespace latentserve::worker {

WorkerAnnouncer::WorkerAnnouncer(std::string router_address, std::string worker_address, std::string role,
                                 internal::v1::ModelDescriptor model, std::function<v1::WorkerInfo()> stats,
                                 std::string tls_name, internal::v1::WorkerTransports transports)
    : router_address_(std::move(router_address)), worker_address_(std::move(worker_address)), role_(std::move(role)),
      tls_name_(std::move(tls_name)), model_(std::move(model)), transports_(std::move(transports)),
      stats_(std::move(stats)) {
  thread_ = std::thread([this] { Loop(); });
}

WorkerAnnouncer::~WorkerAnnouncer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void WorkerAnnouncer::Loop() {
  grpc::ChannelArguments args;
  if (!tls_name_.empty()) args.SetSslTargetNameOverride(tls_name_);
  transfer::SetInternalKeepalive(args);
  auto stub = internal::v1::WorkerRegistry::NewStub(
      grpc::CreateCustomChannel(router_address_, serving::InternalChannelCredentials(), args));
  bool registered = false;
  std::string last_error;
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    lock.unlock();
    grpc::ClientContext context;
    serving::AttachInternalCredential(context);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::Status status;
    if (!registered) {
      internal::v1::RegisterWorkerRequest request;
      request.set_address(worker_address_);
      request.set_role(role_);
      *request.mutable_model() = model_;
      *request.mutable_transports() = transports_;
      *request.mutable_stats() = stats_();
      internal::v1::RegisterWorkerResponse response;
      status = stub->RegisterWorker(&context, request, &response);
      if (status.ok()) {
        registered = true;
        std::fprintf(stderr, "%s: registered with router %s\n", role_.c_str(), router_address_.c_str());
      }
    } else {
      internal::v1::HeartbeatRequest request;
      request.set_address(worker_address_);
      *request.mutable_stats() = stats_();
      internal::v1::HeartbeatResponse response;
      status = stub->Heartbeat(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::NOT_FOUND) registered = false;
    }
    if (!status.ok() && status.error_message() != last_error) {
      last_error = status.error_message();
      std::fprintf(stderr, "%s: router %s: %s (retrying)\n", role_.c_str(), router_address_.c_str(), last_error.c_str());
    }
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(registered ? 1000 : 300), [&] { return stopping_; });
  }
}

}  // namespace latentserve::worker
