// MLA over the paged latent cache: storing rows and absorbed-form causal attention.
// Pool layout: [L, page_tokens, n_pages] in the cache dtype; the row of position p of a
// sequence is row (page_table[p / page_tokens] * page_tokens + p % page_tokens).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace latentserve::kernels::cpu {
namespace {

inline int64_t PoolRow(const LatentSeqView& seq, int64_t page_tokens, int64_t position) {
  return static_cast<int64_t>(seq.page_table[position / page_tokens]) * page_tokens + position % page_tokens;
}

constexpr int64_t kQueryBlock = 8;  // queries sharing one dequantised cache row

}  // namespace

void CpuBackend::LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs, const Tensor& pool) {
  const int64_t width = latent.ne[0], page_tokens = pool.ne[1];
  LS_CHECK(pool.ne[0] == width && latent.dtype == DType::kF32);
  const size_t row_bytes = pool.row_bytes();
  for (const LatentSeqView& seq : seqs) {
    for (int64_t t = 0; t < seq.token_count; ++t) {
      const int64_t position = seq.cached_tokens + t;
      LS_CHECK(position / page_tokens < static_cast<int64_t>(seq.page_table.size()));
      const int64_t row = PoolRow(seq, page_tokens, position);
      LS_CHECK(row < pool.rows());
      QuantizeRow(pool.dtype, F32(latent) + (seq.first_token + t) * width, HostPtr(pool) + row * row_bytes, width);
    }
  }
}

void CpuBackend::MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs,
                              float scale, const Tensor& out) {
  const int64_t width = q.ne[0], heads = q.ne[1], value_dim = out.ne[0];
  const int64_t page_tokens = pool.ne[1];
  LS_CHECK(pool.ne[0] == width && out.ne[1] == heads && value_dim <= width);
  const size_t row_bytes = pool.row_bytes();
  // Work items: blocks of consecutive new tokens of one sequence.
  struct Block {
    size_t seq;
    int64_t first, count;  // token offsets within the sequence's new tokens
  };
  std::vector<Block> blocks;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t t = 0; t < seqs[s].token_count; t += kQueryBlock) {
      blocks.push_back({s, t, std::min(kQueryBlock, seqs[s].token_count - t)});
    }
  }
  pool_.ParallelFor(static_cast<int64_t>(blocks.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(width), acc(kQueryBlock * heads * value_dim);
    std::vector<float> maxes(kQueryBlock * heads), sums(kQueryBlock * heads);
    for (int64_t bi = begin; bi < end; ++bi) {
      const Block& block = blocks[bi];
      const LatentSeqView& seq = seqs[block.seq];
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(maxes.begin(), maxes.end(), -std::numeric_limits<float>::infinity());
      std::fill(sums.begin(), sums.end(), 0.0f);
      const int64_t last_visible = seq.cached_tokens + block.first + block.count - 1;
      for (int64_t p = 0; p <= last_visible; ++p) {
        const uint8_t* src = HostPtr(pool) + PoolRow(seq, page_tokens, p) * row_bytes;
        const float* r;
        if (pool.dtype == DType::kF32) {
          r = reinterpret_cast<const float*>(src);
        } else {
          DequantizeRow(pool.dtype, src, row.data(), width);
          r = row.data();
        }
        for (int64_t i = 0; i < block.count; ++i) {
          if (p > seq.cached_tokens + block.first + i) continue;  // causal
          const int64_t token = seq.first_token + block.first + i;
          for (int64_t h = 0; h < heads; ++h) {
            const float score = Dot(F32(q) + (token * heads + h) * width, r, width) * scale;
            const int64_t slot = i * heads + h;
            float* a = acc.data() + slot * value_dim;
            if (score > maxes[slot]) {
              const float correction = std::exp(maxes[slot] - score);
              for (int64_t c = 0; c < value_dim; ++c) a[c] *= correction;
              sums[slot] *= correction;
              maxes[slot] = score;
            }
            const float weight = std::exp(score - maxes[slot]);
            sums[slot] += weight;
            Axpy(weight, r, a, value_dim);
          }
        }
      }
      for (int64_t i = 0; i < block.count; ++i) {
        const int64_t token = seq.first_token + block.first + i;
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t slot = i * heads + h;
          float* dst = F32(out) + (token * heads + h) * value_dim;
          const float inv = 1.0f / sums[slot];
          for (int64_t c = 0; c < value_dim; ++c) dst[c] = acc[slot * value_dim + c] * inv;
        }
      }
    }
  });
}

}  // namespace latentserve::kernels::cpu
