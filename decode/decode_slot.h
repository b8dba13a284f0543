// DecodeWorker's per-lease slot (decode_worker.cc, handoff_receiver.cc share it).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "decode/decode_worker.h"

namespace latentserve::decode {

enum class SlotState { kLeased, kReceiving, kReady, kDecoding, kDone };

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
  int64_t prompt_tokens = 0;
  int32_t first_token = -1;
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
