// `moeflow generate`: one prompt in, generated text streamed to stdout.
//
// stdout carries only the generated text (flushed per released piece; a final
// newline only when stdout is a terminal), so runs can be compared byte for
// byte; everything else — load progress, the chat-template fallback, the
// token counts and speeds, the finish reason — goes to stderr.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/open_generator.h"
#include "generation/text_generator.h"

ABSL_FLAG(std::string, prompt, "", "the prompt text");
ABSL_FLAG(std::string, prompt_file, "", "read the prompt from this file (instead of --prompt)");
ABSL_FLAG(bool, chat, false,
          "render the prompt as one user message through the model's chat template");

namespace moeflow {
namespace {

int Usage(const std::string& message) { return ReportUsageError("generate", message); }

int Failure(const absl::Status& status) { return ReportFailure("generate", status); }

int RunGenerate(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("unexpected argument \"" + args[0] + "\"");
  const std::string model = absl::GetFlag(FLAGS_model);
  const std::string prompt_flag = absl::GetFlag(FLAGS_prompt);
  const std::string prompt_file = absl::GetFlag(FLAGS_prompt_file);
  if (model.empty()) return Usage("--model is required");
  if (prompt_flag.empty() && prompt_file.empty()) {
    return Usage("--prompt or --prompt-file is required");
  }
  if (!prompt_flag.empty() && !prompt_file.empty()) {
    return Usage("give --prompt or --prompt-file, not both");
  }
  std::string prompt = prompt_flag;
  if (!prompt_file.empty()) {
    std::ifstream in(prompt_file, std::ios::binary);
    std::stringstream text;
    if (in) text << in.rdbuf();
    if (!in || in.bad()) return Usage("--prompt-file=" + prompt_file + ": cannot read the file");
    prompt = text.str();
    if (prompt.empty()) return Usage("--prompt-file=" + prompt_file + ": the file is empty");
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1) return Usage(absl::StrFormat("--threads=%d: must be >= 1", threads));
  absl::StatusOr<sampling::SamplerOptions> sampler = SamplerOptionsFromFlags();
  if (!sampler.ok()) return Usage(std::string(sampler.status().message()));
  absl::StatusOr<sampling::StopOptions> stop = StopOptionsFromFlags();
  if (!stop.ok()) return Usage(std::string(stop.status().message()));

  auto generator = OpenGeneratorFromFlags(model);
  if (!generator.ok()) return Failure(generator.status());
  std::vector<int32_t> tokens;
  if (absl::GetFlag(FLAGS_chat)) {
    ChatSessionOptions chat_options;
    ChatSession session(generator->get(), chat_options);
    auto rendered = session.RenderPrompt(prompt, /*opens_think=*/nullptr);
    if (!rendered.ok()) return Failure(rendered.status());
    if (!session.fallback_used().empty()) {
      std::fprintf(stderr, "moeflow generate: chat template: %s\n",
                   session.fallback_used().c_str());
    }
    tokens = std::move(*rendered);
  } else {
    const BpeTokenizer& tokenizer = (*generator)->tokenizer();
    tokens = tokenizer.Encode(prompt, tokenizer.add_bos());
  }

  auto result = (*generator)->Generate(tokens, *sampler, *stop, [](absl::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (!result.ok()) return Failure(result.status());
  if (isatty(STDOUT_FILENO) != 0) std::fputs("\n", stdout);
  std::fflush(stdout);
  if (!result->note.empty()) std::fprintf(stderr, "moeflow generate: %s\n", result->note.c_str());
  std::fprintf(stderr, "moeflow generate: prompt %lld tokens, prefill %.1f tok/s (%.3f s)\n",
               static_cast<long long>(result->prompt_tokens), result->prefill_tokens_per_s(),
               result->prefill_s);
  std::fprintf(stderr, "moeflow generate: generated %lld tokens, decode %.1f tok/s (%.3f s)\n",
               static_cast<long long>(result->completion_tokens), result->decode_tokens_per_s(),
               result->decode_s);
  std::fprintf(stderr, "moeflow generate: finish reason: %s\n",
               std::string(sampling::FinishReasonName(result->finish_reason)).c_str());
  return kExitOk;
}

}  // namespace

Command GenerateCommand() {
  return Command{
      "generate",
      "generate text after a prompt, streamed to stdout",
      "moeflow generate --model=FILE.gguf --prompt=TEXT | --prompt-file=F [flags]",
      "stdout gets only the generated text; prompt/generated token counts, prefill and\n"
      "decode speed and the finish reason (stop, length) go to stderr. Generation stops at\n"
      "the tokenizer's EOS, a --stop string (never printed) or --max-tokens. The same\n"
      "--seed gives the same text.",
      {"model", "prompt", "prompt_file", "chat", "max_tokens", "temperature", "top_k", "top_p",
       "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "seed", "stop",
       "threads", "active_experts"},
      &RunGenerate,
  };
}

}  // namespace moeflow
