// The causal flash-attention kernels of the MLA prefill in the MHA form (cuda_mla_prefill.cu
// prepares their inputs). Head shape fixed at Kimi-Linear's: keys 128 (no position) + 64
// (k_pe, shared by the heads), values 128.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace latentserve::kernels::cuda {

constexpr int kMlaNope = 128;  // Pn
constexpr int kMlaRope = 64;   // Pr
constexpr int kMlaQk = kMlaNope + kMlaRope;
constexpr int kMlaV = 128;     // Dv

struct MlaFlashArgs {
  const __half* q;      // [n][H][kMlaQk], pre-scaled by scale * log2(e)
  const __half* k;      // [keys][H][kMlaNope]: the expanded no-position keys
  const __half* rows;   // gathered latent rows [keys_ld][rows_ld]; k_pe at column rope_col
  const __half* vt;     // [H][kMlaV][keys_ld]: the expanded values, transposed (zero past keys)
  int64_t rows_ld, rope_col, keys_ld;
  float* out;           // [n][H][kMlaV]
  int64_t n, heads, keys, first_position;  // query t sees keys [0, first_position + t]
};

// mma.sync (m16n8k16) kernel: any sm_80+ GPU.
void LaunchMlaFlashMma(const MlaFlashArgs& args, cudaStream_t stream);
// wgmma + TMA kernel (sm_90a, cuda_mla_flash_wgmma.cu, its own library): Hopper's warpgroup
// tensor-core instructions, tiles by the tensor memory accelerator (tensor maps built per
// launch). Returns the launch's error. Two variants of its tile loop: kLean (the default, fewer
// instructions per tile: see the kernel) and kBase (the loop as first written, for bench-ops'
// same-run comparison).
enum class MlaFlashVariant { kLean, kBase };
cudaError_t LaunchMlaFlashTma(const MlaFlashArgs& args, MlaFlashVariant variant, cudaStream_t stream);

}  // namespace latentserve::kernels::cuda
