// Settings read from the environment. On/off switches (MOEFLOW_REPACK,
// MOEFLOW_HUGEPAGES, MOEFLOW_PIN, ...): "0" is off, "1" on, unset the default (on);
// any other value is reported on stderr, naming the variable and what the
// default does, and keeps the default. Callers read a switch once (a
// function-local static), so the message appears at most once per process.
//
// Thread-safety: reads the environment (std::getenv); call it before
// threads modify the environment. Failure: none.
#ifndef MOEFLOW_BASE_ENV_SWITCH_H_
#define MOEFLOW_BASE_ENV_SWITCH_H_

namespace moeflow {

// `default_means`: what the default does, for the message ("weights are
// repacked").
bool EnvSwitchOnByDefault(const char* name, const char* default_means);

// Integer settings (MOEFLOW_YIELD_US): unset is `default_value`; a decimal
// integer in [min_value, max_value] is taken; any other value is reported
// on stderr (the variable, the range accepted, what the default does) and
// keeps the default.
int EnvIntOr(const char* name, int default_value, int min_value, int max_value,
             const char* default_means);

}  // namespace moeflow

#endif  // MOEFLOW_BASE_ENV_SWITCH_H_
