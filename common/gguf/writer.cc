// GGUF v3 streaming writer: header, metadata and tensor infos first, then tensor data in
// declaration order, each tensor padded to the alignment.
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/gguf/gguf.h"
#include "common/status.h"

namespace latentserve::gguf {

namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;

Value Scalar(ValueType type, std::variant<uint64_t, int64_t, double, bool, std::string> v) {
  Value out;
  out.type = type;
  out.scalar = std::move(v);
  return out;
}

template <typename T, typename F>
Value Array(ValueType element_type, const std::vector<T>& items, F make) {
  Value out;
  out.type = ValueType::kArray;
  out.element_type = element_type;
  out.elements.reserve(items.size());
  for (const T& item : items) out.elements.push_back(make(item));
  return out;
}

uint64_t AlignUp(uint64_t v, uint64_t alignment) {
  return v % alignment ? v + alignment - v % alignment : v;
}

// Serialises values into a byte buffer (metadata is small next to tensor data).
class Encoder {
 public:
  std::string bytes;

  template <typename T>
  void Pod(T v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void String(const std::string& s) {
    Pod<uint64_t>(s.size());
    bytes.append(s);
  }

  absl::Status EncodeValue(const std::string& key, const Value& v, ValueType type) {
    if (v.type != type) {
      return absl::InvalidArgumentError(absl::StrCat("key '", key, "': array element type ",
                                                     ValueTypeName(type), " but an element is ",
                                                     ValueTypeName(v.type)));
    }
    switch (type) {
      case ValueType::kUint8: return Unsigned<uint8_t>(key, v);
      case ValueType::kUint16: return Unsigned<uint16_t>(key, v);
      case ValueType::kUint32: return Unsigned<uint32_t>(key, v);
      case ValueType::kUint64: return Unsigned<uint64_t>(key, v);
      case ValueType::kInt8: return Signed<int8_t>(key, v);
      case ValueType::kInt16: return Signed<int16_t>(key, v);
      case ValueType::kInt32: return Signed<int32_t>(key, v);
      case ValueType::kInt64: return Signed<int64_t>(key, v);
      case ValueType::kFloat32: {
        const double* d = std::get_if<double>(&v.scalar);
        if (!d) return Bad(key, "float32");
        Pod<float>(static_cast<float>(*d));
        return absl::OkStatus();
      }
      case ValueType::kFloat64: {
        const double* d = std::get_if<double>(&v.scalar);
        if (!d) return Bad(key, "float64");
        Pod<double>(*d);
        return absl::OkStatus();
      }
      case ValueType::kBool: {
        const bool* b = std::get_if<bool>(&v.scalar);
        if (!b) return Bad(key, "bool");
        Pod<uint8_t>(*b ? 1 : 0);
        return absl::OkStatus();
      }
      case ValueType::kString: {
        const std::string* s = std::get_if<std::string>(&v.scalar);
        if (!s) return Bad(key, "string");
        String(*s);
        return absl::OkStatus();
      }
      case ValueType::kArray: {
        Pod<uint32_t>(static_cast<uint32_t>(v.element_type));
        Pod<uint64_t>(v.elements.size());
        for (const Value& e : v.elements) RETURN_IF_ERROR(EncodeValue(key, e, v.element_type));
        return absl::OkStatus();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("key '", key, "': unknown value type ",
                                                   static_cast<uint32_t>(type)));
  }

 private:
  static absl::Status Bad(const std::string& key, const char* type) {
    return absl::InvalidArgumentError(
        absl::StrCat("key '", key, "': value does not hold a ", type));
  }
  template <typename T>
  absl::Status Unsigned(const std::string& key, const Value& v) {
    uint64_t u;
    if (const auto* p = std::get_if<uint64_t>(&v.scalar)) {
      u = *p;
    } else if (const auto* s = std::get_if<int64_t>(&v.scalar); s && *s >= 0) {
      u = static_cast<uint64_t>(*s);
    } else {
      return Bad(key, ValueTypeName(v.type));
    }
    if (u > std::numeric_limits<T>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("key '", key, "': ", u, " does not fit in ",
                                                     ValueTypeName(v.type)));
    }
    Pod<T>(static_cast<T>(u));
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Signed(const std::string& key, const Value& v) {
    int64_t s;
    if (const auto* p = std::get_if<int64_t>(&v.scalar)) {
      s = *p;
    } else if (const auto* u = std::get_if<uint64_t>(&v.scalar);
               u && *u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      s = static_cast<int64_t>(*u);
    } else {
      return Bad(key, ValueTypeName(v.type));
    }
    if (s < std::numeric_limits<T>::min() || s > std::numeric_limits<T>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("key '", key, "': ", s, " does not fit in ",
                                                     ValueTypeName(v.type)));
    }
    Pod<T>(static_cast<T>(s));
    return absl::OkStatus();
  }
};

}  // namespace

void Writer::SetValue(const std::string& key, const Value& v) {
  for (auto& [k, existing] : kv_) {
    if (k == key) {
      existing = v;
      return;
    }
  }
  kv_.emplace_back(key, v);
}

void Writer::SetUint32(const std::string& key, uint32_t v) {
  SetValue(key, Scalar(ValueType::kUint32, uint64_t{v}));
}
void Writer::SetInt32(const std::string& key, int32_t v) {
  SetValue(key, Scalar(ValueType::kInt32, int64_t{v}));
}
void Writer::SetUint64(const std::string& key, uint64_t v) {
  SetValue(key, Scalar(ValueType::kUint64, v));
}
void Writer::SetFloat32(const std::string& key, float v) {
  SetValue(key, Scalar(ValueType::kFloat32, double{v}));
}
void Writer::SetBool(const std::string& key, bool v) { SetValue(key, Scalar(ValueType::kBool, v)); }
void Writer::SetString(const std::string& key, const std::string& v) {
  SetValue(key, Scalar(ValueType::kString, v));
}
void Writer::SetArrayString(const std::string& key, const std::vector<std::string>& v) {
  SetValue(key, Array(ValueType::kString, v,
                      [](const std::string& s) { return Scalar(ValueType::kString, s); }));
}
void Writer::SetArrayInt32(const std::string& key, const std::vector<int32_t>& v) {
  SetValue(key, Array(ValueType::kInt32, v,
                      [](int32_t x) { return Scalar(ValueType::kInt32, int64_t{x}); }));
}
void Writer::SetArrayUint32(const std::string& key, const std::vector<uint32_t>& v) {
  SetValue(key, Array(ValueType::kUint32, v,
                      [](uint32_t x) { return Scalar(ValueType::kUint32, uint64_t{x}); }));
}
void Writer::SetArrayFloat32(const std::string& key, const std::vector<float>& v) {
  SetValue(key, Array(ValueType::kFloat32, v,
                      [](float x) { return Scalar(ValueType::kFloat32, double{x}); }));
}

absl::Status Writer::AddTensor(const std::string& name, DType type, const std::vector<int64_t>& ne) {
  if (out_) return absl::FailedPreconditionError("AddTensor after Begin");
  if (name.empty()) return absl::InvalidArgumentError("tensor name is empty");
  for (const PendingTensor& t : tensors_) {
    if (t.name == name) return absl::InvalidArgumentError(absl::StrCat("duplicate tensor '", name, "'"));
  }
  if (ne.empty() || ne.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "': ", ne.size(), " dimensions (must be 1..4)"));
  }
  const DTypeTraits& traits = Traits(type);
  int64_t elements = 1;
  for (int64_t d : ne) {
    if (d < 0 || __builtin_mul_overflow(elements, d, &elements)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': invalid shape"));
    }
  }
  if (ne[0] % traits.block_elements) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ne[0] = ", ne[0],
                                                   " is not a multiple of the ", traits.name,
                                                   " block size ", traits.block_elements));
  }
  const uint64_t nbytes =
      ne[0] == 0 ? 0 : static_cast<uint64_t>(RowBytes(type, ne[0])) * (elements / ne[0]);
  const uint64_t offset = AlignUp(data_size_, alignment_);
  tensors_.push_back(PendingTensor{name, type, ne, nbytes, offset});
  data_size_ = offset + nbytes;
  return absl::OkStatus();
}

absl::Status Writer::Begin(const std::string& path) {
  if (out_) return absl::FailedPreconditionError("Begin called twice");
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) || alignment_ > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("alignment ", alignment_, " is not a power of two"));
  }
  if (alignment_ != kDefaultAlignment) SetUint32("general.alignment", static_cast<uint32_t>(alignment_));

  Encoder enc;
  enc.bytes.append("GGUF", 4);
  enc.Pod<uint32_t>(kVersion);
  enc.Pod<uint64_t>(tensors_.size());
  enc.Pod<uint64_t>(kv_.size());
  for (const auto& [key, value] : kv_) {
    enc.String(key);
    enc.Pod<uint32_t>(static_cast<uint32_t>(value.type));
    RETURN_IF_ERROR(enc.EncodeValue(key, value, value.type));
  }
  for (const PendingTensor& t : tensors_) {
    enc.String(t.name);
    enc.Pod<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) enc.Pod<uint64_t>(static_cast<uint64_t>(d));
    enc.Pod<uint32_t>(static_cast<uint32_t>(t.type));
    enc.Pod<uint64_t>(t.offset);
  }
  enc.bytes.resize(AlignUp(enc.bytes.size(), alignment_), '\0');

  out_ = std::fopen(path.c_str(), "wb");
  if (!out_) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  std::setvbuf(out_, nullptr, _IOFBF, 1 << 20);
  if (std::fwrite(enc.bytes.data(), 1, enc.bytes.size(), out_) != enc.bytes.size()) {
    return absl::DataLossError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
  }
  current_tensor_ = 0;
  current_written_ = 0;
  return absl::OkStatus();
}

absl::Status Writer::WriteTensorData(const void* data, uint64_t bytes) {
  if (!out_) return absl::FailedPreconditionError("WriteTensorData before Begin");
  // Zero-sized tensors are complete without any data.
  while (current_tensor_ < tensors_.size() && tensors_[current_tensor_].nbytes == 0) ++current_tensor_;
  if (bytes == 0) return absl::OkStatus();
  if (current_tensor_ >= tensors_.size()) {
    return absl::FailedPreconditionError("WriteTensorData: every declared tensor is already written");
  }
  const PendingTensor& t = tensors_[current_tensor_];
  if (bytes > t.nbytes - current_written_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "': writing ", bytes,
                                                   " bytes but only ", t.nbytes - current_written_,
                                                   " of its ", t.nbytes, " remain"));
  }
  if (std::fwrite(data, 1, bytes, out_) != bytes) {
    return absl::DataLossError(absl::StrCat("write failed: ", std::strerror(errno)));
  }
  current_written_ += bytes;
  if (current_written_ == t.nbytes) {
    const uint64_t end = t.offset + t.nbytes;
    static const char kZeros[256] = {};
    for (uint64_t pad = AlignUp(end, alignment_) - end; pad > 0;) {
      const uint64_t n = pad < sizeof(kZeros) ? pad : sizeof(kZeros);
      if (std::fwrite(kZeros, 1, n, out_) != n) {
        return absl::DataLossError(absl::StrCat("write failed: ", std::strerror(errno)));
      }
      pad -= n;
    }
    ++current_tensor_;
    current_written_ = 0;
  }
  return absl::OkStatus();
}

absl::Status Writer::Finish() {
  if (!out_) return absl::FailedPreconditionError("Finish before Begin");
  while (current_tensor_ < tensors_.size() && tensors_[current_tensor_].nbytes == 0) ++current_tensor_;
  absl::Status status;
  if (current_tensor_ < tensors_.size()) {
    status = absl::FailedPreconditionError(
        absl::StrCat("tensor '", tensors_[current_tensor_].name, "' and ",
                     tensors_.size() - current_tensor_ - 1, " more were not fully written"));
  }
  if (std::fclose(out_) != 0 && status.ok()) {
    status = absl::DataLossError(absl::StrCat("close failed: ", std::strerror(errno)));
  }
  out_ = nullptr;
  return status;
}

Writer::~Writer() {
  if (out_) std::fclose(out_);
}

}  // namespace latentserve::gguf
