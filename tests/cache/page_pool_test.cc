// PagePool and SequenceTable without a model: reference counts, copy-on-write, views.
#include <cstring>
#include <string>
#include <vector>

#include "cache/page_pool.h"
#include "cache/sequence_table.h"
#include "cache/views.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"

namespace latentserve::cache {
namespace {

class PagePoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = *kernels::CreateBackend({"cpu", 1, 0});
    PagePoolOptions options;
    options.dtype = DType::kF32;
    options.page_tokens = 4;
    options.pages = 8;
    pool_ = *PagePool::Create({2, 8}, *backend_, options);
    table_ = std::make_unique<SequenceTable>(*pool_, KdaLayout{2, {2, 2, 1, 1}, {3, 2, 1, 1}});
  }
  void TearDown() override { EXPECT_EQ(pool_->free_pages(), pool_->total_pages()) << "pages leaked"; }

  // Writes `count` rows of value `value` at the sequence's next positions and advances it.
  void Append(Sequence& sequence, int64_t count, float value) {
    ASSERT_TRUE(table_->PrepareAppend(sequence, count).ok());
    std::vector<float> rows(static_cast<size_t>(count * 8), value);
    std::string bytes(reinterpret_cast<const char*>(rows.data()), rows.size() * sizeof(float));
    for (int64_t layer = 0; layer < 2; ++layer) {
      ASSERT_TRUE(pool_->ImportRows(layer, sequence.pages(), sequence.cached_tokens(), count, bytes).ok());
    }
    ASSERT_TRUE(table_->Advance(sequence, count).ok());
  }
  std::vector<float> Rows(const Sequence& sequence, int64_t layer) {
    std::string bytes;
    EXPECT_TRUE(pool_->ExportRows(layer, sequence.pages(), 0, sequence.cached_tokens(), &bytes).ok());
    std::vector<float> rows(bytes.size() / sizeof(float));
    std::memcpy(rows.data(), bytes.data(), bytes.size());
    return rows;
  }

  std::unique_ptr<kernels::Backend> backend_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<SequenceTable> table_;
};

TEST_F(PagePoolTest, ForkSharesPagesAndCopiesThePartialPageOnWrite) {
  auto parent = *table_->New();
  Append(*parent, 6, 1.0f);  // one full page, one partial (2 of 4)
  ASSERT_EQ(parent->pages().size(), 2u);
  auto child = *table_->Fork(*parent);
  EXPECT_EQ(child->cached_tokens(), 6);
  EXPECT_EQ(std::vector<int32_t>(child->pages().begin(), child->pages().end()),
            std::vector<int32_t>(parent->pages().begin(), parent->pages().end()));
  EXPECT_EQ(pool_->references(parent->pages()[0]), 2);
  EXPECT_EQ(pool_->references(parent->pages()[1]), 2);
  EXPECT_EQ(pool_->free_pages(), 6);

  Append(*child, 3, 2.0f);  // lands in the shared partial page, then a new one
  EXPECT_EQ(child->pages()[0], parent->pages()[0]) << "the full page stays shared";
  EXPECT_NE(child->pages()[1], parent->pages()[1]) << "the partial page was copied before the write";
  EXPECT_EQ(pool_->references(parent->pages()[1]), 1);
  EXPECT_EQ(table_->Stats().pages_copied, 1);
  Append(*parent, 2, 3.0f);  // the parent's own partial page: no copy needed now
  EXPECT_EQ(table_->Stats().pages_copied, 1);
  for (int64_t layer = 0; layer < 2; ++layer) {
    std::vector<float> expect_parent(6 * 8, 1.0f), expect_child(6 * 8, 1.0f);
    expect_parent.insert(expect_parent.end(), 2 * 8, 3.0f);
    expect_child.insert(expect_child.end(), 3 * 8, 2.0f);
    EXPECT_EQ(Rows(*parent, layer), expect_parent) << "layer " << layer;
    EXPECT_EQ(Rows(*child, layer), expect_child) << "layer " << layer;
  }
  parent.reset();
  EXPECT_EQ(pool_->references(child->pages()[0]), 1) << "dropping the parent leaves the child's reference";
  child.reset();
  EXPECT_EQ(table_->Stats().sequences, 0);
}

TEST_F(PagePoolTest, CopyOnWriteThatFindsNoPageChangesNothing) {
  auto parent = *table_->New();
  Append(*parent, 6, 1.0f);
  auto child = *table_->Fork(*parent);
  auto hog = *pool_->Allocate(pool_->free_pages());
  const std::vector<int32_t> before(child->pages().begin(), child->pages().end());
  EXPECT_EQ(table_->PrepareAppend(*child, 1).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::vector<int32_t>(child->pages().begin(), child->pages().end()), before);
  EXPECT_EQ(pool_->references(before[1]), 2);
  pool_->Release(hog);
}

TEST_F(PagePoolTest, TrimToACheckpointReleasesPagesAndRestoresKdaState) {
  auto sequence = *table_->New();
  Append(*sequence, 5, 1.0f);
  const std::vector<float> state = {1, 2, 3, 4};
  backend_->Upload(state.data(), state.size() * sizeof(float), sequence->kda()[1].recurrent);
  auto checkpoint = *table_->Checkpoint(*sequence);
  EXPECT_EQ(checkpoint->tokens(), 5);
  EXPECT_EQ(table_->Stats().checkpoints, 1);
  EXPECT_EQ(table_->Stats().checkpoint_bytes, 2 * (4 + 6) * 4);
  Append(*sequence, 7, 2.0f);
  backend_->Zero(sequence->kda()[1].recurrent);
  EXPECT_EQ(sequence->pages().size(), 3u);
  ASSERT_TRUE(table_->Trim(*sequence, *checkpoint).ok());
  EXPECT_EQ(sequence->cached_tokens(), 5);
  EXPECT_EQ(sequence->pages().size(), 2u);
  EXPECT_EQ(pool_->free_pages(), 6);
  std::vector<float> restored(4);
  backend_->Download(sequence->kda()[1].recurrent, restored.data(), restored.size() * sizeof(float));
  EXPECT_EQ(restored, state);
  checkpoint.reset();
  EXPECT_EQ(table_->Stats().checkpoints, 0);
  EXPECT_EQ(table_->Stats().checkpoint_bytes, 0);
}

TEST_F(PagePoolTest, AdvancePastTheReservedPagesIsRefused) {
  auto sequence = *table_->New();
  ASSERT_TRUE(table_->Reserve(*sequence, 3).ok());
  EXPECT_EQ(table_->Advance(*sequence, 5).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table_->Advance(*sequence, -1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(table_->Advance(*sequence, 4).ok());
  EXPECT_EQ(table_->Reserve(*sequence, 1000).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sequence->pages().size(), 1u);
}

TEST_F(PagePoolTest, CopyRowsBetweenPoolsOfOtherPageSizesAndBackends) {
  auto other_backend = *kernels::CreateBackend({"cpu", 1, 0});
  PagePoolOptions options;
  options.dtype = DType::kF32;
  options.page_tokens = 3;
  options.pages = 8;
  auto other_pool = *PagePool::Create({2, 8}, *other_backend, options);
  SequenceTable other_table(*other_pool, table_->kda_layout());
  auto source = *table_->New();
  for (int t = 0; t < 7; ++t) Append(*source, 1, static_cast<float>(t));
  auto target = *other_table.New();
  ASSERT_TRUE(other_table.Reserve(*target, 7).ok());
  for (int64_t layer = 0; layer < 2; ++layer) {
    auto host = CopyRows(RowsOf(*source, layer, 0, 7), RowsOf(*target, layer, 0, 7));
    ASSERT_TRUE(host.ok()) << host.status();
    EXPECT_EQ(*host, 0) << "two CPU backends copy directly";
  }
  ASSERT_TRUE(other_table.Advance(*target, 7).ok());
  std::string a, b;
  ASSERT_TRUE(pool_->ExportRows(1, source->pages(), 0, 7, &a).ok());
  ASSERT_TRUE(other_pool->ExportRows(1, target->pages(), 0, 7, &b).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(CopyRows(RowsOf(*source, 0, 0, 7), RowsOf(*target, 0, 3, 7)).status().code(),
            absl::StatusCode::kInvalidArgument)
      << "rows past the target's pages";
  auto host = CopyKdaState(KdaOf(*source, 0), KdaOf(*target, 0));
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(*host, 0);
}

}  // namespace
}  // namespace latentserve::cache
