#include "model/batch_plan.h"

#include <algorithm>
#include <vector>

#include "common/status.h"

namespace latentserve::model {

absl::Status PlanPages(BatchContext& ctx, const DecodeStepInputs* step) {
  if (ctx.latent.empty()) return absl::OkStatus();
  const int64_t batch = static_cast<int64_t>(ctx.latent.size());
  if (step != nullptr) {
    const kernels::Tensor& tables = step->device.page_tables;
    if (tables.rows() < batch) return absl::InvalidArgumentError("decode step page tables do not match the batch");
    for (const kernels::LatentSeqView& seq : ctx.latent) {
      if (static_cast<int64_t>(seq.page_table.size()) > tables.ne[0]) {
        return absl::InvalidArgumentError("a sequence has more pages than the decode step's page tables hold");
      }
    }
    ctx.page_plan = tables;
  } else {
    int64_t stride = 1;
    for (const kernels::LatentSeqView& seq : ctx.latent) {
      stride = std::max<int64_t>(stride, static_cast<int64_t>(seq.page_table.size()));
    }
    std::vector<int32_t> host(static_cast<size_t>(stride * batch), 0);
    for (int64_t b = 0; b < batch; ++b) {
      const auto& pages = ctx.latent[b].page_table;
      std::copy(pages.begin(), pages.end(), host.begin() + b * stride);
    }
    ASSIGN_OR_RETURN(ctx.page_plan, ctx.backend.Alloc(DType::kI32, {stride, batch, 1, 1}));
    ctx.backend.Upload(host.data(), host.size() * sizeof(int32_t), ctx.page_plan);
  }
  for (int64_t b = 0; b < batch; ++b) {
    ctx.latent[b].page_plan = &ctx.page_plan;
    ctx.latent[b].plan_column = b;
  }
  return absl::OkStatus();
}

}  // namespace latentserve::model
