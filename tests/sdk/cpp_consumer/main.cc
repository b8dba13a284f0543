// Streams one answer through the installed latentserve::client and prints it as one JSON-ish
// line the test checks: token ids, completion tokens, finish reason.
#include <cstdio>
#include <string>

#include "latentserve/client.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: consumer TARGET PROMPT\n");
    return 2;
  }
  latentserve::Client client(argv[1]);
  latentserve::v1::GenerateRequest request;
  request.set_text(argv[2]);
  request.mutable_stopping()->set_max_tokens(8);
  request.mutable_stopping()->set_ignore_eos(true);
  std::string ids;
  int64_t completion_tokens = -1;
  grpc::Status status = client.Generate(request, [&](const latentserve::v1::GenerateResponse& event) {
    for (int id : event.tokens().token_ids()) ids += (ids.empty() ? "" : ",") + std::to_string(id);
    if (event.has_finished()) completion_tokens = event.finished().usage().completion_tokens();
    return true;
  });
  if (!status.ok()) {
    std::fprintf(stderr, "generate failed: %d %s\n", static_cast<int>(status.error_code()),
                 status.error_message().c_str());
    return 1;
  }
  latentserve::v1::GetModelInfoResponse info;
  if (!client.GetModelInfo(&info).ok()) return 1;
  std::printf("ids=%s completion_tokens=%lld model=%s\n", ids.c_str(), static_cast<long long>(completion_tokens),
              info.model_name().c_str());
  return 0;
}
