// `moeflow logits`: runs a token sequence through the model in one batch and
// writes every position's logits in the MFLG format of the llama.cpp
// fixtures (model/deepseek2/logits_file.h), so the two can be compared.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/common_flags.h"
#include "coordinator/local_logits.h"
#include "model/deepseek2/logits_file.h"
#include "model/deepseek2/reference.h"

ABSL_FLAG(std::string, tokens, "", "comma-separated token ids, e.g. 2046,17,401");
ABSL_FLAG(bool, reference, false,
          "use the float32 scalar reference path instead of the engine (slow; for checking)");

namespace moeflow {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseTokens(const std::string& text) {
  std::vector<int32_t> tokens;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tokens: '", piece, "' is not an integer token id"));
    }
    tokens.push_back(id);
  }
  if (tokens.empty()) return absl::InvalidArgumentError("--tokens: no token ids given");
  return tokens;
}

int RunLogits(const std::vector<std::string>& args) {
  const std::string model = absl::GetFlag(FLAGS_model);
  std::string out = absl::GetFlag(FLAGS_out);
  if (!args.empty()) {
    std::fprintf(stderr, "moeflow logits: unexpected argument '%s'\n", args[0].c_str());
    return kExitUsage;
  }
  if (model.empty() || out.empty()) {
    std::fprintf(stderr, "moeflow logits: --model and --out are required\n");
    return kExitUsage;
  }
  auto tokens = ParseTokens(absl::GetFlag(FLAGS_tokens));
  if (!tokens.ok()) {
    std::fprintf(stderr, "moeflow logits: %s\n", std::string(tokens.status().message()).c_str());
    return kExitUsage;
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1) {
    std::fprintf(stderr, "moeflow logits: --threads=%d: must be >= 1\n", threads);
    return kExitUsage;
  }

  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<float>> logits;
  int64_t vocab = 0;
  if (absl::GetFlag(FLAGS_reference)) {
    Deepseek2ReferenceOptions options;
    options.active_experts = absl::GetFlag(FLAGS_active_experts);
    auto ref = Deepseek2Reference::Open(model, options);
    if (!ref.ok()) {
      std::fprintf(stderr, "moeflow logits: %s\n", std::string(ref.status().message()).c_str());
      return kExitFailure;
    }
    vocab = (*ref)->config().vocab_size;
    logits = (*ref)->Forward(*tokens, 0);
  } else {
    LocalLogitsOptions options;
    options.active_experts = absl::GetFlag(FLAGS_active_experts);
    options.n_threads = threads;
    logits = LocalLogits(model, *tokens, options);
    if (logits.ok()) vocab = static_cast<int64_t>(logits->size() / tokens->size());
  }
  if (!logits.ok()) {
    std::fprintf(stderr, "moeflow logits: %s\n", std::string(logits.status().message()).c_str());
    return kExitFailure;
  }
  LogitsFile file;
  file.tokens.assign(tokens->begin(), tokens->end());
  file.n_vocab = vocab;
  file.logits = std::move(*logits);
  if (absl::Status s = WriteLogitsFile(out, file); !s.ok()) {
    std::fprintf(stderr, "moeflow logits: %s\n", std::string(s.message()).c_str());
    return kExitFailure;
  }
  std::fprintf(stderr, "moeflow logits: %zu tokens × %lld vocab → %s (%.2f s)\n", tokens->size(),
               static_cast<long long>(vocab), out.c_str(),
               absl::ToDoubleSeconds(absl::Now() - start));
  return kExitOk;
}

}  // namespace

Command LogitsCommand() {
  return Command{
      "logits",
      "write the logits of every position of a token sequence (MFLG format)",
      "moeflow logits --model=FILE.gguf --tokens=1,2,3 --out=X.bin [flags]",
      "The sequence runs in one batch from position 0. The MFLG format (\"MFLG\", u32\n"
      "version 1, u32 n_tokens, u32 n_vocab, u32 ids, f32 logits row by row) is that of\n"
      "the llama.cpp fixtures in tests/data/llamacpp.",
      {"model", "tokens", "out", "threads", "active_experts", "reference"},
      &RunLogits,
  };
}

}  // namespace moeflow
