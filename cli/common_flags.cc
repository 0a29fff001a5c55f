#include "cli/common_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "", "GGUF model file (llama.cpp's deepseek2 architecture)");
ABSL_FLAG(int32_t, threads, 2, "compute threads (mkmodel: threads that generate and quantize)");
ABSL_FLAG(int64_t, active_experts, 0,
          "routed experts per token, K <= the model's top-k, renormalised as the model's rules "
          "say (0: the model's top-k)");
ABSL_FLAG(std::string, out, "", "output file (mkmodel: the .gguf; logits: the MFLG .bin)");
