// KDA (gated delta rule) on the CPU: the token recurrence and the chunked (WY) form.
//
// State layout per head: S[v][k] (k fastest), i.e. the tensor [Dk (key), Dk (value), H].
// Chunked form for a chunk of C tokens with state S0 at its start, G_t = sum_{s<=t} g_s:
//   u_t = beta_t (v_t - S0^T (e^{G_t} * k_t) - sum_{j<t} A_tj u_j),  A_tj = k_t . (e^{G_t-G_j} * k_j)
//   o_t = S0^T (e^{G_t} * q_t) + sum_{j<=t} B_tj u_j,               B_tj = q_t . (e^{G_t-G_j} * k_j)
//   S_C = e^{G_C} * S0 + sum_j (e^{G_C-G_j} * k_j) u_j^T
// Every exponent is <= 0 (g < 0), so nothing overflows however long the chunk.
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace latentserve::kernels::cpu {
namespace {

struct HeadIo {
  const float *q, *k, *v, *g, *beta;  // token t of this head: q + t * stride, beta + t * beta_stride
  float* out;
  int64_t stride, beta_stride;
};

void RecurrentHead(const HeadIo& io, int64_t dk, int64_t tokens, float scale, float* state) {
  std::vector<float> decay(dk), u(dk);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* q = io.q + t * io.stride;
    const float* k = io.k + t * io.stride;
    const float* v = io.v + t * io.stride;
    const float* g = io.g + t * io.stride;
    const float beta = io.beta[t * io.beta_stride];
    for (int64_t c = 0; c < dk; ++c) decay[c] = std::exp(g[c]);
    float* o = io.out + t * io.stride;
    for (int64_t j = 0; j < dk; ++j) {  // value column j
      float* s = state + j * dk;
      for (int64_t c = 0; c < dk; ++c) s[c] *= decay[c];
      const float kv = Dot(s, k, dk);
      const float uj = beta * (v[j] - kv);
      Axpy(uj, k, s, dk);
      o[j] = Dot(s, q, dk) * scale;
    }
  }
}

// Largest |G| (summed log-decay within a chunk) for the factorised form: e^{60} ~ 1e26 keeps
// every product well inside f32's range.
constexpr float kMaxFactorisedDecay = 60.0f;

void ChunkedHead(const HeadIo& io, int64_t dk, int64_t tokens, int64_t chunk, float scale, float* state) {
  std::vector<float> cum(chunk * dk), kd(chunk * dk), qd(chunk * dk), u(chunk * dk);
  std::vector<float> a(chunk * chunk), b(chunk * chunk), tmp(dk), kinv(chunk * dk);
  for (int64_t c0 = 0; c0 < tokens; c0 += chunk) {
    const int64_t n = std::min(chunk, tokens - c0);
    auto K = [&](int64_t t) { return io.k + (c0 + t) * io.stride; };
    auto Q = [&](int64_t t) { return io.q + (c0 + t) * io.stride; };
    // Cumulative log-decay and decayed keys/queries relative to the chunk start.
    for (int64_t t = 0; t < n; ++t) {
      const float* g = io.g + (c0 + t) * io.stride;
      for (int64_t c = 0; c < dk; ++c) {
        cum[t * dk + c] = (t ? cum[(t - 1) * dk + c] : 0.0f) + g[c];
        const float e = std::exp(cum[t * dk + c]);
        kd[t * dk + c] = e * K(t)[c];
        qd[t * dk + c] = e * Q(t)[c] * scale;
      }
    }
    // Pairwise decayed products A (strictly lower) and B (lower incl. diagonal). When the
    // chunk's total decay is moderate, e^{G_t - G_j} factorises as e^{G_t} e^{-G_j} and the
    // products are plain dots of precomputed rows (no exp per pair); otherwise e^{-G_j} could
    // overflow, so each pair's exponent is taken whole.
    float deepest = 0;
    for (int64_t i = 0; i < n * dk; ++i) deepest = std::min(deepest, cum[i]);
    if (deepest > -kMaxFactorisedDecay) {
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < dk; ++c) kinv[j * dk + c] = K(j)[c] * std::exp(-cum[j * dk + c]);
      }
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = 0; j <= t; ++j) {
          a[t * chunk + j] = j < t ? Dot(kd.data() + t * dk, kinv.data() + j * dk, dk) : 0.0f;
          b[t * chunk + j] = Dot(qd.data() + t * dk, kinv.data() + j * dk, dk);
        }
      }
    } else {
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = 0; j <= t; ++j) {
          const float* kj = K(j);
          for (int64_t c = 0; c < dk; ++c) tmp[c] = std::exp(cum[t * dk + c] - cum[j * dk + c]) * kj[c];
          a[t * chunk + j] = j < t ? Dot(K(t), tmp.data(), dk) : 0.0f;
          b[t * chunk + j] = Dot(Q(t), tmp.data(), dk) * scale;
        }
      }
    }
    // u by forward substitution; then outputs. u[t] has one entry per value column.
    for (int64_t t = 0; t < n; ++t) {
      const float* v = io.v + (c0 + t) * io.stride;
      const float beta = io.beta[(c0 + t) * io.beta_stride];
      float* ut = u.data() + t * dk;
      for (int64_t j = 0; j < dk; ++j) ut[j] = v[j] - Dot(state + j * dk, kd.data() + t * dk, dk);
      for (int64_t s = 0; s < t; ++s) Axpy(-a[t * chunk + s], u.data() + s * dk, ut, dk);
      for (int64_t j = 0; j < dk; ++j) ut[j] *= beta;
    }
    for (int64_t t = 0; t < n; ++t) {
      float* o = io.out + (c0 + t) * io.stride;
      for (int64_t j = 0; j < dk; ++j) o[j] = Dot(state + j * dk, qd.data() + t * dk, dk);
      for (int64_t s = 0; s <= t; ++s) Axpy(b[t * chunk + s], u.data() + s * dk, o, dk);
    }
    // State at the end of the chunk.
    const float* last = cum.data() + (n - 1) * dk;
    for (int64_t c = 0; c < dk; ++c) tmp[c] = std::exp(last[c]);
    for (int64_t j = 0; j < dk; ++j) {
      float* s = state + j * dk;
      for (int64_t c = 0; c < dk; ++c) s[c] *= tmp[c];
    }
    std::vector<float> kdec(dk);
    for (int64_t t = 0; t < n; ++t) {
      const float* kt = K(t);
      for (int64_t c = 0; c < dk; ++c) kdec[c] = std::exp(last[c] - cum[t * dk + c]) * kt[c];
      const float* ut = u.data() + t * dk;
      for (int64_t j = 0; j < dk; ++j) Axpy(ut[j], kdec.data(), state + j * dk, dk);
    }
  }
}

}  // namespace

void CpuBackend::KdaAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& g,
                              const Tensor& beta, absl::Span<const SeqSlice> seqs,
                              absl::Span<const KdaStateView> states, int64_t chunk_tokens,
                              const Tensor& out) {
  const int64_t dk = q.ne[0], heads = q.ne[1];
  LS_CHECK(seqs.size() == states.size() && beta.ne[0] == heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
  const int64_t items = static_cast<int64_t>(seqs.size()) * heads;
  pool_.ParallelFor(items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / heads, h = item % heads;
      const int64_t first = seqs[s].first_token;
      const int64_t base = first * heads * dk + h * dk;
      HeadIo io{F32(q) + base, F32(k) + base, F32(v) + base, F32(g) + base,
                F32(beta) + first * heads + h, F32(out) + base, heads * dk, heads};
      float* state = F32(states[s].recurrent) + h * dk * dk;
      if (chunk_tokens > 0) {
        ChunkedHead(io, dk, seqs[s].token_count, chunk_tokens, scale, state);
      } else {
        RecurrentHead(io, dk, seqs[s].token_count, scale, state);
      }
    }
  });
}

}  // namespace latentserve::kernels::cpu
