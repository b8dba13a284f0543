// Subcommand registry for the single `latentserve` binary. Each tools/cmd_*.cc registers
// its subcommands with a static Registrar; those objects are linked into the executable
// directly, so registration cannot be dropped by the linker.
#pragma once

#include <functional>
#include <map>
#include <string>

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

}  // namespace latentserve::cli
