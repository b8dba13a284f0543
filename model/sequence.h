// One sequence's state: its latent-cache page table and its per-layer KDA state, owned by a
// cache::SequenceTable (cache/sequence_table.h), which makes, grows, forks and frees it.
#pragma once

#include "cache/sequence_table.h"

namespace latentserve::model {

using Sequence = cache::Sequence;

}  // namespace latentserve::model
