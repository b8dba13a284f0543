#include "decode/decode_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "serving/metrics.h"
#include "common/grpc_status.h"
#include "transfer/grpc_transport.h"
#include "transfer/prefix_stream.h"

namespace latentserve::decode {


grpc::Status DecodeService::ReserveLease(grpc::ServerContext* context, const internal::v1::ReserveLeaseRequest* request,
                                         internal::v1::ReserveLeaseResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.ReserveLease"); !denied.ok()) return denied;
  const std::string caller = serving::ClientIdentity(*context);
  LeaseReuse reuse;
  auto lease = worker_.ReserveLease(request->request_id(), request->tokens(), absl::Milliseconds(request->ttl_ms()),
                                    request->model_fingerprint(), caller,
                                    absl::MakeConstSpan(request->prompt_token_ids().data(),
                                                        request->prompt_token_ids().size()),
                                    &reuse, !request->skip_prefix_keep());
  if (!lease.ok()) return ToGrpc(lease.status());
  // A caller whose deadline passes before the answer reaches it never learns the lease id, so it
  // could not give the pages back until the lease's TTL ran out. When the call is cancelled, or
  // its deadline is too close for the answer to arrive in time, release the lease here.
  constexpr auto kAnswerMargin = std::chrono::milliseconds(20);
  if (context->IsCancelled() || context->deadline() < std::chrono::system_clock::now() + kAnswerMargin) {
    (void)worker_.ReleaseLease(*lease, caller);
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the call's deadline passed while its lease was being reserved; the lease was released");
  }
  response->set_lease_id(*lease);
  response->set_cached_tokens(reuse.cached_tokens);
  response->set_local_prefill(reuse.local_prefill);
  response->set_checkpoint_interval_tokens(reuse.checkpoint_interval_tokens);
  return grpc::Status::OK;
}

namespace {

// Session pins belong to the router that made them: another caller's ids never meet them.
std::string SessionKey(const grpc::ServerContext& context, const std::string& session_id) {
  return absl::StrCat(serving::ClientIdentity(context), "|", session_id);
}

}  // namespace

grpc::Status DecodeService::PinSession(grpc::ServerContext* context, const internal::v1::PinSessionRequest* request,
                                       internal::v1::PinSessionResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.PinSession"); !denied.ok()) return denied;
  absl::StatusOr<int64_t> bytes =
      worker_.PinSession(SessionKey(*context, request->session_id()),
                         absl::MakeConstSpan(request->token_ids().data(), request->token_ids().size()));
  if (!bytes.ok()) return ToGrpc(bytes.status());
  response->set_bytes(*bytes);
  return grpc::Status::OK;
}

grpc::Status DecodeService::DropSession(grpc::ServerContext* context, const internal::v1::DropSessionRequest* request,
                                        internal::v1::DropSessionResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.DropSession"); !denied.ok()) return denied;
  worker_.DropSession(SessionKey(*context, request->session_id()));
  return grpc::Status::OK;
}

grpc::Status DecodeService::ReleaseLease(grpc::ServerContext* context, const internal::v1::ReleaseLeaseRequest* request,
                                         internal::v1::ReleaseLeaseResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.ReleaseLease"); !denied.ok()) return denied;
  return ToGrpc(worker_.ReleaseLease(request->lease_id(), serving::ClientIdentity(*context)));
}

grpc::Status DecodeService::RenewLease(grpc::ServerContext* context, const internal::v1::RenewLeaseRequest* request,
                                       internal::v1::RenewLeaseResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.RenewLease"); !denied.ok()) return denied;
  return ToGrpc(worker_.RenewLease(request->lease_id(), absl::Milliseconds(request->ttl_ms()),
                                   serving::ClientIdentity(*context)));
}

grpc::Status DecodeService::OpenDeviceHandoff(grpc::ServerContext* context,
                                              const internal::v1::OpenDeviceHandoffRequest* request,
                                              internal::v1::OpenDeviceHandoffResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.OpenDeviceHandoff"); !denied.ok()) return denied;
  auto exported =
      worker_.ExportForHandoff(request->lease_id(), request->transport(), request->host_id(), request->nccl());
  if (!exported.ok()) return ToGrpc(exported.status());
  response->set_export_id(exported->export_id);
  for (const auto& handle : exported->pools) {
    auto* p = response->add_pools();
    p->set_kind(handle.kind);
    p->set_handle(handle.handle);
    p->set_bytes(handle.bytes);
    p->set_process(handle.process);
  }
  response->set_page_tokens(exported->page_tokens);
  response->set_pool_pages(exported->pool_pages);
  response->set_row_bytes(exported->row_bytes);
  response->set_cache_dtype(transfer::ToProtoDType(exported->dtype));
  for (int32_t page : exported->pages) response->add_pages(page);
  return grpc::Status::OK;
}

grpc::Status DecodeService::ReceiveCache(grpc::ServerContext* context,
                                         grpc::ServerReader<internal::v1::ReceiveCacheRequest>* reader,
                                         internal::v1::ReceiveCacheResponse* response) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.ReceiveCache"); !denied.ok()) return denied;
  return transfer::ServeReceiveCache(worker_, context, reader, response);
}

grpc::Status DecodeService::ReadPrefix(grpc::ServerContext* context, const internal::v1::ReadPrefixRequest* request,
                                       grpc::ServerWriter<internal::v1::ReadPrefixResponse>* writer) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.ReadPrefix"); !denied.ok()) return denied;
  const absl::Time start = absl::Now();
  absl::StatusOr<int64_t> bytes = worker_.SendLeasePrefix(
      request->lease_id(), request->model_fingerprint(), request->request_id(),
      [&](const transfer::HandoffHeader& header) {
        return transfer::OpenStreamSender(header, [&](const internal::v1::ReadPrefixResponse& message) {
          return !context->IsCancelled() && writer->Write(message);
        });
      });
  if (!bytes.ok()) {
    serving::LogEvent(serving::LogLevel::kWarning, "decode", "prefix_read_failed", request->request_id(),
                      {{"code", absl::StatusCodeToString(bytes.status().code())},
                       {"message", std::string(bytes.status().message())}});
    return ToGrpc(bytes.status());
  }
  serving::LogEvent("decode", "prefix_read", request->request_id(),
                    {{"bytes", *bytes}, {"ms", absl::ToDoubleMilliseconds(absl::Now() - start)}});
  return grpc::Status::OK;
}

grpc::Status DecodeService::Decode(grpc::ServerContext* context, const internal::v1::DecodeRequest* request,
                                   grpc::ServerWriter<internal::v1::DecodeResponse>* writer) {
  if (grpc::Status denied = auth_.Check(*context, "DecodeWorker.Decode"); !denied.ok()) return denied;
  DecodeParams params;
  params.lease_id = request->lease_id();
  params.caller = serving::ClientIdentity(*context);
  params.sampling.temperature = request->sampling().temperature();
  params.sampling.top_k = request->sampling().top_k();
  params.sampling.top_p = request->sampling().top_p() > 0 ? request->sampling().top_p() : 1.0f;
  params.sampling.min_p = request->sampling().min_p();
  params.sampling.seed = request->sampling().seed();
  params.max_new_tokens = request->max_new_tokens();
  params.stop_token_ids.assign(request->stop_token_ids().begin(), request->stop_token_ids().end());
  int64_t generated = 0;
  auto reason = worker_.Decode(
      params,
      [&](const std::vector<int32_t>& tokens) {
        internal::v1::DecodeResponse event;
        for (int32_t t : tokens) event.add_token_ids(t);
        serving::Metrics::Get().decode_tokens_total.Increment(static_cast<double>(tokens.size()));
        generated += static_cast<int64_t>(tokens.size());
        for (absl::Time until = absl::Now() + fault_stall_tokens_; absl::Now() < until;) {
          if (context->IsCancelled()) return false;
          absl::SleepFor(absl::Milliseconds(10));
        }
        return writer->Write(event);
      },
      [&] { return context->IsCancelled(); });
  if (!reason.ok()) {
    serving::LogEvent(serving::LogLevel::kWarning, "decode", "decode_failed", request->request_id(),
                      {{"lease", params.lease_id},
                       {"code", absl::StatusCodeToString(reason.status().code())},
                       {"tokens", generated}});
    return ToGrpc(reason.status());
  }
  const bool cache_full = *reason == FinishReason::kCacheFull;
  serving::LogEvent(cache_full ? serving::LogLevel::kWarning : serving::LogLevel::kInfo, "decode", "decode_done",
                    request->request_id(),
                    {{"lease", params.lease_id}, {"tokens", generated},
                     {"finish", *reason == FinishReason::kStopToken ? "stop_token" : "length"},
                     {"cache_full", cache_full}});
  internal::v1::DecodeResponse last;
  // A stop for want of cache pages reads as LENGTH to the client (fewer tokens than asked).
  last.set_finish_reason(*reason == FinishReason::kStopToken ? v1::FINISH_REASON_STOP_TOKEN : v1::FINISH_REASON_LENGTH);
  writer->Write(last);
  return grpc::Status::OK;
}

v1::WorkerInfo DecodeService::Info(const std::string& address) const {
  const DecodeStats stats = worker_.Stats();
  v1::WorkerInfo info;
  info.set_address(address);
  info.set_role("decode");
  info.set_alive(true);
  info.set_cache_pages_free(stats.pages_free);
  info.set_cache_pages_total(stats.pages_total);
  info.set_page_tokens(stats.page_tokens);
  info.set_leases_active(stats.leases_active);
  info.set_sequences_active(stats.sequences_active);
  info.set_draining(stats.draining);
  info.set_prefix_pages(stats.prefix.pages);
  info.set_prefix_checkpoints(stats.prefix.checkpoints);
  info.set_prefix_checkpoint_bytes(stats.prefix.checkpoint_bytes);
  info.set_prefix_entries(stats.prefix.entries);
  info.set_prefix_pinned_entries(stats.prefix.pinned_entries);
  info.set_prefix_lookups(stats.prefix.lookups);
  info.set_prefix_hits(stats.prefix.hits);
  info.set_prefix_cached_tokens(stats.prefix.hit_tokens);
  info.set_prefix_evictions(stats.prefix.evictions);
  return info;
}

}  // namespace latentserve::decode
