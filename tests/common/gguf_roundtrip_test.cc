// Writer -> reader round trips: every value type (nested arrays too), every tensor type.
#include <cmath>
#include <cstring>

#include "common/gguf/gguf.h"
#include "gguf_test_util.h"
#include "gtest/gtest.h"

namespace latentserve::gguf {
namespace {

Value MakeScalar(ValueType type, std::variant<uint64_t, int64_t, double, bool, std::string> v) {
  Value out;
  out.type = type;
  out.scalar = std::move(v);
  return out;
}

Value MakeArray(ValueType element_type, std::vector<Value> elements) {
  Value out;
  out.type = ValueType::kArray;
  out.element_type = element_type;
  out.elements = std::move(elements);
  return out;
}

void ExpectSameValue(const Value& a, const Value& b, const std::string& where) {
  ASSERT_EQ(a.type, b.type) << where;
  if (a.type == ValueType::kArray) {
    ASSERT_EQ(a.element_type, b.element_type) << where;
    ASSERT_EQ(a.elements.size(), b.elements.size()) << where;
    for (size_t i = 0; i < a.elements.size(); ++i) {
      ExpectSameValue(a.elements[i], b.elements[i], where + "[" + std::to_string(i) + "]");
    }
    return;
  }
  EXPECT_TRUE(a.scalar == b.scalar) << where;
}

std::vector<std::pair<std::string, Value>> AllValues() {
  std::vector<std::pair<std::string, Value>> kv = {
      {"u8", MakeScalar(ValueType::kUint8, uint64_t{255})},
      {"i8", MakeScalar(ValueType::kInt8, int64_t{-128})},
      {"u16", MakeScalar(ValueType::kUint16, uint64_t{65535})},
      {"i16", MakeScalar(ValueType::kInt16, int64_t{-32768})},
      {"u32", MakeScalar(ValueType::kUint32, uint64_t{4000000000u})},
      {"i32", MakeScalar(ValueType::kInt32, int64_t{-2000000000})},
      {"f32", MakeScalar(ValueType::kFloat32, double{1.5f})},
      {"bool_true", MakeScalar(ValueType::kBool, true)},
      {"bool_false", MakeScalar(ValueType::kBool, false)},
      {"string", MakeScalar(ValueType::kString, std::string("héllo \0 world", 14))},
      {"empty_string", MakeScalar(ValueType::kString, std::string())},
      {"u64", MakeScalar(ValueType::kUint64, ~uint64_t{0})},
      {"i64", MakeScalar(ValueType::kInt64, int64_t{-(int64_t{1} << 62)})},
      {"f64", MakeScalar(ValueType::kFloat64, 3.141592653589793)},
      {"arr_u8", MakeArray(ValueType::kUint8, {MakeScalar(ValueType::kUint8, uint64_t{1}),
                                               MakeScalar(ValueType::kUint8, uint64_t{2})})},
      {"arr_i64", MakeArray(ValueType::kInt64, {MakeScalar(ValueType::kInt64, int64_t{-5})})},
      {"arr_f64", MakeArray(ValueType::kFloat64, {MakeScalar(ValueType::kFloat64, 0.25)})},
      {"arr_bool", MakeArray(ValueType::kBool, {MakeScalar(ValueType::kBool, true),
                                                MakeScalar(ValueType::kBool, false)})},
      {"arr_empty", MakeArray(ValueType::kUint32, {})},
      {"arr_nested",
       MakeArray(ValueType::kArray,
                 {MakeArray(ValueType::kInt32, {MakeScalar(ValueType::kInt32, int64_t{1}),
                                                MakeScalar(ValueType::kInt32, int64_t{-2})}),
                  MakeArray(ValueType::kString, {MakeScalar(ValueType::kString, std::string("a"))}),
                  MakeArray(ValueType::kArray,
                            {MakeArray(ValueType::kUint16,
                                       {MakeScalar(ValueType::kUint16, uint64_t{7})})})})},
  };
  return kv;
}

TEST(GgufRoundTrip, AllValueTypes) {
  Writer w;
  const auto values = AllValues();
  for (const auto& [key, value] : values) w.SetValue(key, value);
  w.SetUint32("typed.u32", 42);
  w.SetInt32("typed.i32", -42);
  w.SetUint64("typed.u64", 1ull << 40);
  w.SetFloat32("typed.f32", 2.446f);
  w.SetBool("typed.bool", true);
  w.SetString("typed.string", "kimi-linear");
  w.SetArrayString("typed.strings", {"a", "", "c d"});
  w.SetArrayInt32("typed.i32s", {0, -1, 1});
  w.SetArrayUint32("typed.u32s", {3, 4});
  w.SetArrayFloat32("typed.f32s", {0.5f, -1.0f});
  w.SetUint32("typed.u32", 43);  // replaces, keeps one key
  const std::string path = testing::TempPath("values.gguf");
  ASSERT_TRUE(w.Begin(path).ok());
  ASSERT_TRUE(w.Finish().ok());

  auto file_or = File::Open(path);
  ASSERT_TRUE(file_or.ok()) << file_or.status();
  const File& f = **file_or;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.metadata().size(), values.size() + 10);
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, values[i].first);
    ExpectSameValue(f.metadata()[i].second, values[i].second, values[i].first);
  }

  EXPECT_EQ(*f.GetUint("typed.u32"), 43u);
  EXPECT_EQ(*f.GetInt("typed.u32"), 43);
  EXPECT_EQ(*f.GetInt("typed.i32"), -42);
  EXPECT_EQ(*f.GetUint("typed.u64"), 1ull << 40);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat("typed.f32")), 2.446f);
  EXPECT_EQ(*f.GetFloat("typed.u32"), 43.0);
  EXPECT_TRUE(*f.GetBool("typed.bool"));
  EXPECT_EQ(*f.GetString("typed.string"), "kimi-linear");
  EXPECT_EQ(*f.GetStringArray("typed.strings"), (std::vector<std::string>{"a", "", "c d"}));
  EXPECT_EQ(*f.GetIntArray("typed.i32s"), (std::vector<int64_t>{0, -1, 1}));
  EXPECT_EQ(*f.GetIntArray("typed.u32s"), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(*f.GetFloatArray("typed.f32s"), (std::vector<double>{0.5, -1.0}));
  EXPECT_EQ(*f.GetFloatArray("typed.i32s"), (std::vector<double>{0, -1, 1}));

  // Conversions that would lose information are errors, absent keys NotFound.
  EXPECT_EQ(f.GetUint("typed.i32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetInt("u64").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetUint("typed.string").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetBool("typed.u32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetString("typed.u32").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetStringArray("typed.i32s").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetIntArray("arr_nested").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.GetInt("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(f.Find("missing"), nullptr);
  ASSERT_NE(f.Find("i8"), nullptr);
  EXPECT_EQ(*f.GetInt("i8"), -128);
  EXPECT_TRUE(f.tensors().empty());
}

struct TensorCase {
  std::string name;
  DType type;
  std::vector<int64_t> ne;
};

void RoundTripTensors(uint64_t alignment) {
  const std::vector<TensorCase> cases = {
      {"f32.1d", DType::kF32, {7}},
      {"f16.2d", DType::kF16, {5, 3}},
      {"bf16.3d", DType::kBF16, {3, 2, 2}},
      {"q8_0.2d", DType::kQ8_0, {64, 3}},
      {"q4_0.4d", DType::kQ4_0, {32, 2, 1, 2}},
      {"i32.1d", DType::kI32, {9}},
      {"empty", DType::kF32, {0, 4}},
      {"q4_0.wide", DType::kQ4_0, {96, 1}},
  };
  Writer w(alignment);
  w.SetString("general.architecture", "test");
  std::vector<std::string> payloads;
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(w.AddTensor(cases[i].name, cases[i].type, cases[i].ne).ok()) << cases[i].name;
    int64_t elements = 1;
    for (int64_t d : cases[i].ne) elements *= d;
    const int64_t bytes = cases[i].ne[0] == 0 ? 0 : RowBytes(cases[i].type, cases[i].ne[0]) * (elements / cases[i].ne[0]);
    std::string payload(bytes, '\0');
    for (int64_t b = 0; b < bytes; ++b) payload[b] = static_cast<char>((b * 31 + i * 7) & 0xff);
    payloads.push_back(payload);
  }
  const std::string path = testing::TempPath("tensors.gguf");
  ASSERT_TRUE(w.Begin(path).ok());
  for (const std::string& payload : payloads) {
    // Write in two pieces to exercise partial writes.
    const size_t half = payload.size() / 2;
    ASSERT_TRUE(w.WriteTensorData(payload.data(), half).ok());
    ASSERT_TRUE(w.WriteTensorData(payload.data() + half, payload.size() - half).ok());
  }
  ASSERT_TRUE(w.Finish().ok());

  auto file_or = File::Open(path);
  ASSERT_TRUE(file_or.ok()) << file_or.status();
  const File& f = **file_or;
  EXPECT_EQ(f.alignment(), alignment);
  ASSERT_EQ(f.tensors().size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const TensorInfo* t = f.FindTensor(cases[i].name);
    ASSERT_NE(t, nullptr) << cases[i].name;
    EXPECT_EQ(t->type, cases[i].type);
    EXPECT_EQ(t->ne, cases[i].ne);
    EXPECT_EQ(t->nbytes, payloads[i].size());
    EXPECT_EQ(t->offset % alignment, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % alignment, 0u);
    EXPECT_EQ(std::memcmp(t->data, payloads[i].data(), payloads[i].size()), 0) << cases[i].name;
  }
  EXPECT_EQ(f.FindTensor("q8_0.2d")->elements(), 192);
  EXPECT_EQ(f.FindTensor("nope"), nullptr);
}

TEST(GgufRoundTrip, AllTensorTypesDefaultAlignment) { RoundTripTensors(32); }
TEST(GgufRoundTrip, AllTensorTypesAlignment64) { RoundTripTensors(64); }

TEST(GgufRoundTrip, ReadsVersion2) {
  testing::Bytes b;
  b.Header(1, 1, 2).Str("k").U32(4).U32(5).Tensor("t", {2}, 0, 0).Pad(32);
  const float data[2] = {1.0f, -2.0f};
  b.Raw(data, sizeof(data));
  auto f = File::Open(testing::WriteTemp("v2.gguf", b.b));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->version(), 2u);
  EXPECT_EQ(*(*f)->GetUint("k"), 5u);
  EXPECT_EQ(reinterpret_cast<const float*>((*f)->tensors()[0].data)[1], -2.0f);
}

TEST(GgufWriter, RejectsMisuse) {
  Writer w;
  EXPECT_FALSE(w.AddTensor("bad", DType::kQ8_0, {33}).ok());
  EXPECT_FALSE(w.AddTensor("bad", DType::kF32, {}).ok());
  EXPECT_FALSE(w.AddTensor("bad", DType::kF32, {1, 1, 1, 1, 1}).ok());
  EXPECT_FALSE(w.AddTensor("bad", DType::kF32, {-1}).ok());
  ASSERT_TRUE(w.AddTensor("t", DType::kF32, {4}).ok());
  EXPECT_FALSE(w.AddTensor("t", DType::kF32, {4}).ok());
  EXPECT_FALSE(w.WriteTensorData("x", 1).ok());  // before Begin
  const std::string path = testing::TempPath("misuse.gguf");
  ASSERT_TRUE(w.Begin(path).ok());
  const float data[5] = {};
  EXPECT_FALSE(w.WriteTensorData(data, sizeof(data)).ok());  // more than declared
  ASSERT_TRUE(w.WriteTensorData(data, 8).ok());
  EXPECT_FALSE(w.Finish().ok());  // incomplete tensor
}

TEST(GgufWriter, RejectsBadAlignment) {
  Writer w(3);
  EXPECT_FALSE(w.Begin(testing::TempPath("align3.gguf")).ok());
}

}  // namespace
}  // namespace latentserve::gguf
