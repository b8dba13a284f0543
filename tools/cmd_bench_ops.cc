// latentserve bench-ops: measured ceilings (device copy bandwidth, bf16 GEMM rate) and per-op
// times at the real model's shapes (hidden 2304, 32 heads, Dk 128, latent 576, 256 experts
// top-8, q4_0 weights), each as a fraction of the ceiling that bounds it. Timing: host clock
// around Synchronize(), after warm-up, median of repeats. One JSON line per row on stdout.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/args.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "tools/cli.h"

namespace latentserve::cli {
namespace {

using kernels::Backend;
using kernels::Tensor;

double MedianSeconds(Backend& b, int repeats, const std::function<void()>& op) {
  op();
  b.Synchronize();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    op();
    b.Synchronize();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

absl::StatusOr<Tensor> Random(Backend& b, DType type, kernels::Shape ne, float mean = 0, float scale = 1) {
  ASSIGN_OR_RETURN(Tensor t, b.Alloc(type, ne));
  static uint64_t seed = 1;
  b.FillRandom(t, seed++, mean, scale);
  return t;
}

// A comma-separated flag whose items must each be one of `allowed` (a misspelt kernel or section
// is an error, not a silently skipped row).
absl::StatusOr<std::vector<std::string>> NameList(const Args& args, const std::string& flag, const std::string& fallback,
                                                  const std::vector<absl::string_view>& allowed) {
  std::vector<std::string> names = absl::StrSplit(args.Get(flag, fallback), ',', absl::SkipEmpty());
  for (const std::string& name : names) {
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": unknown name '", name, "' (", absl::StrJoin(allowed, ", "), ")"));
    }
  }
  return names;
}

struct Row {
  std::string op, shape, bound;
  double seconds, fraction;
};

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, {"backend", "threads", "repeats", "context", "prefill-tokens",
                                                      "mha-contexts", "moe-kernels", "mla-kernels", "sections", "ops"}));
  kernels::BackendOptions options;
  options.kind = args.Get("backend", "cuda");
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  options.threads = static_cast<int>(threads);
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, kernels::CreateBackend(options));
  Backend& b = *backend;
  ASSIGN_OR_RETURN(int64_t repeats, args.GetInt("repeats", 10));
  ASSIGN_OR_RETURN(int64_t context, args.GetInt("context", 131072));
  ASSIGN_OR_RETURN(int64_t prefill, args.GetInt("prefill-tokens", 8192));
  // Names of LATENTSERVE_CUDA_MOE_TILE; the backend takes any other name as its default kernel,
  // so a misspelt one would time the default under that name.
  ASSIGN_OR_RETURN(const std::vector<std::string> moe_kernels,
                   NameList(args, "moe-kernels", "warps8,warps4", {"warps8", "warps4", "wgmma", "predequant"}));
  ASSIGN_OR_RETURN(const std::vector<std::string> mla_kernels,
                   NameList(args, "mla-kernels", "mma,tma_base,tma,absorbed", {"mma", "tma", "tma_base", "absorbed"}));
  ASSIGN_OR_RETURN(const std::vector<std::string> sections,
                   NameList(args, "sections", "handoff,decode,moe,kda,mla,mha",
                            {"handoff", "decode", "moe", "kda", "mla", "mha"}));
  auto has = [](const std::vector<std::string>& list, absl::string_view name) {
    return std::find(list.begin(), list.end(), name) != list.end();
  };
  auto wants = [&](absl::string_view section) { return has(sections, section); };
  auto wants_mla = [&](absl::string_view kernel) { return has(mla_kernels, kernel); };
  const bool cpu = options.kind == "cpu";
  const int64_t E = 2304, H = 32, Dk = 128, Di = H * Dk, R = 512, L = 576, X = 256, K = 8, Fe = 1024;
  std::vector<Row> rows;

  // Ceiling 1: device copy bandwidth (bytes read + written).
  const int64_t copy_elems = cpu ? (int64_t{64} << 20) : (int64_t{512} << 20);
  ASSIGN_OR_RETURN(Tensor src, Random(b, DType::kF32, {copy_elems, 1, 1, 1}));
  ASSIGN_OR_RETURN(Tensor dst, b.Alloc(DType::kF32, {copy_elems, 1, 1, 1}));
  const double copy_s = MedianSeconds(b, static_cast<int>(repeats), [&] { b.Copy(src, dst); });
  const double bandwidth = 2.0 * copy_elems * 4 / copy_s;
  rows.push_back({"copy", std::to_string(copy_elems * 4 >> 20) + " MiB", "ceiling", copy_s, 1.0});
  src = {};
  dst = {};
  // Ceiling 2: a large bf16 GEMM (includes casting the f32 activations to bf16).
  const int64_t g = cpu ? 1024 : 8192;
  ASSIGN_OR_RETURN(Tensor gw, Random(b, DType::kBF16, {g, g, 1, 1}, 0, 0.02f));
  ASSIGN_OR_RETURN(Tensor gx, Random(b, DType::kF32, {g, g, 1, 1}));
  ASSIGN_OR_RETURN(Tensor gy, b.Alloc(DType::kF32, {g, g, 1, 1}));
  const double gemm_s = MedianSeconds(b, static_cast<int>(repeats), [&] { b.MatMul(gw, gx, gy); });
  const double flops_rate = 2.0 * g * g * g / gemm_s;
  rows.push_back({"gemm_bf16", std::to_string(g) + "^3", "ceiling", gemm_s, 1.0});
  std::printf("{\"backend\":\"%s\",\"copy_GBps\":%.1f,\"bf16_TFLOPs\":%.1f}\n", b.name().c_str(), bandwidth / 1e9,
              flops_rate / 1e12);
  // Each row goes out as it is measured, so a failing op still leaves the rows before it.
  auto print_row = [](const Row& r) {
    std::printf("{\"op\":\"%s\",\"shape\":\"%s\",\"bound\":\"%s\",\"ms\":%.4f,\"fraction_of_ceiling\":%.4f}\n",
                r.op.c_str(), r.shape.c_str(), r.bound.c_str(), r.seconds * 1e3, r.fraction);
    std::fflush(stdout);
  };
  print_row(rows[0]);
  print_row(rows[1]);
  gw = gx = gy = {};

  // --ops: only the rows whose names contain one of these (a profiler attached to one product).
  const std::vector<std::string> op_filter = absl::StrSplit(args.Get("ops", ""), ',', absl::SkipEmpty());
  auto wants_op = [&](const std::string& op) {
    return op_filter.empty() || std::any_of(op_filter.begin(), op_filter.end(),
                                            [&](const std::string& part) { return absl::StrContains(op, part); });
  };
  auto memory_row = [&](const std::string& op, const std::string& shape, double bytes, const std::function<void()>& fn) {
    if (!wants_op(op)) return;
    const double s = MedianSeconds(b, static_cast<int>(repeats), fn);
    rows.push_back({op, shape, "memory", s, bytes / s / bandwidth});
    print_row(rows.back());
  };
  auto compute_row = [&](const std::string& op, const std::string& shape, double flops, const std::function<void()>& fn) {
    if (!wants_op(op)) return;
    const double s = MedianSeconds(b, static_cast<int>(repeats), fn);
    rows.push_back({op, shape, "compute", s, flops / s / flops_rate});
    print_row(rows.back());
  };

  // A handoff chunk's device copy (CUDA IPC moves these): prefill tokens of f16 latent rows in
  // 64-token page runs into shuffled pages of another pool, batched (one kernel) and one copy
  // call per run (the path before it). Bytes read + written.
  if (wants("handoff")) {
    const int64_t page = 64, pages = prefill / page, row_bytes = L * 2;
    ASSIGN_OR_RETURN(Tensor from, Random(b, DType::kF16, {L, page, pages, 1}, 0, 1.0f));
    ASSIGN_OR_RETURN(Tensor to, b.Alloc(DType::kF16, {L, page, 4 * pages, 1}));
    std::vector<Backend::CopyRun> runs;
    for (int64_t i = 0; i < pages; ++i) {
      const int64_t target = (i * 7919) % (4 * pages);  // scattered destination pages
      runs.push_back({static_cast<size_t>(i * page * row_bytes), static_cast<size_t>(target * page * row_bytes),
                      static_cast<size_t>(page * row_bytes)});
    }
    const std::string shape = std::to_string(prefill) + " rows in " + std::to_string(page) + "-row runs";
    const double bytes = 2.0 * prefill * row_bytes;
    memory_row("handoff_copy_runs_batched", shape, bytes, [&] { b.CopyRunsToBackend(from, b, to, runs, nullptr); });
    memory_row("handoff_copy_runs_per_call", shape, bytes, [&] {
      for (const auto& r : runs) b.CopyToBackend(from, r.src_offset, b, to, r.dst_offset, r.bytes);
    });
  }

  // Decode (one token): weight-streaming GEMVs.
  if (wants("decode")) for (auto [n_out, k_in, name] : {std::tuple<int64_t, int64_t, const char*>{Di, E, "kda_qkv_proj"}, {E, Di, "o_proj"},
                                   {163840, E, "lm_head"}}) {
    ASSIGN_OR_RETURN(Tensor w, Random(b, DType::kQ4_0, {k_in, n_out, 1, 1}, 0, 0.05f));
    ASSIGN_OR_RETURN(Tensor x, Random(b, DType::kF32, {k_in, 1, 1, 1}));
    ASSIGN_OR_RETURN(Tensor y, b.Alloc(DType::kF32, {n_out, 1, 1, 1}));
    memory_row(std::string("decode_gemv_q4_0_") + name, std::to_string(k_in) + "x" + std::to_string(n_out),
               static_cast<double>(w.nbytes()), [&] { b.MatMul(w, x, y); });
    // The same product on x rounded once beforehand (a decode step shares that pass among
    // the projections of one normalised input); only where the backend rounds once.
    ASSIGN_OR_RETURN(Tensor x_rounded, b.RoundActivations(x));
    if (x_rounded.defined()) {
      memory_row(std::string("decode_gemv_q4_0_") + name + "_rounded",
                 std::to_string(k_in) + "x" + std::to_string(n_out), static_cast<double>(w.nbytes()),
                 [&] { b.MatMul(w, x, x_rounded, y); });
      memory_row(std::string("decode_gemv_q4_0_") + name + "_round_then_gemv",
                 std::to_string(k_in) + "x" + std::to_string(n_out), static_cast<double>(w.nbytes()), [&] {
                   absl::StatusOr<Tensor> again = b.RoundActivations(x);
                   if (again.ok()) b.MatMul(w, x, *again, y);
                 });
    }
    // A batched decode step's widths: the weight bytes once per product are its floor.
    if (!cpu) {
      for (int64_t cols : {int64_t{16}, int64_t{32}, int64_t{64}}) {
        ASSIGN_OR_RETURN(Tensor xb, Random(b, DType::kF32, {k_in, cols, 1, 1}));
        ASSIGN_OR_RETURN(Tensor yb, b.Alloc(DType::kF32, {n_out, cols, 1, 1}));
        const std::string row = std::string("batched_gemm_q4_0_") + name + "_m" + std::to_string(cols);
        const std::string shape = std::to_string(k_in) + "x" + std::to_string(n_out) + "x" + std::to_string(cols);
        memory_row(row, shape, static_cast<double>(w.nbytes()), [&] { b.MatMul(w, xb, yb); });
        // 20 products recorded in one graph, as a step holds them: no launch or host time between.
        if (b.CanCapture()) {
          constexpr int kCalls = 20;
          RETURN_IF_ERROR(b.BeginCapture());
          for (int i = 0; i < kCalls; ++i) b.MatMul(w, xb, yb);
          ASSIGN_OR_RETURN(std::unique_ptr<Backend::Graph> graph, b.EndCapture());
          absl::Status status;
          memory_row(row + "_in_graph", shape + " x 20", kCalls * static_cast<double>(w.nbytes()),
                     [&] { status.Update(b.Replay(*graph)); });
          RETURN_IF_ERROR(status);
        }
      }
    }
    if (!cpu) {
      ASSIGN_OR_RETURN(Tensor xp, Random(b, DType::kF32, {k_in, prefill, 1, 1}));
      ASSIGN_OR_RETURN(Tensor yp, b.Alloc(DType::kF32, {n_out, prefill, 1, 1}));
      compute_row(std::string("prefill_gemm_q4_0_") + name,
                  std::to_string(k_in) + "x" + std::to_string(n_out) + "x" + std::to_string(prefill),
                  2.0 * k_in * n_out * prefill, [&] { b.MatMul(w, xp, yp); });
    }
  }

  // MoE: routing + 8 routed experts of 256 (q4_0), decode and prefill.
  if (wants("moe")) {
    ASSIGN_OR_RETURN(Tensor router, Random(b, DType::kF32, {E, X, 1, 1}, 0, 0.05f));
    ASSIGN_OR_RETURN(Tensor bias, Random(b, DType::kF32, {X, 1, 1, 1}, 0, 0.01f));
    kernels::MoeWeights experts;
    ASSIGN_OR_RETURN(experts.gate_exps, Random(b, DType::kQ4_0, {E, Fe, X, 1}, 0, 0.05f));
    ASSIGN_OR_RETURN(experts.up_exps, Random(b, DType::kQ4_0, {E, Fe, X, 1}, 0, 0.05f));
    ASSIGN_OR_RETURN(experts.down_exps, Random(b, DType::kQ4_0, {Fe, E, X, 1}, 0, 0.05f));
    for (int64_t n : {int64_t{1}, cpu ? int64_t{64} : prefill}) {
      ASSIGN_OR_RETURN(Tensor x, Random(b, DType::kF32, {E, n, 1, 1}));
      ASSIGN_OR_RETURN(Tensor logits, b.Alloc(DType::kF32, {X, n, 1, 1}));
      ASSIGN_OR_RETURN(Tensor ids, b.Alloc(DType::kI32, {K, n, 1, 1}));
      ASSIGN_OR_RETURN(Tensor weights, b.Alloc(DType::kF32, {K, n, 1, 1}));
      ASSIGN_OR_RETURN(Tensor y, b.Alloc(DType::kF32, {E, n, 1, 1}));
      auto op = [&] {
        b.MatMul(router, x, logits);
        b.MoeRoute(logits, bias, K, true, 2.446f, ids, weights);
        b.MoeExperts(x, experts, ids, weights, y);
      };
      const double expert_bytes = 3.0 * E * Fe * 18 / 32;
      if (n == 1) {
        memory_row("decode_moe_top8_of_256", "1 token", K * expert_bytes + E * X * 4.0, op);
        ASSIGN_OR_RETURN(Tensor x_rounded, b.RoundActivations(x));
        if (x_rounded.defined()) {  // x rounded once for the router and the experts
          memory_row("decode_moe_top8_of_256_rounded", "1 token", K * expert_bytes + E * X * 4.0, [&] {
            b.MatMul(router, x, x_rounded, logits);
            b.MoeRoute(logits, bias, K, true, 2.446f, ids, weights);
            b.MoeExperts(x, x_rounded, experts, ids, weights, y);
          });
        }
        // The experts with a shared expert of Fe (stacked gate/up, as the model loads it): the one
        // op (CUDA: one more slot of the decode expert kernels) against the default's separate ops.
        ASSIGN_OR_RETURN(Tensor shared_gate_up, Random(b, DType::kQ4_0, {E, 2 * Fe, 1, 1}, 0, 0.05f));
        ASSIGN_OR_RETURN(Tensor shared_down, Random(b, DType::kQ4_0, {Fe, E, 1, 1}, 0, 0.05f));
        const kernels::SharedExpert shared{shared_gate_up.RowSlice(0, Fe), shared_gate_up.RowSlice(Fe, Fe),
                                           shared_down, shared_gate_up};
        memory_row("decode_moe_with_shared", "1 token", (K + 1) * expert_bytes,
                   [&] { (void)b.MoeExpertsWithShared(x, x_rounded, experts, ids, weights, shared, y); });
        memory_row("decode_moe_shared_separate", "1 token", (K + 1) * expert_bytes, [&] {
          (void)b.Backend::MoeExpertsWithShared(x, x_rounded, experts, ids, weights, shared, y);
        });
      } else {
        compute_row("prefill_moe_top8_of_256", std::to_string(n) + " tokens", 2.0 * 3 * E * Fe * K * n, op);
        // The experts alone (routing done above): on CUDA the default grouped GEMM kernel, the
        // other grouped kernels, and for the before/after comparison in the same run the
        // generic path that groups tokens on the host.
        auto experts_only = [&] { b.MoeExperts(x, experts, ids, weights, y); };
        compute_row("prefill_moe_experts", std::to_string(n) + " tokens", 2.0 * 3 * E * Fe * K * n, experts_only);
        if (!cpu) {
          // The other grouped GEMM kernels (LATENTSERVE_CUDA_MOE_TILE), --moe-kernels=warps8,warps4 by default.
          // Each row times the whole call: predequant's dequantisation kernels are inside it.
          for (const std::string& kernel : moe_kernels) {
            setenv("LATENTSERVE_CUDA_MOE_TILE", kernel.c_str(), 1);
            compute_row("prefill_moe_experts_" + kernel, std::to_string(n) + " tokens",
                        2.0 * 3 * E * Fe * K * n, experts_only);
          }
          unsetenv("LATENTSERVE_CUDA_MOE_TILE");
          setenv("LATENTSERVE_CUDA_MOE", "host", 1);
          compute_row("prefill_moe_experts_host_grouping", std::to_string(n) + " tokens", 2.0 * 3 * E * Fe * K * n,
                      experts_only);
          unsetenv("LATENTSERVE_CUDA_MOE");
        }
      }
    }
  }

  // KDA: recurrent step (state read + written) and a prefill chunk.
  if (wants("kda")) for (int64_t n : {int64_t{1}, cpu ? int64_t{256} : prefill}) {
    const kernels::Shape shape = {Dk, H, n, 1};
    ASSIGN_OR_RETURN(Tensor q, Random(b, DType::kF32, shape, 0, 0.1f));
    ASSIGN_OR_RETURN(Tensor k, Random(b, DType::kF32, shape, 0, 0.1f));
    ASSIGN_OR_RETURN(Tensor v, Random(b, DType::kF32, shape));
    ASSIGN_OR_RETURN(Tensor gate, Random(b, DType::kF32, shape, -0.05f, 0.04f));
    ASSIGN_OR_RETURN(Tensor beta, Random(b, DType::kF32, {H, n, 1, 1}, 0.5f, 0.4f));
    ASSIGN_OR_RETURN(Tensor out, b.Alloc(DType::kF32, shape));
    kernels::KdaStateView state;
    ASSIGN_OR_RETURN(state.recurrent, Random(b, DType::kF32, {Dk, Dk, H, 1}, 0, 0.1f));
    ASSIGN_OR_RETURN(state.conv, b.Alloc(DType::kF32, {3, Di, 3, 1}));
    std::vector<kernels::SeqSlice> seqs = {{0, n}};
    std::vector<kernels::KdaStateView> states = {state};
    auto op = [&] { b.KdaAttention(q, k, v, gate, beta, seqs, states, n > 1 ? 64 : 0, out); };
    if (n == 1) {
      memory_row("decode_kda_step", "32 heads x 128^2 state", 2.0 * H * Dk * Dk * 4, op);
    } else {
      // Nominal 6 H Dk^2 n FLOPs for both rows: the chunked form (cuda_kda_chunk.cu) and, for
      // the before/after in one run, the token recurrence it replaces.
      compute_row("prefill_kda", std::to_string(n) + " tokens", 6.0 * H * Dk * Dk * n, op);
      compute_row("prefill_kda_recurrent", std::to_string(n) + " tokens", 6.0 * H * Dk * Dk * n,
                  [&] { b.KdaAttention(q, k, v, gate, beta, seqs, states, 0, out); });
      // Gates near -6 per token: most channels decay past 2^-100 within 16 tokens, where the
      // chunked form takes one exponent per token pair instead of tensor-core products.
      ASSIGN_OR_RETURN(Tensor deep_gate, Random(b, DType::kF32, shape, -6.0f, 2.0f));
      compute_row("prefill_kda_deep_gates", std::to_string(n) + " tokens", 6.0 * H * Dk * Dk * n,
                  [&] { b.KdaAttention(q, k, v, deep_gate, beta, seqs, states, 64, out); });
    }
  }

  // MLA over the paged f16 latent cache: decode at `context`, prefill chunk at depth.
  if (wants("mla")) {
    const int64_t page = 256;
    const int64_t ctx = cpu ? 8192 : context;
    const int64_t pages = (ctx + prefill) / page + 2;
    ASSIGN_OR_RETURN(Tensor pool, Random(b, DType::kF16, {L, page, pages, 1}, 0, 1.0f));
    std::vector<int32_t> table(pages);
    for (int64_t i = 0; i < pages; ++i) table[i] = static_cast<int32_t>(i);
    for (int64_t n : {int64_t{1}, cpu ? int64_t{16} : int64_t{1024}}) {
      ASSIGN_OR_RETURN(Tensor q, Random(b, DType::kF32, {L, H, n, 1}, 0, 0.05f));
      ASSIGN_OR_RETURN(Tensor out, b.Alloc(DType::kF32, {R, H, n, 1}));
      const int64_t depth = n == 1 ? ctx - 1 : ctx - n;
      std::vector<kernels::LatentSeqView> seqs = {{table, depth, 0, n}};
      auto op = [&] { b.MlaAttention(q, pool, seqs, 0.07f, out); };
      if (n == 1) {
        memory_row("decode_mla_paged_f16", std::to_string(ctx) + " ctx", ctx * L * 2.0, op);
        if (!cpu) {
          setenv("LATENTSERVE_MLA_DECODE", "mma", 1);  // the mma.sync kernel, same run
          memory_row("decode_mla_paged_mma_f16", std::to_string(ctx) + " ctx", ctx * L * 2.0, op);
        }
        setenv("LATENTSERVE_MLA_DECODE", "gather", 1);  // the gather path, same run
        memory_row("decode_mla_gather_f16", std::to_string(ctx) + " ctx", ctx * L * 2.0, op);
        unsetenv("LATENTSERVE_MLA_DECODE");
        // As a decode step runs it: recorded once (positions and pages from device memory) and
        // replayed 20 times back to back, so no host work sits between calls; each decode kernel
        // in turn. The `_in_graph` rows record the 20 calls in one graph, as a step holds its MLA
        // layers among its other kernels: no gap between graph launches either. `views` carry
        // `device`; `keys` all sequences' keys together.
        auto recorded_rows = [&](const Tensor& queries, const Tensor& output,
                                 const std::vector<kernels::LatentSeqView>& views, const std::string& suffix,
                                 const std::string& shape, int64_t keys) -> absl::Status {
          constexpr int kReplays = 20;
          for (const char* kernel : {"wgmma", "mma"}) {
            setenv("LATENTSERVE_MLA_DECODE", kernel, 1);
            for (const int calls_per_graph : {1, kReplays}) {
              absl::Status status = b.BeginCapture();
              if (status.ok()) {
                for (int i = 0; i < calls_per_graph; ++i) b.MlaAttention(queries, pool, views, 0.07f, output);
                absl::StatusOr<std::unique_ptr<Backend::Graph>> graph = b.EndCapture();
                status = graph.status();
                if (status.ok()) {
                  const std::string name = absl::StrCat("decode_mla_recorded_", kernel, "_f16", suffix,
                                                        calls_per_graph > 1 ? "_in_graph" : "");
                  memory_row(name, shape + " x 20", kReplays * keys * L * 2.0, [&] {
                    for (int i = 0; i < kReplays / calls_per_graph && status.ok(); ++i) status = b.Replay(**graph);
                  });
                }
              }
              if (!status.ok()) {
                unsetenv("LATENTSERVE_MLA_DECODE");
                return status;
              }
            }
            unsetenv("LATENTSERVE_MLA_DECODE");
          }
          return absl::OkStatus();
        };
        if (b.CanCapture()) {
          ASSIGN_OR_RETURN(Tensor positions, b.Alloc(DType::kI32, {1, 1, 1, 1}));
          ASSIGN_OR_RETURN(Tensor page_tables, b.Alloc(DType::kI32, {pages, 1, 1, 1}));
          const int32_t position = static_cast<int32_t>(depth);
          b.Upload(&position, sizeof(position), positions);
          b.Upload(table.data(), table.size() * sizeof(int32_t), page_tables);
          kernels::DeviceStep device{positions, page_tables};
          RETURN_IF_ERROR(recorded_rows(q, out, {{table, depth, 0, 1, &device}}, "", std::to_string(ctx) + " ctx", ctx));
        }
        // A batch of 32 sequences of 32,768 keys each, pages interleaved (when the pool has room:
        // --context of 1M and more), recorded the same way.
        constexpr int64_t kBatch = 32, kSeqKeys = 32768;
        const int64_t per_seq = kSeqKeys / page;
        if (b.CanCapture() && pages >= kBatch * per_seq) {
          std::vector<std::vector<int32_t>> tables(kBatch);
          std::vector<int32_t> flat(kBatch * per_seq), batch_positions(kBatch, static_cast<int32_t>(kSeqKeys - 1));
          for (int64_t seq = 0; seq < kBatch; ++seq) {
            for (int64_t i = 0; i < per_seq; ++i) {
              tables[seq].push_back(static_cast<int32_t>(i * kBatch + seq));
              flat[seq * per_seq + i] = tables[seq].back();
            }
          }
          ASSIGN_OR_RETURN(Tensor positions, b.Alloc(DType::kI32, {kBatch, 1, 1, 1}));
          ASSIGN_OR_RETURN(Tensor page_tables, b.Alloc(DType::kI32, {per_seq, kBatch, 1, 1}));
          b.Upload(batch_positions.data(), batch_positions.size() * sizeof(int32_t), positions);
          b.Upload(flat.data(), flat.size() * sizeof(int32_t), page_tables);
          kernels::DeviceStep device{positions, page_tables};
          ASSIGN_OR_RETURN(Tensor q_batch, Random(b, DType::kF32, {L, H, kBatch, 1}, 0, 0.05f));
          ASSIGN_OR_RETURN(Tensor out_batch, b.Alloc(DType::kF32, {R, H, kBatch, 1}));
          std::vector<kernels::LatentSeqView> views;
          for (int64_t seq = 0; seq < kBatch; ++seq) views.push_back({tables[seq], kSeqKeys - 1, seq, 1, &device});
          RETURN_IF_ERROR(recorded_rows(q_batch, out_batch, views, "_batch32", "32 x 32768 ctx", kBatch * kSeqKeys));
        }
      } else {
        compute_row("prefill_mla_absorbed_f16", std::to_string(n) + " q @ " + std::to_string(ctx) + " ctx",
                    2.0 * n * H * (depth + n / 2.0) * (L + R), op);
      }
    }
  }

  // MLA prefill through MlaAttentionHeads (Kimi-Linear head shape, q4_0 k_b / v_b, f16 cache):
  // a chunk of `prefill` queries at the end of each context in --mha-contexts, in the MHA form
  // (expansion GEMM + flash kernel) and, at the first context, in the absorbed form for the
  // same-run comparison. FLOPs counted are each form's attention (causal; per query, key and
  // head 2 (Pn + Pr + Dv) = 640 MHA, 2 (L + R) = 2,176 absorbed), not the expansion.
  if (!cpu && wants("mha")) {
    ASSIGN_OR_RETURN(Tensor k_b, Random(b, DType::kQ4_0, {128, R, H, 1}, 0, 0.05f));
    ASSIGN_OR_RETURN(Tensor v_b, Random(b, DType::kQ4_0, {R, 128, H, 1}, 0, 0.05f));
    bool first = true;
    for (absl::string_view item : absl::StrSplit(args.Get("mha-contexts", std::to_string(context)), ',')) {
      int64_t ctx = 0;
      if (!absl::SimpleAtoi(item, &ctx) || ctx < prefill || ctx > (int64_t{1} << 24)) {
        return absl::InvalidArgumentError(absl::StrCat("--mha-contexts: '", item, "' is not a context of ",
                                                       prefill, " to 16M tokens"));
      }
      const int64_t page = 256, pages = ctx / page + 2;
      ASSIGN_OR_RETURN(Tensor pool, Random(b, DType::kF16, {L, page, pages, 1}, 0, 1.0f));
      std::vector<int32_t> table(pages);
      for (int64_t i = 0; i < pages; ++i) table[i] = static_cast<int32_t>(i);
      ASSIGN_OR_RETURN(Tensor q, Random(b, DType::kF32, {192, H, prefill, 1}, 0, 0.5f));
      ASSIGN_OR_RETURN(Tensor out, b.Alloc(DType::kF32, {128, H, prefill, 1}));
      const int64_t depth = ctx - prefill;
      std::vector<kernels::LatentSeqView> seqs = {{table, depth, 0, prefill}};
      const double pairs = static_cast<double>(prefill) * H * (depth + prefill / 2.0);
      absl::Status status;
      auto op = [&] { status.Update(b.MlaAttentionHeads(q, k_b, v_b, pool, seqs, 1.0f / std::sqrt(192.0f), out)); };
      const std::string shape = std::to_string(prefill) + " q @ " + std::to_string(ctx) + " ctx";
      setenv("LATENTSERVE_MLA_FORM", "mha", 1);
      for (const char* kernel : {"mma", "tma_base", "tma"}) {
        if (!wants_mla(kernel)) continue;
        setenv("LATENTSERVE_MLA_KERNEL", kernel, 1);
        compute_row(absl::StrCat("prefill_mla_mha_", kernel, "_f16"), shape, 2.0 * pairs * (192 + 128), op);
      }
      unsetenv("LATENTSERVE_MLA_KERNEL");
      if (first && wants_mla("absorbed")) {
        setenv("LATENTSERVE_MLA_FORM", "absorbed", 1);
        compute_row("prefill_mla_absorbed_heads", shape, 2.0 * pairs * (L + R), op);
      }
      unsetenv("LATENTSERVE_MLA_FORM");
      RETURN_IF_ERROR(status);
      first = false;
    }
  }

  std::fprintf(stderr, "%-28s %-28s %-8s %10s %9s\n", "op", "shape", "bound", "ms", "of ceil");
  for (const Row& r : rows) {
    std::fprintf(stderr, "%-28s %-28s %-8s %10.4f %8.1f%%\n", r.op.c_str(), r.shape.c_str(), r.bound.c_str(),
                 r.seconds * 1e3, r.fraction * 100);
  }
  if (!op_filter.empty() && rows.size() == 2) {  // the ceilings alone: a misspelt name times nothing
    return absl::InvalidArgumentError(absl::StrCat("--ops: no row of --sections ", absl::StrJoin(sections, ","),
                                                   " contains ", absl::StrJoin(op_filter, " or ")));
  }
  return absl::OkStatus();
}

Registrar bench_ops("bench-ops", "per-op times at real shapes against measured ceilings (GPU baseline)",
                    [](int argc, char** argv) {
                      absl::Status s = Run(argc, argv);
                      if (!s.ok()) std::fprintf(stderr, "latentserve bench-ops: %s\n", std::string(s.message()).c_str());
                      return s.ok() ? 0 : 1;
                    });

}  // namespace
}  // namespace latentserve::cli
