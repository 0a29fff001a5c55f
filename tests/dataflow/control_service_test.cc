// End to end on `moeflow launch`'s ControlService: Generate with chat input
// renders the messages with the model's chat template exactly as `moeflow
// generate --chat` (ChatSession) does (same prompt tokens, same greedy text);
// Drain lets requests finish and cancels those still running at its timeout.
#include <string>
#include <thread>

#include "absl/time/clock.h"
#include "generation/text_generator.h"
#include "gtest/gtest.h"
#include "tests/dataflow/launch_process.h"

namespace moeflow {
namespace {

constexpr char kModel[] = "tests/data/llamacpp/tiny-v3/tiny-v3.q8_0.gguf";
constexpr char kUserText[] = "What is the capital of France?";

TEST(ControlChatTest, ChatInputMatchesSingleProcessChatSession) {
  TextGeneratorOptions options;
  options.topology.n_threads = 1;
  options.context_tokens = 512;
  auto generator = TextGenerator::Open(kModel, options);
  ASSERT_TRUE(generator.ok()) << generator.status();
  ChatSession session(generator->get(), ChatSessionOptions());
  sampling::SamplerOptions greedy;
  greedy.temperature = 0.f;
  sampling::StopOptions stop;
  stop.max_tokens = 12;
  if ((*generator)->tokenizer().eos_id() >= 0) {
    stop.stop_tokens.push_back((*generator)->tokenizer().eos_id());
  }
  auto turn = session.Send(kUserText, greedy, stop, nullptr);
  ASSERT_TRUE(turn.ok()) << turn.status();

  testing::LaunchSpec spec;
  spec.model_path = kModel;
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  proto::GenerateRequest request;
  proto::ChatMessage* message = request.mutable_chat()->add_messages();
  message->set_role("user");
  message->set_content(kUserText);
  request.set_max_tokens(12);
  auto reader = launch.stub().Generate(&ctx, request);
  proto::GenerateResponse r;
  std::string text;
  int32_t prompt_tokens = -1;
  while (reader->Read(&r)) {
    if (r.has_piece()) text += r.piece().text();
    if (r.has_final()) prompt_tokens = r.final().usage().prompt_tokens();
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(prompt_tokens, turn->generation.prompt_tokens);
  EXPECT_EQ(text, turn->generation.text);
  EXPECT_FALSE(text.empty());
}

TEST(ControlChatTest, UnknownRoleIsInvalidArgument) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  proto::GenerateRequest request;
  proto::ChatMessage* message = request.mutable_chat()->add_messages();
  message->set_role("wizard");
  message->set_content("hi");
  auto reader = launch.stub().Generate(&ctx, request);
  proto::GenerateResponse r;
  while (reader->Read(&r)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("messages[0].role"), std::string::npos) << s.error_message();
}

TEST(ControlDrainTest, DrainCancelsWhatOutlivesItsTimeoutThenRefusesNewRequests) {
  testing::LaunchSpec spec;
  spec.model_path = kModel;
  spec.kv_cache_tokens = 4096;
  testing::LaunchProcess launch(spec);
  ASSERT_TRUE(launch.ok()) << launch.error();
  ASSERT_TRUE(launch.WaitServing(20000));

  grpc::ClientContext gen_ctx;
  gen_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  proto::GenerateRequest long_request;
  long_request.set_prompt("Once upon a time");
  long_request.set_max_tokens(3000);
  auto reader = launch.stub().Generate(&gen_ctx, long_request);
  proto::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));  // running

  proto::DrainResponse drained;
  grpc::Status drain_status;
  std::thread drain([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    proto::DrainRequest request;
    request.set_timeout_ms(300);
    drain_status = launch.stub().Drain(&ctx, request, &drained);
  });
  proto::FinishReason reason = proto::FINISH_REASON_UNSPECIFIED;
  while (reader->Read(&r)) {
    if (r.has_final()) reason = r.final().finish_reason();
  }
  grpc::Status s = reader->Finish();
  drain.join();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(reason, proto::FINISH_REASON_CANCELLED);
  ASSERT_TRUE(drain_status.ok()) << drain_status.error_message();
  EXPECT_EQ(drained.requests_cancelled(), 1);
  EXPECT_EQ(drained.requests_finished(), 0);

  grpc::ClientContext status_ctx;
  status_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  proto::StatusResponse status;
  ASSERT_TRUE(launch.stub().Status(&status_ctx, {}, &status).ok());
  EXPECT_EQ(status.state(), proto::COORDINATOR_STATE_DRAINED);

  grpc::ClientContext ctx2;
  ctx2.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  auto refused = launch.stub().Generate(&ctx2, long_request);
  while (refused->Read(&r)) {
  }
  EXPECT_EQ(refused->Finish().error_code(), grpc::UNAVAILABLE);
}

}  // namespace
}  // namespace moeflow
