// MLA over the paged latent cache: storing rows and absorbed-form causal attention.
// Pool layout: [L, page_tokens, n_pages] in the cache dtype; the row of position p of a
// sequence is row (page_table[p / page_tokens] * page_tokens + p % page_tokens).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/simd.h"

namespace latentserve::kernels::cpu {
namespace {

inline int64_t PoolRow(const LatentSeqView& seq, int64_t page_tokens, int64_t position) {
  return static_cast<int64_t>(seq.page_table[position / page_tokens]) * page_tokens + position % page_tokens;
}

constexpr int64_t kQueryBlock = 8;  // queries sharing each dequantised tile of cache rows
constexpr int64_t kKeyTile = 64;    // cache rows per tile

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
  // Work items: blocks of consecutive new tokens of one sequence, the ones that see the most
  // keys first, taken by whichever thread is free (causal blocks differ widely in cost).
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
  auto keys_seen = [&](const Block& b) { return seqs[b.seq].cached_tokens + b.first + b.count; };
  std::stable_sort(blocks.begin(), blocks.end(),
                   [&](const Block& x, const Block& y) { return keys_seen(x) > keys_seen(y); });
  std::atomic<int64_t> next{0};
  pool_.ParallelFor(pool_.size(), 1, [&](int64_t, int64_t) {
    // A block's query rows are contiguous: row (i * heads + h) is token i, head h. Keys come in
    // tiles of kKeyTile cached rows; scores and probability-weighted values are f32 GEMMs
    // (simd.h GemmNN) with an online softmax across tiles.
    const int64_t rows = kQueryBlock * heads;
    static thread_local std::vector<float> keys, keys_t, scores, weighted, acc, maxes, sums;
    keys.resize(kKeyTile * width);    // [tile][width]: the values are each row's first value_dim
    keys_t.resize(width * kKeyTile);  // [width][tile]
    scores.resize(rows * kKeyTile);
    weighted.resize(rows * value_dim);
    acc.resize(rows * value_dim);
    maxes.resize(rows);
    sums.resize(rows);
    for (int64_t bi = next++; bi < static_cast<int64_t>(blocks.size()); bi = next++) {
      const Block& block = blocks[bi];
      const LatentSeqView& seq = seqs[block.seq];
      const int64_t n_rows = block.count * heads;
      const float* q_rows = F32(q) + (seq.first_token + block.first) * heads * width;
      std::fill(acc.begin(), acc.begin() + n_rows * value_dim, 0.0f);
      std::fill(maxes.begin(), maxes.begin() + n_rows, -std::numeric_limits<float>::infinity());
      std::fill(sums.begin(), sums.begin() + n_rows, 0.0f);
      const int64_t first_position = seq.cached_tokens + block.first;  // of query i = 0
      const int64_t visible = first_position + block.count;             // keys [0, visible)
      for (int64_t p0 = 0; p0 < visible; p0 += kKeyTile) {
        const int64_t tile = std::min(kKeyTile, visible - p0);
        for (int64_t p = 0; p < tile; ++p) {
          const uint8_t* src = HostPtr(pool) + PoolRow(seq, page_tokens, p0 + p) * row_bytes;
          DequantizeRowFast(pool.dtype, src, keys.data() + p * width, width);
        }
        for (int64_t p = 0; p < tile; ++p)
          for (int64_t c = 0; c < width; ++c) keys_t[c * tile + p] = keys[p * width + c];
        GemmNN(q_rows, width, keys_t.data(), tile, scores.data(), tile, n_rows, tile, width);
        for (int64_t r = 0; r < n_rows; ++r) {
          float* sr = scores.data() + r * tile;
          const int64_t last = first_position + r / heads;  // causal: keys p <= last
          const int64_t live = std::clamp<int64_t>(last - p0 + 1, 0, tile);
          float tile_max = -std::numeric_limits<float>::infinity();
          for (int64_t p = 0; p < live; ++p) {
            sr[p] *= scale;
            tile_max = std::max(tile_max, sr[p]);
          }
          const float new_max = std::max(maxes[r], tile_max);
          const float correction = std::exp(maxes[r] - new_max);  // 0 on the first tile
          for (int64_t p = 0; p < live; ++p) sr[p] -= new_max;
          ExpRow(sr, sr, live);
          for (int64_t p = live; p < tile; ++p) sr[p] = 0.0f;
          float tile_sum = 0;
          for (int64_t p = 0; p < live; ++p) tile_sum += sr[p];
          sums[r] = sums[r] * correction + tile_sum;
          maxes[r] = new_max;
          float* a = acc.data() + r * value_dim;
          if (correction != 1.0f) {
            for (int64_t c = 0; c < value_dim; ++c) a[c] *= correction;
          }
        }
        GemmNN(scores.data(), tile, keys.data(), width, weighted.data(), value_dim, n_rows, value_dim, tile);
        for (int64_t i = 0; i < n_rows * value_dim; ++i) acc[i] += weighted[i];
      }
      for (int64_t r = 0; r < n_rows; ++r) {
        float* dst = F32(out) + ((seq.first_token + block.first) * heads + r) * value_dim;
        const float inv = 1.0f / sums[r];
        for (int64_t c = 0; c < value_dim; ++c) dst[c] = acc[r * value_dim + c] * inv;
      }
    }
  });
}

}  // namespace latentserve::kernels::cpu
