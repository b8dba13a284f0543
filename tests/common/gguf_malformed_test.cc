// Hand-made corrupt GGUF files: each must fail with a status naming the problem, never crash.
#include <sys/stat.h>

#include <random>

#include "common/gguf/gguf.h"
#include "gguf_test_util.h"
#include "gtest/gtest.h"

namespace latentserve::gguf {
namespace {

using testing::Bytes;
using testing::WriteTemp;

constexpr uint32_t kF32 = 0, kQ8_0 = 8, kStringType = 8, kArrayType = 9, kU32 = 4, kBoolType = 7;

// Opens `bytes` as a file and expects InvalidArgument whose message contains `needle`.
void ExpectInvalid(const std::string& bytes, const std::string& needle) {
  const std::string path = WriteTemp("malformed.gguf", bytes);
  auto file = File::Open(path);
  ASSERT_FALSE(file.ok()) << "expected failure mentioning '" << needle << "'";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_NE(std::string(file.status().message()).find(needle), std::string::npos)
      << "message '" << file.status().message() << "' does not mention '" << needle << "'";
}

// A valid file: one u32 kv and one f32 tensor of 8 elements (32 bytes).
Bytes ValidPrefix() {
  Bytes b;
  b.Header(1, 1).Str("a.key").U32(kU32).U32(7).Tensor("t", {8}, kF32, 0).Pad(32);
  return b;
}

TEST(GgufMalformed, ValidBaselineOpens) {
  Bytes b = ValidPrefix();
  b.Zeros(32);
  auto file = File::Open(WriteTemp("valid.gguf", b.b));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 1u);
}

TEST(GgufMalformed, EmptyFile) { ExpectInvalid("", "truncated"); }
TEST(GgufMalformed, TruncatedInMagic) { ExpectInvalid("GG", "truncated"); }
TEST(GgufMalformed, TruncatedInVersion) { ExpectInvalid(std::string("GGUF\x03\0", 6), "truncated"); }
TEST(GgufMalformed, TruncatedInTensorCount) {
  Bytes b;
  b.b.append("GGUF", 4);
  b.U32(3).U32(0);
  ExpectInvalid(b.b, "truncated");
}
TEST(GgufMalformed, TruncatedInKvCount) {
  Bytes b;
  b.b.append("GGUF", 4);
  b.U32(3).U64(0).U32(1);
  ExpectInvalid(b.b, "truncated");
}
TEST(GgufMalformed, TruncatedInKey) {
  Bytes b;
  b.Header(0, 1).U64(20).Raw("abc", 3).Zeros(10);  // key claims 20 bytes, 13 remain
  ExpectInvalid(b.b, "truncated");
}
TEST(GgufMalformed, TruncatedInValue) {
  Bytes b;
  b.Header(0, 1).Str("k").U32(10);  // uint64 value missing
  b.Zeros(2);
  ExpectInvalid(b.b, "truncated");
}
TEST(GgufMalformed, TruncatedInTensorInfo) {
  Bytes b;
  b.Header(1, 0).Str("tensor").U32(2).U64(8);  // second dim, type and offset missing
  b.Zeros(4);
  ExpectInvalid(b.b, "truncated");
}
TEST(GgufMalformed, TruncatedDataSection) {
  Bytes b = ValidPrefix();
  b.Zeros(16);  // tensor needs 32
  ExpectInvalid(b.b, "outside the data section");
}
TEST(GgufMalformed, HeaderEndsBeforeDataPadding) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8}, kF32, 0);  // no padding, no data
  ExpectInvalid(b.b, "outside the data section");
}

TEST(GgufMalformed, BadMagic) {
  Bytes b;
  b.b.append("GGML", 4);
  b.U32(3).U64(0).U64(0);
  ExpectInvalid(b.b, "bad magic");
}
TEST(GgufMalformed, Version1) {
  Bytes b;
  b.Header(0, 0, 1);
  ExpectInvalid(b.b, "version 1");
}
TEST(GgufMalformed, Version99) {
  Bytes b;
  b.Header(0, 0, 99);
  ExpectInvalid(b.b, "version 99");
}
TEST(GgufMalformed, BigEndianVersion) {
  Bytes b;
  b.Header(0, 0, 0x03000000);
  ExpectInvalid(b.b, "big-endian");
}

TEST(GgufMalformed, HugeKvCount) {
  Bytes b;
  b.Header(0, uint64_t{1} << 40);
  ExpectInvalid(b.b, "kv count");
}
TEST(GgufMalformed, KvCountBeyondFileSize) {
  Bytes b;
  b.Header(0, 1000).Str("k").U32(kU32).U32(1);
  ExpectInvalid(b.b, "kv count 1000");
}
TEST(GgufMalformed, HugeTensorCount) {
  Bytes b;
  b.Header(~uint64_t{0}, 0);
  ExpectInvalid(b.b, "tensor count");
}
TEST(GgufMalformed, TensorCountBeyondFileSize) {
  Bytes b;
  b.Header(5000, 0).Tensor("t", {8}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "tensor count 5000");
}

TEST(GgufMalformed, HugeStringLength) {
  Bytes b;
  b.Header(0, 1).U64(uint64_t{1} << 62).Zeros(16);
  ExpectInvalid(b.b, "string length");
}
TEST(GgufMalformed, StringValueLongerThanFile) {
  Bytes b;
  b.Header(0, 1).Str("k").U32(kStringType).U64(1000).Raw("short", 5);
  ExpectInvalid(b.b, "string length 1000");
}
TEST(GgufMalformed, HugeArrayLength) {
  Bytes b;
  b.Header(0, 1).Str("arr").U32(kArrayType).U32(kU32).U64(uint64_t{1} << 60).Zeros(16);
  ExpectInvalid(b.b, "array length");
}
TEST(GgufMalformed, ArrayLengthBeyondFileSize) {
  Bytes b;
  b.Header(0, 1).Str("arr").U32(kArrayType).U32(kU32).U64(100).U32(1).U32(2);
  ExpectInvalid(b.b, "array length 100");
}
TEST(GgufMalformed, NestedArrayDepthBomb) {
  Bytes b;
  b.Header(0, 1).Str("bomb").U32(kArrayType);
  for (int i = 0; i < 1000; ++i) b.U32(kArrayType).U64(1);
  b.U32(kU32).U64(1).U32(0);
  ExpectInvalid(b.b, "nesting");
}
TEST(GgufMalformed, InvalidBool) {
  Bytes b;
  b.Header(0, 1).Str("flag").U32(kBoolType).U8(2);
  ExpectInvalid(b.b, "invalid bool value 2");
}
TEST(GgufMalformed, InvalidBoolInArray) {
  Bytes b;
  b.Header(0, 1).Str("flags").U32(kArrayType).U32(kBoolType).U64(3).U8(0).U8(1).U8(255);
  ExpectInvalid(b.b, "invalid bool value 255");
}
TEST(GgufMalformed, UnknownValueType) {
  Bytes b;
  b.Header(0, 1).Str("k").U32(13).U32(0);
  ExpectInvalid(b.b, "unknown value type 13");
}
TEST(GgufMalformed, UnknownArrayElementType) {
  Bytes b;
  b.Header(0, 1).Str("k").U32(kArrayType).U32(77).U64(0);
  ExpectInvalid(b.b, "unknown array element type 77");
}
TEST(GgufMalformed, DuplicateKey) {
  Bytes b;
  b.Header(0, 2).Str("dup").U32(kU32).U32(1).Str("dup").U32(kU32).U32(2);
  ExpectInvalid(b.b, "duplicate metadata key 'dup'");
}
TEST(GgufMalformed, EmptyKey) {
  Bytes b;
  b.Header(0, 1).Str("").U32(kU32).U32(1);
  ExpectInvalid(b.b, "empty");
}

TEST(GgufMalformed, AlignmentZero) {
  Bytes b;
  b.Header(0, 1).Str("general.alignment").U32(kU32).U32(0);
  ExpectInvalid(b.b, "power of two");
}
TEST(GgufMalformed, AlignmentThree) {
  Bytes b;
  b.Header(0, 1).Str("general.alignment").U32(kU32).U32(3);
  ExpectInvalid(b.b, "general.alignment 3");
}
TEST(GgufMalformed, AlignmentWrongType) {
  Bytes b;
  b.Header(0, 1).Str("general.alignment").U32(kStringType).Str("32");
  ExpectInvalid(b.b, "general.alignment must be a uint32");
}

TEST(GgufMalformed, NDimsZero) {
  Bytes b;
  b.Header(1, 0).Str("t").U32(0).U32(kF32).U64(0).Pad(32);
  ExpectInvalid(b.b, "n_dims 0");
}
TEST(GgufMalformed, NDimsFive) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {1, 1, 1, 1, 1}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "n_dims 5");
}
TEST(GgufMalformed, NegativeDim) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8, static_cast<uint64_t>(-2)}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "negative");
}
TEST(GgufMalformed, DimProductOverflow) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {uint64_t{1} << 32, uint64_t{1} << 32}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "overflow");
}
TEST(GgufMalformed, ByteSizeOverflow) {
  // 2^61 elements fit in int64, but 4 bytes each do not.
  Bytes b;
  b.Header(1, 0).Tensor("t", {uint64_t{1} << 61}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "overflow");
}
TEST(GgufMalformed, RowNotMultipleOfBlock) {
  Bytes b;
  b.Header(1, 0).Tensor("w", {33, 2}, kQ8_0, 0).Pad(32).Zeros(128);
  ExpectInvalid(b.b, "not a multiple of the q8_0 block size 32");
}
TEST(GgufMalformed, UnknownTensorType) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8}, 99, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "unknown tensor type id 99");
}
TEST(GgufMalformed, Q3KNotSupported) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {256}, 11, 0).Pad(32).Zeros(256);
  ExpectInvalid(b.b, "tensor type 11 (q3_K) is not supported");
}
TEST(GgufMalformed, KQuantRowNotWholeSuperBlocks) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {128}, 12, 0).Pad(32).Zeros(256);
  ExpectInvalid(b.b, "ne[0] = 128 is not a multiple of the q4_k block size 256");
}
TEST(GgufMalformed, OffsetNotAligned) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8}, kF32, 4).Pad(32).Zeros(64);
  ExpectInvalid(b.b, "not a multiple of the alignment");
}
TEST(GgufMalformed, OffsetOutsideFile) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8}, kF32, 1024).Pad(32).Zeros(64);
  ExpectInvalid(b.b, "outside the data section");
}
TEST(GgufMalformed, OffsetPlusSizeOverflows) {
  Bytes b;
  b.Header(1, 0).Tensor("t", {8}, kF32, ~uint64_t{0} - 31).Pad(32).Zeros(64);
  ExpectInvalid(b.b, "overflows");
}
TEST(GgufMalformed, OverlappingTensors) {
  Bytes b;
  b.Header(2, 0).Tensor("a", {16}, kF32, 0).Tensor("b", {8}, kF32, 32).Pad(32).Zeros(64);
  ExpectInvalid(b.b, "overlap");
}
TEST(GgufMalformed, DuplicateTensorName) {
  Bytes b;
  b.Header(2, 0).Tensor("same", {8}, kF32, 0).Tensor("same", {8}, kF32, 32).Pad(32).Zeros(64);
  ExpectInvalid(b.b, "duplicate tensor name 'same'");
}
TEST(GgufMalformed, EmptyTensorName) {
  Bytes b;
  b.Header(1, 0).Tensor("", {8}, kF32, 0).Pad(32).Zeros(32);
  ExpectInvalid(b.b, "empty name");
}

TEST(GgufMalformed, NonexistentPathIsNotFound) {
  auto file = File::Open(testing::TempPath("does-not-exist.gguf"));
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
}
TEST(GgufMalformed, DirectoryIsRejected) {
  const std::string dir = testing::TempPath("gguf-dir");
  ::mkdir(dir.c_str(), 0755);
  auto file = File::Open(dir);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(std::string(file.status().message()).find("regular file"), std::string::npos);
}

TEST(GgufMalformed, LimitsAreHonoured) {
  Bytes b;
  b.Header(0, 1).Str("k").U32(kStringType).Str(std::string(100, 'x'));
  const std::string path = WriteTemp("limits.gguf", b.b);
  ReaderLimits limits;
  limits.max_string_bytes = 10;
  auto file = File::Open(path, limits);
  ASSERT_FALSE(file.ok());
  EXPECT_NE(std::string(file.status().message()).find("exceeds the limit"), std::string::npos);
}

// Every prefix and many random corruptions of a valid file: errors or success, never a crash
// (the sanitizer build turns any out-of-bounds read into a failure).
TEST(GgufMalformed, EveryTruncationAndRandomCorruptionIsSafe) {
  Bytes b;
  b.Header(2, 4)
      .Str("general.alignment").U32(kU32).U32(32)
      .Str("s").U32(kStringType).Str("hello")
      .Str("arr").U32(kArrayType).U32(kArrayType).U64(2)
      .U32(kU32).U64(2).U32(1).U32(2)
      .U32(kStringType).U64(1).Str("x")
      .Str("b").U32(kBoolType).U8(1)
      .Tensor("w", {32, 2}, kQ8_0, 0)
      .Tensor("v", {4}, kF32, 96)
      .Pad(32)
      .Zeros(96 + 16);
  const std::string good = b.b;
  ASSERT_TRUE(File::Open(WriteTemp("fuzz_base.gguf", good)).ok());
  const size_t data_end = good.size();
  for (size_t len = 0; len < data_end; ++len) {
    auto file = File::Open(WriteTemp("fuzz_prefix.gguf", good.substr(0, len)));
    EXPECT_FALSE(file.ok()) << "prefix of " << len << " bytes opened";
  }
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bad = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bad[rng() % bad.size()] = static_cast<char>(rng());
    auto file = File::Open(WriteTemp("fuzz_flip.gguf", bad));
    if (!file.ok()) {
      EXPECT_FALSE(file.status().message().empty());
    }
  }
}

}  // namespace
}  // namespace latentserve::gguf
