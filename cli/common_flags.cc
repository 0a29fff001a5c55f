#include "cli/common_flags.h"

#include <utility>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

ABSL_FLAG(std::string, model, "", "GGUF model file (llama.cpp's deepseek2 architecture)");
ABSL_FLAG(int32_t, threads, 2, "compute threads (mkmodel: threads that generate and quantize)");
ABSL_FLAG(int64_t, active_experts, 0,
          "routed experts per token, K <= the model's top-k, renormalised as the model's rules "
          "say (0: the model's top-k)");
ABSL_FLAG(std::string, out, "", "output file (mkmodel: the .gguf; logits: the MFLG .bin)");
ABSL_FLAG(uint64_t, seed, 1,
          "random seed (mkmodel: the same seed gives a byte-identical file; generate, chat: the "
          "same seed gives the same text)");
ABSL_FLAG(int64_t, max_tokens, 256,
          "most tokens to generate per reply (0: until EOS or the context is full)");
ABSL_FLAG(double, temperature, 0.8, "sampling temperature (0: greedy)");
ABSL_FLAG(int32_t, top_k, 40, "keep the k most likely tokens (0: off)");
ABSL_FLAG(double, top_p, 0.95, "nucleus sampling mass in (0, 1] (1: off)");
ABSL_FLAG(double, min_p, 0.05, "drop tokens below min_p times the top probability (0: off)");
ABSL_FLAG(double, repeat_penalty, 1.0,
          "llama.cpp repetition penalty over the last 64 tokens (1: off)");
ABSL_FLAG(double, presence_penalty, 0.0, "OpenAI presence penalty (0: off)");
ABSL_FLAG(double, frequency_penalty, 0.0, "OpenAI frequency penalty (0: off)");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "stop string; repeat the flag or give a comma list; C escapes (\\n) are decoded");

namespace moeflow {

absl::StatusOr<sampling::SamplerOptions> SamplerOptionsFromFlags() {
  sampling::SamplerOptions o;
  o.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  o.top_k = absl::GetFlag(FLAGS_top_k);
  o.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  o.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  o.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repeat_penalty));
  o.presence_penalty = static_cast<float>(absl::GetFlag(FLAGS_presence_penalty));
  o.frequency_penalty = static_cast<float>(absl::GetFlag(FLAGS_frequency_penalty));
  o.seed = absl::GetFlag(FLAGS_seed);
  absl::Status status = sampling::ValidateSamplerOptions(o);
  if (status.ok()) return o;
  // The sampler names its option ("top_p: must be in (0, 1], got 1.5"); name the flag.
  static constexpr std::pair<absl::string_view, absl::string_view> kFlagOf[] = {
      {"temperature", "--temperature"},
      {"top_k", "--top-k"},
      {"top_p", "--top-p"},
      {"min_p", "--min-p"},
      {"repetition_penalty", "--repeat-penalty"},
      {"presence_penalty", "--presence-penalty"},
      {"frequency_penalty", "--frequency-penalty"},
  };
  absl::string_view message = status.message();
  for (const auto& [option, flag] : kFlagOf) {
    if (absl::ConsumePrefix(&message, absl::StrCat(option, ": "))) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", message));
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("sampling flags: ", status.message()));
}

absl::StatusOr<sampling::StopOptions> StopOptionsFromFlags() {
  sampling::StopOptions o;
  o.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (o.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-tokens=", o.max_tokens, ": must be >= 0 (0: no limit)"));
  }
  for (const std::string& raw : absl::GetFlag(FLAGS_stop)) {
    std::string text, error;
    if (!absl::CUnescape(raw, &text, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--stop=", raw, ": ", error));
    }
    if (text.empty()) return absl::InvalidArgumentError("--stop: empty stop string");
    o.stop_strings.push_back(std::move(text));
  }
  if (absl::StatusOr<sampling::StopCondition> s = sampling::StopCondition::Create(o); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--stop: ", s.status().message()));
  }
  return o;
}

}  // namespace moeflow
