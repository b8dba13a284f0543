#include "common/args.h"

#include <vector>

#include "gtest/gtest.h"

namespace latentserve {
namespace {

absl::StatusOr<Args> ParseArgs(std::vector<std::string> argv, const std::set<std::string>& known,
                               const std::set<std::string>& switches = {}) {
  std::vector<char*> ptrs;
  for (std::string& a : argv) ptrs.push_back(a.data());
  return Args::Parse(static_cast<int>(ptrs.size()), ptrs.data(), known, switches);
}

TEST(Args, ParseIntList) {
  EXPECT_EQ(*ParseIntList("3,7,11"), (std::vector<int64_t>{3, 7, 11}));
  EXPECT_EQ(*ParseIntList(" 3 , 7,\t26 "), (std::vector<int64_t>{3, 7, 26}));
  EXPECT_EQ(*ParseIntList("-1"), (std::vector<int64_t>{-1}));
  EXPECT_TRUE(ParseIntList("")->empty());
  EXPECT_FALSE(ParseIntList("3,x").ok());
  EXPECT_FALSE(ParseIntList("1.5").ok());
}

TEST(Args, ValuesSwitchesAndPositionals) {
  auto args = ParseArgs({"--out", "a.gguf", "--seed=7", "pos", "--verbose"}, {"out", "seed"},
                        {"verbose"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->Get("out"), "a.gguf");
  EXPECT_EQ(*args->GetInt("seed", 0), 7);
  EXPECT_EQ(*args->GetInt("missing", 5), 5);
  EXPECT_TRUE(args->Has("verbose"));
  EXPECT_EQ(args->positional(), std::vector<std::string>{"pos"});
  EXPECT_FALSE(args->Require("nope").ok());
}

TEST(Args, Errors) {
  EXPECT_FALSE(ParseArgs({"--typo", "1"}, {"out"}).ok());
  EXPECT_FALSE(ParseArgs({"--out"}, {"out"}).ok());
  auto args = ParseArgs({"--seed", "abc", "--scale", "x"}, {"seed", "scale"});
  ASSERT_TRUE(args.ok());
  EXPECT_FALSE(args->GetInt("seed", 0).ok());
  EXPECT_FALSE(args->GetDouble("scale", 0).ok());
}

TEST(Args, RepeatedFlagsKeepEveryValueInOrder) {
  auto args = ParseArgs({"--stop", "a", "--out", "x", "--stop=b", "--out", "y"}, {"stop", "out"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_EQ(args->GetAll("stop"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(args->Get("out"), "y");  // a single-valued flag: the last one wins
  EXPECT_TRUE(args->GetAll("missing").empty());
}

TEST(Args, UnknownFlagErrorListsTheAcceptedFlags) {
  auto args = ParseArgs({"--typo"}, {"out", "seed"}, {"json"});
  ASSERT_FALSE(args.ok());
  EXPECT_EQ(args.status().message(), "unknown flag --typo (accepted: --json --out --seed)");
}

}  // namespace
}  // namespace latentserve
