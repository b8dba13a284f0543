// GGUF metadata by key with its type checked: File::GetUint / GetInt / GetFloat / GetBool /
// GetString and the array forms (declared in gguf.h; the parser is reader.cc).
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/gguf/gguf.h"
#include "common/status.h"

namespace latentserve::gguf {

namespace {

absl::Status WrongType(std::string_view key, const Value& v, const char* wanted) {
  return absl::InvalidArgumentError(absl::StrCat("metadata key '", std::string(key), "' is ",
                                                 ValueTypeName(v.type), ", expected ", wanted));
}

bool IsInteger(ValueType t) {
  switch (t) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kUint16: case ValueType::kInt16:
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kUint64: case ValueType::kInt64:
      return true;
    default:
      return false;
  }
}

absl::StatusOr<uint64_t> AsUint(std::string_view key, const Value& v) {
  if (!IsInteger(v.type)) return WrongType(key, v, "an unsigned integer");
  if (const auto* u = std::get_if<uint64_t>(&v.scalar)) return *u;
  const int64_t s = std::get<int64_t>(v.scalar);
  if (s < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata key '", std::string(key), "' is negative (", s, "), expected an unsigned integer"));
  }
  return static_cast<uint64_t>(s);
}

absl::StatusOr<int64_t> AsInt(std::string_view key, const Value& v) {
  if (!IsInteger(v.type)) return WrongType(key, v, "an integer");
  if (const auto* s = std::get_if<int64_t>(&v.scalar)) return *s;
  const uint64_t u = std::get<uint64_t>(v.scalar);
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata key '", std::string(key), "' value ", u, " does not fit in int64"));
  }
  return static_cast<int64_t>(u);
}

absl::StatusOr<double> AsFloat(std::string_view key, const Value& v) {
  if (v.type == ValueType::kFloat32 || v.type == ValueType::kFloat64) return std::get<double>(v.scalar);
  if (IsInteger(v.type)) {
    if (const auto* s = std::get_if<int64_t>(&v.scalar)) return static_cast<double>(*s);
    return static_cast<double>(std::get<uint64_t>(v.scalar));
  }
  return WrongType(key, v, "a number");
}

}  // namespace

#define LS_GGUF_FIND(key)                                                                  \
  const Value* v = Find(key);                                                              \
  if (!v) return absl::NotFoundError(absl::StrCat("metadata key '", std::string(key), "' not found"))

absl::StatusOr<uint64_t> File::GetUint(std::string_view key) const {
  LS_GGUF_FIND(key);
  return AsUint(key, *v);
}

absl::StatusOr<int64_t> File::GetInt(std::string_view key) const {
  LS_GGUF_FIND(key);
  return AsInt(key, *v);
}

absl::StatusOr<double> File::GetFloat(std::string_view key) const {
  LS_GGUF_FIND(key);
  return AsFloat(key, *v);
}

absl::StatusOr<bool> File::GetBool(std::string_view key) const {
  LS_GGUF_FIND(key);
  if (v->type != ValueType::kBool) return WrongType(key, *v, "a bool");
  return std::get<bool>(v->scalar);
}

absl::StatusOr<std::string> File::GetString(std::string_view key) const {
  LS_GGUF_FIND(key);
  if (v->type != ValueType::kString) return WrongType(key, *v, "a string");
  return std::get<std::string>(v->scalar);
}

absl::StatusOr<std::vector<std::string>> File::GetStringArray(std::string_view key) const {
  LS_GGUF_FIND(key);
  if (v->type != ValueType::kArray || v->element_type != ValueType::kString) {
    return WrongType(key, *v, "an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(v->elements.size());
  for (const Value& e : v->elements) out.push_back(std::get<std::string>(e.scalar));
  return out;
}

absl::StatusOr<std::vector<int64_t>> File::GetIntArray(std::string_view key) const {
  LS_GGUF_FIND(key);
  if (v->type != ValueType::kArray || !IsInteger(v->element_type)) {
    return WrongType(key, *v, "an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->elements.size());
  for (const Value& e : v->elements) {
    ASSIGN_OR_RETURN(int64_t x, AsInt(key, e));
    out.push_back(x);
  }
  return out;
}

absl::StatusOr<std::vector<double>> File::GetFloatArray(std::string_view key) const {
  LS_GGUF_FIND(key);
  if (v->type != ValueType::kArray ||
      !(IsInteger(v->element_type) || v->element_type == ValueType::kFloat32 ||
        v->element_type == ValueType::kFloat64)) {
    return WrongType(key, *v, "an array of numbers");
  }
  std::vector<double> out;
  out.reserve(v->elements.size());
  for (const Value& e : v->elements) {
    ASSIGN_OR_RETURN(double x, AsFloat(key, e));
    out.push_back(x);
  }
  return out;
}

#undef LS_GGUF_FIND

}  // namespace latentserve::gguf
