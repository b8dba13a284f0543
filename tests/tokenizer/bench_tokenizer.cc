// Tokenizer throughput: bench_tokenizer --model M --text-file F [--repeat N] [--special]
// Prints MB/s and tokens/s of Encode over the whole file (best of N runs).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "common/args.h"
#include "common/gguf/gguf.h"
#include "common/tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using namespace latentserve;
  auto args = Args::Parse(argc - 1, argv + 1, {"model", "text-file", "repeat"}, {"special"});
  if (!args.ok() || !args->Has("model") || !args->Has("text-file")) {
    std::fprintf(stderr, "usage: bench_tokenizer --model M --text-file F [--repeat N] [--special]\n");
    return 2;
  }
  std::ifstream in(args->Get("text-file"), std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto load_start = std::chrono::steady_clock::now();
  auto file = gguf::File::Open(args->Get("model"));
  if (!file.ok()) return std::fprintf(stderr, "%s\n", file.status().ToString().c_str()), 1;
  auto tok = tokenizer::Tokenizer::FromGguf(**file);
  if (!tok.ok()) return std::fprintf(stderr, "%s\n", tok.status().ToString().c_str()), 1;
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  const int repeat = static_cast<int>(args->GetInt("repeat", 3).value_or(3));
  double best = 1e30;
  size_t n_tokens = 0;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    n_tokens = tok->Encode(text, args->Get("special") == "true").size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("{\"bytes\":%zu,\"tokens\":%zu,\"seconds\":%.4f,\"mb_per_s\":%.2f,"
              "\"tokens_per_s\":%.0f,\"load_seconds\":%.3f}\n",
              text.size(), n_tokens, best, text.size() / 1e6 / best, n_tokens / best, load_s);
  return 0;
}
