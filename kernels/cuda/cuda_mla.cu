// MLA over the paged latent cache on the GPU.
// LatentStore: one block per new token quantises its row into its page slot.
// MlaAttention: decode steps over the pages in place (cuda_mla_decode.cu); otherwise per
// sequence, GEMMs on the tensor cores (cuda_mla_gemm.cu).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/dequant.cuh"

namespace latentserve::kernels::cuda {
namespace {


// Per-token addressing: absolute position, and offset of its sequence's page table.
struct TokenMap {
  const int32_t* position;
  const int32_t* table_offset;
  const int32_t* pages;
};

__device__ __forceinline__ int64_t PoolRow(const TokenMap& map, int64_t token, int64_t position, int64_t page_tokens) {
  return static_cast<int64_t>(map.pages[map.table_offset[token] + position / page_tokens]) * page_tokens +
         position % page_tokens;
}

__global__ void LatentStoreKernel(DType type, const float* latent, int64_t width, TokenMap map, int64_t page_tokens,
                                  size_t row_bytes, uint8_t* pool) {
  const int64_t token = blockIdx.x;
  const float* x = latent + token * width;
  uint8_t* row = pool + PoolRow(map, token, map.position[token], page_tokens) * row_bytes;
  if (type == DType::kF32 || type == DType::kF16 || type == DType::kBF16) {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      if (type == DType::kF32) reinterpret_cast<float*>(row)[i] = x[i];
      if (type == DType::kF16) reinterpret_cast<__half*>(row)[i] = __float2half_rn(x[i]);
      if (type == DType::kBF16) reinterpret_cast<__nv_bfloat16*>(row)[i] = __float2bfloat16_rn(x[i]);
    }
    return;
  }
  // One thread per block of 32, with the CPU quantiser's rounding (common/dtype.cc).
  for (int64_t b = threadIdx.x; b < width / 32; b += blockDim.x) {
    const float* xb = x + b * 32;
    if (type == DType::kQ8_0) {
      uint8_t* block = row + b * 34;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xb[i]));
      const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
      *reinterpret_cast<__half*>(block) = __float2half_rn(d);
      for (int i = 0; i < 32; ++i) block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(roundf(xb[i] * id)));
    } else {
      uint8_t* block = row + b * 18;
      float amax = 0, max = 0;
      for (int i = 0; i < 32; ++i) {
        if (fabsf(xb[i]) > amax) {
          amax = fabsf(xb[i]);
          max = xb[i];
        }
      }
      const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
      *reinterpret_cast<__half*>(block) = __float2half_rn(d);
      for (int i = 0; i < 16; ++i) {
        const uint8_t q0 = static_cast<uint8_t>(fminf(15.0f, xb[i] * id + 8.5f));
        const uint8_t q1 = static_cast<uint8_t>(fminf(15.0f, xb[16 + i] * id + 8.5f));
        block[2 + i] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
    }
  }
}

// Uploads the per-token map for a batch (position and page-table offset of every token);
// the pages come from the forward's page plan when the sequences share one, else uploaded
// after the map. Returns device pointers.
TokenMap UploadTokenMap(CudaBackend& backend, absl::Span<const LatentSeqView> seqs, int64_t tokens) {
  std::vector<int32_t> plan_offsets;
  const int32_t* plan = CudaBackend::SharedPlan(seqs, &plan_offsets);
  std::vector<int32_t> data(2 * tokens);
  int32_t table_offset = 0;
  std::vector<int32_t> pages;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const LatentSeqView& seq = seqs[i];
    const int32_t offset = plan != nullptr ? plan_offsets[i] : table_offset;
    for (int64_t t = 0; t < seq.token_count; ++t) {
      data[seq.first_token + t] = static_cast<int32_t>(seq.cached_tokens + t);
      data[tokens + seq.first_token + t] = offset;
    }
    if (plan == nullptr) {
      pages.insert(pages.end(), seq.page_table.begin(), seq.page_table.end());
      table_offset += static_cast<int32_t>(seq.page_table.size());
    }
  }
  data.insert(data.end(), pages.begin(), pages.end());
  auto* device = static_cast<int32_t*>(backend.UploadScratch(4, data.data(), data.size() * sizeof(int32_t)));
  return TokenMap{device, device + tokens, plan != nullptr ? plan : device + 2 * tokens};
}

int64_t BatchTokens(absl::Span<const LatentSeqView> seqs) {
  int64_t n = 0;
  for (const LatentSeqView& seq : seqs) n = std::max(n, seq.first_token + seq.token_count);
  return n;
}

}  // namespace

void CudaBackend::LatentStore(const Tensor& latent, absl::Span<const LatentSeqView> seqs, const Tensor& pool) {
  CU_CHECK(pool.ne[0] == latent.ne[0] && latent.dtype == DType::kF32);
  for (const LatentSeqView& seq : seqs) {
    CU_CHECK((seq.cached_tokens + seq.token_count + pool.ne[1] - 1) / pool.ne[1] <= static_cast<int64_t>(seq.page_table.size()));
  }
  const int64_t tokens = BatchTokens(seqs);
  if (tokens == 0) return;
  TokenMap map;
  if (const DeviceStep* step = seqs[0].device; step != nullptr) {
    // A recorded step: token b of the batch goes to position positions[b] of page table b.
    const int64_t stride = step->page_tables.ne[0];
    std::vector<int32_t> offsets(tokens);
    for (size_t b = 0; b < seqs.size(); ++b) {
      CU_CHECK(seqs[b].device == step && seqs[b].token_count == 1 && seqs[b].first_token == static_cast<int64_t>(b));
      offsets[b] = static_cast<int32_t>(b * stride);
    }
    CU_CHECK(step->positions.elements() >= tokens && step->page_tables.rows() >= tokens);
    map.position = reinterpret_cast<const int32_t*>(DevPtr(step->positions));
    map.table_offset = static_cast<const int32_t*>(UploadScratch(4, offsets.data(), offsets.size() * sizeof(int32_t)));
    map.pages = reinterpret_cast<const int32_t*>(DevPtr(step->page_tables));
  } else {
    map = UploadTokenMap(*this, seqs, tokens);
  }
  LatentStoreKernel<<<static_cast<unsigned>(tokens), 128, 0, stream_>>>(pool.dtype, DevF32(latent), latent.ne[0], map,
                                                                       pool.ne[1], pool.row_bytes(), DevPtr(pool));
  LAUNCH_OK();
}

void CudaBackend::MlaAttention(const Tensor& q, const Tensor& pool, absl::Span<const LatentSeqView> seqs, float scale,
                               const Tensor& out) {
  CU_CHECK(pool.ne[0] == q.ne[0] && out.ne[1] == q.ne[1] && out.ne[0] <= q.ne[0]);
  // Decode steps (one token per sequence, Kimi-Linear's row shape) read the pages in place
  // (cuda_mla_decode.cu); the rest run as tensor-core GEMMs over the sequence's gathered
  // latent rows (cuda_mla_gemm.cu).
  if (MlaDecodePaged(q, pool, seqs, scale, out)) return;
  if (!seqs.empty() && seqs[0].device != nullptr) {
    // The other paths take positions and pages from the host: right for the step being
    // recorded, wrong for every replay.
    CaptureRefused("MLA decode of this shape (or LATENTSERVE_MLA_DECODE=gather) reads positions from the host");
  }
  for (const LatentSeqView& seq : seqs) MlaGemmAttention(q, pool, seq, scale, out);
}

}  // namespace latentserve::kernels::cuda
