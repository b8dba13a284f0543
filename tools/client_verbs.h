// What the `client` verbs share (tools/cmd_client.cc defines them): error output, JSON
// lines, the request and the connection built from the flags. cmd_client_session.cc uses them.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "common/args.h"

namespace latentserve::cli {

using ClientJson = nlohmann::ordered_json;  // keys in the order written
void PrintClientJson(const ClientJson& value);
// Prints the error (JSON or text) and returns the exit code.
int ClientFail(const absl::Status& status, bool json);
// A GenerateRequest from --prompt* / --message / sampling / stopping flags.
absl::StatusOr<v1::GenerateRequest> ClientRequestFromArgs(const Args& args);
absl::StatusOr<std::unique_ptr<client::GenerationClient>> MakeClient(const Args& args);
int ClientGenerate(const Args& args);
// `client session create|ask|list|close` (tools/cmd_client_session.cc); the sub-verb is the first positional argument.
int RunClientSession(const Args& args);

}  // namespace latentserve::cli
