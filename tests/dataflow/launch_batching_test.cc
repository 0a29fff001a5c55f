// `moeflow launch` batches like `moeflow serve` (issue 15): greedy requests
// sent at once through the launcher's one scheduler give, each, the text of
// that request alone on the single-process engine (TextGenerator over the
// LocalTopology) — for every topology: the CPU gpu worker inside the
// coordinator or in a process of its own, one or two expert workers with
// placement replicate, shard and slice on a simulated 2-NUMA host, an
// expert worker started by hand and reached over UCX tcp. HTTP and
// moeflowctl requests sent together batch together and answer as alone; a
// prompt sent again reuses its KV blocks (cached_tokens > 0) and answers the
// same; 32 streaming clients at once all get their whole stream.
#include <sys/wait.h>

#include <cctype>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "generation/text_generator.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/dataflow/launch_process.h"
#include "tests/server/http_test_client.h"

namespace moeflow {
namespace {

namespace http = server::testing;
constexpr char kModel[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";
constexpr char kModelName[] = "tiny-v3.q8_0";
constexpr int kMaxTokens = 16;

// Eight prompts of different lengths: two are longer than the step (64
// tokens), so their prefill goes in chunks beside the others' decode.
std::vector<std::string> Prompts() {
  std::string long_a = "A list of colors:";
  for (int i = 0; i < 40; ++i) absl::StrAppend(&long_a, " red green blue", i % 7);
  std::string long_b = "Counting sheep";
  for (int i = 0; i < 30; ++i) absl::StrAppend(&long_b, ", sheep number ", i);
  return {"The quick brown fox",
          "Once upon a time in a land far away",
          "1, 2, 3, 4,",
          long_a,
          "Hello",
          "The capital of France is",
          long_b,
          "def fibonacci(n):"};
}

// Greedy text of `prompt` alone on the single-process engine, `max_tokens`
// tokens or up to EOS (unless `ignore_eos`), as the HTTP API tokenizes it.
class Reference {
 public:
  Reference() {
    TextGeneratorOptions options;
    options.topology.n_threads = 1;
    options.context_tokens = 1024;
    auto g = TextGenerator::Open(kModel, options);
    EXPECT_TRUE(g.ok()) << g.status();
    if (g.ok()) generator_ = std::move(*g);
  }
  std::string Text(const std::string& prompt, int max_tokens, bool ignore_eos) {
    if (generator_ == nullptr) return "<no reference>";
    const BpeTokenizer& tokenizer = generator_->tokenizer();
    const std::vector<int32_t> tokens = tokenizer.Encode(prompt, tokenizer.add_bos());
    sampling::SamplerOptions greedy;
    greedy.temperature = 0.f;
    sampling::StopOptions stop;
    stop.max_tokens = max_tokens;
    GenerateFlags flags;
    flags.ignore_eos = ignore_eos;
    auto r = generator_->Generate(tokens, greedy, stop, nullptr, flags);
    EXPECT_TRUE(r.ok()) << r.status();
    // As the API sends it: bytes that are not UTF-8 (a random-weight model
    // makes them) become U+FFFD (server/api_json.cc's Dump; the control
    // service replaces them the same way).
    const std::string text = r.ok() ? r->text : "<failed>";
    return nlohmann::json::parse(
               nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
        .get<std::string>();
  }

 private:
  std::unique_ptr<TextGenerator> generator_;
};

struct Completion {
  int status = 0;
  std::string text;
  int64_t completion_tokens = -1;
  int64_t cached_tokens = -1;
  std::string body;
};

Completion HttpComplete(int port, const std::string& prompt, int max_tokens, bool ignore_eos) {
  const nlohmann::json body = {{"model", kModelName},
                               {"prompt", prompt},
                               {"max_tokens", max_tokens},
                               {"temperature", 0},
                               {"ignore_eos", ignore_eos}};
  const http::ParsedResponse r = http::Post(port, "/v1/completions", body.dump());
  Completion c;
  c.status = r.status;
  c.body = r.body;
  if (r.status != 200) return c;
  const nlohmann::json reply = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded()) return c;
  c.text = reply["choices"][0].value("text", "");
  c.completion_tokens = reply["usage"].value("completion_tokens", int64_t{-1});
  c.cached_tokens = reply["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t{-1});
  return c;
}

// Sends every prompt at once (one thread each) and returns the answers in order.
std::vector<Completion> HttpAtOnce(int port, const std::vector<std::string>& prompts,
                                   int max_tokens, bool ignore_eos) {
  std::vector<Completion> out(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back(
        [&, i] { out[i] = HttpComplete(port, prompts[i], max_tokens, ignore_eos); });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

// What `moeflowctl generate` prints for `prompt` (greedy, `max_tokens`):
// the text, without the newline it ends with; `ok` false when it failed.
std::string MoeflowctlGenerate(const std::string& address, const std::string& prompt,
                               int max_tokens, bool* ok) {
  EXPECT_EQ(prompt.find('\''), std::string::npos);
  const std::string command = absl::StrCat(
      testing::Runfile("cli/moeflowctl"), " --addr=", address, " --max_tokens=", max_tokens,
      " --temperature=0 --timeout_ms=120000 generate --prompt='", prompt, "' 2>/dev/null");
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  if (pipe == nullptr) {
    *ok = false;
    return out;
  }
  char buffer[4096];
  size_t n = 0;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  const int status = pclose(pipe);
  *ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (absl::EndsWith(out, "\n")) out.pop_back();
  return out;
}

testing::LaunchSpec BatchingSpec() {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.http_address = "127.0.0.1:0";
  spec.kv_cache_tokens = 8192;
  return spec;
}

struct Topology {
  const char* name;
  const char* placement;
  int expert_workers;
  bool gpu_separate_process;
  bool remote_tcp;  // the first expert worker started by hand, over UCX tcp
};

class LaunchBatchingTopologyTest : public ::testing::TestWithParam<Topology> {};

TEST_P(LaunchBatchingTopologyTest,
       EightGreedyRequestsAtOnceEqualEachAloneOnTheSingleProcessEngine) {
  const Topology& t = GetParam();
  const std::vector<std::string> prompts = Prompts();
  std::vector<std::string> expected;
  {
    Reference reference;
    for (const std::string& p : prompts) expected.push_back(reference.Text(p, kMaxTokens, true));
  }
  testing::LaunchSpec spec = BatchingSpec();
  spec.placement = t.placement;
  spec.expert_workers = t.expert_workers;
  spec.gpu_separate_process = t.gpu_separate_process;
  std::unique_ptr<testing::HandStartedWorker> remote;
  if (t.remote_tcp) {
    const std::string token_file = testing::WriteTempFile("batching_token", "batching-secret\n");
    remote = std::make_unique<testing::HandStartedWorker>(
        "0.0.0.0:0", std::vector<std::string>{},
        std::vector<std::string>{"--token_file=" + token_file});
    ASSERT_TRUE(remote->ok()) << remote->error();
    spec.worker_token_file = token_file;
    spec.expert_addresses = {absl::StrCat("127.0.0.1:", remote->port())};
    spec.ucx_transports = "tcp";
  }
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  const std::vector<Completion> got =
      HttpAtOnce(launch.http_port(), prompts, kMaxTokens, /*ignore_eos=*/true);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(absl::StrCat(t.name, ", prompt ", i));
    ASSERT_EQ(got[i].status, 200) << got[i].body;
    EXPECT_EQ(got[i].completion_tokens, kMaxTokens) << got[i].body;
    EXPECT_FALSE(expected[i].empty());
    EXPECT_EQ(got[i].text, expected[i]);
  }
  // How much the steps held (printed: how the requests overlapped depends on
  // when their threads got the cores).
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::MetricsResponse metrics;
  ASSERT_TRUE(launch.stub().Metrics(&ctx, proto::MetricsRequest(), &metrics).ok());
  std::printf("%s: 8 requests at once, median tokens per step %d\n", t.name,
              metrics.batch_tokens_p50());
  EXPECT_EQ(launch.Stop(10000), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Topologies, LaunchBatchingTopologyTest,
    ::testing::Values(
        Topology{"in-process gpu worker, 2 experts replicate", "replicate", 2, false, false},
        Topology{"separate gpu worker process, 2 experts shard", "shard", 2, true, false},
        Topology{"1 expert worker", "replicate", 1, false, false},
        Topology{"2 experts shard", "shard", 2, false, false},
        Topology{"2 experts slice", "slice", 2, false, false},
        Topology{"remote expert worker over tcp, shard", "shard", 2, false, true}),
    [](const ::testing::TestParamInfo<Topology>& info) {
      std::string name;
      for (char c : std::string(info.param.name)) {
        if (std::isalnum(static_cast<unsigned char>(c))) name += c;
      }
      return name;
    });

// HTTP and moeflowctl (the control service's Generate) requests sent at the
// same time go through the one scheduler together; each answers the
// single-process engine's text for its prompt (stopping at EOS, as
// moeflowctl does).
TEST(LaunchBatchingTest, HttpAndMoeflowctlRequestsTogetherAnswerAsAlone) {
  const std::vector<std::string> prompts = Prompts();
  std::vector<std::string> expected;
  {
    Reference reference;
    for (const std::string& p : prompts) expected.push_back(reference.Text(p, kMaxTokens, false));
  }
  testing::LaunchProcess launch(BatchingSpec());
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  std::vector<std::string> got(prompts.size());
  std::vector<int> ok(prompts.size(), 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      if (i % 2 == 0) {
        const Completion c = HttpComplete(launch.http_port(), prompts[i], kMaxTokens, false);
        ok[i] = c.status == 200;
        got[i] = c.status == 200 ? c.text : c.body;
      } else {
        bool fine = false;
        got[i] = MoeflowctlGenerate(launch.address(), prompts[i], kMaxTokens, &fine);
        ok[i] = fine;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(absl::StrCat(i % 2 == 0 ? "HTTP" : "moeflowctl", ", prompt ", i));
    EXPECT_TRUE(ok[i]) << got[i];
    EXPECT_EQ(got[i], expected[i]);
  }
  EXPECT_EQ(launch.Stop(10000), 0);
}

// A prompt sent again reuses the KV blocks the first request published
// (usage.prompt_tokens_details.cached_tokens > 0: whole 16-token blocks)
// and answers the same text; so does a prompt that shares only its start.
TEST(LaunchBatchingTest, PrefixReuseReportsCachedTokensAndAnswersTheSame) {
  const std::string prompt = Prompts()[3];  // ~160 tokens: several whole blocks
  const std::string extended = prompt + " and then purple";
  std::string expected, expected_extended;
  {
    Reference reference;
    expected = reference.Text(prompt, kMaxTokens, true);
    expected_extended = reference.Text(extended, kMaxTokens, true);
  }
  testing::LaunchProcess launch(BatchingSpec());
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  const Completion first = HttpComplete(launch.http_port(), prompt, kMaxTokens, true);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.cached_tokens, 0) << first.body;
  EXPECT_EQ(first.text, expected);
  const Completion again = HttpComplete(launch.http_port(), prompt, kMaxTokens, true);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_GT(again.cached_tokens, 0) << again.body;
  EXPECT_EQ(again.cached_tokens % 16, 0) << again.body;
  EXPECT_EQ(again.text, expected);
  const Completion longer = HttpComplete(launch.http_port(), extended, kMaxTokens, true);
  ASSERT_EQ(longer.status, 200) << longer.body;
  EXPECT_GT(longer.cached_tokens, 0) << longer.body;
  EXPECT_EQ(longer.text, expected_extended);
  std::printf("prefix reuse: cached_tokens %lld, then %lld (extended prompt)\n",
              static_cast<long long>(again.cached_tokens),
              static_cast<long long>(longer.cached_tokens));
  EXPECT_EQ(launch.Stop(10000), 0);
}

// One streamed /v1/completions as the client reads it.
struct Stream {
  int status = 0;
  std::string text;    // the concatenated choices[0].text
  int64_t events = 0;  // data: {...} events with a choice
  int64_t completion_tokens = -1;
  bool done = false;     // ended with data: [DONE]
  bool error = false;    // an error event came
  std::string raw_tail;  // for messages
};

Stream StreamComplete(int port, const std::string& prompt, int max_tokens) {
  const nlohmann::json body = {{"model", kModelName},
                               {"prompt", prompt},
                               {"max_tokens", max_tokens},
                               {"temperature", 0},
                               {"ignore_eos", true},
                               {"stream", true},
                               {"stream_options", {{"include_usage", true}}}};
  Stream s;
  const int fd = http::ConnectLocal(port);
  if (fd < 0) return s;
  http::WriteAll(fd, http::PostRequest("/v1/completions", body.dump()));
  const std::string raw = http::ReadToEof(fd);
  close(fd);
  s.raw_tail = raw.substr(raw.size() > 400 ? raw.size() - 400 : 0);
  const std::vector<http::ParsedResponse> r = http::ParseResponses(raw);
  if (r.size() != 1) return s;
  s.status = r[0].status;
  s.done = absl::EndsWith(r[0].body, "data: [DONE]\n\n");
  for (absl::string_view line : absl::StrSplit(r[0].body, '\n', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&line, "data: ") || line == "[DONE]") continue;
    const nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
    if (event.is_discarded() || event.contains("error")) {
      s.error = true;
      continue;
    }
    if (!event["choices"].empty()) {
      s.text += event["choices"][0].value("text", "");
      ++s.events;
    }
    if (event.contains("usage") && event["usage"].is_object()) {
      s.completion_tokens = event["usage"].value("completion_tokens", int64_t{-1});
    }
  }
  return s;
}

// 32 streaming clients at once on loopback (the scheduler runs 8 at a time,
// the rest wait in its bounded queue): every stream is whole — status 200,
// the usage chunk with every token, [DONE], no error event — and its text
// is the single-process engine's for that prompt.
TEST(LaunchBatchingTest, ThirtyTwoStreamingClientsLoseNothing) {
  constexpr int kClients = 32;
  constexpr int kStreamTokens = 24;
  const std::vector<std::string> prompts = Prompts();
  std::vector<std::string> expected;
  {
    Reference reference;
    for (const std::string& p : prompts) expected.push_back(reference.Text(p, kStreamTokens, true));
  }
  testing::LaunchProcess launch(BatchingSpec());
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(30000));
  http::ReadTimeoutSeconds() = 120;
  std::vector<Stream> streams(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      streams[static_cast<size_t>(i)] = StreamComplete(
          launch.http_port(), prompts[static_cast<size_t>(i) % prompts.size()], kStreamTokens);
    });
  }
  for (std::thread& t : threads) t.join();
  http::ReadTimeoutSeconds() = 20;
  int whole = 0;
  for (int i = 0; i < kClients; ++i) {
    SCOPED_TRACE(absl::StrCat("client ", i));
    const Stream& s = streams[static_cast<size_t>(i)];
    EXPECT_EQ(s.status, 200) << s.raw_tail;
    EXPECT_TRUE(s.done) << s.raw_tail;
    EXPECT_FALSE(s.error) << s.raw_tail;
    EXPECT_EQ(s.completion_tokens, kStreamTokens) << s.raw_tail;
    EXPECT_EQ(s.text, expected[static_cast<size_t>(i) % prompts.size()]);
    whole += s.status == 200 && s.done && !s.error && s.completion_tokens == kStreamTokens &&
             s.text == expected[static_cast<size_t>(i) % prompts.size()];
  }
  std::printf("streaming soak: %d of %d streams whole\n", whole, kClients);
  EXPECT_EQ(launch.Stop(10000), 0);
}

}  // namespace
}  // namespace moeflow
