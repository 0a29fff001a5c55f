// The run-time knobs of every moeflow process, declared once (knobs.cc:
// name, type, default, help), like Ray's ray_config_def.h. A knob changes
// how a process computes (which kernels, which memory, which threads), never
// what a request asks for; two of them (isa, repack) pick the kernels the
// bit-identical promise between topologies rests on, so every process of a
// deployment must run with the same values.
//
// Where a value comes from, first match wins:
//   1. SetKnobs (a worker's Configure RPC carries the coordinator's values,
//      proto/worker.proto ConfigureRequest.knobs; `moeflow --knob NAME=VALUE`),
//   2. the environment variable MOEFLOW_<NAME> (MOEFLOW_ISA, MOEFLOW_PIN, ...),
//   3. the default.
// A bad environment value is reported on stderr once (naming the variable,
// what is accepted and what the default does) and the default is kept; a bad
// SetKnobs value is an error and changes nothing.
//
// The first Knob* read of a knob puts its value in effect for the life of
// the process (callers cache it: kernels are picked once); SetKnobs with
// another value after that fails with FAILED_PRECONDITION, so a worker
// never silently computes with other kernels than the coordinator asked for.
//
// Thread-safety: every function is thread-safe. Failure: SetKnobs returns
// INVALID_ARGUMENT (unknown name, bad value; nothing changes) and
// FAILED_PRECONDITION (the knob is already in effect with another value).
#ifndef MOEFLOW_BASE_KNOBS_H_
#define MOEFLOW_BASE_KNOBS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace moeflow {

enum class Knob {
  kIsa,        // string: "" (the best this CPU runs) or a kernel variant name
  kRepack,     // bool
  kHugePages,  // bool
  kPin,        // bool
  kYieldUs,    // int
  kProfile,    // bool
  kGridLookup,  // string: "auto", "gather" or "loads"
};

enum class KnobType { kBool, kInt, kChoice };

struct KnobSpec {
  Knob knob;
  const char* name;  // lower case; the variable is MOEFLOW_ + upper case
  KnobType type;
  const char* default_value;
  // kInt: accepted range; kChoice: the accepted values ("" allowed when listed).
  int64_t min = 0, max = 0;
  std::vector<std::string> choices;
  // One line: what the knob does, and what the default means.
  const char* help;
};

// Every knob, in declaration order.
const std::vector<KnobSpec>& AllKnobs();
const KnobSpec& KnobInfo(Knob knob);

// The value in effect (puts it in effect; see above).
bool KnobBool(Knob knob);
int64_t KnobInt(Knob knob);
std::string KnobString(Knob knob);

// Sets knobs by name (values as the environment would spell them). All or
// nothing: the first bad entry is returned and no knob changes.
absl::Status SetKnobs(const std::map<std::string, std::string>& values);
// "NAME=VALUE" (the --knob flag).
absl::Status SetKnobFromFlag(absl::string_view name_equals_value);

// Every knob's value as it is or would be in effect now (not putting it in
// effect): what the coordinator sends its workers.
std::map<std::string, std::string> KnobValues();

// The table `--help` prints: name, variable, type, default, help.
std::string KnobsHelp();

// "MOEFLOW_ISA" for "isa".
std::string KnobEnvName(absl::string_view name);

}  // namespace moeflow

#endif  // MOEFLOW_BASE_KNOBS_H_
