// Flags that several `moeflow` commands read (declared once, here).
//
//   --model           GGUF file to run            (logits, generate, chat, bench, serve)
//   --threads         compute threads              (every command that computes)
//   --active_experts  routed experts per token     (0: the model's top-k)
//   --out             output file                  (mkmodel, logits)
//   --seed            random seed                  (mkmodel: weights; generate, chat: sampling)
//   sampling: --max_tokens --temperature --top_k --top_p --min_p --repeat_penalty
//             --presence_penalty --frequency_penalty --stop   (generate, chat)
#ifndef MOEFLOW_CLI_COMMON_FLAGS_H_
#define MOEFLOW_CLI_COMMON_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/status/statusor.h"
#include "sampling/sampler.h"
#include "sampling/stop_condition.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(int64_t, active_experts);
ABSL_DECLARE_FLAG(std::string, out);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(int64_t, max_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(double, min_p);
ABSL_DECLARE_FLAG(double, repeat_penalty);
ABSL_DECLARE_FLAG(double, presence_penalty);
ABSL_DECLARE_FLAG(double, frequency_penalty);
ABSL_DECLARE_FLAG(std::vector<std::string>, stop);

namespace moeflow {

// The sampling flags above as SamplerOptions / StopOptions (stop strings
// C-unescaped: --stop '\n' is a newline), or InvalidArgument naming the bad
// flag, e.g. "--top-p=1.5: must be in (0, 1]".
absl::StatusOr<sampling::SamplerOptions> SamplerOptionsFromFlags();
absl::StatusOr<sampling::StopOptions> StopOptionsFromFlags();

}  // namespace moeflow

#endif  // MOEFLOW_CLI_COMMON_FLAGS_H_
