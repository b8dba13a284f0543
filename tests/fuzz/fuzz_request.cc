// The router's checks of a public Generate request on hostile bytes: the fuzzer's bytes are
// parsed as a GenerateRequest (what any client with the token can send), then go through
// router::PromptTokens (the --max-prompt-bytes check, then the tokenizer of a tiny test
// model for text and chat prompts) and router::ValidateRequest, against a registry holding
// one decode and one prefill worker (registered, heartbeated before each input; their
// addresses are never dialled here).
//
// Checked: no sanitizer report; whatever ValidateRequest accepts is servable: prompt tokens
// and stop ids inside the vocabulary, a prompt within --max-prompt-tokens and the text within
// --max-prompt-bytes, max_tokens positive and within the context, sampling finite and in range.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "router/generation_service.h"
#include "router/request_checks.h"
#include "tools/lib/test_model.h"

namespace {

namespace ls = latentserve;

constexpr int64_t kContext = 512;
constexpr int64_t kMaxPromptTokens = 256;
constexpr int64_t kMaxPromptBytes = 2048;

struct World {
  std::unique_ptr<ls::router::RouterState> state;
  ls::internal::v1::ModelDescriptor model;
};

ls::internal::v1::RegisterWorkerRequest Registration(const std::string& address, const std::string& role,
                                           const ls::internal::v1::ModelDescriptor& model) {
  ls::internal::v1::RegisterWorkerRequest r;
  r.set_address(address);
  r.set_role(role);
  *r.mutable_model() = model;
  r.mutable_stats()->set_cache_pages_free(64);
  r.mutable_stats()->set_cache_pages_total(64);
  r.mutable_stats()->set_alive(true);
  return r;
}

World* MakeWorld() {
  auto* w = new World;
  ls::tools::TestModelOptions options = ls::tools::TinyTestModel();
  options.out_path = "/tmp/latentserve-fuzz-request-" + std::to_string(getpid()) + ".gguf";
  options.seed = 1;
  options.threads = 1;
  if (!ls::tools::WriteTestModel(options).ok()) std::abort();
  ls::router::RouterOptions router_options;
  router_options.model_path = options.out_path;  // the tokenizer; kept for the process's life
  router_options.max_prompt_tokens = kMaxPromptTokens;
  router_options.max_prompt_bytes = kMaxPromptBytes;
  w->state = std::make_unique<ls::router::RouterState>(router_options);
  w->model.set_name("kimi-linear-test");
  w->model.set_fingerprint("fuzz-fingerprint");
  w->model.set_vocab_size(options.vocab);
  w->model.set_max_context_tokens(kContext);
  for (const char* role : {"decode", "prefill"}) {
    const std::string address = std::string("127.0.0.1:") + (role[0] == 'd' ? "9" : "7");
    if (!w->state->registry().Register(Registration(address, role, w->model)).ok()) std::abort();
  }
  if (w->state->codec() == nullptr) std::abort();  // text prompts must reach the tokenizer
  return w;
}

World& TheWorld() {
  static World* world = MakeWorld();
  return *world;
}

void Fail(const char* what) {
  std::fprintf(stderr, "accepted a request that is not servable: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = TheWorld();
  ls::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  // The registry's poller marks the never-answering addresses dead; keep them alive.
  for (const char* address : {"127.0.0.1:9", "127.0.0.1:7"}) {
    ls::internal::v1::HeartbeatRequest beat;
    beat.set_address(address);
    beat.mutable_stats()->set_cache_pages_free(64);
    beat.mutable_stats()->set_alive(true);
    (void)w.state->registry().Heartbeat(beat);
  }
  auto tokens = ls::router::PromptTokens(*w.state, request);
  if (!tokens.ok()) return 0;
  if (!ls::router::ValidateRequest(*w.state, request, *tokens, w.model).ok()) return 0;

  if (tokens->empty()) Fail("empty prompt");
  if (static_cast<int64_t>(tokens->size()) > kMaxPromptTokens) Fail("prompt over --max-prompt-tokens");
  for (int32_t id : *tokens) {
    if (id < 0 || id >= w.model.vocab_size()) Fail("prompt id outside the vocabulary");
  }
  if (request.prompt_case() == ls::v1::GenerateRequest::kText &&
      static_cast<int64_t>(request.text().size()) > kMaxPromptBytes) {
    Fail("text over --max-prompt-bytes");
  }
  const int64_t max_tokens = request.stopping().max_tokens();
  if (max_tokens <= 0 || max_tokens > kContext || static_cast<int64_t>(tokens->size()) + max_tokens > kContext) {
    Fail("max_tokens outside the context");
  }
  const auto& s = request.sampling();
  if (!std::isfinite(s.temperature()) || s.temperature() < 0 || s.top_k() < 0 || !(s.top_p() >= 0 && s.top_p() <= 1) ||
      !(s.min_p() >= 0 && s.min_p() <= 1)) {
    Fail("sampling parameters");
  }
  for (int32_t id : request.stopping().stop_token_ids()) {
    if (id < 0 || id >= w.model.vocab_size()) Fail("stop id outside the vocabulary");
  }
  return 0;
}
