// The device half of a forward's batch plan. The host half is BatchContext (model/layers.h):
// per-sequence slices and latent views, built once per forward. PlanPages adds the page
// tables in device memory, uploaded once per step into one i32 [stride, B] tensor that every
// MLA layer reads (before: each layer's kernels uploaded the page map again). A recorded
// decode step plans nothing: its tables already live in the step's device inputs, which
// every replay rewrites.
#pragma once

#include "absl/status/status.h"
#include "model/layers.h"
#include "model/model.h"

namespace latentserve::model {

// Points every view of ctx.latent at its column of the step's page tables: `step`'s tables for
// a recorded decode step, else a new upload held by ctx.page_plan. ctx must not move after.
absl::Status PlanPages(BatchContext& ctx, const DecodeStepInputs* step);

}  // namespace latentserve::model
