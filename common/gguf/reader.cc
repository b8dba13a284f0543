// GGUF reader: maps the file and validates every field before anything else reads it.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/gguf/gguf.h"
#include "common/status.h"

namespace latentserve::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kFloat64); }

// Bytes one element of `type` occupies at least; used to bound counts by the bytes left.
uint64_t MinEncodedSize(ValueType type) {
  switch (type) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kBool: return 1;
    case ValueType::kUint16: case ValueType::kInt16: return 2;
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kFloat32: return 4;
    case ValueType::kUint64: case ValueType::kInt64: case ValueType::kFloat64: return 8;
    case ValueType::kString: return 8;      // length prefix
    case ValueType::kArray: return 4 + 8;   // element type + count
  }
  return 1;
}

// Names ggml type ids that we know of but cannot decode yet, for a helpful message.
const char* KnownUnsupportedTypeName(uint32_t id) {
  switch (id) {
    case 3: return "q4_1";
    case 9: return "q8_1";
    case 10: return "q2_K";
    case 11: return "q3_K";
    case 15: return "q8_K";
    case 16: return "iq2_xxs";
    case 17: return "iq2_xs";
    case 18: return "iq3_xxs";
    case 19: return "iq1_s";
    case 20: return "iq4_nl";
    case 21: return "iq3_s";
    case 22: return "iq2_s";
    case 23: return "iq4_xs";
    case 24: return "i8";
    case 25: return "i16";
    case 27: return "i64";
    case 28: return "f64";
    case 29: return "iq1_m";
    case 34: return "tq1_0";
    case 35: return "tq2_0";
    case 39: return "mxfp4";
    default: return nullptr;
  }
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

const char* ValueTypeName(ValueType type) {
  switch (type) {
    case ValueType::kUint8: return "uint8";
    case ValueType::kInt8: return "int8";
    case ValueType::kUint16: return "uint16";
    case ValueType::kInt16: return "int16";
    case ValueType::kUint32: return "uint32";
    case ValueType::kInt32: return "int32";
    case ValueType::kFloat32: return "float32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kUint64: return "uint64";
    case ValueType::kInt64: return "int64";
    case ValueType::kFloat64: return "float64";
  }
  return "unknown";
}

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// Reads the header, metadata and tensor infos of a mapped file through a bounds-checked cursor.
class Parser {
 public:
  Parser(File& file, const ReaderLimits& limits) : file_(file), limits_(limits) {}

  absl::Status Parse() {
    uint32_t magic = 0;
    RETURN_IF_ERROR(ReadU32(&magic, "magic"));
    if (magic != kMagic) {
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path_, ": bad magic 0x", absl::Hex(magic, absl::kZeroPad8),
                       " (not a GGUF file; expected \"GGUF\")"));
    }
    uint32_t version = 0;
    RETURN_IF_ERROR(ReadU32(&version, "version"));
    if (version != 2 && version != 3) {
      std::string hint;
      if (version == 1) hint = " (GGUF v1 is obsolete; reconvert the model)";
      if ((version & 0xffff) == 0 && version != 0) hint = " (byte-swapped: a big-endian file?)";
      return absl::InvalidArgumentError(
          absl::StrCat(file_.path_, ": unsupported GGUF version ", version, hint,
                       "; supported versions are 2 and 3"));
    }
    file_.version_ = version;

    uint64_t tensor_count = 0, kv_count = 0;
    RETURN_IF_ERROR(ReadU64(&tensor_count, "tensor count"));
    RETURN_IF_ERROR(ReadU64(&kv_count, "metadata kv count"));
    if (kv_count > limits_.max_kv_count) {
      return Error(absl::StrCat("metadata kv count ", kv_count, " exceeds the limit of ",
                                limits_.max_kv_count));
    }
    if (tensor_count > limits_.max_tensor_count) {
      return Error(absl::StrCat("tensor count ", tensor_count, " exceeds the limit of ",
                                limits_.max_tensor_count));
    }
    // Smallest kv: key length + value type + 1 byte.  Smallest tensor info: name length +
    // 1 name byte + n_dims + one dim + type + offset.
    RETURN_IF_ERROR(CheckCountFits(kv_count, 8 + 4 + 1, "metadata kv count"));

    file_.kv_.reserve(kv_count);
    for (uint64_t i = 0; i < kv_count; ++i) RETURN_IF_ERROR(ReadKeyValue(i));
    RETURN_IF_ERROR(ReadAlignment());

    RETURN_IF_ERROR(CheckCountFits(tensor_count, 8 + 1 + 4 + 8 + 4 + 8, "tensor count"));
    file_.tensors_.reserve(tensor_count);
    for (uint64_t i = 0; i < tensor_count; ++i) RETURN_IF_ERROR(ReadTensorInfo(i));

    return PlaceTensors();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(file_.path_, ": ", what));
  }
  absl::Status Truncated(const char* what, uint64_t need) const {
    return Error(absl::StrCat("truncated file: reading ", what, " needs ", need,
                              " bytes at offset ", pos_, " but the file has ",
                              file_.size_ - pos_, " bytes left"));
  }
  uint64_t Remaining() const { return file_.size_ - pos_; }

  absl::Status CheckCountFits(uint64_t count, uint64_t min_bytes_each, const char* what) const {
    if (count > Remaining() / min_bytes_each) {
      return Error(absl::StrCat(what, " ", count, " needs at least ", min_bytes_each,
                                " bytes each but only ", Remaining(),
                                " bytes remain (truncated file or corrupt count)"));
    }
    return absl::OkStatus();
  }

  absl::Status ReadBytes(void* out, uint64_t n, const char* what) {
    if (n > Remaining()) return Truncated(what, n);
    std::memcpy(out, file_.map_ + pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  absl::Status ReadU32(uint32_t* v, const char* what) { return ReadBytes(v, 4, what); }
  absl::Status ReadU64(uint64_t* v, const char* what) { return ReadBytes(v, 8, what); }

  absl::Status ReadString(std::string* out, const std::string& what) {
    uint64_t len = 0;
    RETURN_IF_ERROR(ReadU64(&len, "string length"));
    if (len > limits_.max_string_bytes) {
      return Error(absl::StrCat("string length ", len, " of ", what, " exceeds the limit of ",
                                limits_.max_string_bytes, " bytes"));
    }
    if (len > Remaining()) {
      return Error(absl::StrCat("truncated file: string length ", len, " of ", what,
                                " at offset ", pos_, " exceeds the ", Remaining(),
                                " bytes left"));
    }
    out->assign(reinterpret_cast<const char*>(file_.map_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

  absl::Status ReadKeyValue(uint64_t index) {
    std::string key;
    RETURN_IF_ERROR(ReadString(&key, absl::StrCat("metadata key #", index)));
    if (key.empty()) return Error(absl::StrCat("metadata key #", index, " is empty"));
    if (file_.kv_index_.count(key)) return Error(absl::StrCat("duplicate metadata key '", key, "'"));
    uint32_t type = 0;
    RETURN_IF_ERROR(ReadU32(&type, "value type"));
    if (!IsKnownValueType(type)) {
      return Error(absl::StrCat("unknown value type ", type, " for key '", key, "'"));
    }
    Value value;
    RETURN_IF_ERROR(ReadValue(static_cast<ValueType>(type), key, 0, &value));
    file_.kv_index_[key] = file_.kv_.size();
    file_.kv_.emplace_back(std::move(key), std::move(value));
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status ReadPod(T* v, const std::string& key) {
    if (sizeof(T) > Remaining()) {
      return Error(absl::StrCat("truncated file: value of key '", key, "' at offset ", pos_,
                                " needs ", sizeof(T), " bytes, ", Remaining(), " left"));
    }
    std::memcpy(v, file_.map_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadValue(ValueType type, const std::string& key, uint32_t depth, Value* out) {
    out->type = type;
    switch (type) {
      case ValueType::kUint8: { uint8_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = uint64_t{v}; break; }
      case ValueType::kUint16: { uint16_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = uint64_t{v}; break; }
      case ValueType::kUint32: { uint32_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = uint64_t{v}; break; }
      case ValueType::kUint64: { uint64_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = v; break; }
      case ValueType::kInt8: { int8_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = int64_t{v}; break; }
      case ValueType::kInt16: { int16_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = int64_t{v}; break; }
      case ValueType::kInt32: { int32_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = int64_t{v}; break; }
      case ValueType::kInt64: { int64_t v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = v; break; }
      case ValueType::kFloat32: { float v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = double{v}; break; }
      case ValueType::kFloat64: { double v = 0; RETURN_IF_ERROR(ReadPod(&v, key)); out->scalar = v; break; }
      case ValueType::kBool: {
        uint8_t v = 0;
        RETURN_IF_ERROR(ReadPod(&v, key));
        if (v > 1) {
          return Error(absl::StrCat("invalid bool value ", int{v}, " for key '", key,
                                    "' at offset ", pos_ - 1, " (must be 0 or 1)"));
        }
        out->scalar = v == 1;
        break;
      }
      case ValueType::kString: {
        std::string s;
        RETURN_IF_ERROR(ReadString(&s, absl::StrCat("the value of key '", key, "'")));
        out->scalar = std::move(s);
        break;
      }
      case ValueType::kArray: {
        if (depth >= limits_.max_array_depth) {
          return Error(absl::StrCat("array nesting of key '", key, "' is deeper than the limit of ",
                                    limits_.max_array_depth));
        }
        uint32_t element_type = 0;
        RETURN_IF_ERROR(ReadPod(&element_type, key));
        if (!IsKnownValueType(element_type)) {
          return Error(absl::StrCat("unknown array element type ", element_type, " for key '",
                                    key, "'"));
        }
        uint64_t count = 0;
        RETURN_IF_ERROR(ReadPod(&count, key));
        if (count > limits_.max_array_elements) {
          return Error(absl::StrCat("array length ", count, " of key '", key,
                                    "' exceeds the limit of ", limits_.max_array_elements));
        }
        const uint64_t min_size = MinEncodedSize(static_cast<ValueType>(element_type));
        if (count > Remaining() / min_size) {
          return Error(absl::StrCat("truncated file: array length ", count, " of key '", key,
                                    "' needs at least ", min_size, " bytes per element but only ",
                                    Remaining(), " bytes remain"));
        }
        out->element_type = static_cast<ValueType>(element_type);
        out->elements.resize(count);
        for (uint64_t i = 0; i < count; ++i) {
          RETURN_IF_ERROR(ReadValue(out->element_type, key, depth + 1, &out->elements[i]));
        }
        break;
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadAlignment() {
    const Value* v = file_.Find("general.alignment");
    if (!v) return absl::OkStatus();
    if (v->type != ValueType::kUint32) {
      return Error(absl::StrCat("general.alignment must be a uint32, not ", ValueTypeName(v->type)));
    }
    const uint64_t alignment = std::get<uint64_t>(v->scalar);
    if (!IsPowerOfTwo(alignment)) {
      return Error(absl::StrCat("general.alignment ", alignment,
                                " is invalid: it must be a nonzero power of two"));
    }
    file_.alignment_ = alignment;
    return absl::OkStatus();
  }

  absl::Status ReadTensorInfo(uint64_t index) {
    TensorInfo info;
    RETURN_IF_ERROR(ReadString(&info.name, absl::StrCat("tensor name #", index)));
    if (info.name.empty()) return Error(absl::StrCat("tensor #", index, " has an empty name"));
    if (file_.tensor_index_.count(info.name)) {
      return Error(absl::StrCat("duplicate tensor name '", info.name, "'"));
    }
    const std::string where = absl::StrCat("tensor '", info.name, "'");
    uint32_t n_dims = 0;
    RETURN_IF_ERROR(ReadU32(&n_dims, "tensor n_dims"));
    if (n_dims < 1 || n_dims > kMaxDims) {
      return Error(absl::StrCat(where, ": n_dims ", n_dims, " is out of range 1..", kMaxDims));
    }
    info.ne.resize(n_dims);
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t raw = 0;
      RETURN_IF_ERROR(ReadU64(&raw, "tensor dimension"));
      if (raw > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(absl::StrCat(where, ": dimension ne[", d, "] = ",
                                  static_cast<int64_t>(raw), " is negative"));
      }
      info.ne[d] = static_cast<int64_t>(raw);
      if (__builtin_mul_overflow(elements, info.ne[d], &elements)) {
        return Error(absl::StrCat(where, ": element count overflows (shape product too large)"));
      }
    }
    uint32_t type_id = 0;
    RETURN_IF_ERROR(ReadU32(&type_id, "tensor type"));
    const std::optional<DTypeTraits> traits = GetDTypeTraits(type_id);
    if (!traits) {
      const char* known = KnownUnsupportedTypeName(type_id);
      return Error(known ? absl::StrCat(where, ": tensor type ", type_id, " (", known,
                                        ") is not supported yet")
                         : absl::StrCat(where, ": unknown tensor type id ", type_id));
    }
    info.type = static_cast<DType>(type_id);
    if (info.ne[0] % traits->block_elements != 0) {
      return Error(absl::StrCat(where, ": ne[0] = ", info.ne[0], " is not a multiple of the ",
                                traits->name, " block size ", traits->block_elements));
    }
    // nbytes = (ne[0] / block) * block_bytes * (rows), each step checked.
    int64_t row_bytes = 0, nbytes = 0;
    if (__builtin_mul_overflow(info.ne[0] / traits->block_elements, traits->block_bytes, &row_bytes) ||
        __builtin_mul_overflow(row_bytes, info.ne[0] == 0 ? 0 : elements / info.ne[0], &nbytes)) {
      return Error(absl::StrCat(where, ": byte size overflows"));
    }
    if (info.ne[0] == 0) nbytes = 0;
    info.nbytes = static_cast<uint64_t>(nbytes);
    RETURN_IF_ERROR(ReadU64(&info.offset, "tensor offset"));
    file_.tensor_index_[info.name] = file_.tensors_.size();
    file_.tensors_.push_back(std::move(info));
    return absl::OkStatus();
  }

  // Checks offsets against the alignment, the data section and each other; sets data pointers.
  absl::Status PlaceTensors() {
    const uint64_t alignment = file_.alignment_;
    uint64_t data_start = pos_;
    if (data_start % alignment) data_start += alignment - data_start % alignment;
    const uint64_t data_size = data_start <= file_.size_ ? file_.size_ - data_start : 0;

    std::vector<size_t> order;
    for (size_t i = 0; i < file_.tensors_.size(); ++i) {
      TensorInfo& t = file_.tensors_[i];
      if (t.offset % alignment) {
        return Error(absl::StrCat("tensor '", t.name, "': offset ", t.offset,
                                  " is not a multiple of the alignment ", alignment));
      }
      if (t.offset > data_size || t.nbytes > data_size - t.offset) {
        if (t.offset > std::numeric_limits<uint64_t>::max() - t.nbytes) {
          return Error(absl::StrCat("tensor '", t.name, "': offset ", t.offset, " + size ",
                                    t.nbytes, " overflows"));
        }
        return Error(absl::StrCat("tensor '", t.name, "': data [", t.offset, ", ",
                                  t.offset + t.nbytes, ") lies outside the data section of ",
                                  data_size, " bytes (truncated file or bad offset)"));
      }
      t.data = file_.map_ + data_start + t.offset;
      if (t.nbytes > 0) order.push_back(i);
    }
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return file_.tensors_[a].offset < file_.tensors_[b].offset;
    });
    for (size_t k = 1; k < order.size(); ++k) {
      const TensorInfo& prev = file_.tensors_[order[k - 1]];
      const TensorInfo& cur = file_.tensors_[order[k]];
      if (prev.offset + prev.nbytes > cur.offset) {
        return Error(absl::StrCat("tensors '", prev.name, "' and '", cur.name, "' overlap"));
      }
    }
    return absl::OkStatus();
  }

  File& file_;
  const ReaderLimits& limits_;
  uint64_t pos_ = 0;
};

absl::StatusOr<std::unique_ptr<File>> File::Open(const std::string& path,
                                                 const ReaderLimits& limits) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = absl::StrCat(path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    if (err == EACCES) return absl::PermissionDeniedError(msg);
    return absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": stat failed: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<File> file(new File());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ == 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated file: it is empty"));
  }
  void* map = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
  }
  file->map_ = static_cast<const uint8_t*>(map);
  Parser parser(*file, limits);
  RETURN_IF_ERROR(parser.Parse());
  return file;
}

File::~File() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_);
}

const Value* File::Find(std::string_view key) const {
  auto it = kv_index_.find(absl::string_view(key.data(), key.size()));
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* File::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(absl::string_view(name.data(), name.size()));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace latentserve::gguf
