// GGUF v2/v3 files: a validating, memory-mapped reader and a streaming writer.
//
// Layout (little endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count,
// kv_count x {string key, u32 value_type, value}, tensor_count x {string name, u32 n_dims,
// n_dims x u64 ne, u32 ggml_type, u64 offset}, padding to `general.alignment` (default 32),
// then the tensor data section; each tensor's offset is relative to the data section start.
// Strings are u64 length + bytes (no terminator).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace latentserve::gguf {

enum class ValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* ValueTypeName(ValueType type);

// One metadata value. Scalars of every integer type are held widened; `type` keeps the
// type that was in the file. Arrays hold their element type and elements (arrays may nest).
struct Value {
  ValueType type = ValueType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string> scalar;  // not used for arrays
  ValueType element_type = ValueType::kUint8;                         // arrays only
  std::vector<Value> elements;                                        // arrays only
};

struct TensorInfo {
  std::string name;
  DType type;
  std::vector<int64_t> ne;   // ggml order: ne[0] is the fastest-moving dimension
  uint64_t offset = 0;       // relative to the data section
  uint64_t nbytes = 0;       // size of the data
  const uint8_t* data = nullptr;  // into the mapping; valid while the File lives
  int64_t elements() const;
};

// Limits that keep a hostile file from making us allocate without bound.
struct ReaderLimits {
  uint64_t max_string_bytes = 1ull << 24;        // 16 MiB
  uint64_t max_array_elements = 1ull << 26;      // 64M
  uint64_t max_kv_count = 1ull << 20;
  uint64_t max_tensor_count = 1ull << 20;
  uint32_t max_array_depth = 8;
};

class File {
 public:
  // Maps and fully validates a file; any problem is an InvalidArgument/DataLoss status that
  // names it (and the key or tensor involved). NotFound when the path does not exist.
  static absl::StatusOr<std::unique_ptr<File>> Open(const std::string& path,
                                                    const ReaderLimits& limits = {});
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }

  // Metadata in file order, and lookup by key.
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* Find(std::string_view key) const;

  // Typed getters: NotFound if absent, InvalidArgument if the stored type cannot be converted
  // without loss (any integer type converts to another when the value fits; f32/f64 to float).
  absl::StatusOr<uint64_t> GetUint(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;

 private:
  File() = default;
  friend class Parser;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  absl::flat_hash_map<std::string, size_t> kv_index_;
  std::vector<TensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

// Streaming writer: declare all metadata and tensor infos, then write tensor data in the
// declared order. Memory use is independent of tensor sizes.
class Writer {
 public:
  explicit Writer(uint64_t alignment = 32) : alignment_(alignment) {}

  void SetUint32(const std::string& key, uint32_t v);
  void SetInt32(const std::string& key, int32_t v);
  void SetUint64(const std::string& key, uint64_t v);
  void SetFloat32(const std::string& key, float v);
  void SetBool(const std::string& key, bool v);
  void SetString(const std::string& key, const std::string& v);
  void SetArrayString(const std::string& key, const std::vector<std::string>& v);
  void SetArrayInt32(const std::string& key, const std::vector<int32_t>& v);
  void SetArrayUint32(const std::string& key, const std::vector<uint32_t>& v);
  void SetArrayFloat32(const std::string& key, const std::vector<float>& v);
  void SetValue(const std::string& key, const Value& v);  // any value, nested arrays too

  // Declares a tensor; its data must be written later with WriteTensorData in this order.
  absl::Status AddTensor(const std::string& name, DType type, const std::vector<int64_t>& ne);

  // Opens `path` and writes the header, metadata and tensor infos.
  absl::Status Begin(const std::string& path);
  // Appends the next tensor's bytes (may be called several times per tensor with pieces;
  // the writer pads between tensors once a tensor's declared size is complete).
  absl::Status WriteTensorData(const void* data, uint64_t bytes);
  // Checks every declared tensor was fully written and closes the file.
  absl::Status Finish();
  ~Writer();

 private:
  struct PendingTensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    uint64_t offset;
  };
  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<PendingTensor> tensors_;
  uint64_t data_size_ = 0;
  std::FILE* out_ = nullptr;
  size_t current_tensor_ = 0;
  uint64_t current_written_ = 0;
};

}  // namespace latentserve::gguf
