// The "needle" test model: kimi-linear weights built by hand (not trained) so that the model
// retrieves, from any depth of a document, the token that followed an earlier occurrence of
// the current token (an induction head), and a readable word vocabulary for it.
// The construction and its arithmetic: docs/needle.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tools/lib/test_model.h"

namespace latentserve::tools {

// Hidden-state subspaces (each a 32-aligned block, so that every quantisation block of a
// weight row holds at most one distinct non-zero value and q4_0 / q8_0 store it exactly).
struct NeedleLayout {
  static constexpr int kCodeBits = 5;                  // Reed-Muller RM(2,5) codes
  static constexpr int64_t kCodeDim = 1 << kCodeBits;  // d = 32 code positions
  static constexpr int64_t kThis = 0;                  // c (d) then 1-c (d): this token
  static constexpr int64_t kThisComplement = kCodeDim;
  static constexpr int64_t kPrevious = 2 * kCodeDim;       // 2c-1 of the previous token (d)
  static constexpr int64_t kAnswer = 3 * kCodeDim;         // +(2c-1) of the retrieved token (d)
  static constexpr int64_t kAnswerNegated = 4 * kCodeDim;  // -(2c-1) of the retrieved token (d)
  static constexpr int64_t kOne = 5 * kCodeDim;            // constant 1 (a bias through RMSNorm)
  static constexpr int64_t kMinHidden = kOne + 1;
  static constexpr int64_t kMaxCodedTokens = int64_t{1} << 16;  // RM(2,5) has 2^16 codewords
};

// The small shape the tests and the demo use: 2 layers (KDA then MLA), hidden 192.
TestModelOptions NeedleTestModel();

// Why `o` cannot carry the construction (hidden, head sizes, layer order), or OK.
absl::Status ValidateNeedleShape(const TestModelOptions& o);

// Byte-level BPE vocabulary whose words (tools/lib/needle_words.inc, each with a leading
// space) are single tokens; 256 byte tokens and the chat control tokens as in BuildTestVocab.
absl::StatusOr<TestVocab> BuildNeedleVocab(int64_t vocab_size);
// The number of tokens BuildNeedleVocab needs before its reserved fill.
int64_t NeedleVocabMinimum();

// The hand-built weights of one model shape and vocabulary.
class NeedleWeights {
 public:
  static absl::StatusOr<NeedleWeights> Create(const TestModelOptions& o, const TestVocab& vocab);
  // Writes row `row` (ne[0] values) of tensor `name` whose ggml shape is `ne`.
  void Row(const std::string& name, const std::vector<int64_t>& ne, int64_t row, float* out) const;

 private:
  NeedleWeights() = default;
  int64_t Layer(const std::string& name, std::string* suffix) const;
  void KdaRow(bool active, const std::string& suffix, int64_t row, float* out, int64_t width) const;
  void MlaRow(bool active, const std::string& suffix, int64_t row, float* out, int64_t width) const;

  TestModelOptions o_;
  int64_t shift_layer_ = -1;      // the KDA layer that writes the previous token
  int64_t retrieval_layer_ = -1;  // the MLA layer that retrieves
  std::vector<bool> is_mla_;      // per layer
  std::vector<uint32_t> code_;    // per token: RM(2,5) codeword bits, or
  std::vector<bool> coded_;       //   none (reserved tokens)
  std::vector<bool> readable_;    // per token: output head may emit it (normal type)
  int32_t eos_id_ = -1;
  // Scales derived in docs/needle.md.
  float this_norm_ = 0;      // n0: a one-valued entry after layer 0's attn_norm
  float mla_norm_ = 0;       // n1: a one-valued entry after the MLA layer's attn_norm
  float kda_out_scale_ = 0;  // w_o: o_proj weight making |previous| = 1
  float answer_row_ = 0;     // lambda: output-head weight (answer logit 64)
  float eos_row_ = 0;        // lambda_e: EOS weight on the constant (EOS logit 51.2)
};

}  // namespace latentserve::tools
