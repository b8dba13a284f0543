// `latentserve client session create|ask|list|close`: document sessions on a router
// (docs/serving.md "Sessions"). create takes the document as --prompt* / --message turns and
// prints the session (id, document tokens, worker); ask is `client generate --session ID` with
// the suffix as the prompt; list prints this client's sessions; close ends one.
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "tools/client_verbs.h"

namespace latentserve::cli {
namespace {

ClientJson SessionJson(const v1::SessionInfo& s) {
  return {{"session_id", s.session_id()},       {"document_tokens", s.document_tokens()},
          {"pinned", s.pinned()},               {"created_unix_ms", s.created_unix_ms()},
          {"last_used_unix_ms", s.last_used_unix_ms()}, {"expires_unix_ms", s.expires_unix_ms()},
          {"decode_worker", s.decode_worker()}, {"requests", s.requests()},
          {"reprefills", s.reprefills()}};
}

int Create(const Args& args) {
  // The document takes the prompt flags; max-tokens and sampling do not apply.
  auto prompt = ClientRequestFromArgs(args);
  if (!prompt.ok()) return ClientFail(prompt.status(), true);
  v1::CreateSessionRequest request;
  request.set_model(prompt->model());
  switch (prompt->prompt_case()) {
    case v1::GenerateRequest::kText: request.set_text(prompt->text()); break;
    case v1::GenerateRequest::kTokens: *request.mutable_tokens() = prompt->tokens(); break;
    case v1::GenerateRequest::kChat: *request.mutable_chat() = prompt->chat(); break;
    default: return ClientFail(absl::InvalidArgumentError("give the document as a prompt flag"), true);
  }
  auto ttl = args.GetInt("ttl-ms", 0);
  auto idle = args.GetInt("idle-ms", 0);
  if (!ttl.ok() || !idle.ok() || *ttl < 0 || *idle < 0) {
    return ClientFail(absl::InvalidArgumentError("--ttl-ms and --idle-ms must be integers >= 0"), true);
  }
  request.set_ttl_ms(*ttl);
  request.set_idle_timeout_ms(*idle);
  request.set_pinned(args.Has("pinned"));
  auto client = MakeClient(args);
  if (!client.ok()) return ClientFail(client.status(), true);
  auto created = (*client)->CreateSession(request);
  if (!created.ok()) return ClientFail(created.status(), true);
  ClientJson out = SessionJson(created->session());
  out["prefill_ms"] = created->prefill_ms();
  PrintClientJson(out);
  return 0;
}

int List(const Args& args) {
  auto client = MakeClient(args);
  if (!client.ok()) return ClientFail(client.status(), true);
  auto listed = (*client)->ListSessions();
  if (!listed.ok()) return ClientFail(listed.status(), true);
  ClientJson sessions = ClientJson::array();
  for (const v1::SessionInfo& s : listed->sessions()) sessions.push_back(SessionJson(s));
  PrintClientJson({{"sessions", std::move(sessions)}});
  return 0;
}

int Close(const Args& args) {
  auto client = MakeClient(args);
  if (!client.ok()) return ClientFail(client.status(), true);
  if (absl::Status closed = (*client)->CloseSession(args.Get("session")); !closed.ok()) return ClientFail(closed, true);
  PrintClientJson({{"closed", args.Get("session")}});
  return 0;
}

}  // namespace

int RunClientSession(const Args& args) {
  const std::string verb = args.positional().empty() ? "" : args.positional()[0];
  if (verb == "create") return Create(args);
  if (verb == "list") return List(args);
  if ((verb == "ask" || verb == "close") && !args.Has("session")) {
    return ClientFail(absl::InvalidArgumentError(absl::StrCat("client session ", verb, " needs --session ID")), true);
  }
  if (verb == "ask") return ClientGenerate(args);
  if (verb == "close") return Close(args);
  std::fprintf(stderr, "usage: latentserve client session create|ask|list|close --target HOST:PORT [flags]\n");
  return 2;
}

}  // namespace latentserve::cli
