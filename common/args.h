// Minimal `--name value` / `--name=value` / `--switch` parser for the subcommands.
// Unknown flags are errors so typos never pass silently; the error lists the accepted flags
// (tests/integration/test_cli.py compares that list with each subcommand's --help).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace latentserve {

class Args {
 public:
  // `known` lists every accepted flag name (without dashes); `switches` are those taking no
  // value. Positional arguments are collected in order.
  static absl::StatusOr<Args> Parse(int argc, char** argv, const std::set<std::string>& known,
                                    const std::set<std::string>& switches = {});

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value given for `name` (a repeated flag overrides, except through GetAll).
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  // Every value given for `name`, in command-line order (repeatable flags such as --stop).
  std::vector<std::string> GetAll(const std::string& name) const;
  absl::StatusOr<std::string> Require(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::vector<std::string>> values_;  // never an empty vector
  std::vector<std::string> positional_;
};

// Parses "1,2,3" (spaces allowed) into integers.
absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text);

}  // namespace latentserve
