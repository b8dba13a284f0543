// latentserve: one binary, one subcommand per role or tool (see `latentserve --help`).
#include <cstdio>
#include <cstring>

#include "tools/cli.h"

namespace latentserve::cli {
std::map<std::string, Subcommand>& Registry() {
  static auto* registry = new std::map<std::string, Subcommand>();
  return *registry;
}
}  // namespace latentserve::cli

int main(int argc, char** argv) {
  auto& registry = latentserve::cli::Registry();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("usage: latentserve <subcommand> [flags]\n\nsubcommands:\n");
    for (const auto& [name, sub] : registry) std::printf("  %-18s %s\n", name.c_str(), sub.help.c_str());
    return argc < 2 ? 2 : 0;
  }
  auto it = registry.find(argv[1]);
  if (it == registry.end()) {
    std::fprintf(stderr, "latentserve: unknown subcommand '%s' (see latentserve --help)\n", argv[1]);
    return 2;
  }
  return it->second.run(argc - 2, argv + 2);
}
