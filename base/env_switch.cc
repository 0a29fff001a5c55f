#include "base/env_switch.h"

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

}  // namespace moeflow
