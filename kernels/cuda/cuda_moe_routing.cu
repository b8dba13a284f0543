// The MoE routing sort on the device (moe_routing.h): no host round trip and no host sync.
// Per-expert slot counts; one block scans them into each expert's first sorted row and a list
// of M-tiles (expert, first row); CUB's radix sort on the expert id (stable, log2(experts)
// bits) gives every (token, slot) its expert-sorted row, in slot order within an expert, so
// every run computes the same rows in the same tiles. And the last step of every device MoE
// path: the weighted sum of each token's top-k slot rows, in slot order as the CPU sums them.
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/moe_grouped.cuh"
#include "kernels/cuda/moe_routing.h"

namespace latentserve::kernels::cuda {
namespace {

using moe::kTileRows;

constexpr int kPlanThreads = 256;

// Slots per expert, and the slot numbers that the sort carries along with the expert ids.
__global__ void CountKernel(const int32_t* ids, int slots, int experts, int32_t* counts, int32_t* slot_numbers) {
  const int slot = blockIdx.x * blockDim.x + threadIdx.x;
  if (slot >= slots) return;
  const int e = ids[slot];
  if (e < 0 || e >= experts) __trap();  // routing produced an id out of range: a broken invariant
  atomicAdd(&counts[e], 1);
  slot_numbers[slot] = slot;
}

// One block: first sorted row and first tile of every expert (exclusive scans of the counts
// and of the tiles) and the M-tile list in expert order.
__global__ void __launch_bounds__(kPlanThreads) PlanKernel(const int32_t* counts, int experts, int32_t* first_row,
                                                           int32_t* first_tile, int2* tiles, int32_t* tile_count) {
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int row_carry = 0, tile_carry = 0;
  for (int base = 0; base < experts; base += kPlanThreads) {
    const int e = base + static_cast<int>(threadIdx.x);
    const int count = e < experts ? counts[e] : 0;
    const int expert_tiles = (count + kTileRows - 1) / kTileRows;
    int row_start, row_total, tile_start, tile_total;
    Scan(scan_storage).ExclusiveSum(count, row_start, row_total);
    __syncthreads();
    Scan(scan_storage).ExclusiveSum(expert_tiles, tile_start, tile_total);
    __syncthreads();
    if (e < experts) {
      const int first = row_carry + row_start;
      first_row[e] = first;
      first_tile[e] = tile_carry + tile_start;
      for (int i = 0; i < expert_tiles; ++i) tiles[tile_carry + tile_start + i] = make_int2(e, first + i * kTileRows);
    }
    row_carry += row_total;
    tile_carry += tile_total;
  }
  if (threadIdx.x == 0) {
    first_row[experts] = row_carry;
    first_tile[experts] = tile_carry;
    *tile_count = tile_carry;
  }
}

// y[:, t] = sum_j weights[j, t] * slot_out[:, t * top_k + j], j in slot order.
__global__ void WeightedSlotSumKernel(const float* slot_out, const float* weights, int hidden, int top_k, int64_t tokens,
                                      float* y) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;  // float4 index
  const int64_t quads = hidden / 4;
  if (i >= quads * tokens) return;
  const int64_t t = i / quads, q = i % quads;
  float4 acc = make_float4(0, 0, 0, 0);
  for (int j = 0; j < top_k; ++j) {
    const float w = weights[t * top_k + j];
    const float4 v = reinterpret_cast<const float4*>(slot_out + (t * top_k + j) * hidden)[q];
    acc.x += w * v.x;
    acc.y += w * v.y;
    acc.z += w * v.z;
    acc.w += w * v.w;
  }
  reinterpret_cast<float4*>(y + t * hidden)[q] = acc;
}

}  // namespace

int64_t MoeTileListBound(int64_t slots, int64_t experts) {
  // Every expert's tiles but its last are full, so the list is at most slots / kTileRows plus
  // one partial tile per expert that has rows.
  return slots / kTileRows + std::min(experts, slots);
}

MoeRouting CudaBackend::SortSlotsByExpert(const Tensor& ids, int64_t tokens, int64_t n_experts) {
  MoeRouting routing;
  const int64_t slots = tokens * ids.ne[0];
  const int64_t max_tiles = MoeTileListBound(slots, n_experts);
  routing.slots = slots;
  routing.max_tiles = max_tiles;
  // Small integer workspace (slot 5): counts, first rows, first tiles, tile count, tiles, slot numbers,
  // sorted expert ids (unused), row slots, the sort's temporary storage.
  int expert_bits = 1;  // radix bits that hold every expert id
  while ((int64_t{1} << expert_bits) < n_experts) ++expert_bits;
  const auto* dev_ids = reinterpret_cast<const uint32_t*>(DevPtr(ids));
  size_t sort_bytes = 0;
  CUDA_OK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, dev_ids, static_cast<uint32_t*>(nullptr),
                                          static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr),
                                          static_cast<int>(slots), 0, expert_bits, stream_));
  const size_t counts_bytes = AlignUp256(n_experts * 4), first_bytes = AlignUp256((n_experts + 1) * 4);
  const size_t tiles_bytes = AlignUp256(max_tiles * sizeof(int2)), slot_bytes = AlignUp256(slots * 4);
  auto* ints = static_cast<uint8_t*>(
      Scratch(5, counts_bytes + 2 * first_bytes + 256 + tiles_bytes + 3 * slot_bytes + AlignUp256(sort_bytes)));
  routing.counts = reinterpret_cast<int32_t*>(ints);
  routing.first_row = reinterpret_cast<int32_t*>(ints + counts_bytes);
  routing.first_tile = reinterpret_cast<int32_t*>(ints + counts_bytes + first_bytes);
  routing.tile_count = reinterpret_cast<int32_t*>(ints + counts_bytes + 2 * first_bytes);
  routing.tiles = reinterpret_cast<int2*>(ints + counts_bytes + 2 * first_bytes + 256);
  uint8_t* slot_arrays = ints + counts_bytes + 2 * first_bytes + 256 + tiles_bytes;
  auto* slot_numbers = reinterpret_cast<int32_t*>(slot_arrays);
  auto* sorted_ids = reinterpret_cast<uint32_t*>(slot_arrays + slot_bytes);
  routing.row_slot = reinterpret_cast<int32_t*>(slot_arrays + 2 * slot_bytes);
  void* sort_storage = slot_arrays + 3 * slot_bytes;
  const int experts_i = static_cast<int>(n_experts), slots_i = static_cast<int>(slots);
  CUDA_OK(cudaMemsetAsync(routing.counts, 0, n_experts * 4, stream_));
  CountKernel<<<Blocks(slots, 256), 256, 0, stream_>>>(reinterpret_cast<const int32_t*>(dev_ids), slots_i, experts_i,
                                                       routing.counts, slot_numbers);
  LAUNCH_OK();
  PlanKernel<<<1, kPlanThreads, 0, stream_>>>(routing.counts, experts_i, routing.first_row, routing.first_tile,
                                              routing.tiles, routing.tile_count);
  LAUNCH_OK();
  CUDA_OK(cub::DeviceRadixSort::SortPairs(sort_storage, sort_bytes, dev_ids, sorted_ids, slot_numbers, routing.row_slot,
                                          slots_i,
                                          0, expert_bits, stream_));
  return routing;
}

void CudaBackend::WeightedSlotSum(const float* slot_out, const Tensor& weights, const Tensor& y) {
  const int64_t hidden = y.ne[0], tokens = y.rows(), top_k = weights.ne[0];
  WeightedSlotSumKernel<<<Blocks(tokens * hidden / 4, 256), 256, 0, stream_>>>(
      slot_out, DevF32(weights), static_cast<int>(hidden), static_cast<int>(top_k), tokens, DevF32(y));
  LAUNCH_OK();
}

}  // namespace latentserve::kernels::cuda
