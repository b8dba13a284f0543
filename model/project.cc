// Projections of one input by several weights (model/layers.h).
#include "common/status.h"
#include "model/layers.h"

namespace latentserve::model {

using kernels::Tensor;

Tensor ColumnSlice(const Tensor& column, int64_t first, int64_t count) {
  return column.Reshape({1, column.elements(), 1, 1}).RowSlice(first, count).Reshape({count, 1, 1, 1});
}

std::vector<Tensor> PartColumns(const Tensor& column, int64_t first, const std::vector<Tensor>& parts) {
  std::vector<Tensor> out;
  for (const Tensor& part : parts) {
    out.push_back(ColumnSlice(column, first, part.ne[1]));
    first += part.ne[1];
  }
  return out;
}

absl::StatusOr<Hidden> RoundFor(kernels::Backend& backend, const Tensor& h, const Tensor& reader) {
  Hidden out{h, Tensor()};
  if (reader.dtype == DType::kQ4_0 || reader.dtype == DType::kQ8_0) {
    ASSIGN_OR_RETURN(out.rounded, backend.RoundActivations(h));
  }
  return out;
}

absl::StatusOr<Hidden> AddNormFor(kernels::Backend& backend, const Tensor& x, const Tensor& a, const Tensor& w,
                                  float eps, const Tensor& h, const Tensor& reader) {
  Hidden out{h, Tensor()};
  if (reader.dtype == DType::kQ4_0 || reader.dtype == DType::kQ8_0) {
    ASSIGN_OR_RETURN(out.rounded, backend.AddRmsNormRounded(x, a, w, eps, h));
  } else {
    backend.AddRmsNorm(x, a, w, eps, h);
  }
  return out;
}

absl::StatusOr<std::vector<Tensor>> Project(const BatchContext& ctx, const Projections& p, const Hidden& h) {
  if (p.stacked.defined() && ctx.tokens == 1) {
    ASSIGN_OR_RETURN(Tensor all, ctx.F32({p.rows(), 1, 1, 1}));
    ctx.backend.MatMul(p.stacked, h.x, h.rounded, all);
    return PartColumns(all, 0, p.parts);
  }
  std::vector<Tensor> out;
  for (const Tensor& part : p.parts) {
    ASSIGN_OR_RETURN(Tensor y, ctx.F32({part.ne[1], ctx.tokens, 1, 1}));
    out.push_back(std::move(y));
  }
  ctx.backend.MatMuls(p.parts, h.x, h.rounded, out);
  return out;
}

}  // namespace latentserve::model
