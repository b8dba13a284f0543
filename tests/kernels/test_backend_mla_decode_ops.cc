// The paged MLA decode's merge of key ranges against the CPU: the Hopper kernel merges inside
// itself for batches of several sequences (a ticket per sequence, mla_decode_merge.cuh) or, for
// one sequence, where its CTAs might not all fit the GPU at once or with
// LATENTSERVE_MLA_DECODE_MERGE=kernel, leaves it to the merge kernel; sequences
// of one range write their output directly. Batches of many sequences of different lengths,
// and recorded steps replayed several times (the tickets must be back at 0 after each call).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_mla_decode_stats.h"
#include "tests/kernels/op_fixtures.h"

namespace latentserve::kernels {
namespace {

using op_test::ScopedEnv;

constexpr int64_t kWidth = 576, kValue = 512, kPage = 64;
const float kScale = 1.0f / std::sqrt(192.0f);

class MlaDecodeMerge : public op_test::BackendPairFixture {
 protected:
  MlaDecodeMerge() : BackendPairFixture(7) {}

  // Sequences with `cached` rows each (plus `spare` rows of room), pages shuffled over one f16
  // pool whose unwritten rows hold NaN; `tables` gets each sequence's page ids.
  Pair CachedPool(const std::vector<int64_t>& cached, int64_t spare, std::vector<std::vector<int32_t>>* tables) {
    int64_t pages = 0, total = 0;
    for (int64_t c : cached) pages += (c + 1 + spare + kPage - 1) / kPage, total += c;
    std::vector<int32_t> order(pages);
    for (int64_t i = 0; i < pages; ++i) order[i] = int32_t((i * 37) % pages);  // 37: prime to the count here
    Pair pool = Make(DType::kF16, {kWidth, kPage, pages, 1},
                     std::vector<float>(kWidth * kPage * pages, std::numeric_limits<float>::quiet_NaN()));
    tables->clear();
    std::vector<LatentSeqView> history;
    int64_t next = 0, column = 0;
    for (int64_t c : cached) {
      const int64_t count = (c + 1 + spare + kPage - 1) / kPage;
      tables->emplace_back(order.begin() + next, order.begin() + next + count);
      next += count;
    }
    for (size_t s = 0; s < cached.size(); ++s) {
      history.push_back({(*tables)[s], 0, column, cached[s]});
      column += cached[s];
    }
    const int64_t rows_count = std::max<int64_t>(total, 1);
    Pair rows = F32({kWidth, rows_count, 1, 1}, Random(kWidth * rows_count, -2, 2));
    cpu_->LatentStore(rows.cpu, history, pool.cpu);
    gpu_->LatentStore(rows.gpu, history, pool.gpu);
    return pool;
  }
};

// 40 sequences of 1 to 5,001 keys: single ranges (direct output), a few ranges and many, in
// one launch; 16 and 32 heads; the merge inside the kernel and the merge kernel.
TEST_F(MlaDecodeMerge, ManySequencesOfDifferentLengths) {
  const std::vector<int64_t> lengths = {0, 62, 63, 64, 127, 128, 700, 2500, 5000, 191};
  std::vector<int64_t> cached;
  for (int s = 0; s < 40; ++s) cached.push_back(lengths[(s * 7) % lengths.size()] + s % 3);
  std::vector<std::vector<int32_t>> tables;
  Pair pool = CachedPool(cached, 0, &tables);
  const int64_t n = static_cast<int64_t>(cached.size());
  std::vector<LatentSeqView> step;
  for (int64_t s = 0; s < n; ++s) step.push_back({tables[s], cached[s], s, 1});
  Pair fresh = F32({kWidth, n, 1, 1}, Random(kWidth * n, -2, 2));
  cpu_->LatentStore(fresh.cpu, step, pool.cpu);
  gpu_->LatentStore(fresh.gpu, step, pool.gpu);
  for (int64_t heads : {16, 32}) {
    Pair q = F32({kWidth, heads, n, 1}, Random(kWidth * heads * n, -0.3f, 0.3f));
    Pair expected = Poisoned({kValue, heads, n, 1});
    cpu_->MlaAttention(q.cpu, pool.cpu, step, kScale, expected.cpu);
    for (const char* merge : {"inside", "kernel"}) {
      ScopedEnv env("LATENTSERVE_MLA_DECODE_MERGE", merge);
      for (int call = 0; call < 2; ++call) {  // the second call finds the tickets the first left
        Pair out = Poisoned({kValue, heads, n, 1});
        cpu_->Copy(expected.cpu, out.cpu);
        const int64_t launches = cuda::MlaDecodeWgmmaLaunches();
        gpu_->MlaAttention(q.gpu, pool.gpu, step, kScale, out.gpu);
        EXPECT_EQ(cuda::MlaDecodeWgmmaLaunches() - launches, 1);
        Expect(out, 1e-5, std::string("40 sequences, merge ") + merge + ", " + std::to_string(heads) + " heads, call " +
                              std::to_string(call));
      }
    }
  }
}

// Recorded steps of 1, 3 and 40 sequences (a recorded grid gives each sequence
// multiprocessors / batch ranges, at run time as many as its position needs), replayed three
// times: positions advance twice, then the same step again.
TEST_F(MlaDecodeMerge, RecordedStepsReplayed) {
  if (!gpu_->CanCapture()) GTEST_SKIP() << "backend does not record";
  const int64_t heads = 32;
  // The merge inside the kernel (forced: a batch of one keeps the merge kernel by default) and
  // the merge kernel.
  for (const char* merge : {"inside", "kernel"}) {
    ScopedEnv env("LATENTSERVE_MLA_DECODE_MERGE", merge);
    for (const std::vector<int64_t>& cached :
         {std::vector<int64_t>{20000}, std::vector<int64_t>{0, 4095, 9000},
          std::vector<int64_t>{63, 64, 1, 300, 2000, 5000, 128, 40, 0, 191, 63, 64, 1, 300, 2000, 5000, 128, 40, 0, 191,
                               63, 64, 1, 300, 2000, 5000, 128, 40, 0, 191, 63, 64, 1, 300, 2000, 5000, 128, 40, 0, 191}}) {
      std::vector<std::vector<int32_t>> tables;
      Pair pool = CachedPool(cached, 2, &tables);
      CheckRecordedMlaStep(pool, tables, cached, heads, 0, {0, 1, 1},
                           "recorded step of " + std::to_string(cached.size()) + " sequences, merge " + merge);
    }
  }
}

}  // namespace
}  // namespace latentserve::kernels
