#include "kernels/cpu/cpu_backend.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/simd.h"
#include "kernels/random_fill.h"

namespace latentserve::kernels::cpu {
namespace {

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t size) : size_(size) {
    data_ = static_cast<uint8_t*>(std::aligned_alloc(64, (size + 63) / 64 * 64 + 64));
  }
  ~HostBuffer() override { std::free(data_); }
  void* address() override { return data_; }
  size_t size() const override { return size_; }
  bool ok() const { return data_ != nullptr; }

 private:
  uint8_t* data_;
  size_t size_;
};

// Host memory owned elsewhere (an mmapped model file).
class ExternalBuffer final : public Buffer {
 public:
  ExternalBuffer(const void* data, size_t size) : data_(const_cast<void*>(data)), size_(size) {}
  void* address() override { return data_; }
  size_t size() const override { return size_; }

 private:
  void* data_;
  size_t size_;
};

absl::Status CheckShape(DType dtype, const Shape& ne) {
  for (int64_t d : ne) {
    if (d < 0) return absl::InvalidArgumentError("negative tensor dimension");
  }
  if (ne[0] % Traits(dtype).block_elements != 0) {
    return absl::InvalidArgumentError(absl::StrCat("row of ", ne[0], " is not a whole number of ",
                                                   DTypeName(dtype), " blocks"));
  }
  return absl::OkStatus();
}

inline float SigmoidF(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// One row of RmsNorm; AddRmsNorm runs the same code so that it equals Add + RmsNorm bitwise.
void RmsNormRow(const float* in, const float* weight, int64_t width, int64_t d, float eps, float* out) {
  double sum = 0;
  for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(in[i]) * in[i];
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / d) + eps);
  for (int64_t i = 0; i < d; ++i) out[i] = in[i] * scale * weight[i];
  if (out != in) std::memcpy(out + d, in + d, (width - d) * sizeof(float));
}

}  // namespace

void CheckFailed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "latentserve: internal check failed: %s (%s:%d)\n", what, file, line);
  std::abort();
}

CpuBackend::CpuBackend(int threads)
    : pool_(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {}

absl::StatusOr<Tensor> CpuBackend::Alloc(DType dtype, Shape ne) {
  if (auto s = CheckShape(dtype, ne); !s.ok()) return s;
  Tensor t;
  t.dtype = dtype;
  t.ne = ne;
  auto buffer = std::make_shared<HostBuffer>(std::max<size_t>(1, t.nbytes()));
  if (!buffer->ok()) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", t.nbytes(), " bytes"));
  }
  t.buffer = std::move(buffer);
  return t;
}

absl::StatusOr<Tensor> CpuBackend::ImportHost(DType dtype, Shape ne, const void* data) {
  if (auto s = CheckShape(dtype, ne); !s.ok()) return s;
  Tensor t;
  t.dtype = dtype;
  t.ne = ne;
  t.buffer = std::make_shared<ExternalBuffer>(data, t.nbytes());
  return t;
}

void CpuBackend::Upload(const void* host, size_t bytes, const Tensor& dst, size_t dst_offset) {
  LS_CHECK(dst_offset + bytes <= dst.nbytes());
  std::memcpy(HostPtr(dst) + dst_offset, host, bytes);
}

void CpuBackend::Download(const Tensor& src, void* host, size_t bytes, size_t src_offset) {
  LS_CHECK(src_offset + bytes <= src.nbytes());
  std::memcpy(host, HostPtr(src) + src_offset, bytes);
}

void CpuBackend::Zero(const Tensor& dst) { std::memset(HostPtr(dst), 0, dst.nbytes()); }

void CpuBackend::Copy(const Tensor& src, const Tensor& dst) {
  LS_CHECK(src.dtype == dst.dtype && src.nbytes() == dst.nbytes());
  std::memmove(HostPtr(dst), HostPtr(src), src.nbytes());
}

void CpuBackend::CopyColumns(const Tensor& src, int64_t src_col, const Tensor& dst, int64_t dst_col,
                             int64_t cols) {
  LS_CHECK(src.dtype == DType::kF32 && dst.dtype == DType::kF32 && src.rows() == dst.rows());
  LS_CHECK(src_col + cols <= src.ne[0] && dst_col + cols <= dst.ne[0]);
  for (int64_t r = 0; r < src.rows(); ++r) {
    std::memcpy(F32(dst) + r * dst.ne[0] + dst_col, F32(src) + r * src.ne[0] + src_col, cols * sizeof(float));
  }
}

void CpuBackend::FillRandom(const Tensor& dst, uint64_t seed, float mean, float scale) {
  const int64_t width = dst.ne[0];
  const size_t row_bytes = dst.row_bytes();
  pool_.ParallelFor(dst.rows(), 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint8_t* row = HostPtr(dst) + r * row_bytes;
      const uint64_t base = static_cast<uint64_t>(r * width);
      switch (dst.dtype) {
        case DType::kQ8_0: {
          auto* blocks = reinterpret_cast<BlockQ8_0*>(row);
          for (int64_t b = 0; b < width / 32; ++b) {
            blocks[b].d = FloatToHalf(scale / 127.0f);
            for (int i = 0; i < 32; ++i) blocks[b].qs[i] = static_cast<int8_t>(HashUniform(seed, base + b * 32 + i) * 127.0f);
          }
          break;
        }
        case DType::kQ4_0: {
          auto* blocks = reinterpret_cast<BlockQ4_0*>(row);
          for (int64_t b = 0; b < width / 32; ++b) {
            blocks[b].d = FloatToHalf(scale / 8.0f);
            for (int i = 0; i < 16; ++i) {
              const int lo = static_cast<int>((HashUniform(seed, base + b * 32 + i) + 1.0f) * 7.999f);
              const int hi = static_cast<int>((HashUniform(seed, base + b * 32 + 16 + i) + 1.0f) * 7.999f);
              blocks[b].qs[i] = static_cast<uint8_t>(lo | (hi << 4));
            }
          }
          break;
        }
        case DType::kI32:
          CheckFailed("FillRandom on i32", __FILE__, __LINE__);
        default: {
          std::vector<float> values(width);
          for (int64_t i = 0; i < width; ++i) values[i] = mean + scale * HashUniform(seed, base + i);
          QuantizeRow(dst.dtype, values.data(), row, width);
        }
      }
    }
  });
}

void CpuBackend::GetRows(const Tensor& table, const Tensor& ids, const Tensor& out) {
  const int64_t width = table.ne[0];
  const int64_t n = ids.elements();
  LS_CHECK(ids.dtype == DType::kI32 && out.dtype == DType::kF32);
  LS_CHECK(out.ne[0] == width && out.rows() == n);
  const auto* id = reinterpret_cast<const int32_t*>(HostPtr(ids));
  for (int64_t i = 0; i < n; ++i) {
    LS_CHECK(id[i] >= 0 && id[i] < table.rows());
    DequantizeRow(table.dtype, HostPtr(table) + id[i] * table.row_bytes(), F32(out) + i * width, width);
  }
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements();
  LS_CHECK(d <= width && x.elements() == y.elements() && w.dtype == DType::kF32);
  pool_.ParallelFor(x.rows(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) RmsNormRow(F32(x) + r * width, F32(w), width, d, eps, F32(y) + r * width);
  });
}

void CpuBackend::AddRmsNorm(const Tensor& x, const Tensor& a, const Tensor& w, float eps, const Tensor& y) {
  const int64_t width = x.ne[0], d = w.elements();
  LS_CHECK(d <= width && x.elements() == a.elements() && x.elements() == y.elements() && w.dtype == DType::kF32);
  pool_.ParallelFor(x.rows(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = F32(x) + r * width;
      const float* add = F32(a) + r * width;
      for (int64_t i = 0; i < width; ++i) row[i] = row[i] + add[i];
      RmsNormRow(row, F32(w), width, d, eps, F32(y) + r * width);
    }
  });
}

void CpuBackend::L2Norm(const Tensor& x, float eps, const Tensor& y) {
  const int64_t width = x.ne[0];
  LS_CHECK(x.elements() == y.elements());
  pool_.ParallelFor(x.rows(), 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* in = F32(x) + r * width;
      float* out = F32(y) + r * width;
      double sum = 0;
      for (int64_t i = 0; i < width; ++i) sum += static_cast<double>(in[i]) * in[i];
      const float scale = 1.0f / std::fmax(std::sqrt(static_cast<float>(sum)), eps);
      for (int64_t i = 0; i < width; ++i) out[i] = in[i] * scale;
    }
  });
}

void CpuBackend::Add(const Tensor& a, const Tensor& b, const Tensor& y) {
  LS_CHECK(a.elements() == b.elements() && a.elements() == y.elements());
  const float *pa = F32(a), *pb = F32(b);
  float* py = F32(y);
  for (int64_t i = 0, n = a.elements(); i < n; ++i) py[i] = pa[i] + pb[i];
}

void CpuBackend::Mul(const Tensor& a, const Tensor& b, const Tensor& y) {
  LS_CHECK(a.elements() == b.elements() && a.elements() == y.elements());
  const float *pa = F32(a), *pb = F32(b);
  float* py = F32(y);
  for (int64_t i = 0, n = a.elements(); i < n; ++i) py[i] = pa[i] * pb[i];
}

void CpuBackend::Sigmoid(const Tensor& x, const Tensor& y) {
  LS_CHECK(x.elements() == y.elements());
  const float* px = F32(x);
  float* py = F32(y);
  for (int64_t i = 0, n = x.elements(); i < n; ++i) py[i] = SigmoidF(px[i]);
}

void CpuBackend::SwiGlu(const Tensor& gate, const Tensor& up, const Tensor& y) {
  LS_CHECK(gate.elements() == up.elements() && gate.elements() == y.elements());
  const float *pg = F32(gate), *pu = F32(up);
  float* py = F32(y);
  pool_.ParallelFor(gate.elements(), 4096, [&](int64_t begin, int64_t end) {
    SiluMulRow(pg + begin, pu + begin, py + begin, end - begin);
  });
}

void CpuBackend::KdaGate(const Tensor& f, const Tensor& dt_bias, const Tensor& a, int64_t head_dim,
                         const Tensor& g) {
  const int64_t width = f.ne[0];
  LS_CHECK(dt_bias.elements() == width && a.elements() * head_dim == width);
  const float *pf = F32(f), *bias = F32(dt_bias), *pa = F32(a);
  float* pg = F32(g);
  pool_.ParallelFor(f.rows(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t c0 = 0; c0 < width; c0 += head_dim) {
        SoftplusRow(pf + t * width + c0, bias + c0, pa[c0 / head_dim], pg + t * width + c0, head_dim);
      }
    }
  });
}

void CpuBackend::ShortConvSilu(const Tensor& x, const Tensor& weight, int which,
                               absl::Span<const SeqSlice> seqs, absl::Span<const KdaStateView> states,
                               const Tensor& y) {
  const int64_t channels = x.ne[0], taps = weight.ne[0];
  LS_CHECK(weight.dtype == DType::kF32 && weight.rows() == channels && seqs.size() == states.size());
  const float* w = F32(weight);
  const float* in = F32(x);
  float* out = F32(y);
  for (size_t s = 0; s < seqs.size(); ++s) {
    float* tail = F32(states[s].conv) + which * channels * (taps - 1);  // [channels][taps - 1]
    const int64_t first = seqs[s].first_token, n = seqs[s].token_count;
    // Each thread takes a slice of channels through every token, row by row (vectors along
    // the channels): window [taps - 1 + n][slice] is the carried tail followed by the tokens.
    pool_.ParallelFor(channels, 64, [&](int64_t begin, int64_t end) {
      const int64_t width = end - begin;
      static thread_local std::vector<float> window, taps_by_channel;
      window.resize((taps - 1 + n) * width);
      taps_by_channel.resize(taps * width);
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t j = 0; j < taps - 1; ++j) window[j * width + c] = tail[(begin + c) * (taps - 1) + j];
        for (int64_t j = 0; j < taps; ++j) taps_by_channel[j * width + c] = w[(begin + c) * taps + j];
      }
      for (int64_t t = 0; t < n; ++t) {
        std::memcpy(window.data() + (taps - 1 + t) * width, in + (first + t) * channels + begin, width * sizeof(float));
      }
      for (int64_t t = 0; t < n; ++t) {
        float* dst = out + (first + t) * channels + begin;
        int64_t c = 0;
#if defined(__AVX2__) && defined(__FMA__)
        for (; c + 8 <= width; c += 8) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t j = 0; j < taps; ++j) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(taps_by_channel.data() + j * width + c),
                                  _mm256_loadu_ps(window.data() + (t + j) * width + c), acc);
          }
          const __m256 sigmoid = _mm256_div_ps(
              _mm256_set1_ps(1.0f),
              _mm256_add_ps(_mm256_set1_ps(1.0f), Exp8(_mm256_sub_ps(_mm256_setzero_ps(), acc))));
          _mm256_storeu_ps(dst + c, _mm256_mul_ps(acc, sigmoid));
        }
#endif
        for (; c < width; ++c) {
          float acc = 0;
          for (int64_t j = 0; j < taps; ++j) acc += taps_by_channel[j * width + c] * window[(t + j) * width + c];
          dst[c] = acc * SigmoidF(acc);
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        for (int64_t j = 0; j < taps - 1; ++j) tail[(begin + c) * (taps - 1) + j] = window[(n + j) * width + c];
      }
    });
  }
}

void CpuBackend::CopyPage(const Tensor& src_pool, int32_t src_page, const Tensor& dst_pool,
                          int32_t dst_page) {
  LS_CHECK(src_pool.dtype == dst_pool.dtype && src_pool.ne[0] == dst_pool.ne[0] &&
           src_pool.ne[1] == dst_pool.ne[1]);
  const size_t page_bytes = src_pool.row_bytes() * src_pool.ne[1];
  LS_CHECK(src_page >= 0 && src_page < src_pool.ne[2] && dst_page >= 0 && dst_page < dst_pool.ne[2]);
  std::memmove(HostPtr(dst_pool) + dst_page * page_bytes, HostPtr(src_pool) + src_page * page_bytes,
               page_bytes);
}

}  // namespace latentserve::kernels::cpu

namespace latentserve::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  if (options.kind == "cpu") return std::unique_ptr<Backend>(new cpu::CpuBackend(options.threads));
  if (options.kind == "cuda") return CreateCudaBackend(options);
  return absl::InvalidArgumentError(absl::StrCat("unknown backend '", options.kind, "' (cpu or cuda)"));
}

}  // namespace latentserve::kernels
