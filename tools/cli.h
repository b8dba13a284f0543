// Subcommand registry for the single `latentserve` binary. Each tools/cmd_*.cc registers
// its subcommands with a static Registrar; those objects are linked into the executable
// directly, so registration cannot be dropped by the linker.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"

namespace latentserve::cli {

// argc/argv exclude the program name and the subcommand name. Returns the exit code.
using Handler = std::function<int(int argc, char** argv)>;

struct Subcommand {
  std::string help;  // one line for `latentserve --help`
  Handler run;
};

std::map<std::string, Subcommand>& Registry();

struct Registrar {
  Registrar(const std::string& name, const std::string& help, Handler run) {
    Registry()[name] = Subcommand{help, std::move(run)};
  }
};

// A subcommand whose body returns a Status: prints "latentserve NAME: message" on failure;
// exit code 2 for a usage error (InvalidArgument), 1 for any other failure, 0 on success.
inline Handler StatusHandler(const char* name, absl::Status (*run)(int argc, char** argv)) {
  return [name, run](int argc, char** argv) {
    const absl::Status status = run(argc, argv);
    if (status.ok()) return 0;
    std::fprintf(stderr, "latentserve %s: %s\n", name, std::string(status.message()).c_str());
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  };
}

}  // namespace latentserve::cli
