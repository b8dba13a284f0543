// `latentserve logits`: per-position logits of a prompt and a greedy continuation, as JSON
// (what the llama.cpp reference tests compare).
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/args.h"
#include "common/status.h"
#include "model/sampler.h"
#include "tools/cli.h"
#include "tools/lib/engine_setup.h"

namespace latentserve::cli {
namespace {

void PrintFloatArray(std::string& out, const float* values, int64_t n) {
  out += '[';
  char buf[32];
  for (int64_t i = 0; i < n; ++i) {
    if (i) out += ',';
    std::snprintf(buf, sizeof(buf), "%.8g", values[i]);
    out += buf;
  }
  out += ']';
}

// latentserve logits: per-position logits and a greedy continuation, as one JSON object.
absl::Status RunLogits(int argc, char** argv) {
  std::set<std::string> known = kEngineFlags;
  known.insert({"tokens", "tokens-file", "greedy"});
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, known, {"last"}));
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, TokensFromArgs(args, "tokens", "tokens-file"));
  ASSIGN_OR_RETURN(int64_t greedy, args.GetInt("greedy", 0));
  if (greedy < 0) return absl::InvalidArgumentError("--greedy must be >= 0");
  // --last: only the last position's logits (a long prompt's per-position logits do not fit).
  const bool last_only = args.Has("last");
  ASSIGN_OR_RETURN(Engine engine,
                   EngineFromArgs(args, static_cast<int64_t>(tokens.size()) + greedy));
  const model::Model& m = *engine.model;
  ASSIGN_OR_RETURN(auto sequence, engine.sequences->New());
  ASSIGN_OR_RETURN(std::vector<float> logits, m.Prefill(*sequence, tokens, *engine.cache,
                                                        engine.chunk_tokens, /*all_logits=*/!last_only));
  const int64_t vocab = m.vocab();
  std::vector<int32_t> continuation;
  std::vector<float> last(logits.end() - vocab, logits.end());
  for (int64_t i = 0; i < greedy; ++i) {
    const int32_t next = model::Argmax(last);
    continuation.push_back(next);
    if (i + 1 == greedy) break;
    model::BatchEntry entry{sequence.get(), absl::MakeConstSpan(&continuation.back(), 1), false};
    ASSIGN_OR_RETURN(last, m.Forward({entry}, *engine.cache));
  }
  sequence.reset();  // its pages go back to the cache
  std::string out = "{\"logits\":[";
  const size_t rows = logits.size() / static_cast<size_t>(vocab);  // every position, or the last
  for (size_t t = 0; t < rows; ++t) {
    if (t) out += ',';
    PrintFloatArray(out, logits.data() + t * vocab, vocab);
  }
  out += "],\"greedy\":[";
  for (size_t i = 0; i < continuation.size(); ++i)
    absl::StrAppend(&out, i ? "," : "", continuation[i]);
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return absl::OkStatus();
}

Registrar logits_cmd("logits", "per-position logits (JSON) and a greedy continuation",
                     StatusHandler("logits", RunLogits));

}  // namespace
}  // namespace latentserve::cli
