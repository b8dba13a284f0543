// MoE on the CPU: sigmoid routing with a selection bias, and experts computed grouped by
// expert (each expert's weights are read once per batch, for all tokens routed to it).
// q8_0 / q4_0 / K-quant experts run on quantised activations (quant_dot.h) for every token count.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/simd.h"

namespace latentserve::kernels::cpu {

void CpuBackend::MoeRoute(const Tensor& logits, const Tensor& bias, int64_t top_k, bool normalize,
                          float scale, const Tensor& ids, const Tensor& weights) {
  const int64_t experts = logits.ne[0], tokens = logits.rows();
  LS_CHECK(bias.elements() == experts && ids.ne[0] == top_k && weights.ne[0] == top_k && top_k <= experts);
  auto* out_ids = reinterpret_cast<int32_t*>(HostPtr(ids));
  float* out_w = F32(weights);
  std::vector<float> probs(experts), selection(experts);
  std::vector<int32_t> order(experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = F32(logits) + t * experts;
    for (int64_t e = 0; e < experts; ++e) {
      probs[e] = 1.0f / (1.0f + std::exp(-l[e]));
      selection[e] = probs[e] + F32(bias)[e];
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + top_k, order.end(), [&](int32_t a, int32_t b) {
      return selection[a] > selection[b] || (selection[a] == selection[b] && a < b);
    });
    float sum = 0;
    for (int64_t j = 0; j < top_k; ++j) sum += probs[order[j]];
    const float norm = normalize ? 1.0f / std::max(sum, 6.103515625e-5f) : 1.0f;
    for (int64_t j = 0; j < top_k; ++j) {
      out_ids[t * top_k + j] = order[j];
      out_w[t * top_k + j] = probs[order[j]] * norm * scale;
    }
  }
}

void CpuBackend::QuantExperts(const Tensor& x, const MoeWeights& experts,
                              const std::vector<std::vector<int64_t>>& routed, int64_t top_k, float* slot_out) {
  const int64_t hidden = x.ne[0], tokens = x.rows();
  const int64_t ffn = experts.gate_exps.ne[1], n_experts = experts.gate_exps.ne[2];
  const int64_t hidden_blocks = hidden / kQ8Block;
  // Each token is quantised once, whichever experts it goes to.
  Q8Activations xq;
  xq.Resize(hidden, tokens);
  pool_.ParallelFor(tokens, 16, [&](int64_t begin, int64_t end) {
    QuantizeActivations(experts.gate_exps.dtype, F32(x) + begin * hidden, hidden, hidden, end - begin, xq.col_qs(begin),
                        xq.col_d(begin));
  });
  // Work items: up to kTokenBlock tokens of one expert, largest first, taken by whichever
  // thread is free (experts get very different token counts). An item's result does not
  // depend on the thread that computes it.
  constexpr int64_t kTokenBlock = 256, kRows = 16;
  struct Item {
    int64_t expert, first, count;
  };
  std::vector<Item> items;
  for (int64_t e = 0; e < n_experts; ++e) {
    for (int64_t i = 0; i < static_cast<int64_t>(routed[e].size()); i += kTokenBlock) {
      items.push_back({e, i, std::min<int64_t>(kTokenBlock, routed[e].size() - i)});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.count > b.count; });
  const size_t gate_row = experts.gate_exps.row_bytes(), up_row = experts.up_exps.row_bytes();
  const size_t down_row = experts.down_exps.row_bytes();
  int64_t most = 0;
  for (const Item& item : items) most = std::max(most, item.count);
  std::atomic<int64_t> next{0};
  pool_.ParallelFor(pool_.size(), 1, [&](int64_t, int64_t) {
    // Scratch kept per thread across calls: decode calls this for one token per layer.
    static thread_local QuantPanel panel;
    static thread_local Q8Activations xs, acts;
    static thread_local KQuantColumns columns;
    static thread_local std::vector<float> gate_out, act, down_out;
    xs.Resize(hidden, most);
    acts.Resize(ffn, most);
    gate_out.resize(most * ffn);
    act.resize(most * ffn);
    down_out.resize(most * hidden);
    for (int64_t it = next++; it < static_cast<int64_t>(items.size()); it = next++) {
      const Item& item = items[it];
      const int64_t* slots = routed[item.expert].data() + item.first;
      const uint8_t* gate = HostPtr(experts.gate_exps) + item.expert * ffn * gate_row;
      const uint8_t* up = HostPtr(experts.up_exps) + item.expert * ffn * up_row;
      const uint8_t* down = HostPtr(experts.down_exps) + item.expert * hidden * down_row;
      for (int64_t i = 0; i < item.count; ++i) {
        const int64_t t = slots[i] / top_k;
        std::copy_n(xq.col_qs(t), hidden, xs.col_qs(i));
        std::copy_n(xq.col_d(t), hidden_blocks, xs.col_d(i));
      }
      // K-quant matmuls block their rows themselves; their columns' sums are derived once for
      // gate and up together.
      const bool kquant_gate = IsKQuant(experts.gate_exps.dtype), kquant_down = IsKQuant(experts.down_exps.dtype);
      if (kquant_gate) PrepareKQuantColumns(xs.qs.data(), xs.d.data(), hidden, item.count, columns);
      const int64_t gate_step = kquant_gate ? ffn : kRows;
      const int64_t down_step = kquant_down ? hidden : kRows;
      for (int64_t f0 = 0; f0 < ffn; f0 += gate_step) {
        const int64_t rows = std::min(gate_step, ffn - f0);
        if (kquant_gate) {
          KQuantMatMul(experts.gate_exps.dtype, gate + f0 * gate_row, gate_row, rows, hidden, xs.qs.data(),
                       xs.d.data(), item.count, gate_out.data() + f0, 1, ffn, &columns);
          KQuantMatMul(experts.up_exps.dtype, up + f0 * up_row, up_row, rows, hidden, xs.qs.data(), xs.d.data(),
                       item.count, act.data() + f0, 1, ffn, &columns);
          continue;
        }
        QuantMatMul(experts.gate_exps.dtype, gate + f0 * gate_row, gate_row, rows, hidden, xs.qs.data(), xs.d.data(),
                    item.count, gate_out.data() + f0, 1, ffn, panel);
        QuantMatMul(experts.up_exps.dtype, up + f0 * up_row, up_row, rows, hidden, xs.qs.data(), xs.d.data(),
                    item.count, act.data() + f0, 1, ffn, panel);
      }
      SiluMulRow(gate_out.data(), act.data(), act.data(), item.count * ffn);
      QuantizeActivations(experts.down_exps.dtype, act.data(), ffn, ffn, item.count, acts.qs.data(), acts.d.data());
      for (int64_t d0 = 0; d0 < hidden; d0 += down_step) {
        const int64_t rows = std::min(down_step, hidden - d0);
        QuantMatMul(experts.down_exps.dtype, down + d0 * down_row, down_row, rows, ffn, acts.qs.data(),
                    acts.d.data(), item.count, down_out.data() + d0, 1, hidden, panel);
      }
      for (int64_t i = 0; i < item.count; ++i) {
        std::copy_n(down_out.data() + i * hidden, hidden, slot_out + slots[i] * hidden);
      }
    }
  });
}

void CpuBackend::MoeExperts(const Tensor& x, const MoeWeights& experts, const Tensor& ids,
                            const Tensor& weights, const Tensor& y) {
  const int64_t hidden = x.ne[0], tokens = x.rows();
  const int64_t ffn = experts.gate_exps.ne[1], n_experts = experts.gate_exps.ne[2];
  const int64_t top_k = ids.ne[0];
  LS_CHECK(experts.gate_exps.ne[0] == hidden && experts.down_exps.ne[0] == ffn &&
           experts.down_exps.ne[1] == hidden && y.ne[0] == hidden && y.rows() == tokens);
  const auto* id = reinterpret_cast<const int32_t*>(HostPtr(ids));
  // Slots (t, j) routed to each expert.
  std::vector<std::vector<int64_t>> routed(n_experts);
  for (int64_t slot = 0; slot < tokens * top_k; ++slot) {
    LS_CHECK(id[slot] >= 0 && id[slot] < n_experts);
    routed[id[slot]].push_back(slot);
  }
  struct Item {
    int64_t expert, first, count;
  };
  constexpr int64_t kTokenBlock = 64;
  std::vector<Item> items;
  for (int64_t e = 0; e < n_experts; ++e) {
    for (int64_t i = 0; i < static_cast<int64_t>(routed[e].size()); i += kTokenBlock) {
      items.push_back({e, i, std::min<int64_t>(kTokenBlock, routed[e].size() - i)});
    }
  }
  // Kept across calls (a prefill chunk's is megabytes; fresh pages each call cost faults).
  static thread_local std::vector<float> caller_slot_out;
  std::vector<float>& slot_out = caller_slot_out;
  slot_out.resize(tokens * top_k * hidden);
  const size_t gate_row = experts.gate_exps.row_bytes(), up_row = experts.up_exps.row_bytes();
  const size_t down_row = experts.down_exps.row_bytes();
  if (UsesQ8Activations(experts.gate_exps.dtype) && experts.up_exps.dtype == experts.gate_exps.dtype &&
      UsesQ8Activations(experts.down_exps.dtype)) {
    QuantExperts(x, experts, routed, top_k, slot_out.data());
  } else {
    pool_.ParallelFor(static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      constexpr int64_t kRows = 16;
      std::vector<float> act(kTokenBlock * ffn), gate_out(kTokenBlock * ffn), xs(kTokenBlock * hidden);
      std::vector<float> down_out(kTokenBlock * hidden), wblock(kRows * std::max(hidden, ffn));
      for (int64_t it = begin; it < end; ++it) {
        const Item& item = items[it];
        const int64_t* slots = routed[item.expert].data() + item.first;
        const uint8_t* gate = HostPtr(experts.gate_exps) + item.expert * ffn * gate_row;
        const uint8_t* up = HostPtr(experts.up_exps) + item.expert * ffn * up_row;
        const uint8_t* down = HostPtr(experts.down_exps) + item.expert * hidden * down_row;
        if (item.count <= 2) {  // decode: dot products on the stored rows, each read once
          for (int64_t f = 0; f < ffn; ++f) {
            for (int64_t i = 0; i < item.count; ++i) {
              const float* xt = F32(x) + (slots[i] / top_k) * hidden;
              const float g = RowDot(experts.gate_exps.dtype, gate + f * gate_row, xt, hidden);
              const float u = RowDot(experts.up_exps.dtype, up + f * up_row, xt, hidden);
              act[i * ffn + f] = g / (1.0f + std::exp(-g)) * u;
            }
          }
          for (int64_t d = 0; d < hidden; ++d) {
            for (int64_t i = 0; i < item.count; ++i) {
              slot_out[slots[i] * hidden + d] = RowDot(experts.down_exps.dtype, down + d * down_row, act.data() + i * ffn, ffn);
            }
          }
          continue;
        }
        // Prefill: gather the tokens, then register-blocked tiles over dequantised row blocks.
        for (int64_t i = 0; i < item.count; ++i) {
          std::copy_n(F32(x) + (slots[i] / top_k) * hidden, hidden, xs.data() + i * hidden);
        }
        for (int64_t f0 = 0; f0 < ffn; f0 += kRows) {
          const int64_t rows = std::min(kRows, ffn - f0);
          for (int64_t r = 0; r < rows; ++r) {
            DequantizeRowFast(experts.gate_exps.dtype, gate + (f0 + r) * gate_row, wblock.data() + r * hidden, hidden);
          }
          GemmTile(wblock.data(), rows, hidden, xs.data(), hidden, item.count, gate_out.data() + f0, 1, ffn);
          for (int64_t r = 0; r < rows; ++r) {
            DequantizeRowFast(experts.up_exps.dtype, up + (f0 + r) * up_row, wblock.data() + r * hidden, hidden);
          }
          GemmTile(wblock.data(), rows, hidden, xs.data(), hidden, item.count, act.data() + f0, 1, ffn);
        }
        for (int64_t i = 0; i < item.count * ffn; ++i) {
          const float g = gate_out[i];
          act[i] = g / (1.0f + std::exp(-g)) * act[i];
        }
        for (int64_t d0 = 0; d0 < hidden; d0 += kRows) {
          const int64_t rows = std::min(kRows, hidden - d0);
          for (int64_t r = 0; r < rows; ++r) {
            DequantizeRowFast(experts.down_exps.dtype, down + (d0 + r) * down_row, wblock.data() + r * ffn, ffn);
          }
          GemmTile(wblock.data(), rows, ffn, act.data(), ffn, item.count, down_out.data() + d0, 1, hidden);
        }
        for (int64_t i = 0; i < item.count; ++i) {
          std::copy_n(down_out.data() + i * hidden, hidden, slot_out.data() + slots[i] * hidden);
        }
      }
    });
  }
  // Weighted sum in slot order, so the result does not depend on the thread schedule.
  const float* w = F32(weights);
  float* out = F32(y);
  for (int64_t t = 0; t < tokens; ++t) {
    float* yt = out + t * hidden;
    std::fill(yt, yt + hidden, 0.0f);
    for (int64_t j = 0; j < top_k; ++j) Axpy(w[t * top_k + j], slot_out.data() + (t * top_k + j) * hidden, yt, hidden);
  }
}

}  // namespace latentserve::kernels::cpu
