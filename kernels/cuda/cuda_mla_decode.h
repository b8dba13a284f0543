// The paged MLA decode's two kernels share their plan: one CTA per (key range, sequence), each
// range a whole number of 64-row tiles, partial outputs merged afterwards (flash-decoding).
//   cuda_mla_decode.cu        mma.sync kernel: every cache type, any page size (sm_80+); a
//                             second kernel (MergeRangesKernel) merges the ranges
//   cuda_mla_decode_wgmma.cu  wgmma + TMA kernel: f16 caches, pages of a multiple of 64 rows
//                             (sm_90a, its own library); merges the ranges itself
//                             (mla_decode_merge.cuh) where its CTAs fit the GPU at once
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace latentserve::kernels::cuda {

constexpr int kMlaDecodeWidth = 576;  // L: latent row
constexpr int kMlaDecodeValue = 512;  // R: value part of the row
constexpr int kMlaDecodeTile = 64;    // cache rows per tile
constexpr int kMlaDecodeMinSplit = 128;  // keys per range at least (two tiles)

struct MlaDecodeSeq {
  int64_t keys;         // cached + 1: positions [0, keys) are visible (with `positions`: at most)
  int64_t token;        // batch column of its token
  int32_t table_offset; // first entry of its page table in `tables`
  int32_t first_split;  // first of its ranges in the partial outputs
  int32_t ranges;       // ranges it may use: each covers MlaDecodeSplitKeys(keys, ranges) keys
};

// Recorded steps (DeviceStep) read each sequence's position at run time; otherwise `keys`.
__device__ __forceinline__ int64_t MlaDecodeVisibleKeys(const MlaDecodeSeq& seq, const int32_t* positions, int index) {
  return positions ? min(int64_t{positions[index]} + 1, seq.keys) : seq.keys;
}

// Keys per range: the sequence's keys over its ranges, whole tiles, at least kMlaDecodeMinSplit.
__host__ __device__ __forceinline__ int64_t MlaDecodeSplitKeys(int64_t keys, int ranges) {
  int64_t split = (keys + ranges - 1) / ranges;
  split = split < kMlaDecodeMinSplit ? kMlaDecodeMinSplit : split;
  return (split + kMlaDecodeTile - 1) / kMlaDecodeTile * kMlaDecodeTile;
}

struct MlaDecodeWgmmaArgs {
  const float* q;           // [tokens][heads][576], absorbed queries
  float scale_log2;         // softmax scale * log2(e)
  const __half* pool;       // f16 latent pool, pool_rows rows of row_bytes bytes
  int64_t pool_rows, row_bytes, page_tokens;  // page_tokens % 64 == 0; rows < 2^31
  const int32_t* tables;    // page ids, each sequence's from its table_offset
  const MlaDecodeSeq* seqs; // [batch]
  const int32_t* positions; // recorded steps: [batch] positions read at run time; else null
  float* partial;           // [splits][heads][512] unnormalised outputs of each range
  float* partial_max;       // [splits][heads] (base 2)
  float* partial_sum;       // [splits][heads]
  // In-kernel merge: `tickets` [batch] counters, 0 between calls (the kernel leaves them so),
  // and the output [tokens][heads][512]; a sequence of one range writes it without partials.
  // Null tickets: partial outputs only (MergeRangesKernel merges them).
  int* tickets;
  float* out;
  int heads;                // 16 or 32
  int max_ranges, batch;    // the grid
};

// Launches the Hopper kernel (see cuda_mla_decode_wgmma.cu). Returns the launch's error.
cudaError_t LaunchMlaDecodeWgmma(const MlaDecodeWgmmaArgs& args, cudaStream_t stream);

// Shared memory the Hopper kernel needs (bytes): one CTA per multiprocessor.
size_t MlaDecodeWgmmaSmem(int heads);

}  // namespace latentserve::kernels::cuda
