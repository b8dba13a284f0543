#include "prefill/prefill_service.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "serving/metrics.h"
#include "common/error_details.h"
#include "common/grpc_status.h"

namespace latentserve::prefill {

grpc::Status PrefillService::Prefill(grpc::ServerContext* context, const internal::v1::PrefillRequest* request,
                                     grpc::ServerWriter<internal::v1::PrefillResponse>* writer) {
  if (grpc::Status denied = auth_.Check(*context, "PrefillWorker.Prefill"); !denied.ok()) return denied;
  if (request->model_fingerprint() != worker_.fingerprint()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("prefill worker serves model ", worker_.fingerprint(), ", request is for ",
                                     request->model_fingerprint()));
  }
  if (absl::Status address = serving::ValidateWorkerAddress(request->decode_worker()); !address.ok()) {
    return ToGrpc(address);
  }
  PrefillJob job;
  job.request_id = request->request_id();
  job.lease_id = request->lease_id();
  job.decode_worker = request->decode_worker();
  job.tokens.assign(request->token_ids().begin(), request->token_ids().end());
  job.sampling.temperature = request->sampling().temperature();
  job.sampling.top_k = request->sampling().top_k();
  job.sampling.top_p = request->sampling().top_p() > 0 ? request->sampling().top_p() : 1.0f;
  job.sampling.min_p = request->sampling().min_p();
  job.sampling.seed = request->sampling().seed();
  // The handoff inherits this call's deadline (the router sets one on every call).
  job.deadline = absl::FromChrono(context->deadline());
  job.transport = request->transport();
  job.cached_tokens = request->cached_tokens();
  job.checkpoint_interval_tokens = request->checkpoint_interval_tokens();
  bool writer_gone = false;
  bool transfer_failed = false;
  auto result = worker_.Run(
      job,
      [&](const PrefillProgressEvent& progress) {
        internal::v1::PrefillResponse event;
        auto* p = event.mutable_progress();
        p->set_tokens_done(progress.tokens_done);
        p->set_tokens_total(progress.tokens_total);
        p->set_cache_bytes_sent(progress.cache_bytes_sent);
        if (!writer->Write(event)) writer_gone = true;
      },
      [&] { return writer_gone || context->IsCancelled(); }, &transfer_failed);
  serving::Metrics& metrics = serving::Metrics::Get();
  if (!result.ok()) {
    if (transfer_failed) metrics.transfer_failures_total.Increment();
    serving::LogEvent(serving::LogLevel::kWarning, "prefill", "prefill_failed", job.request_id,
                      {{"code", absl::StatusCodeToString(result.status().code())},
                       {"stage", transfer_failed ? "transfer" : "prefill"},
                       {"message", std::string(result.status().message())}});
    if (transfer_failed) {
      return ErrorStatus(static_cast<grpc::StatusCode>(result.status().code()), std::string(result.status().message()),
                         Details(error_reason::kHandoffTransferFailed, {{"decode_worker", job.decode_worker}}));
    }
    return ToGrpc(result.status());
  }
  metrics.prefill_tokens_total.Increment(static_cast<double>(job.tokens.size()));
  metrics.prefill_compute_seconds_total.Increment(result->prefill_ms / 1000.0);
  metrics.prefill_seconds.Observe(result->prefill_ms / 1000.0);
  metrics.transfer_bytes_total.Increment(static_cast<double>(result->cache_bytes));
  metrics.transfer_tail_seconds.Observe(result->transfer_tail_ms / 1000.0);
  metrics.transfer_handoffs_total.Add({{"transport", result->transport.empty() ? "other" : result->transport}}).Increment();
  metrics.transfer_device_bytes_total.Increment(static_cast<double>(result->device_bytes));
  serving::LogEvent("prefill", "prefill_done", job.request_id,
                    {{"prompt_tokens", job.tokens.size()},
                     {"prefill_ms", result->prefill_ms},
                     {"cache_bytes", result->cache_bytes},
                     {"host_bytes", result->host_bytes},
                     {"transport", result->transport},
                     {"device_bytes", result->device_bytes},
                     {"device_copy_ms", result->device_copy_ms},
                     {"device_gbps", result->device_copy_ms > 0
                                         ? result->device_bytes / (result->device_copy_ms * 1e6)
                                         : 0.0},
                     {"transfer_tail_ms", result->transfer_tail_ms},
                     {"cached_tokens", job.cached_tokens},
                     {"resumed_tokens", result->resumed_tokens},
                     {"prefix_read_ms", result->prefix_read_ms},
                     {"resume_error", result->resume_error},
                     {"checkpoint_interval_tokens", job.checkpoint_interval_tokens},
                     {"checkpoints_sent", result->checkpoints_sent},
                     {"decode_worker", job.decode_worker}});
  internal::v1::PrefillResponse event;
  auto* done = event.mutable_done();
  done->set_first_token(result->first_token);
  done->set_prefill_ms(result->prefill_ms);
  done->set_cache_bytes(result->cache_bytes);
  done->set_transfer_tail_ms(result->transfer_tail_ms);
  done->set_transport(result->transport);
  done->set_device_bytes(result->device_bytes);
  done->set_resumed_tokens(result->resumed_tokens);
  writer->Write(event);
  return grpc::Status::OK;
}

v1::WorkerInfo PrefillService::Info(const std::string& address) const {
  const PrefillStats stats = worker_.Stats();
  v1::WorkerInfo info;
  info.set_address(address);
  info.set_role("prefill");
  info.set_alive(true);
  info.set_cache_pages_free(stats.pages_free);
  info.set_cache_pages_total(stats.pages_total);
  info.set_page_tokens(stats.page_tokens);
  info.set_sequences_active(stats.jobs_active);
  info.set_outstanding_cost(stats.outstanding_cost);
  info.set_draining(stats.draining);
  return info;
}

}  // namespace latentserve::prefill
