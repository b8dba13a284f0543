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
#include "kernels/cpu/simd.h"

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
    ExpRow(g, decay.data(), dk);
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

// kk = k_t . (e^{G_t - G_j} * k_j) and qk = q_t . (e^{G_t - G_j} * k_j), one exp per channel.
void DecayedPairDots(const float* cum_t, const float* cum_j, const float* kj, const float* kt, const float* qt,
                     int64_t dk, float* kk, float* qk) {
  int64_t c = 0;
  float sum_k = 0, sum_q = 0;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc_k = _mm256_setzero_ps(), acc_q = _mm256_setzero_ps();
  for (; c + 8 <= dk; c += 8) {
    const __m256 decayed = _mm256_mul_ps(
        Exp8(_mm256_sub_ps(_mm256_loadu_ps(cum_t + c), _mm256_loadu_ps(cum_j + c))), _mm256_loadu_ps(kj + c));
    acc_k = _mm256_fmadd_ps(_mm256_loadu_ps(kt + c), decayed, acc_k);
    acc_q = _mm256_fmadd_ps(_mm256_loadu_ps(qt + c), decayed, acc_q);
  }
  alignas(32) float lanes_k[8], lanes_q[8];
  _mm256_store_ps(lanes_k, acc_k);
  _mm256_store_ps(lanes_q, acc_q);
  for (int i = 0; i < 8; ++i) {
    sum_k += lanes_k[i];
    sum_q += lanes_q[i];
  }
#endif
  for (; c < dk; ++c) {
    const float decayed = std::exp(cum_t[c] - cum_j[c]) * kj[c];
    sum_k += kt[c] * decayed;
    sum_q += qt[c] * decayed;
  }
  *kk = sum_k;
  *qk = sum_q;
}

// Largest |G| (summed log-decay within a chunk) for the factorised form: e^{60} ~ 1e26 keeps
// every product well inside f32's range.
constexpr float kMaxFactorisedDecay = 60.0f;
// Keys per sub-block of the deep-decay form (pairs inside one take an exp each).
constexpr int64_t kPairBlock = 16;

void ChunkedHead(const HeadIo& io, int64_t dk, int64_t tokens, int64_t chunk, float scale, float* state) {
  // Per chunk of n <= chunk tokens, row-major; the products are GemmNN (simd.h) outer-product
  // blocks. kq [2n][dk]: rows 0..n-1 the decayed keys e^{G_t} * k_t, rows n..2n-1 the decayed
  // scaled queries; ab [2n][n]: rows 0..n-1 A, rows n..2n-1 B; from_state [2n][dk] likewise
  // S0^T applied to kq's rows.
  // Kept per thread across calls (~0.4 MB at dk 128: fresh pages every head cost faults).
  static thread_local std::vector<float> cum, kq, kinv_t, u, ab, from_state, from_chunk, u_t, kdec, state_t, update,
      tmp, e, pair_rows, pair_out;
  cum.resize(chunk * dk);
  kq.resize(2 * chunk * dk);
  kinv_t.resize(dk * chunk);
  u.resize(chunk * dk);
  ab.resize(2 * chunk * chunk);
  from_state.resize(2 * chunk * dk);
  from_chunk.resize(chunk * dk);
  u_t.resize(dk * chunk);   // [dk][n]: u^T
  kdec.resize(chunk * dk);  // [n][dk]
  state_t.resize(dk * dk);  // [k][v]
  update.resize(dk * dk);
  tmp.resize(dk);
  e.resize(dk);
  pair_rows.resize(2 * chunk * dk);
  pair_out.resize(2 * chunk * kPairBlock);
  for (int64_t c0 = 0; c0 < tokens; c0 += chunk) {
    const int64_t n = std::min(chunk, tokens - c0);
    auto K = [&](int64_t t) { return io.k + (c0 + t) * io.stride; };
    auto Q = [&](int64_t t) { return io.q + (c0 + t) * io.stride; };
    float* kd = kq.data();
    float* qd = kq.data() + n * dk;
    float* a = ab.data();
    float* b = ab.data() + n * n;
    // Cumulative log-decay and decayed keys/queries relative to the chunk start.
    for (int64_t t = 0; t < n; ++t) {
      const float* g = io.g + (c0 + t) * io.stride;
      for (int64_t c = 0; c < dk; ++c) cum[t * dk + c] = (t ? cum[(t - 1) * dk + c] : 0.0f) + g[c];
      ExpRow(cum.data() + t * dk, e.data(), dk);
      for (int64_t c = 0; c < dk; ++c) {
        kd[t * dk + c] = e[c] * K(t)[c];
        qd[t * dk + c] = e[c] * Q(t)[c] * scale;
      }
    }
    // Pairwise decayed products A (strictly lower) and B (lower incl. diagonal). When the
    // chunk's total decay is moderate, e^{G_t - G_j} factorises as e^{G_t} e^{-G_j} and the
    // products are one GEMM of precomputed rows (no exp per pair; the upper triangle is
    // computed and dropped); otherwise e^{-G_j} could overflow, so each pair's exponent is
    // taken whole.
    float deepest = 0;
    for (int64_t i = 0; i < n * dk; ++i) deepest = std::min(deepest, cum[i]);
    if (deepest > -kMaxFactorisedDecay) {
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < dk; ++c) tmp[c] = -cum[j * dk + c];
        ExpRow(tmp.data(), e.data(), dk);
        for (int64_t c = 0; c < dk; ++c) kinv_t[c * n + j] = K(j)[c] * e[c];
      }
      GemmNN(kq.data(), dk, kinv_t.data(), n, ab.data(), n, 2 * n, n, dk);
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t j = t; j < n; ++j) {
          a[t * n + j] = 0.0f;
          if (j > t) b[t * n + j] = 0.0f;
        }
      }
    } else {
      // Deep decay: keys in sub-blocks of kPairBlock. The keys j of sub-block [j0, j1) meet the
      // later tokens t >= j1 through the sub-block's last position r = j1 - 1, in one GEMM:
      // e^{G_t - G_j} = e^{G_t - G_r} e^{G_r - G_j}, both exponents <= 0 (nothing overflows; a
      // factor that underflows bounds the product as small). Pairs within a sub-block take each
      // exponent whole.
      for (int64_t j0 = 0; j0 < n; j0 += kPairBlock) {
        const int64_t j1 = std::min(n, j0 + kPairBlock), width = j1 - j0, later = n - j1;
        for (int64_t t = j0; t < j1; ++t) {
          for (int64_t j = j0; j <= t; ++j) {
            float kk, qk;
            DecayedPairDots(cum.data() + t * dk, cum.data() + j * dk, K(j), K(t), Q(t), dk, &kk, &qk);
            a[t * n + j] = j < t ? kk : 0.0f;
            b[t * n + j] = qk * scale;
          }
        }
        if (later == 0) continue;
        const float* ref = cum.data() + (j1 - 1) * dk;
        for (int64_t j = j0; j < j1; ++j) {
          for (int64_t c = 0; c < dk; ++c) tmp[c] = ref[c] - cum[j * dk + c];
          ExpRow(tmp.data(), e.data(), dk);
          for (int64_t c = 0; c < dk; ++c) kinv_t[c * width + (j - j0)] = K(j)[c] * e[c];
        }
        for (int64_t t = j1; t < n; ++t) {  // rows 0..later-1: keys, later..: scaled queries
          for (int64_t c = 0; c < dk; ++c) tmp[c] = cum[t * dk + c] - ref[c];
          ExpRow(tmp.data(), e.data(), dk);
          for (int64_t c = 0; c < dk; ++c) {
            pair_rows[(t - j1) * dk + c] = e[c] * K(t)[c];
            pair_rows[(later + t - j1) * dk + c] = e[c] * Q(t)[c] * scale;
          }
        }
        GemmNN(pair_rows.data(), dk, kinv_t.data(), width, pair_out.data(), width, 2 * later, width, dk);
        for (int64_t t = j1; t < n; ++t) {
          for (int64_t jj = 0; jj < width; ++jj) {
            a[t * n + j0 + jj] = pair_out[(t - j1) * width + jj];
            b[t * n + j0 + jj] = pair_out[(later + t - j1) * width + jj];
          }
        }
      }
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = t + 1; j < n; ++j) a[t * n + j] = b[t * n + j] = 0.0f;
    }
    // from_state[t][j] = S0^T (e^{G_t} * k_t) (rows 0..n-1) and S0^T (e^{G_t} * q_t) (rows n..).
    for (int64_t j = 0; j < dk; ++j)
      for (int64_t c = 0; c < dk; ++c) state_t[c * dk + j] = state[j * dk + c];
    GemmNN(kq.data(), dk, state_t.data(), dk, from_state.data(), dk, 2 * n, dk, dk);
    // u by forward substitution (one entry per value column j).
    for (int64_t t = 0; t < n; ++t) {
      const float* v = io.v + (c0 + t) * io.stride;
      const float beta = io.beta[(c0 + t) * io.beta_stride];
      float* ut = u.data() + t * dk;
      for (int64_t j = 0; j < dk; ++j) ut[j] = v[j] - from_state[t * dk + j];
      for (int64_t s = 0; s < t; ++s) Axpy(-a[t * n + s], u.data() + s * dk, ut, dk);
      for (int64_t j = 0; j < dk; ++j) ut[j] *= beta;
    }
    // Outputs: S0^T (e^{G_t} * q_t) + sum_s B_ts u_s.
    GemmNN(b, n, u.data(), dk, from_chunk.data(), dk, n, dk, n);
    for (int64_t t = 0; t < n; ++t) {
      float* o = io.out + (c0 + t) * io.stride;
      for (int64_t j = 0; j < dk; ++j) o[j] = from_state[(n + t) * dk + j] + from_chunk[t * dk + j];
    }
    // State at the end of the chunk: e^{G_C} * S0 + sum_t (e^{G_C - G_t} * k_t) u_t^T, i.e.
    // update[j][c] = sum_t u[t][j] kdec[t][c].
    const float* last = cum.data() + (n - 1) * dk;
    for (int64_t t = 0; t < n; ++t) {
      const float* kt = K(t);
      for (int64_t c = 0; c < dk; ++c) tmp[c] = last[c] - cum[t * dk + c];
      ExpRow(tmp.data(), e.data(), dk);
      for (int64_t c = 0; c < dk; ++c) kdec[t * dk + c] = e[c] * kt[c];
      for (int64_t j = 0; j < dk; ++j) u_t[j * n + t] = u[t * dk + j];
    }
    GemmNN(u_t.data(), n, kdec.data(), dk, update.data(), dk, dk, dk, n);
    ExpRow(last, tmp.data(), dk);
    for (int64_t j = 0; j < dk; ++j) {
      float* s = state + j * dk;
      for (int64_t c = 0; c < dk; ++c) s[c] = s[c] * tmp[c] + update[j * dk + c];
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
    ScopedFlushDenormals flush_denormals;
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
