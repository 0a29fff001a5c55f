// `moeflow launch` with http_address serves the OpenAI / Ollama HTTP API of
// `moeflow serve` over the coordinator and its worker processes: a greedy
// completion equals the control service's Generate for the same prompt; a
// control-service request run between two HTTP requests (both go through
// the launcher's one scheduler and its paged KV cache) does not change the
// second HTTP answer; /v1/models and /health answer; a
// non-loopback http_address without --api_key and a malformed --http_address
// are refused; moeflowctl drain and status cover the HTTP requests; n = 2
// and a response_format work over the coordinator.
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/dataflow/launch_process.h"
#include "tests/server/http_test_client.h"

namespace moeflow {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";
constexpr char kPrompt[] = "The quick brown fox";

std::string ControlGenerate(testing::LaunchProcess& launch, const std::string& prompt, int n) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  proto::GenerateRequest request;
  request.set_prompt(prompt);
  request.set_max_tokens(n);
  auto reader = launch.stub().Generate(&ctx, request);
  proto::GenerateResponse r;
  std::string text;
  while (reader->Read(&r)) {
    if (r.has_piece()) text += r.piece().text();
  }
  const grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  return text;
}

// The text of a greedy /v1/completions of `prompt` (n tokens, no stop at EOS).
std::string HttpComplete(int port, const std::string& prompt, int n) {
  const nlohmann::json body = {{"model", "tiny-v3.q8_0"},
                               {"prompt", prompt},
                               {"max_tokens", n},
                               {"temperature", 0},
                               {"ignore_eos", true}};
  server::testing::ParsedResponse r = server::testing::Post(port, "/v1/completions", body.dump());
  EXPECT_EQ(r.status, 200) << r.body;
  if (r.status != 200) return "";
  const nlohmann::json reply = nlohmann::json::parse(r.body);
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "length") << r.body;
  EXPECT_EQ(reply["usage"]["completion_tokens"], n) << r.body;
  return reply["choices"][0]["text"].get<std::string>();
}

TEST(LaunchHttpTest, CompletionsMatchTheControlServiceAcrossInterleavedRequests) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.http_address = "127.0.0.1:0";
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  ASSERT_GT(launch.http_port(), 0);

  const server::testing::ParsedResponse health =
      server::testing::Get(launch.http_port(), "/health");
  EXPECT_EQ(health.status, 200);
  const server::testing::ParsedResponse models =
      server::testing::Get(launch.http_port(), "/v1/models");
  EXPECT_EQ(models.status, 200);
  EXPECT_NE(models.body.find("\"tiny-v3.q8_0\""), std::string::npos) << models.body;

  const std::string first = HttpComplete(launch.http_port(), kPrompt, 12);
  EXPECT_FALSE(first.empty());
  // n = 2 over the coordinator: two greedy choices, each the same text.
  nlohmann::json body = {{"model", "tiny-v3.q8_0"}, {"prompt", kPrompt},  {"max_tokens", 12},
                         {"temperature", 0},        {"ignore_eos", true}, {"n", 2}};
  server::testing::ParsedResponse two =
      server::testing::Post(launch.http_port(), "/v1/completions", body.dump());
  ASSERT_EQ(two.status, 200) << two.body;
  const nlohmann::json choices = nlohmann::json::parse(two.body)["choices"];
  ASSERT_EQ(choices.size(), 2u) << two.body;
  EXPECT_EQ(choices[0]["text"], first);
  EXPECT_EQ(choices[1]["text"], first);
  // A response_format reaches the coordinator's sampler: the document ends
  // (EOS where it is complete) and has the schema's shape.
  body = {{"model", "tiny-v3.q8_0"},
          {"prompt", kPrompt},
          {"max_tokens", 200},
          {"temperature", 0},
          {"response_format",
           {{"type", "json_schema"},
            {"json_schema",
             {{"name", "flag"},
              {"schema",
               {{"type", "object"},
                {"properties", {{"ok", {{"type", "boolean"}}}}},
                {"required", {"ok"}},
                {"additionalProperties", false}}}}}}}};
  server::testing::ParsedResponse shaped =
      server::testing::Post(launch.http_port(), "/v1/completions", body.dump());
  ASSERT_EQ(shaped.status, 200) << shaped.body;
  const nlohmann::json choice = nlohmann::json::parse(shaped.body)["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "stop") << shaped.body;
  const nlohmann::json doc =
      nlohmann::json::parse(choice["text"].get<std::string>(), nullptr, false);
  ASSERT_TRUE(doc.is_object()) << shaped.body;
  EXPECT_EQ(doc.size(), 1u);
  EXPECT_TRUE(doc["ok"].is_boolean()) << shaped.body;
  // The control service runs another sequence through the same scheduler...
  const std::string other = ControlGenerate(launch, "A completely different prompt", 6);
  EXPECT_FALSE(other.empty());
  // ...and the HTTP side still answers the same (its prompt's published
  // blocks are reused or recomputed, never another sequence's).
  EXPECT_EQ(HttpComplete(launch.http_port(), kPrompt, 12), first);
  // The control service agrees with the HTTP API (EOS never came within 12
  // tokens above: finish_reason "length").
  EXPECT_EQ(ControlGenerate(launch, kPrompt, 12), first);
  EXPECT_EQ(launch.Stop(10000), 0);
}

// moeflowctl drain covers the HTTP API: a streaming request in flight ends
// (finished or cancelled at the drain's timeout, counted in the reply) and
// is well-formed; a new HTTP request is answered 503.
TEST(LaunchHttpTest, DrainCoversHttpRequests) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.http_address = "127.0.0.1:0";
  spec.kv_cache_tokens = 4096;
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  const nlohmann::json body = {{"model", "tiny-v3.q8_0"}, {"prompt", kPrompt},
                               {"max_tokens", 3000},      {"temperature", 0},
                               {"ignore_eos", true},      {"stream", true}};
  const int fd = server::testing::ConnectLocal(launch.http_port());
  ASSERT_GE(fd, 0);
  server::testing::WriteAll(fd, server::testing::PostRequest("/v1/completions", body.dump()));
  // The request runs once its first event is here.
  std::string head;
  char buffer[4096];
  while (head.find("data: ") == std::string::npos) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    ASSERT_GT(n, 0) << head;
    head.append(buffer, static_cast<size_t>(n));
  }
  {
    grpc::ClientContext status_ctx;
    status_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    proto::StatusResponse status;
    ASSERT_TRUE(launch.stub().Status(&status_ctx, {}, &status).ok());
    EXPECT_EQ(status.http_requests(), 1);
    EXPECT_EQ(status.active_requests(), 0);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  proto::DrainRequest drain;
  drain.set_timeout_ms(100);
  proto::DrainResponse drained;
  const grpc::Status s = launch.stub().Drain(&ctx, drain, &drained);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(drained.requests_cancelled() + drained.requests_finished(), 1) << drained.DebugString();
  const std::string rest = head + server::testing::ReadToEof(fd);
  close(fd);
  EXPECT_NE(rest.find("data: [DONE]"), std::string::npos) << rest.substr(rest.size() - 300);
  const server::testing::ParsedResponse refused = server::testing::Post(
      launch.http_port(), "/v1/completions",
      nlohmann::json({{"model", "tiny-v3.q8_0"}, {"prompt", kPrompt}, {"max_tokens", 2}}).dump());
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_NE(refused.body.find("draining"), std::string::npos) << refused.body;
  EXPECT_EQ(launch.Stop(10000), 0);
}

// `moeflow launch` on a topology of `yaml_tail` (after model_path) with
// `flags`, run to its exit.
testing::CommandExit RunLaunchToExit(const std::string& name, const std::string& yaml_tail,
                                     const std::string& flags) {
  return testing::RunToExit(absl::StrCat(
      testing::Runfile("cli/moeflow"), " launch ",
      testing::WriteTempFile(name + ".yaml", absl::StrCat("model_path: ", kModel, "\n", yaml_tail)),
      " ", flags));
}

TEST(LaunchHttpTest, NonLoopbackHttpWithoutApiKeyAndMalformedAddressAreRefused) {
  constexpr char kWorkers[] = "gpu_workers: [{backend: cpu}]\nexpert_workers: [{numa_node: 0}]\n";
  testing::CommandExit e =
      RunLaunchToExit("public_http", absl::StrCat("http_address: 0.0.0.0:0\n", kWorkers), "");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("http_address 0.0.0.0 is not a loopback address: give "
                               "--api-key"),
            std::string::npos)
      << e.stderr_text;
  e = RunLaunchToExit("bad_http", kWorkers, "--http_address=localhost");
  EXPECT_EQ(e.code, 2);
  EXPECT_NE(e.stderr_text.find("--http_address=localhost: not host:port"), std::string::npos)
      << e.stderr_text;
}

}  // namespace
}  // namespace moeflow
