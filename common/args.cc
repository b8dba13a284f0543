#include "common/args.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace latentserve {

absl::StatusOr<Args> Args::Parse(int argc, char** argv, const std::set<std::string>& known,
                                 const std::set<std::string>& switches) {
  Args args;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      args.positional_.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (!known.count(name) && !switches.count(name)) {
      std::set<std::string> accepted = known;
      accepted.insert(switches.begin(), switches.end());
      std::string list;
      for (const std::string& flag : accepted) absl::StrAppend(&list, list.empty() ? "" : " ", "--", flag);
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (accepted: ", list, ")"));
    }
    if (switches.count(name)) {
      args.values_[name].push_back(has_value ? value : "true");
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    args.values_[name].push_back(value);
  }
  return args;
}

std::string Args::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::GetAll(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

absl::StatusOr<std::string> Args::Require(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return it->second.back();
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second.back(), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " expects an integer, got '", it->second.back(), "'"));
  }
  return v;
}

absl::StatusOr<double> Args::GetDouble(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second.back(), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " expects a number, got '", it->second.back(), "'"));
  }
  return v;
}

absl::StatusOr<std::vector<int64_t>> ParseIntList(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(piece), &v)) {
      return absl::InvalidArgumentError(absl::StrCat("not an integer: '", piece, "'"));
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace latentserve
