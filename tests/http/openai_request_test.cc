// OpenAI bodies -> GenerateRequest, and the response/error shapes (http/openai_*.h).
#include "http/openai_request.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error_details.h"
#include "http/openai_response.h"

namespace latentserve::http {
namespace {

using nlohmann::json;

absl::StatusOr<OpenAiRequest> Completion(const std::string& body) {
  return ParseOpenAiRequest(Endpoint::kCompletions, body);
}
absl::StatusOr<OpenAiRequest> Chat(const std::string& body) {
  return ParseOpenAiRequest(Endpoint::kChatCompletions, body);
}

TEST(OpenAiRequest, CompletionFieldsReachTheGenerateRequest) {
  auto r = Completion(R"({"model":"m","prompt":"Hello","max_tokens":7,"temperature":0,"top_p":0.5,"seed":42,
                          "stop":["\n","END"],"top_k":3,"min_p":0.1,"ignore_eos":true,"stop_token_ids":[5],
                          "stream":true,"stream_options":{"include_usage":true},"n":1,"user":"u"})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generate.model(), "m");
  EXPECT_EQ(r->generate.text(), "Hello");
  EXPECT_EQ(r->generate.stopping().max_tokens(), 7);
  EXPECT_EQ(r->generate.sampling().temperature(), 0.0f);
  EXPECT_FLOAT_EQ(r->generate.sampling().top_p(), 0.5f);
  EXPECT_EQ(r->generate.sampling().seed(), 42u);
  EXPECT_EQ(r->generate.sampling().top_k(), 3);
  EXPECT_FLOAT_EQ(r->generate.sampling().min_p(), 0.1f);
  ASSERT_EQ(r->generate.stopping().stop_strings_size(), 2);
  EXPECT_EQ(r->generate.stopping().stop_strings(1), "END");
  EXPECT_TRUE(r->generate.stopping().ignore_eos());
  EXPECT_EQ(r->generate.stopping().stop_token_ids(0), 5);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
}

TEST(OpenAiRequest, DefaultsFollowOpenAi) {
  auto completion = Completion(R"({"prompt":"x"})");
  ASSERT_TRUE(completion.ok());
  EXPECT_EQ(completion->generate.stopping().max_tokens(), kDefaultCompletionMaxTokens);
  EXPECT_EQ(completion->generate.sampling().temperature(), 1.0f);
  EXPECT_FALSE(completion->stream);
  auto chat = Chat(R"({"messages":[{"role":"user","content":"x"}]})");
  ASSERT_TRUE(chat.ok());
  EXPECT_EQ(chat->generate.stopping().max_tokens(), kDefaultChatMaxTokens);
}

TEST(OpenAiRequest, PromptForms) {
  auto ids = Completion(R"({"prompt":[1,2,3]})");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->generate.tokens().ids_size(), 3);
  auto batch_of_one = Completion(R"({"prompt":["only"]})");
  ASSERT_TRUE(batch_of_one.ok());
  EXPECT_EQ(batch_of_one->generate.text(), "only");
  auto ids_batch_of_one = Completion(R"({"prompt":[[4,5]]})");
  ASSERT_TRUE(ids_batch_of_one.ok());
  EXPECT_EQ(ids_batch_of_one->generate.tokens().ids(1), 5);
  EXPECT_NE(Completion(R"({"prompt":["a","b"]})").status().message().find("batch of 2"), std::string::npos);
  EXPECT_FALSE(Completion(R"({"prompt":[-1]})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":[4294967296]})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":[]})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":7})").ok());
  EXPECT_FALSE(Completion(R"({"max_tokens":5})").ok());  // no prompt
}

TEST(OpenAiRequest, ChatMessages) {
  auto r = Chat(R"({"messages":[{"role":"developer","content":"be brief"},
                                {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
                    "max_completion_tokens":5})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->generate.chat().messages_size(), 2);
  EXPECT_EQ(r->generate.chat().messages(0).role(), "system");
  EXPECT_EQ(r->generate.chat().messages(1).content(), "Hi there");
  EXPECT_EQ(r->generate.stopping().max_tokens(), 5);
  EXPECT_FALSE(Chat(R"({"messages":[]})").ok());
  EXPECT_FALSE(Chat(R"({"messages":[{"role":"wizard","content":"x"}]})").ok());
  EXPECT_FALSE(Chat(R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})").ok());
  EXPECT_NE(Chat(R"({"messages":[{"role":"assistant","content":"x","tool_calls":[]}]})").status().message().find(
                "tool_calls"),
            std::string::npos);
  EXPECT_FALSE(Chat(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":3,"max_completion_tokens":4})").ok());
  EXPECT_FALSE(Chat(R"({"prompt":"x"})").ok());  // prompt is a completions field
}

TEST(OpenAiRequest, UnsupportedFieldsAreRefusedByName) {
  for (const char* field : {R"("logprobs":true)", R"("n":2)", R"("presence_penalty":0.5)", R"("best_of":3)",
                            R"("echo":true)", R"("logit_bias":{"5":10})", R"("suffix":"x")", R"("frobnicate":1)"}) {
    auto r = Completion(std::string(R"({"prompt":"x",)") + field + "}");
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string name = std::string(field).substr(1, std::string(field).find('"', 1) - 1);
    EXPECT_NE(r.status().message().find("'" + name + "'"), std::string::npos) << r.status();
  }
  // The same fields at their defaults change nothing and are accepted.
  EXPECT_TRUE(Completion(R"({"prompt":"x","logprobs":false,"n":1,"presence_penalty":0,"logit_bias":{},"echo":false})")
                  .ok());
  EXPECT_FALSE(Chat(R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})").ok());
  EXPECT_FALSE(Chat(R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})").ok());
}

TEST(OpenAiRequest, HostileBodies) {
  EXPECT_FALSE(Completion("").ok());
  EXPECT_FALSE(Completion("{").ok());
  EXPECT_FALSE(Completion("[1]").ok());
  EXPECT_FALSE(Completion(std::string(100000, '[')).ok());  // would overflow the parser's stack
  EXPECT_TRUE(Completion(R"({"prompt":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})").ok());  // brackets in strings
  EXPECT_FALSE(Completion(R"({"prompt":"x","max_tokens":0})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","max_tokens":1e9})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","max_tokens":99999999999})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","temperature":3})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","temperature":"hot"})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","stop":["a","b","c","d","e"]})").ok());
  EXPECT_FALSE(Completion(R"({"prompt":"x","stream_options":{"include_usage":true}})").ok());  // needs stream
  EXPECT_FALSE(Completion(R"({"prompt":"x","stream":true,"stream_options":{"other":1}})").ok());
  EXPECT_FALSE(Completion("{\"prompt\":\"\xff\xfe\"}").ok());  // invalid UTF-8
}

TEST(OpenAiResponse, ShapesAndErrors) {
  v1::Finished finished;
  finished.set_reason(v1::FINISH_REASON_STOP_STRING);
  finished.mutable_usage()->set_prompt_tokens(3);
  finished.mutable_usage()->set_completion_tokens(4);
  const ResponseIdentity identity{"chatcmpl-1", "m", 5};
  json chat = json::parse(CompletionBody(Endpoint::kChatCompletions, identity, "hi", finished));
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(chat["usage"]["total_tokens"], 7);
  json chunk = json::parse(ChunkBody(Endpoint::kChatCompletions, identity, "a", true, nullptr));
  EXPECT_EQ(chunk["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(chunk["choices"][0]["finish_reason"].is_null());
  json usage = json::parse(UsageChunkBody(Endpoint::kCompletions, identity, finished.usage()));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);

  EXPECT_EQ(ErrorFor(grpc::StatusCode::INVALID_ARGUMENT, "x").http_status, 400);
  EXPECT_EQ(ErrorFor(grpc::StatusCode::UNAUTHENTICATED, "x").http_status, 401);
  EXPECT_EQ(ErrorFor(grpc::StatusCode::NOT_FOUND, "x").http_status, 404);
  EXPECT_EQ(ErrorFor(grpc::StatusCode::RESOURCE_EXHAUSTED, "x").http_status, 429);
  EXPECT_EQ(ErrorFor(grpc::StatusCode::UNAVAILABLE, "x").http_status, 503);
  EXPECT_EQ(ErrorFor(grpc::StatusCode::DEADLINE_EXCEEDED, "x").http_status, 504);
  json error = json::parse(ErrorFor(grpc::StatusCode::NOT_FOUND, "unknown model 'q'").body);
  EXPECT_EQ(error["error"]["message"], "unknown model 'q'");
  EXPECT_EQ(error["error"]["type"], "invalid_request_error");
  EXPECT_EQ(error["error"]["code"], "model_not_found");
  EXPECT_EQ(ErrorFor(grpc::StatusCode::UNAVAILABLE, "x").retry_after_s, -1);
}

// The router's typed details become OpenAI's `code` / `param` and a Retry-After.
TEST(OpenAiResponse, ErrorDetailsMapToCodeParamAndRetryAfter) {
  HttpError limit = ErrorFor(ErrorStatus(grpc::StatusCode::RESOURCE_EXHAUSTED, "3 streams open",
                                         Details(error_reason::kStreamLimitExceeded, {}, absl::Milliseconds(1200))));
  EXPECT_EQ(limit.http_status, 429);
  EXPECT_EQ(limit.retry_after_s, 2);  // rounded up: never earlier than the server asked
  json body = json::parse(limit.body);
  EXPECT_EQ(body["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(body["error"]["type"], "rate_limit_error");
  EXPECT_EQ(body["error"]["message"], "3 streams open");

  HttpError too_long = ErrorFor(ErrorStatus(grpc::StatusCode::INVALID_ARGUMENT, "prompt of 9 tokens",
                                            Details(error_reason::kPromptTooLong)));
  EXPECT_EQ(too_long.http_status, 400);
  EXPECT_EQ(too_long.retry_after_s, -1);
  EXPECT_EQ(json::parse(too_long.body)["error"]["code"], "context_length_exceeded");

  json field = json::parse(ErrorFor(ErrorStatus(grpc::StatusCode::INVALID_ARGUMENT, "bad",
                                                Details(error_reason::kFieldInvalid, {{"field", "sampling"}})))
                               .body);
  EXPECT_EQ(field["error"]["code"], "field_invalid");
  EXPECT_EQ(field["error"]["param"], "sampling");

  // Without details (or with unreadable ones): the code's defaults.
  HttpError plain = ErrorFor(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down", "not a google.rpc.Status \xff"));
  EXPECT_EQ(plain.http_status, 503);
  EXPECT_EQ(plain.retry_after_s, -1);
  EXPECT_TRUE(json::parse(plain.body)["error"]["code"].is_null());
  EXPECT_EQ(ErrorFor(grpc::Status::OK).http_status, 500);  // a stream that ended without a finish
}

}  // namespace
}  // namespace latentserve::http
