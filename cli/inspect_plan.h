// `moeflow inspect --plan`: the GPU memory plan of a file and of real model
// shapes (cli/inspect_plan.cc). Called by `moeflow inspect`; prints on
// stdout and returns the exit code (usage errors and unreadable files are
// reported on stderr). Not thread-safe (reads the command's flags).
#ifndef MOEFLOW_CLI_INSPECT_PLAN_H_
#define MOEFLOW_CLI_INSPECT_PLAN_H_

#include <string>
#include <vector>

#include "model/gguf.h"

namespace moeflow {

int RunInspectPlan(const std::vector<std::string>& args);

// "Q4_K_M (15)" from general.file_type, "unknown" when absent.
std::string FileTypeText(const GgufFile& file);

}  // namespace moeflow

#endif  // MOEFLOW_CLI_INSPECT_PLAN_H_
