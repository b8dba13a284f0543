// ParseIntList ("3, 7,11" from --mla-layers and friends) and Args::Parse on arbitrary text.
// Invariant: a list that parses prints back ("a,b,c") to text that parses to the same list.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/args.h"

using latentserve::Args;
using latentserve::ParseIntList;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);

  auto parsed = ParseIntList(text);
  if (parsed.ok()) {
    const std::string printed = absl::StrJoin(*parsed, ",");
    auto reparsed = ParseIntList(printed);
    if (!reparsed.ok() || *reparsed != *parsed) std::abort();
  }

  // The same bytes as a command line: NUL-separated arguments.
  std::vector<std::string> words = absl::StrSplit(text, '\0');
  std::vector<char*> argv;
  for (std::string& word : words) argv.push_back(word.data());
  auto args = Args::Parse(static_cast<int>(argv.size()), argv.data(), {"list", "n", "x"}, {"flag"});
  if (args.ok()) {
    (void)args->GetInt("n", 0);
    (void)args->GetDouble("x", 0);
    if (args->Has("list")) (void)ParseIntList(args->Get("list"));
  }
  return 0;
}
