// Opens the TextGenerator that `moeflow generate` and `chat` run:
// the engine options come from the shared flags (--threads,
// --active_experts), and a progress bar on stderr shows the load.
// Errors: those of TextGenerator::Open (bad file, unsupported model).
#ifndef MOEFLOW_CLI_OPEN_GENERATOR_H_
#define MOEFLOW_CLI_OPEN_GENERATOR_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "generation/text_generator.h"

namespace moeflow {

// `context_tokens` 0: the model's context length.
absl::StatusOr<std::unique_ptr<TextGenerator>> OpenGeneratorFromFlags(const std::string& model,
                                                                      int64_t context_tokens = 0);

}  // namespace moeflow

#endif  // MOEFLOW_CLI_OPEN_GENERATOR_H_
