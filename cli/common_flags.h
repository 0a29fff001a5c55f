// Flags that several `moeflow` commands read (declared once, here).
//
//   --model           GGUF file to run            (logits, generate, chat, bench, serve)
//   --threads         compute threads              (every command that computes)
//   --active_experts  routed experts per token     (0: the model's top-k)
//   --out             output file                  (mkmodel, logits)
#ifndef MOEFLOW_CLI_COMMON_FLAGS_H_
#define MOEFLOW_CLI_COMMON_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(int32_t, threads);
ABSL_DECLARE_FLAG(int64_t, active_experts);
ABSL_DECLARE_FLAG(std::string, out);

#endif  // MOEFLOW_CLI_COMMON_FLAGS_H_
