// Random kimi-linear GGUF models for tests and benchmarks, in the exact layout llama.cpp
// loads (keys and tensor shapes: shared/KIMI_GGUF.md). Tensor data is generated and written
// row by row, so even the real 48B shape needs memory for one row only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "tools/lib/weight_mix.h"

namespace latentserve::tools {

struct TestModelOptions {
  std::string out_path;                // GGUF file to create (overwritten)
  uint64_t seed = 0;                   // PRNG seed; same seed + shape -> identical file
  std::string name = "kimi-linear-test";  // general.name
  int64_t layers = 4;                  // block_count
  int64_t hidden = 64;                 // E, embedding_length
  int64_t heads = 4;                   // H, attention.head_count (KDA and MLA)
  int64_t kda_head_dim = 16;           // Dk; KDA inner width Di = H * Dk
  int64_t kv_lora_rank = 32;           // R, MLA latent width
  int64_t qk_nope = 16;                // Pn, per-head non-positional q/k dims
  int64_t qk_rope = 16;                // Pr, shared "rope" dims (unrotated: NoPE)
  int64_t v_head = 16;                 // Dv, per-head value dims
  int64_t experts = 8;                 // X, routed experts per MoE layer
  int64_t experts_used = 2;            // K, top-k
  int64_t expert_ffn = 32;             // Fe, routed and shared expert FFN width
  int64_t ffn = 128;                   // F, dense FFN width (leading dense layers)
  int64_t shared_experts = 1;          // shared experts per MoE layer (0 or 1)
  int64_t dense_layers = 1;            // leading layers with a dense FFN instead of MoE
  int64_t conv_kernel = 4;             // KDA short-conv taps
  std::vector<int64_t> mla_layers;     // MLA layer indices; empty -> DefaultMlaLayers()
  int64_t vocab = 320;                 // vocab_size (>= 264: 256 bytes + 8 control tokens)
  int64_t context = 4096;              // context_length
  DType weight_type = DType::kF32;     // type of the weight matrices (fallbacks: weight_mix.h)
  WeightMix weight_mix = WeightMix::kNone;  // per-tensor upgrades as llama.cpp's Q4_K_M / Q5_K_M
  // Tensors whose name ends with a key get that type instead (tests of mixed-type files).
  std::map<std::string, DType> type_overrides;
  int threads = 0;                     // generator threads; 0 = all cores (output is the same)
  bool needle = false;                 // hand-built retrieval weights and word vocabulary
                                       // (tools/lib/needle_model.h) instead of random ones

  // Every 4th layer starting at 3, plus the last layer (the real model's pattern).
  std::vector<int64_t> DefaultMlaLayers() const;
};

// The tiny default shape (4 layers, MLA at 1 and 3).
TestModelOptions TinyTestModel();
// The real Kimi-Linear-48B-A3B shape.
TestModelOptions KimiLinear48BA3B();
// Looks up a --config preset: "tiny", "kimi-linear-48b-a3b".
absl::StatusOr<TestModelOptions> TestModelPreset(const std::string& name);

struct TestModelSummary {
  uint64_t parameters = 0;  // total elements over all tensors
  uint64_t file_bytes = 0;  // size of the written file
  uint64_t tensors = 0;
};

// Validates the options, then writes the model; `summary` (optional) receives the totals.
absl::Status WriteTestModel(const TestModelOptions& options, TestModelSummary* summary = nullptr);

// The tokenizer vocabulary written into test models (exposed for tokenizer tests):
// 256 byte tokens (GPT-2 byte-to-unicode alphabet), BPE merges, control tokens, unused fill.
struct TestVocab {
  std::vector<std::string> tokens;
  std::vector<int32_t> token_types;  // 1 normal, 3 control, 5 unused
  std::vector<std::string> merges;   // "a b", rank order
  int32_t bos_id = -1;               // [BOS]
  int32_t eos_id = -1;               // <|im_end|> (Kimi's end of turn)
  int32_t pad_id = -1;               // [PAD]
};
absl::StatusOr<TestVocab> BuildTestVocab(int64_t vocab_size);
// The 256 byte tokens' texts in GPT-2's byte-to-unicode alphabet, indexed by byte.
std::vector<std::string> ByteTokenTexts();

}  // namespace latentserve::tools
