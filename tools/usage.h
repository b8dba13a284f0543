// `latentserve <subcommand> --help`: each subcommand's synopsis, flags with their defaults, and
// one example. The texts live in tools/usage_text.cc; main.cc prints them. The parser of each
// subcommand (common/args.h) stays the authority on what is accepted: test_cli.py checks that
// --help lists exactly the flags the parser accepts.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace latentserve::cli {

struct FlagHelp {
  std::string name;           // without dashes, e.g. "cache-tokens"
  std::string value;          // placeholder such as "N" or "HOST:PORT"; empty for a switch
  std::string default_value;  // shown as "(default: ...)"; empty when there is none
  std::string help;           // one or two short sentences
};

struct Usage {
  std::string synopsis;          // after "usage: latentserve "
  std::string description;       // a few lines: what it does
  std::vector<FlagHelp> flags;   // in the order a reader needs them
  std::string example;           // one command line that works as shown
};

// Every subcommand's usage, by subcommand name.
const std::map<std::string, Usage>& Usages();

// The text `--help` prints.
std::string FormatUsage(const Usage& usage);

}  // namespace latentserve::cli
