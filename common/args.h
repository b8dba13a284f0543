// Minimal `--name value` / `--name=value` / `--switch` parser for the subcommands.
// Unknown flags are errors so typos never pass silently.
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
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Require(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// Parses "1,2,3" (spaces allowed) into integers.
absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text);

}  // namespace latentserve
