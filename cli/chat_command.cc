// `moeflow chat`: an interactive conversation with a model, through its chat
// template, keeping the KV cache across turns (generation/text_generator.h).
//
// Input, one message per turn: a line; a line ending in `\` continues on the
// next; or a block between two lines that are exactly `"""`. `/reset` starts
// a new conversation, `/exit` (or end of input) quits.
//
// Output: the reply streamed to stdout. On a terminal stdin there is a "> "
// prompt; without one (a pipe, a script) there are no decorations, only a
// line "[end of reply]" after each reply so that a reader can split turns.
// R1 reasoning (<think>...</think>) is dimmed when stdout is a terminal, else
// wrapped in "[thinking]" / "[/thinking]" lines. Speeds go to stderr.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "chat/chat_template.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "cli/open_generator.h"
#include "generation/text_generator.h"

ABSL_FLAG(std::string, system, "", "system prompt of the conversation (empty: none)");
ABSL_FLAG(bool, force_think, false,
          "make the generation prompt open R1's reasoning block (\"<think>\\n\")");

namespace moeflow {
namespace {

constexpr absl::string_view kThinkOpen = "<think>";
constexpr absl::string_view kThinkClose = "</think>";
constexpr char kDim[] = "\x1b[2m";
constexpr char kReset[] = "\x1b[0m";

void Print(absl::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

// Streams a reply to stdout, marking R1's reasoning block as it goes: the
// tags may arrive split across pieces, so a tail that could start one is
// held back until the next piece decides.
class ReplyPrinter {
 public:
  ReplyPrinter(bool opens_think, bool tty) : tty_(tty) {
    if (opens_think) EnterThink();
  }

  void Feed(absl::string_view piece) {
    held_.append(piece.data(), piece.size());
    while (true) {
      // "<think>" only opens the block before any answer text (R1 starts with it).
      const bool looking = in_think_ || !answered_;
      if (!looking) break;
      const absl::string_view tag = in_think_ ? kThinkClose : kThinkOpen;
      const size_t at = absl::string_view(held_).find(tag);
      if (at == std::string::npos) break;
      Emit(absl::string_view(held_).substr(0, at));
      held_.erase(0, at + tag.size());
      if (in_think_) {
        LeaveThink();
      } else {
        EnterThink();
      }
    }
    const bool looking = in_think_ || !answered_;
    size_t keep = 0;
    if (looking) {
      const absl::string_view tag = in_think_ ? kThinkClose : kThinkOpen;
      for (size_t n = std::min(held_.size(), tag.size() - 1); n > 0; --n) {
        if (absl::EndsWith(held_, tag.substr(0, n))) {
          keep = n;
          break;
        }
      }
    }
    Emit(absl::string_view(held_).substr(0, held_.size() - keep));
    held_.erase(0, held_.size() - keep);
  }

  void Finish() {
    Emit(held_);
    held_.clear();
    if (in_think_) LeaveThink();
  }

 private:
  void Emit(absl::string_view text) {
    if (text.empty()) return;
    if (!in_think_ && !absl::StripAsciiWhitespace(text).empty()) answered_ = true;
    Print(text);
  }
  void EnterThink() {
    in_think_ = true;
    Print(tty_ ? kDim : "[thinking]\n");
  }
  void LeaveThink() {
    in_think_ = false;
    Print(tty_ ? kReset : "\n[/thinking]\n");
  }

  bool tty_;
  bool in_think_ = false;
  bool answered_ = false;
  std::string held_;
};

enum class InputKind { kMessage, kReset, kExit };

struct Input {
  InputKind kind = InputKind::kExit;
  std::string text;
};

// Reads the next message (skipping empty ones); kExit at end of input.
Input ReadInput(bool interactive) {
  while (true) {
    if (interactive) Print("> ");
    std::string line;
    if (!std::getline(std::cin, line)) return Input{};
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed == "/exit" || trimmed == "/quit") return Input{};
    if (trimmed == "/reset") return Input{InputKind::kReset, ""};
    std::string text;
    if (trimmed == "\"\"\"") {
      // A block: everything up to the closing `"""` line, as is.
      bool first = true;
      while (true) {
        if (interactive) Print("... ");
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (absl::StripAsciiWhitespace(line) == "\"\"\"") break;
        if (!first) text += "\n";
        text += line;
        first = false;
      }
    } else {
      // `\` at the end of a line continues the message on the next.
      while (!line.empty() && line.back() == '\\') {
        line.pop_back();
        text += line + "\n";
        if (interactive) Print("... ");
        if (!std::getline(std::cin, line)) {
          line.clear();
          break;
        }
        if (!line.empty() && line.back() == '\r') line.pop_back();
      }
      text += line;
    }
    if (absl::StripAsciiWhitespace(text).empty()) continue;
    return Input{InputKind::kMessage, std::move(text)};
  }
}

int Usage(const std::string& message) { return ReportUsageError("chat", message); }

int Failure(const absl::Status& status) { return ReportFailure("chat", status); }

int RunChat(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage("unexpected argument \"" + args[0] + "\"");
  const std::string model = absl::GetFlag(FLAGS_model);
  if (model.empty()) return Usage("--model is required");
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1) return Usage(absl::StrFormat("--threads=%d: must be >= 1", threads));
  absl::StatusOr<sampling::SamplerOptions> sampler = SamplerOptionsFromFlags();
  if (!sampler.ok()) return Usage(std::string(sampler.status().message()));
  absl::StatusOr<sampling::StopOptions> stop = StopOptionsFromFlags();
  if (!stop.ok()) return Usage(std::string(stop.status().message()));

  auto generator = OpenGeneratorFromFlags(model);
  if (!generator.ok()) return Failure(generator.status());

  ChatSessionOptions chat_options;
  chat_options.system_prompt = absl::GetFlag(FLAGS_system);
  chat_options.force_think = absl::GetFlag(FLAGS_force_think);
  const std::string& template_text = (*generator)->chat_template();
  if (template_text.empty()) {
    std::fprintf(stderr, "moeflow chat: %s has no tokenizer.chat_template; using %s\n",
                 model.c_str(), chat_options.fallback_template.c_str());
  } else if (auto name = chat::IdentifyChatTemplate(template_text); !name.ok()) {
    std::fprintf(stderr,
                 "moeflow chat: the model's chat template is not recognized (sha256 %s); "
                 "using %s\n",
                 chat::ChatTemplateFingerprint(template_text).substr(0, 16).c_str(),
                 chat_options.fallback_template.c_str());
  }
  ChatSession session(generator->get(), chat_options);

  const bool interactive = isatty(STDIN_FILENO) != 0;
  const bool tty_out = isatty(STDOUT_FILENO) != 0;
  if (interactive) {
    std::fprintf(stderr,
                 "moeflow chat: end a line with \\ to continue it, or put a message between "
                 "\"\"\" lines; /reset, /exit\n");
  }
  while (true) {
    const Input input = ReadInput(interactive);
    if (input.kind == InputKind::kExit) break;
    if (input.kind == InputKind::kReset) {
      session.Reset();
      std::fprintf(stderr, "moeflow chat: conversation reset\n");
      continue;
    }
    bool opens_think = false;
    // RenderPrompt is cheap; it tells the printer whether the reply starts
    // inside a reasoning block before the first piece arrives.
    if (auto rendered = session.RenderPrompt(input.text, &opens_think); !rendered.ok()) {
      return Failure(rendered.status());
    }
    ReplyPrinter printer(opens_think, tty_out);
    auto turn = session.Send(input.text, *sampler, *stop,
                             [&printer](absl::string_view piece) { printer.Feed(piece); });
    printer.Finish();
    if (!turn.ok()) {
      Print("\n");
      return Failure(turn.status());
    }
    Print(interactive ? "\n\n" : "\n[end of reply]\n");
    const GenerationResult& g = turn->generation;
    std::fprintf(stderr,
                 "%s[%lld prompt tokens (%lld cached), %.1f tok/s prefill; %lld generated, %.1f "
                 "tok/s; %s]%s\n",
                 interactive ? kDim : "", static_cast<long long>(g.prompt_tokens),
                 static_cast<long long>(g.reused_prompt_tokens), g.prefill_tokens_per_s(),
                 static_cast<long long>(g.completion_tokens), g.decode_tokens_per_s(),
                 std::string(sampling::FinishReasonName(g.finish_reason)).c_str(),
                 interactive ? kReset : "");
    if (!g.note.empty()) std::fprintf(stderr, "moeflow chat: %s\n", g.note.c_str());
  }
  return kExitOk;
}

}  // namespace

Command ChatCommand() {
  return Command{
      "chat",
      "chat with a model interactively (its chat template, KV cache kept across turns)",
      "moeflow chat --model=FILE.gguf [--system=TEXT] [--force-think] [flags]",
      "Type a message and press Enter; end a line with \\ to continue it, or put a\n"
      "multi-line message between two lines of \"\"\". /reset starts over, /exit or end of\n"
      "input quits. Without a terminal on stdin (a pipe) each reply is followed by a line\n"
      "\"[end of reply]\". The GGUF's tokenizer.chat_template is used; when it is missing or\n"
      "not recognized, deepseek-v3's (one line on stderr says so).",
      {"model", "system", "force_think", "max_tokens", "temperature", "top_k", "top_p", "min_p",
       "repeat_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "threads",
       "active_experts"},
      &RunChat,
  };
}

}  // namespace moeflow
