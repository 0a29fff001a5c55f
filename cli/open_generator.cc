#include "cli/open_generator.h"

#include "absl/flags/flag.h"
#include "cli/commands.h"
#include "cli/common_flags.h"

namespace moeflow {

absl::StatusOr<std::unique_ptr<TextGenerator>> OpenGeneratorFromFlags(const std::string& model,
                                                                      int64_t context_tokens) {
  TextGeneratorOptions options;
  options.topology.n_threads = absl::GetFlag(FLAGS_threads);
  options.topology.active_experts = absl::GetFlag(FLAGS_active_experts);
  options.context_tokens = context_tokens;
  StderrProgress progress("loading model", "parts");
  options.topology.progress = [&progress](int64_t done, int64_t total) {
    progress.Update(done, total);
  };
  absl::StatusOr<std::unique_ptr<TextGenerator>> generator = TextGenerator::Open(model, options);
  progress.Finish();
  return generator;
}

}  // namespace moeflow
