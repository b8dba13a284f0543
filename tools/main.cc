// latentserve: one binary, one subcommand per role or tool (see `latentserve --help`).
#include <cstdio>
#include <cstring>

#include "latentserve_version.h"  // generated at build time (tools/version.cmake)
#include "tools/cli.h"
#include "tools/usage.h"

namespace latentserve::cli {
std::map<std::string, Subcommand>& Registry() {
  static auto* registry = new std::map<std::string, Subcommand>();
  return *registry;
}
}  // namespace latentserve::cli

namespace {

// `--help` anywhere after the subcommand (use --flag=--help for such a value), or `-h` first.
bool AsksForHelp(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "-h")) return true;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help")) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  using latentserve::cli::Usages;
  auto& registry = latentserve::cli::Registry();
  if (argc >= 2 && (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version"))) {
    std::printf("latentserve %s (git %s)\n", LATENTSERVE_VERSION, LATENTSERVE_GIT_REVISION);
    return 0;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("usage: latentserve <subcommand> [flags]    (latentserve <subcommand> --help: its flags)\n"
                "       latentserve --version\n\nsubcommands:\n");
    for (const auto& [name, sub] : registry) std::printf("  %-18s %s\n", name.c_str(), sub.help.c_str());
    return argc < 2 ? 2 : 0;
  }
  auto it = registry.find(argv[1]);
  if (it == registry.end()) {
    std::fprintf(stderr, "latentserve: unknown subcommand '%s' (see latentserve --help)\n", argv[1]);
    return 2;
  }
  if (AsksForHelp(argc, argv)) {
    auto usage = Usages().find(argv[1]);
    if (usage == Usages().end()) {
      std::printf("latentserve %s: %s\n", argv[1], it->second.help.c_str());
    } else {
      std::fputs(latentserve::cli::FormatUsage(usage->second).c_str(), stdout);
    }
    return 0;
  }
  return it->second.run(argc - 2, argv + 2);
}
