#include "server/openai_api.h"

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "model/gguf.h"
#include "nlohmann/json.hpp"
#include "server/batching_scheduler.h"
#include "server/http_server.h"
#include "tests/server/http_test_client.h"
#include "tests/server/scripted_model.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {
namespace {

using json = nlohmann::json;
using testing::Get;
using testing::ParsedResponse;
using testing::Post;

constexpr char kFixture[] = "tests/data/llamacpp/tiny-v3/tiny-v3.f32.gguf";
constexpr char kScript[] = "Hello from moeflow!";
const char* const kToolScript =
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
    "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

// The API on a ScriptedModel behind a real HttpServer on 127.0.0.1.
class ApiFixture {
 public:
  explicit ApiFixture(std::string script = kScript, ApiOptions api = {}, int64_t max_queue = 8,
                      int64_t context = 96, int64_t forward_delay_ms = 0) {
    auto file = GgufFile::Open(kFixture);
    EXPECT_TRUE(file.ok()) << file.status();
    auto tokenizer = BpeTokenizer::FromGguf(**file);
    EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    model_ = std::make_unique<ScriptedModel>(tokenizer_.get(), script, kToolScript, context);
    model_->set_forward_delay_ms(forward_delay_ms);
    BatchingSchedulerOptions options;
    options.max_queue = max_queue;
    options.max_running = 1;  // one at a time: the queue fills behind it
    scheduler_ = std::make_unique<BatchingScheduler>(model_.get(), options, &metrics_);
    api.model_name = "tiny";
    api.log_requests = false;
    api_ = std::make_unique<OpenAiApi>(api, tokenizer_.get(), scheduler_.get(), &metrics_);
    HttpServerOptions http;
    http.limits.max_body_bytes = 4096;
    server_ = std::make_unique<HttpServer>(
        http, [this](const HttpRequest& r, std::shared_ptr<HttpResponder> w) {
          api_->Handle(r, std::move(w));
        });
    EXPECT_TRUE(server_->Start().ok());
  }
  ~ApiFixture() {
    scheduler_->Shutdown();
    server_->Stop();
  }
  int port() const { return server_->port(); }
  ServerMetrics& metrics() { return metrics_; }

 private:
  std::unique_ptr<BpeTokenizer> tokenizer_;
  std::unique_ptr<ScriptedModel> model_;
  ServerMetrics metrics_;
  std::unique_ptr<BatchingScheduler> scheduler_;
  std::unique_ptr<OpenAiApi> api_;
  std::unique_ptr<HttpServer> server_;
};

const char kChat[] =
    R"({"model":"tiny","messages":[{"role":"user","content":"Hi"}],"temperature":0)";

// The JSON events of an SSE body; checks the framing on the way.
std::vector<json> SseEvents(const std::string& body, bool* saw_done) {
  std::vector<json> events;
  *saw_done = false;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    EXPECT_FALSE(*saw_done) << "event after [DONE]";
    const absl::string_view data = event.substr(6);
    if (data == "[DONE]") {
      *saw_done = true;
      continue;
    }
    events.push_back(json::parse(data));
  }
  EXPECT_TRUE(absl::EndsWith(body, "data: [DONE]\n\n"));
  return events;
}

TEST(OpenAiApiTest, ListsTheModelAndAnswersHealth) {
  ApiFixture f;
  ParsedResponse r = Get(f.port(), "/v1/models");
  ASSERT_EQ(r.status, 200);
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(Get(f.port(), "/health").status, 200);
  EXPECT_EQ(Get(f.port(), "/api/tags").status, 200);
  EXPECT_EQ(json::parse(Get(f.port(), "/api/tags").body)["models"][0]["name"], "tiny");
}

TEST(OpenAiApiTest, ChatCompletionReturnsTheGeneratedMessage) {
  ApiFixture f;
  ParsedResponse r = Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_TRUE(absl::StartsWith(j["id"].get<std::string>(), "chatcmpl-"));
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], kScript);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(),
            j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
}

TEST(OpenAiApiTest, MaxTokensAndStopStrings) {
  ApiFixture f;
  json j = json::parse(
      Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"max_tokens":2})").body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 2);
  j = json::parse(
      Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"stop":["moe","zzz"]})")
          .body);
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello from ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  // ignore_eos: the script's end-of-sequence does not end the reply.
  j = json::parse(Post(f.port(), "/v1/chat/completions",
                       std::string(kChat) + R"(,"max_tokens":40,"ignore_eos":true})")
                      .body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 40);
  ParsedResponse bad =
      Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"ignore_eos":"yes"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("ignore_eos"), std::string::npos) << bad.body;
}

TEST(OpenAiApiTest, StreamsChatAsSseWithRoleFirstAndUsageLast) {
  ApiFixture f;
  ParsedResponse r =
      Post(f.port(), "/v1/chat/completions",
           std::string(kChat) + R"(,"stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type"), "text/event-stream");
  bool done = false;
  std::vector<json> events = SseEvents(r.body, &done);
  ASSERT_TRUE(done);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events[0]["choices"][0]["delta"]["role"], "assistant");
  std::string content;
  std::string id = events[0]["id"];
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_EQ(events[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(events[i]["id"], id);
    EXPECT_TRUE(events[i]["usage"].is_null());
    const json& delta = events[i]["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(content, kScript);
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "stop");
  const json& last = events.back();
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_GT(last["usage"]["completion_tokens"].get<int>(), 0);
}

TEST(OpenAiApiTest, CompletionsAndLogprobs) {
  ApiFixture f;
  ParsedResponse r = Post(f.port(), "/v1/completions",
                          R"({"model":"tiny","prompt":"Say:","max_tokens":3,"logprobs":2,
                              "temperature":0})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  const json& lp = j["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 3u);
  for (const json& v : lp["token_logprobs"]) {
    EXPECT_LE(v.get<double>(), 0.0);
    EXPECT_GT(v.get<double>(), -0.5);  // the scripted token has almost all the mass
  }
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);

  r = Post(f.port(), "/v1/chat/completions",
           std::string(kChat) + R"(,"max_tokens":2,"logprobs":true,"top_logprobs":3})");
  j = json::parse(r.body);
  ASSERT_EQ(j["choices"][0]["logprobs"]["content"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 3u);
}

TEST(OpenAiApiTest, BadInputGetsOpenAiErrorsWithTheRightStatus) {
  ApiFixture f;
  struct Case {
    std::string body;
    int status;
    std::string code;
    std::string param;
  };
  const std::string long_text(2000, 'a');
  const Case cases[] = {
      {"{not json", 400, "invalid_json", ""},
      {"[1,2]", 400, "invalid_json", ""},
      {R"({"messages":[{"role":"user","content":"x"}]})", 400, "missing_required_parameter",
       "model"},
      {R"({"model":"gpt-4","messages":[{"role":"user","content":"x"}]})", 404, "model_not_found",
       "model"},
      {R"({"model":"tiny","messages":[]})", 400, "empty_array", "messages"},
      {R"({"model":"tiny"})", 400, "missing_required_parameter", "messages"},
      {R"({"model":"tiny","messages":"hi"})", 400, "invalid_type", "messages"},
      {R"({"model":"tiny","messages":[{"role":"bot","content":"x"}]})", 400, "invalid_value",
       "messages"},
      {std::string(kChat) + R"(,"temperature":"hot"})", 400, "invalid_type", "temperature"},
      {std::string(kChat) + R"(,"temperature":3})", 400, "invalid_value", "temperature"},
      {std::string(kChat) + R"(,"top_p":1.5})", 400, "invalid_value", "top_p"},
      {std::string(kChat) + R"(,"max_tokens":"10"})", 400, "invalid_type", "max_tokens"},
      {std::string(kChat) + R"(,"max_tokens":0})", 400, "invalid_value", "max_tokens"},
      {std::string(kChat) + R"(,"max_tokens":1000})", 400, "context_length_exceeded", "max_tokens"},
      {std::string(kChat) + R"(,"stop":5})", 400, "invalid_type", "stop"},
      {std::string(kChat) + R"(,"n":17})", 400, "invalid_value", "n"},
      {std::string(kChat) + R"(,"n":0})", 400, "invalid_value", "n"},
      {std::string(kChat) + R"(,"stream":"yes"})", 400, "invalid_type", "stream"},
      {std::string(kChat) + R"(,"top_logprobs":2})", 400, "invalid_value", "top_logprobs"},
      {R"({"model":"tiny","messages":[{"role":"user","content":")" + long_text.substr(0, 300) +
           R"("}]})",
       400, "context_length_exceeded", "messages"},
  };
  for (const Case& c : cases) {
    ParsedResponse r = Post(f.port(), "/v1/chat/completions", c.body);
    EXPECT_EQ(r.status, c.status) << c.body << " → " << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
    EXPECT_EQ(j["error"]["code"], c.code) << c.body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["message"].is_string());
    if (c.param.empty()) {
      EXPECT_TRUE(j["error"]["param"].is_null()) << c.body;
    } else {
      EXPECT_EQ(j["error"]["param"], c.param) << c.body;
    }
  }
  // Oversize body (the server's limit is 4096 bytes).
  ParsedResponse r = Post(f.port(), "/v1/chat/completions",
                          R"({"model":"tiny","messages":[{"role":"user","content":")" +
                              std::string(5000, 'a') + R"("}]})");
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(Get(f.port(), "/v1/nothing").status, 404);
  EXPECT_EQ(Get(f.port(), "/v1/chat/completions").status, 405);
  // Still serving.
  EXPECT_EQ(Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}").status, 200);
  EXPECT_NE(f.metrics().RenderPrometheus().find(
                "moeflow_requests_total{endpoint=\"/v1/chat/completions\",code=\"400\"}"),
            std::string::npos);
}

TEST(OpenAiApiTest, ApiKeyIsRequiredWhenSet) {
  ApiOptions api;
  api.api_key = "sekrit";
  ApiFixture f(kScript, api);
  EXPECT_EQ(Get(f.port(), "/v1/models").status, 401);
  EXPECT_EQ(Get(f.port(), "/v1/models", "Authorization: Bearer wrong\r\n").status, 401);
  EXPECT_EQ(Get(f.port(), "/v1/models", "Authorization: Bearer sekrit\r\n").status, 200);
  EXPECT_EQ(Get(f.port(), "/health").status, 200);
}

TEST(OpenAiApiTest, FullQueueGets429) {
  ApiFixture f(kScript, {}, /*max_queue=*/0);
  ParsedResponse r = Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "rate_limit_exceeded");
}

TEST(OpenAiApiTest, SeveralChoicesForOnePrompt) {
  ApiFixture f;
  ParsedResponse r = Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"n":3})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  ASSERT_EQ(j["choices"].size(), 3u);
  int64_t one = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["message"]["content"], kScript);
    EXPECT_EQ(j["choices"][i]["finish_reason"], "stop");
  }
  ParsedResponse single = Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}");
  one = json::parse(single.body)["usage"]["completion_tokens"].get<int64_t>();
  // The prompt counts once, the completions of every choice.
  EXPECT_EQ(j["usage"]["completion_tokens"].get<int64_t>(), 3 * one);
  EXPECT_EQ(j["usage"]["prompt_tokens"], json::parse(single.body)["usage"]["prompt_tokens"]);

  // Streamed: each choice's role, deltas and finish under its index, one [DONE].
  ParsedResponse s = Post(f.port(), "/v1/completions",
                          R"({"model":"tiny","prompt":"Hi","max_tokens":40,"temperature":0,"n":2,
                              "stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(s.status, 200) << s.body;
  bool done = false;
  std::vector<json> events = SseEvents(s.body, &done);
  ASSERT_TRUE(done);
  std::string text[2];
  int finishes[2] = {0, 0};
  for (const json& e : events) {
    for (const json& c : e["choices"]) {
      const int i = c["index"].get<int>();
      ASSERT_TRUE(i == 0 || i == 1) << e;
      text[i] += c["text"].get<std::string>();
      if (!c["finish_reason"].is_null()) finishes[i]++;
    }
  }
  EXPECT_EQ(text[0], kScript);
  EXPECT_EQ(text[1], kScript);
  EXPECT_EQ(finishes[0], 1);
  EXPECT_EQ(finishes[1], 1);
  EXPECT_EQ(events.back()["usage"]["completion_tokens"].get<int64_t>(), 2 * one);
}

TEST(OpenAiApiTest, ChoicesTheQueueCannotTakeGet429AndNothingElse) {
  // max_queue 1 and 16 choices: whatever the backend runs at once (serial:
  // one; batching: up to 8), a later choice is refused while the first ones
  // still run (20 ms per step); those are cancelled and their callbacks
  // dropped, so the client gets the 429 alone.
  ApiFixture f(kScript, {}, /*max_queue=*/1, /*context=*/96, /*forward_delay_ms=*/20);
  ParsedResponse r = Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"n":16})");
  EXPECT_EQ(r.status, 429) << r.body;
  EXPECT_EQ(json::parse(r.body)["error"]["code"], "rate_limit_exceeded");
  // The server goes on (the cancelled choices ended).
  ParsedResponse next;
  for (int attempt = 0; attempt < 100; ++attempt) {
    next = Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}");
    if (next.status != 429) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(next.status, 200) << next.body;
  EXPECT_EQ(json::parse(next.body)["choices"][0]["message"]["content"], kScript);
}

const char kToolsRequest[] =
    R"({"model":"tiny","temperature":0,"messages":[{"role":"user","content":"Weather?"}],
        "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])";

TEST(OpenAiApiTest, ToolCallsAreParsed) {
  ApiFixture f(kScript, {}, 8, /*context=*/2048);
  ParsedResponse r = Post(f.port(), "/v1/chat/completions", std::string(kToolsRequest) + "}");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  const json& message = j["choices"][0]["message"];
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_TRUE(message["content"].is_null()) << message;
  ASSERT_EQ(message["tool_calls"].size(), 1u);
  EXPECT_EQ(message["tool_calls"][0]["type"], "function");
  EXPECT_EQ(message["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(json::parse(message["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            json({{"city", "Paris"}}));

  r = Post(f.port(), "/v1/chat/completions", std::string(kToolsRequest) + R"(,"stream":true})");
  bool done = false;
  std::vector<json> events = SseEvents(r.body, &done);
  ASSERT_TRUE(done);
  int calls = 0;
  for (const json& e : events) {
    const json& delta = e["choices"][0]["delta"];
    if (delta.contains("tool_calls")) {
      calls++;
      EXPECT_EQ(delta["tool_calls"][0]["index"], 0);
      EXPECT_EQ(delta["tool_calls"][0]["function"]["name"], "get_weather");
    }
    if (delta.contains("content")) {
      EXPECT_EQ(delta["content"].get<std::string>().find("tool"), std::string::npos) << delta;
    }
  }
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(events.back()["choices"][0]["finish_reason"], "tool_calls");
}

TEST(OpenAiApiTest, ReasoningIsSplitOff) {
  ApiFixture f("<think>\nLet me think.\n</think>\n\nThe answer.");
  json j = json::parse(Post(f.port(), "/v1/chat/completions", std::string(kChat) + "}").body);
  EXPECT_EQ(j["choices"][0]["message"]["reasoning_content"], "Let me think.");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "The answer.");
  ParsedResponse r =
      Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"stream":true})");
  bool done = false;
  std::string reasoning, content;
  for (const json& e : SseEvents(r.body, &done)) {
    const json& delta = e["choices"][0]["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"];
    if (delta.contains("content")) content += delta["content"];
  }
  EXPECT_EQ(reasoning, "Let me think.\n");
  EXPECT_EQ(content, "The answer.");
}

TEST(OpenAiApiTest, OllamaChatAndGenerateStreamNdjson) {
  ApiFixture f;
  ParsedResponse r = Post(f.port(), "/api/chat",
                          R"({"model":"tiny","messages":[{"role":"user","content":"Hi"}],
                              "options":{"temperature":0}})");
  ASSERT_EQ(r.status, 200) << r.body;
  std::string content;
  std::vector<std::string> lines = absl::StrSplit(r.body, '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 2u);
  for (size_t i = 0; i < lines.size(); ++i) {
    json j = json::parse(lines[i]);
    EXPECT_EQ(j["done"], i + 1 == lines.size());
    content += j["message"]["content"].get<std::string>();
  }
  EXPECT_EQ(content, kScript);
  EXPECT_EQ(json::parse(lines.back())["done_reason"], "stop");

  r = Post(f.port(), "/api/generate",
           R"({"model":"tiny:latest","prompt":"Hi","stream":false,"options":{"temperature":0}})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["response"], kScript);
  EXPECT_TRUE(j["done"].get<bool>());
  EXPECT_GT(j["eval_count"].get<int>(), 0);

  r = Post(f.port(), "/api/chat", R"({"model":"nope","messages":[]})");
  EXPECT_EQ(r.status, 404);
  EXPECT_TRUE(json::parse(r.body)["error"].is_string());
}

// Ollama's own shapes: tool calls as message.tool_calls with parsed
// arguments (streamed or not), and an empty /api/generate prompt answered
// at once with the "load" reply.
TEST(OpenAiApiTest, OllamaToolCallsAndTheLoadReply) {
  ApiFixture f(kScript, {}, 8, /*context=*/2048);
  const std::string tools =
      R"({"model":"tiny","options":{"temperature":0},
          "messages":[{"role":"user","content":"Weather?"}],
          "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather",
          "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])";
  for (const char* stream : {"false", "true"}) {
    SCOPED_TRACE(stream);
    ParsedResponse r = Post(f.port(), "/api/chat", tools + ",\"stream\":" + stream + "}");
    ASSERT_EQ(r.status, 200) << r.body;
    std::vector<std::string> lines = absl::StrSplit(r.body, '\n', absl::SkipEmpty());
    ASSERT_FALSE(lines.empty());
    const json last = json::parse(lines.back());
    EXPECT_TRUE(last["done"].get<bool>());
    EXPECT_EQ(last["done_reason"], "stop");
    ASSERT_EQ(last["message"]["tool_calls"].size(), 1u) << last;
    EXPECT_EQ(last["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    EXPECT_EQ(last["message"]["tool_calls"][0]["function"]["arguments"], json({{"city", "Paris"}}));
  }
  ParsedResponse r = Post(f.port(), "/api/generate", R"({"model":"tiny","prompt":""})");
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = json::parse(r.body);
  EXPECT_EQ(j["done_reason"], "load");
  EXPECT_TRUE(j["done"].get<bool>());
}

TEST(OpenAiApiTest, ClientDisconnectCancelsTheRequest) {
  // A long script and a long max_tokens; the client leaves after the head.
  ApiFixture f(std::string(200, 'x'), {}, 8, /*context=*/4096, /*forward_delay_ms=*/20);
  const int fd = testing::ConnectLocal(f.port());
  testing::WriteAll(
      fd, testing::PostRequest("/v1/chat/completions", std::string(kChat) + R"(,"stream":true})"));
  char buffer[256];
  ASSERT_GT(read(fd, buffer, sizeof(buffer)), 0);
  close(fd);
  const auto start = std::chrono::steady_clock::now();
  // The next request is served once the cancelled one ended.
  ParsedResponse r =
      Post(f.port(), "/v1/chat/completions", std::string(kChat) + R"(,"max_tokens":2})");
  EXPECT_EQ(r.status, 200);
  // 200 tokens at 20 ms would take 4 s; cancelled, it ends within a step.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  const std::string metrics = f.metrics().RenderPrometheus();
  EXPECT_NE(metrics.find("code=\"499\"} 1"), std::string::npos) << metrics;
}

}  // namespace
}  // namespace moeflow::server
