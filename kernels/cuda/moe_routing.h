// The MoE routing sort on the device (cuda_moe_routing.cu), shared by the grouped prefill GEMMs
// (cuda_moe_grouped.cu) and the tensor-core experts of a batched decode step (cuda_moe_quant_mma.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace latentserve::kernels::cuda {

// Device arrays of one routing sort (scratch slot 5), valid until the next MoE call.
struct MoeRouting {
  int64_t slots = 0;                 // tokens * top_k
  int64_t max_tiles = 0;             // bound on the tile list's length
  int32_t* counts = nullptr;         // [experts] slots routed to each expert
  int32_t* first_row = nullptr;      // [experts + 1] each expert's first sorted row, then the total
  int32_t* first_tile = nullptr;     // [experts + 1] each expert's first tile-list entry, then the count
  int32_t* tile_count = nullptr;     // device scalar: entries of the tile list
  int2* tiles = nullptr;             // [max_tiles] (expert, first sorted row) of each 128-row M-tile
  int32_t* row_slot = nullptr;       // [slots] slot (token * top_k + j) of each sorted row
};

// Entries the tile list of `slots` sorted rows over `experts` can have (128-row M-tiles).
int64_t MoeTileListBound(int64_t slots, int64_t experts);

// Scratch sub-buffers start 256 bytes apart.
inline size_t AlignUp256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace latentserve::kernels::cuda
