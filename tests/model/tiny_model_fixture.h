// A fixture for tests of the cache and prefix reuse under the real forward pass: a tiny f32
// test model written once per suite (5 layers, MLA at layers 1 and 4, weights of seed kSeed),
// loaded on a 2-thread CPU backend, with an f32 paged latent cache of kPages pages of
// kPageTokens tokens and a sequence table over it. TearDown checks that every page and
// sequence went back (the tests' leak guard). Also the NMSE both kinds of test judge by.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/types/span.h"
#include "cache/sequence_table.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "tools/lib/test_model.h"

namespace latentserve::test {

// sum (a - b)^2 / sum b^2 (b the reference).
inline double Nmse(absl::Span<const float> a, absl::Span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return num / std::max(den, 1e-30);
}

template <int kSeed, int64_t kPageTokens, int64_t kPages>
class TinyModelFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ = (std::filesystem::temp_directory_path() /
             ("ls_tiny_" + std::to_string(kSeed) + "_" + std::to_string(::getpid()) + ".gguf"))
                .string();
    tools::TestModelOptions options = tools::TinyTestModel();
    options.out_path = path_;
    options.seed = kSeed;
    options.layers = 5;
    options.mla_layers = {1, 4};
    ASSERT_TRUE(tools::WriteTestModel(options).ok());
  }
  static void TearDownTestSuite() { std::filesystem::remove(path_); }

  void SetUp() override {
    backend_ = *kernels::CreateBackend({"cpu", 2, 0});
    auto model = model::Model::Load(path_, *backend_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    model::LatentCacheOptions options;
    options.dtype = DType::kF32;
    options.page_tokens = kPageTokens;
    options.pages = kPages;
    cache_ = *model::NewLatentCache(model_->config(), *backend_, options);
    table_ = std::make_unique<cache::SequenceTable>(*cache_, model_->kda_layout());
  }
  void TearDown() override {
    EXPECT_EQ(cache_->free_pages(), cache_->total_pages()) << "page references did not return to baseline";
    EXPECT_EQ(table_->Stats().sequences, 0);
    EXPECT_EQ(table_->Stats().checkpoints, 0);
  }

  static inline std::string path_;
  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<model::LatentCache> cache_;
  std::unique_ptr<cache::SequenceTable> table_;
};

}  // namespace latentserve::test
