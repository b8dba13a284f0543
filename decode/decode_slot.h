// DecodeWorker's per-lease slot (decode_worker.cc, handoff_receiver.cc share it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "decode/decode_worker.h"

namespace latentserve::decode {

// kPrefilling: Decode is prefilling the uncached rest of the prompt here (local prefill).
enum class SlotState { kLeased, kReceiving, kReady, kPrefilling, kDecoding, kDone };

struct DecodeWorker::Slot {
  std::string lease_id;
  std::string owner;  // the reserving caller's identity
  std::string request_id;
  std::unique_ptr<model::Sequence> sequence;
  int64_t reserved_tokens = 0;
  absl::Time lease_deadline;
  SlotState state = SlotState::kLeased;
  absl::Status end_status;  // why the slot ended early (expiry, cancel)
  // Handoff in progress (a retried handoff bumps the generation and starts over).
  int64_t handoff_generation = 0;
  std::string nccl_comm_key;  // OpenDeviceHandoff over NCCL: the communicator its handoff receives on
  int64_t prompt_tokens = 0;
  int32_t first_token = -1;
  // Prefix reuse: the prompt's ids when the router sent them (kept in the prefix cache once
  // the prompt is in the cache), and where a local prefill starts (-1: the cache comes by handoff).
  std::vector<int32_t> prompt_ids;
  int64_t local_from = -1;
  // A lease whose long rest comes by handoff after a cached prefix: the prefix's length and a
  // read-only share of its rows with a copy of its KDA state, for DecodeWorker.ReadPrefix (the
  // lease's own sequence takes the handoff's state; this one stays as the prefix was). Set and
  // dropped under mu_, destroyed under backend_mu_; gone once the cache has arrived.
  int64_t resumed_tokens = 0;
  std::shared_ptr<model::Sequence> resume_prefix;
  bool prefix_read_active = false;  // a ReadPrefix of this lease is streaming (one at a time)
  bool keep_prompt = true;  // false: a session's question, not kept (the document is)
  // KDA checkpoints a handoff may bring (every handoff_checkpoint_interval tokens past
  // resumed_tokens, at most handoff_max_checkpoints; set before the slot is listed), and those
  // that arrived with an admitted handoff: set under mu_, dropped or kept under backend_mu_.
  int64_t handoff_checkpoint_interval = 0;
  int64_t handoff_max_checkpoints = 0;
  std::shared_ptr<void> handoff_checkpoint_reservation;  // gives their bytes back when the slot goes
  std::vector<std::unique_ptr<cache::KdaCheckpoint>> arrived_checkpoints;
  // Decoding.
  std::unique_ptr<model::Sampler> sampler;
  int32_t next_input = -1;
  int64_t remaining = 0;
  std::vector<int32_t> stop_token_ids;
  std::vector<int32_t> out;  // sampled, not yet streamed
  bool finished = false;
  FinishReason reason = FinishReason::kLength;
};

}  // namespace latentserve::decode
