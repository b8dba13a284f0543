#include "http/openai_request.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace latentserve::http {
namespace {

using nlohmann::json;

// nlohmann's parser recurses once per nesting level; a body of 16 MB of '[' would exhaust
// the stack. No valid request nests deeper than a few levels.
constexpr int kMaxJsonDepth = 32;

absl::Status CheckDepth(const std::string& body) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        return absl::InvalidArgumentError(absl::StrCat("request body nests deeper than ", kMaxJsonDepth, " levels"));
      }
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return absl::OkStatus();
}

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("'", field, "' ", what));
}

absl::StatusOr<double> Number(const json& value, const std::string& field, double min, double max) {
  if (!value.is_number()) return FieldError(field, "must be a number");
  const double number = value.get<double>();
  if (!std::isfinite(number) || number < min || number > max) {
    return FieldError(field, absl::StrCat("must be in [", min, ", ", max, "], got ", value.dump()));
  }
  return number;
}

absl::StatusOr<int64_t> Integer(const json& value, const std::string& field, int64_t min, int64_t max) {
  if (!value.is_number_integer()) return FieldError(field, "must be an integer");
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(max)) {
    return FieldError(field, absl::StrCat("must be in [", min, ", ", max, "], got ", value.dump()));
  }
  const int64_t number = value.get<int64_t>();
  if (number < min || number > max) {
    return FieldError(field, absl::StrCat("must be in [", min, ", ", max, "], got ", value.dump()));
  }
  return number;
}

absl::StatusOr<bool> Bool(const json& value, const std::string& field) {
  if (!value.is_boolean()) return FieldError(field, "must be true or false");
  return value.get<bool>();
}

absl::StatusOr<std::string> String(const json& value, const std::string& field) {
  if (!value.is_string()) return FieldError(field, "must be a string");
  return value.get<std::string>();
}

// A token id list: integers in [0, 2^31).
absl::Status TokenIds(const json& value, const std::string& field, v1::TokenIds* out) {
  for (const json& id : value) {
    ASSIGN_OR_RETURN(int64_t token, Integer(id, field + "[]", 0, std::numeric_limits<int32_t>::max()));
    out->add_ids(static_cast<int32_t>(token));
  }
  return absl::OkStatus();
}

// prompt: a string, a list of token ids, or a batch of one of either (batches of more
// prompts are refused: one request is one stream).
absl::Status Prompt(const json& value, v1::GenerateRequest* out) {
  const json* prompt = &value;
  if (value.is_array() && !value.empty() && (value[0].is_string() || value[0].is_array())) {
    if (value.size() != 1) {
      return FieldError("prompt", absl::StrCat("holds a batch of ", value.size(),
                                               " prompts; send one prompt per request"));
    }
    prompt = &value[0];
  }
  if (prompt->is_string()) {
    out->set_text(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (prompt->is_array()) {
    if (prompt->empty()) return FieldError("prompt", "is empty");
    return TokenIds(*prompt, "prompt", out->mutable_tokens());
  }
  return FieldError("prompt", "must be a string or a list of token ids");
}

// content: a string or a list of {"type": "text", "text": ...} parts (joined).
absl::StatusOr<std::string> MessageContent(const json& value, const std::string& field) {
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_array()) return FieldError(field, "must be a string or a list of text parts");
  std::string text;
  for (const json& part : value) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string() ||
        part.size() != 2) {
      return FieldError(field, "parts must be {\"type\": \"text\", \"text\": ...}; images, audio and files are "
                               "not supported");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::Status Messages(const json& value, v1::GenerateRequest* out) {
  if (!value.is_array() || value.empty()) return FieldError("messages", "must be a non-empty list");
  v1::ChatMessages* chat = out->mutable_chat();
  for (size_t i = 0; i < value.size(); ++i) {
    const std::string field = absl::StrCat("messages[", i, "]");
    const json& message = value[i];
    if (!message.is_object()) return FieldError(field, "must be an object");
    for (const auto& [key, unused] : message.items()) {
      if (key != "role" && key != "content" && key != "name") {
        return FieldError(absl::StrCat(field, ".", key), "is not supported (tool calls are not implemented)");
      }
    }
    if (!message.contains("role") || !message.contains("content")) return FieldError(field, "needs role and content");
    ASSIGN_OR_RETURN(std::string role, String(message["role"], field + ".role"));
    if (role == "developer") role = "system";  // OpenAI's newer name for the system turn
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return FieldError(field + ".role", absl::StrCat("must be system, developer, user, assistant or tool, got '",
                                                      role, "'"));
    }
    ASSIGN_OR_RETURN(std::string content, MessageContent(message["content"], field + ".content"));
    v1::ChatMessage* turn = chat->add_messages();
    turn->set_role(role);
    turn->set_content(std::move(content));
  }
  return absl::OkStatus();
}

absl::Status Stop(const json& value, v1::StoppingCriteria* out) {
  if (value.is_null()) return absl::OkStatus();
  if (value.is_string()) {
    out->add_stop_strings(value.get<std::string>());
    return absl::OkStatus();
  }
  if (!value.is_array() || value.size() > kMaxStopSequences) {
    return FieldError("stop", absl::StrCat("must be a string or a list of at most ", kMaxStopSequences, " strings"));
  }
  for (const json& stop : value) {
    ASSIGN_OR_RETURN(std::string text, String(stop, "stop[]"));
    if (text.empty()) return FieldError("stop[]", "must not be empty");
    out->add_stop_strings(std::move(text));
  }
  return absl::OkStatus();
}

// Fields accepted only at their default (the behaviour the server has anyway).
bool AtDefault(const std::string& key, const json& value) {
  if (value.is_null()) return true;
  if (key == "n" || key == "best_of") return value.is_number_integer() && value.get<int64_t>() == 1;
  if (key == "presence_penalty" || key == "frequency_penalty") return value.is_number() && value.get<double>() == 0;
  if (key == "logprobs" || key == "echo" || key == "parallel_tool_calls") return value.is_boolean() && !value.get<bool>();
  if (key == "logit_bias") return value.is_object() && value.empty();
  if (key == "tools" || key == "functions") return value.is_array() && value.empty();
  if (key == "tool_choice" || key == "function_call") return value.is_string() && value.get<std::string>() == "none";
  if (key == "response_format") return value.is_object() && value.value("type", "") == "text" && value.size() == 1;
  if (key == "suffix") return value.is_string() && value.get<std::string>().empty();
  return false;
}

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(Endpoint endpoint, const std::string& body) {
  RETURN_IF_ERROR(CheckDepth(body));
  const json root = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("request body is not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("request body must be a JSON object");
  const bool chat = endpoint == Endpoint::kChatCompletions;
  OpenAiRequest request;
  request.endpoint = endpoint;
  v1::GenerateRequest& generate = request.generate;
  v1::SamplingParams* sampling = generate.mutable_sampling();
  v1::StoppingCriteria* stopping = generate.mutable_stopping();
  sampling->set_temperature(1.0f);  // OpenAI's default; 0 is greedy
  stopping->set_max_tokens(chat ? kDefaultChatMaxTokens : kDefaultCompletionMaxTokens);
  bool has_prompt = false;
  bool max_tokens_given = false;

  using Handler = std::function<absl::Status(const json&)>;
  const std::map<std::string, Handler> common = {
      {"model", [&](const json& v) -> absl::Status {
         ASSIGN_OR_RETURN(std::string model, String(v, "model"));
         generate.set_model(std::move(model));
         return absl::OkStatus();
       }},
      {"max_tokens", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         if (max_tokens_given) return FieldError("max_tokens", "and max_completion_tokens are both set");
         ASSIGN_OR_RETURN(int64_t n, Integer(v, "max_tokens", 1, std::numeric_limits<int32_t>::max()));
         stopping->set_max_tokens(static_cast<int32_t>(n));
         max_tokens_given = true;
         return absl::OkStatus();
       }},
      {"temperature", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         ASSIGN_OR_RETURN(double t, Number(v, "temperature", 0, 2));
         sampling->set_temperature(static_cast<float>(t));
         return absl::OkStatus();
       }},
      {"top_p", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         ASSIGN_OR_RETURN(double p, Number(v, "top_p", 0, 1));
         sampling->set_top_p(static_cast<float>(p));
         return absl::OkStatus();
       }},
      {"top_k", [&](const json& v) -> absl::Status {  // extension (vLLM, llama-server)
         ASSIGN_OR_RETURN(int64_t k, Integer(v, "top_k", 0, std::numeric_limits<int32_t>::max()));
         sampling->set_top_k(static_cast<int32_t>(k));
         return absl::OkStatus();
       }},
      {"min_p", [&](const json& v) -> absl::Status {  // extension
         ASSIGN_OR_RETURN(double p, Number(v, "min_p", 0, 1));
         sampling->set_min_p(static_cast<float>(p));
         return absl::OkStatus();
       }},
      {"seed", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         ASSIGN_OR_RETURN(int64_t seed, Integer(v, "seed", std::numeric_limits<int64_t>::min(),
                                                std::numeric_limits<int64_t>::max()));
         sampling->set_seed(static_cast<uint64_t>(seed));
         return absl::OkStatus();
       }},
      {"stop", [&](const json& v) { return Stop(v, stopping); }},
      {"stop_token_ids", [&](const json& v) -> absl::Status {  // extension
         if (!v.is_array()) return FieldError("stop_token_ids", "must be a list of token ids");
         v1::TokenIds ids;
         RETURN_IF_ERROR(TokenIds(v, "stop_token_ids", &ids));
         for (int32_t id : ids.ids()) stopping->add_stop_token_ids(id);
         return absl::OkStatus();
       }},
      {"ignore_eos", [&](const json& v) -> absl::Status {  // extension
         ASSIGN_OR_RETURN(bool ignore, Bool(v, "ignore_eos"));
         stopping->set_ignore_eos(ignore);
         return absl::OkStatus();
       }},
      {"stream", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         ASSIGN_OR_RETURN(request.stream, Bool(v, "stream"));
         return absl::OkStatus();
       }},
      {"stream_options", [&](const json& v) -> absl::Status {
         if (v.is_null()) return absl::OkStatus();
         if (!v.is_object()) return FieldError("stream_options", "must be an object");
         for (const auto& [key, option] : v.items()) {
           if (key != "include_usage") return FieldError("stream_options." + key, "is not supported");
           ASSIGN_OR_RETURN(request.include_usage, Bool(option, "stream_options.include_usage"));
         }
         return absl::OkStatus();
       }},
      {"user", [&](const json& v) { return v.is_string() ? absl::OkStatus() : FieldError("user", "must be a string"); }},
  };

  for (const auto& [key, value] : root.items()) {
    if (auto it = common.find(key); it != common.end()) {
      RETURN_IF_ERROR(it->second(value));
    } else if (!chat && key == "prompt") {
      RETURN_IF_ERROR(Prompt(value, &generate));
      has_prompt = true;
    } else if (chat && key == "messages") {
      RETURN_IF_ERROR(Messages(value, &generate));
      has_prompt = true;
    } else if (chat && key == "max_completion_tokens") {
      RETURN_IF_ERROR(common.at("max_tokens")(value));
    } else if (AtDefault(key, value)) {
      continue;
    } else {
      return FieldError(key, absl::StrCat("is not supported by this server (value ", value.dump().substr(0, 64),
                                          "); see docs/serving.md, \"HTTP front\", for the supported fields"));
    }
  }
  if (!has_prompt) return absl::InvalidArgumentError(chat ? "'messages' is required" : "'prompt' is required");
  if (!request.stream && root.contains("stream_options") && !root["stream_options"].is_null()) {
    return FieldError("stream_options", "is only allowed with \"stream\": true");
  }
  return request;
}

}  // namespace latentserve::http
