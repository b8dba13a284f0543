// `latentserve dequantize-model`: rewrites a GGUF with every quantised or half-precision tensor
// dequantised to f32 (metadata kept, general.file_type set to 0). The K-quant conformance test
// runs llama.cpp and us on such a "dequantised twin" of a llama.cpp-quantised file: the same
// weights without the quantised arithmetic.
#include <cstdio>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/args.h"
#include "common/gguf/gguf.h"
#include "common/status.h"
#include "tools/cli.h"

namespace latentserve::tools {
namespace {

absl::Status Run(int argc, char** argv) {
  ASSIGN_OR_RETURN(Args args, Args::Parse(argc, argv, {"model", "out"}));
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError("unexpected argument '" + args.positional()[0] + "'");
  }
  ASSIGN_OR_RETURN(std::string in_path, args.Require("model"));
  ASSIGN_OR_RETURN(std::string out_path, args.Require("out"));
  if (in_path == out_path) return absl::InvalidArgumentError("--out must differ from --model");
  ASSIGN_OR_RETURN(std::unique_ptr<gguf::File> file, gguf::File::Open(in_path));
  gguf::Writer w(file->alignment());
  for (const auto& [key, value] : file->metadata()) {
    if (key == "general.file_type") continue;
    w.SetValue(key, value);
  }
  w.SetUint32("general.file_type", 0);
  auto target = [](DType t) { return t == DType::kI32 ? t : DType::kF32; };
  for (const gguf::TensorInfo& t : file->tensors()) RETURN_IF_ERROR(w.AddTensor(t.name, target(t.type), t.ne));
  RETURN_IF_ERROR(w.Begin(out_path));
  std::vector<float> row;
  for (const gguf::TensorInfo& t : file->tensors()) {
    if (target(t.type) == t.type) {
      RETURN_IF_ERROR(w.WriteTensorData(t.data, t.nbytes));
      continue;
    }
    const int64_t width = t.ne.empty() ? 1 : t.ne[0];
    const int64_t rows = width == 0 ? 0 : t.elements() / width;
    const size_t row_bytes = static_cast<size_t>(RowBytes(t.type, width));
    row.resize(static_cast<size_t>(width));
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(t.type, t.data + r * row_bytes, row.data(), width);
      RETURN_IF_ERROR(w.WriteTensorData(row.data(), row.size() * sizeof(float)));
    }
  }
  RETURN_IF_ERROR(w.Finish());
  std::fprintf(stderr, "dequantize-model: wrote %s (%zu tensors, f32)\n", out_path.c_str(), file->tensors().size());
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  const absl::Status status = Run(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "latentserve dequantize-model: %s\n", std::string(status.message()).c_str());
    return 2;
  }
  return 0;
}

static latentserve::cli::Registrar registrar("dequantize-model",
                                             "rewrite a GGUF with every tensor dequantised to f32", Main);

}  // namespace
}  // namespace latentserve::tools
