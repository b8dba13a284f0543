// `latentserve make-test-model`: writes a random kimi-linear GGUF (tools/lib/test_model.h).
#include <cstdio>

#include "common/args.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/lib/needle_model.h"
#include "tools/lib/test_model.h"
#include "tools/lib/weight_mix.h"

namespace latentserve::tools {
namespace {

constexpr const char* kUsage =
    "usage: latentserve make-test-model --out F.gguf [--seed N] [--config tiny|kimi-linear-48b-a3b]\n"
    "  [--layers L --hidden E --heads H --kda-head-dim Dk --kv-lora-rank R --qk-nope Pn\n"
    "   --qk-rope Pr --v-head Dv --experts X --experts-used K --expert-ffn Fe --ffn F\n"
    "   --shared-experts S --dense-layers D --conv-kernel 4 --mla-layers \"3,7\" --vocab V\n"
    "   --context C --name NAME] [--weight-type f32|f16|bf16|q8_0|q4_0|q4_k|q5_k|q6_k|q4_k_m|q5_k_m]\n"
    "  [--threads N]\n"
    "Shape flags override the preset (default: tiny). --layers without --mla-layers puts MLA\n"
    "on every 4th layer from 3 and on the last layer. --preset needle writes hand-built weights\n"
    "that retrieve a key's value from any depth, with a word vocabulary (docs/needle.md); alone\n"
    "it uses a small 2-layer shape, with --config the preset's shape.\n";

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args args,
                   Args::Parse(argc, argv,
                               {"out", "seed", "config", "layers", "hidden", "heads",
                                "kda-head-dim", "kv-lora-rank", "qk-nope", "qk-rope", "v-head",
                                "experts", "experts-used", "expert-ffn", "ffn", "shared-experts",
                                "dense-layers", "conv-kernel", "mla-layers", "vocab", "context",
                                "weight-type", "name", "threads", "preset"}));
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError("unexpected argument '" + args.positional()[0] + "'");
  }
  ASSIGN_OR_RETURN(TestModelOptions o, TestModelPreset(args.Get("config", "tiny")));
  const std::string preset = args.Get("preset", "random");
  if (preset == "needle") {
    if (!args.Has("config")) o = NeedleTestModel();
    o.needle = true;
  } else if (preset != "random") {
    return absl::InvalidArgumentError("--preset must be random or needle, got '" + preset + "'");
  }
  ASSIGN_OR_RETURN(o.out_path, args.Require("out"));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
  o.seed = static_cast<uint64_t>(seed);
  o.name = args.Get("name", o.name);
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  if (threads < 0 || threads > 1024) return absl::InvalidArgumentError("--threads must be in 0..1024");
  o.threads = static_cast<int>(threads);

  struct IntFlag {
    const char* name;
    int64_t* field;
  };
  const IntFlag int_flags[] = {
      {"layers", &o.layers},           {"hidden", &o.hidden},
      {"heads", &o.heads},             {"kda-head-dim", &o.kda_head_dim},
      {"kv-lora-rank", &o.kv_lora_rank}, {"qk-nope", &o.qk_nope},
      {"qk-rope", &o.qk_rope},         {"v-head", &o.v_head},
      {"experts", &o.experts},         {"experts-used", &o.experts_used},
      {"expert-ffn", &o.expert_ffn},   {"ffn", &o.ffn},
      {"shared-experts", &o.shared_experts}, {"dense-layers", &o.dense_layers},
      {"conv-kernel", &o.conv_kernel}, {"vocab", &o.vocab},
      {"context", &o.context},
  };
  for (const IntFlag& f : int_flags) {
    ASSIGN_OR_RETURN(*f.field, args.GetInt(f.name, *f.field));
  }
  if (args.Has("mla-layers")) {
    ASSIGN_OR_RETURN(o.mla_layers, ParseIntList(args.Get("mla-layers")));
    if (o.mla_layers.empty()) return absl::InvalidArgumentError("--mla-layers is empty");
  } else if (args.Has("layers")) {
    o.mla_layers.clear();  // the default pattern for the new depth
  }
  if (args.Has("weight-type")) {
    const std::optional<WeightTypeChoice> choice = ParseWeightType(args.Get("weight-type"));
    if (!choice) {
      return absl::InvalidArgumentError(
          "--weight-type must be one of f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m, q5_k_m");
    }
    o.weight_type = choice->base;
    o.weight_mix = choice->mix;
  }

  TestModelSummary summary;
  RETURN_IF_ERROR(WriteTestModel(o, &summary));
  std::fprintf(stderr, "make-test-model: wrote %s: %llu tensors, %.3f M params (%llu), %llu bytes, %s weights\n",
               o.out_path.c_str(), static_cast<unsigned long long>(summary.tensors),
               summary.parameters / 1e6, static_cast<unsigned long long>(summary.parameters),
               static_cast<unsigned long long>(summary.file_bytes),
               o.weight_mix == WeightMix::kQ4_K_M   ? "q4_k_m"
               : o.weight_mix == WeightMix::kQ5_K_M ? "q5_k_m"
                                                    : DTypeName(o.weight_type));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  const absl::Status status = Run(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "make-test-model: %s\n%s", std::string(status.message()).c_str(), kUsage);
    return 2;
  }
  return 0;
}

static latentserve::cli::Registrar registrar("make-test-model",
                                             "write a random (or hand-built needle) kimi-linear GGUF test model", Main);

}  // namespace
}  // namespace latentserve::tools
