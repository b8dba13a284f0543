// `latentserve tokenize` and `latentserve detokenize`: the Kimi tokenizer of a GGUF (a
// vocab-only file is enough) from the command line.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/args.h"
#include "common/gguf/gguf.h"
#include "common/status.h"
#include "common/tokenizer/tokenizer.h"
#include "tools/cli.h"

namespace latentserve {
namespace {

absl::StatusOr<tokenizer::Tokenizer> LoadTokenizer(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<gguf::File> file, gguf::File::Open(path));
  return tokenizer::Tokenizer::FromGguf(*file);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int Fail(const absl::Status& status, const char* command) {
  std::fprintf(stderr, "latentserve %s: %s\n", command, status.ToString().c_str());
  return 1;
}

absl::Status RunTokenize(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, {"model", "text-file", "text"},
                                          {"special", "add-special"}));
  ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  if (args.Has("text") == args.Has("text-file")) {
    return absl::InvalidArgumentError("give exactly one of --text-file or --text");
  }
  std::string text = args.Get("text");
  if (args.Has("text-file")) {
    ASSIGN_OR_RETURN(text, ReadFile(args.Get("text-file")));
  }
  ASSIGN_OR_RETURN(tokenizer::Tokenizer tok, LoadTokenizer(model));
  const std::vector<int32_t> ids =
      tok.Encode(text, args.Get("special") == "true", args.Get("add-special") == "true");
  std::string out = "{\"token_ids\":[";  // the key `client tokenize` prints
  for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&out, i ? "," : "", ids[i]);
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return absl::OkStatus();
}

absl::Status RunDetokenize(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, {"model", "ids", "ids-file", "out"},
                                          {"no-special"}));
  ASSIGN_OR_RETURN(std::string model, args.Require("model"));
  if (args.Has("ids") == args.Has("ids-file")) {
    return absl::InvalidArgumentError("give exactly one of --ids or --ids-file");
  }
  std::string list = args.Get("ids");
  if (args.Has("ids-file")) {
    ASSIGN_OR_RETURN(list, ReadFile(args.Get("ids-file")));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> raw_ids, ParseIntList(list));
  ASSIGN_OR_RETURN(tokenizer::Tokenizer tok, LoadTokenizer(model));
  std::vector<int32_t> ids;
  for (int64_t id : raw_ids) {
    if (id < 0 || id >= tok.vocab_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is out of range [0, ", tok.vocab_size(), ")"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  ASSIGN_OR_RETURN(std::string text, tok.Decode(ids, args.Get("no-special") != "true"));
  if (args.Has("out")) {
    std::ofstream out(args.Get("out"), std::ios::binary);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", args.Get("out")));
  } else {
    std::fwrite(text.data(), 1, text.size(), stdout);  // exact bytes, no newline added
  }
  return absl::OkStatus();
}

static cli::Registrar tokenize_registrar(
    "tokenize",
    "the model's tokenizer: {\"token_ids\":[...]} for a text",
    [](int argc, char** argv) {
      absl::Status s = RunTokenize(argc, argv);
      return s.ok() ? 0 : Fail(s, "tokenize");
    });
static cli::Registrar detokenize_registrar(
    "detokenize", "token ids back to their exact text",
    [](int argc, char** argv) {
      absl::Status s = RunDetokenize(argc, argv);
      return s.ok() ? 0 : Fail(s, "detokenize");
    });

}  // namespace
}  // namespace latentserve
