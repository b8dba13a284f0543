// The decode worker's side of the cache handoff (DecodeWorker.ReceiveCache) on hostile
// messages: the fuzzer's bytes become a stream of ReceiveCacheRequest messages fed through
// transfer::ReceiveCacheMessages (the body of the gRPC handler) into a real DecodeWorker
// over a tiny test model on the CPU. Each input reserves a lease first, so headers may name
// it (and the right fingerprint and layout) and reach the chunk checks; otherwise any field
// may be off, and some messages are raw protobuf bytes.
//
// Checked: no sanitizer report; a stream accepted as complete had a header naming the lease;
// once the lease is released every page is free again (a hostile stream leaks no page).
#include <fuzzer/FuzzedDataProvider.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "decode/decode_worker.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/latent_cache.h"
#include "model/model.h"
#include "tools/lib/test_model.h"
#include "transfer/checksum.h"
#include "transfer/grpc_transport.h"

namespace {

namespace ls = latentserve;

struct World {
  std::unique_ptr<ls::kernels::cpu::CpuBackend> backend;
  std::unique_ptr<ls::model::Model> model;
  std::unique_ptr<ls::model::LatentCache> cache;
  std::unique_ptr<ls::decode::DecodeWorker> worker;
  ls::internal::v1::CacheHandoffHeader valid;  // what a correct prefill worker sends, lease id aside
  int64_t pages_free = 0;
};

World* MakeWorld() {
  auto* w = new World;
  ls::tools::TestModelOptions options = ls::tools::TinyTestModel();
  options.out_path = "/tmp/latentserve-fuzz-handoff-" + std::to_string(getpid()) + ".gguf";
  options.seed = 1;
  options.threads = 1;
  if (!ls::tools::WriteTestModel(options).ok()) std::abort();
  w->backend = std::make_unique<ls::kernels::cpu::CpuBackend>(1);
  auto model = ls::model::Model::Load(options.out_path, *w->backend);
  if (!model.ok()) std::abort();
  w->model = std::move(*model);
  unlink(options.out_path.c_str());
  ls::model::LatentCacheOptions cache_options;
  cache_options.page_tokens = 16;
  cache_options.pages = 32;
  auto cache = ls::model::NewLatentCache(w->model->config(), *w->backend, cache_options);
  if (!cache.ok()) std::abort();
  w->cache = std::move(*cache);
  w->worker = std::make_unique<ls::decode::DecodeWorker>(*w->model, *w->cache, "fuzz-fingerprint");
  ls::internal::v1::CacheHandoffHeader& h = w->valid;
  h.set_request_id("fuzz");
  h.set_model_fingerprint("fuzz-fingerprint");
  h.set_cache_dtype(ls::transfer::ToProtoDType(w->cache->dtype()));
  h.set_page_tokens(w->cache->page_tokens());
  h.set_latent_width(w->cache->latent_width());
  h.set_row_bytes(static_cast<int64_t>(w->cache->row_bytes()));
  const auto& config = w->model->config();
  int64_t kda_layers = 0;
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    if (config.is_mla[layer]) {
      h.add_mla_layers(static_cast<int32_t>(layer));
    } else {
      h.add_kda_layers(static_cast<int32_t>(layer));
      ++kda_layers;
    }
  }
  h.set_kda_state_bytes(kda_layers > 0 ? w->model->KdaStateBytes() / kda_layers : 0);
  w->pages_free = w->worker->Stats().pages_free;
  return w;
}

World& TheWorld() {
  static World* world = MakeWorld();
  return *world;
}

// A number near the interesting values (0, small, the valid one, huge, negative).
int64_t Near(FuzzedDataProvider& in, int64_t valid) {
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0: return valid;
    case 1: return valid + in.ConsumeIntegralInRange<int64_t>(-3, 3);
    case 2: return in.ConsumeIntegralInRange<int64_t>(0, 64);
    case 3: return -in.ConsumeIntegralInRange<int64_t>(1, INT64_MAX);
    default: return in.ConsumeIntegral<int64_t>();
  }
}

std::string Payload(FuzzedDataProvider& in, int64_t suggested) {
  const size_t n = in.ConsumeBool() ? static_cast<size_t>(std::clamp<int64_t>(suggested, 0, 1 << 16))
                                    : in.ConsumeIntegralInRange<size_t>(0, 4096);
  std::string bytes = in.ConsumeBytesAsString(n);
  bytes.resize(n, static_cast<char>(in.ConsumeIntegral<uint8_t>()));
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  FuzzedDataProvider in(data, size);
  const int64_t prompt_tokens = in.ConsumeIntegralInRange<int64_t>(1, 200);
  auto lease = w.worker->ReserveLease("fuzz", prompt_tokens, absl::Minutes(1), "fuzz-fingerprint", "fuzz-owner");
  if (!lease.ok()) std::abort();  // every earlier lease was released: the cache has room

  ls::internal::v1::ReceiveCacheRequest first;
  ls::internal::v1::CacheHandoffHeader* h = first.mutable_header();
  *h = w.valid;
  h->set_lease_id(in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeRandomLengthString(48) : *lease);
  h->set_prompt_tokens(Near(in, prompt_tokens));
  const int64_t row_bytes = w.valid.row_bytes();
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: h->set_model_fingerprint(in.ConsumeRandomLengthString(32)); break;
      case 1: h->set_cache_dtype(static_cast<ls::internal::v1::CacheDType>(in.ConsumeIntegral<int8_t>())); break;
      case 2: h->set_row_bytes(Near(in, row_bytes)); break;
      case 3: h->set_latent_width(Near(in, w.valid.latent_width())); break;
      case 4: h->set_kda_state_bytes(Near(in, w.valid.kda_state_bytes())); break;
      case 5: h->set_page_tokens(Near(in, w.valid.page_tokens())); break;
      case 6: h->add_mla_layers(in.ConsumeIntegral<int32_t>()); break;
      default: h->clear_kda_layers(); break;
    }
  }
  const bool raw_first = in.ConsumeIntegralInRange<int>(0, 15) == 0;
  bool first_sent = false;
  auto read = [&](ls::internal::v1::ReceiveCacheRequest* message) {
    message->Clear();
    if (!first_sent) {
      first_sent = true;
      if (!raw_first) {
        *message = first;
        return true;
      }
    }
    if (in.remaining_bytes() == 0) return false;
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0: {  // raw bytes: whatever protobuf makes of them
        std::string bytes = in.ConsumeRandomLengthString(256);
        message->ParseFromString(bytes);
        return true;
      }
      case 1: {
        auto* end = message->mutable_end();
        end->set_first_token(in.ConsumeIntegral<int32_t>());
        end->set_chunks(Near(in, 2));
        end->set_payload_bytes(in.ConsumeIntegral<int64_t>());
        return true;
      }
      case 2: case 3: case 4: {
        auto* kda = message->mutable_kda();
        kda->set_kda_index(static_cast<int32_t>(Near(in, 0)));
        kda->set_offset(Near(in, 0));
        kda->set_data(Payload(in, w.valid.kda_state_bytes()));
        kda->set_checksum(in.ConsumeBool() ? ls::transfer::Xxh64(kda->data()) : in.ConsumeIntegral<uint64_t>());
        return true;
      }
      default: {
        auto* rows = message->mutable_latent();
        rows->set_mla_index(static_cast<int32_t>(Near(in, 0)));
        rows->set_first_token(Near(in, 0));
        const int64_t count = Near(in, prompt_tokens);
        rows->set_token_count(count);
        rows->set_rows(Payload(in, count > 0 && count < (1 << 16) ? count * row_bytes : 0));
        rows->set_checksum(in.ConsumeBool() ? ls::transfer::Xxh64(rows->rows()) : in.ConsumeIntegral<uint64_t>());
        return true;
      }
    }
  };
  ls::internal::v1::ReceiveCacheResponse response;
  const grpc::Status status = ls::transfer::ReceiveCacheMessages(*w.worker, read, [] { return false; }, &response);
  if (status.ok() && (raw_first || h->lease_id() != *lease)) {
    std::fprintf(stderr, "a handoff without a header naming the lease was accepted\n");
    std::abort();
  }
  // Released (whether the cache arrived or not): the pages go back, however the stream went.
  if (!w.worker->ReleaseLease(*lease, "fuzz-owner").ok()) std::abort();
  if (w.worker->Stats().pages_free != w.pages_free) {
    std::fprintf(stderr, "pages leaked: %lld free, %lld at start\n",
                 static_cast<long long>(w.worker->Stats().pages_free), static_cast<long long>(w.pages_free));
    std::abort();
  }
  return 0;
}
