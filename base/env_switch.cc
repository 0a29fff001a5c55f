#include "base/env_switch.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moeflow {

bool EnvSwitchOnByDefault(const char* name, const char* default_means) {
  const char* env = std::getenv(name);
  if (env == nullptr) return true;
  const std::string v(env);
  if (v != "0" && v != "1") {
    std::fprintf(stderr, "moeflow: %s='%s' is neither 0 nor 1; %s (the default)\n", name, env,
                 default_means);
  }
  return v != "0";
}

int EnvIntOr(const char* name, int default_value, int min_value, int max_value,
             const char* default_means) {
  const char* env = std::getenv(name);
  if (env == nullptr) return default_value;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(env, &end, 10);
  if (errno == 0 && end != env && *end == '\0' && v >= min_value && v <= max_value) {
    return static_cast<int>(v);
  }
  std::fprintf(stderr, "moeflow: %s='%s' is not an integer in [%d, %d]; %s (the default)\n", name,
               env, min_value, max_value, default_means);
  return default_value;
}

}  // namespace moeflow
