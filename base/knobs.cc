#include "base/knobs.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moeflow {
namespace {

KnobSpec Bool(Knob knob, const char* name, const char* default_value, const char* help) {
  return KnobSpec{knob, name, KnobType::kBool, default_value, 0, 0, {}, help};
}
KnobSpec Int(Knob knob, const char* name, const char* default_value, int64_t min, int64_t max,
             const char* help) {
  return KnobSpec{knob, name, KnobType::kInt, default_value, min, max, {}, help};
}
KnobSpec Choice(Knob knob, const char* name, const char* default_value,
                std::vector<std::string> choices, const char* help) {
  return KnobSpec{knob, name, KnobType::kChoice, default_value, 0, 0, std::move(choices), help};
}

// The registry. Keep the order of enum Knob.
const std::vector<KnobSpec>& Specs() {
  static const std::vector<KnobSpec>* specs = new std::vector<KnobSpec>{
      Choice(Knob::kIsa, "isa", "",
             {"", "scalar", "avx2", "avx512f", "avx512", "avx512bf16", "amx"},
             "CPU kernel variant (kernels/cpu/matmul.h); empty: the best this CPU runs, and a "
             "variant it lacks falls back to that"),
      Bool(Knob::kRepack, "repack", "1",
           "repack weights at load into the layout this CPU's kernels want (Q5_0 pairs on AVX2); "
           "0 keeps the GGUF blocks"),
      Bool(Knob::kHugePages, "hugepages", "1",
           "copy the streamed weights at load into huge-page memory "
           "(kernels/cpu/weight_memory.h); 0 keeps them in the file mapping"),
      Bool(Knob::kPin, "pin", "1",
           "pin the dataflow's pool threads and step threads one per core (kernels/cpu/numa.h); "
           "0 leaves them to the scheduler"),
      Int(Knob::kYieldUs, "yield_us", "3000", 0, 1000000,
          "microseconds an idle dataflow thread yields its core (sched_yield) before it sleeps; "
          "0: sleep after the short spin"),
      Bool(Knob::kProfile, "profile", "0",
           "time the engine's phases and print the table at exit "
           "(engine/engine_profile.h)"),
      Choice(Knob::kGridLookup, "grid_lookup", "auto", {"auto", "gather", "loads"},
             "how the AVX-512 IQ2_XXS / IQ2_XS / IQ3_XXS kernels read their grid entries: gather "
             "instructions or scalar loads (the same results); auto: loads on AMD CPUs, whose "
             "gathers are slow, the gather elsewhere"),
  };
  return *specs;
}

struct State {
  bool in_effect = false;
  std::optional<std::string> set;  // SetKnobs
  bool env_read = false;
  std::optional<std::string> env;  // a valid environment value
  std::string value;               // in effect
};

std::mutex& Mu() {
  static std::mutex* mu = new std::mutex;
  return *mu;
}

std::vector<State>& States() {
  static std::vector<State>* states = new std::vector<State>(Specs().size());
  return *states;
}

// The canonical spelling of `value` for `spec`, or the reason it is not one.
std::optional<std::string> Canonical(const KnobSpec& spec, absl::string_view value,
                                     std::string* why) {
  switch (spec.type) {
    case KnobType::kBool:
      if (value == "0" || value == "1") return std::string(value);
      if (value == "false") return std::string("0");
      if (value == "true") return std::string("1");
      *why = "is neither 0 nor 1";
      return std::nullopt;
    case KnobType::kInt: {
      const std::string s(value);
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && errno == 0 && *end == '\0' && v >= spec.min && v <= spec.max) {
        return absl::StrCat(v);
      }
      *why = absl::StrCat("is not an integer in [", spec.min, ", ", spec.max, "]");
      return std::nullopt;
    }
    case KnobType::kChoice:
      for (const std::string& c : spec.choices) {
        if (value == c) return c;
      }
      *why =
          absl::StrCat("is not one of ",
                       absl::StrJoin(spec.choices, ", ", [](std::string* o, const std::string& c) {
                         absl::StrAppend(o, c.empty() ? "\"\"" : c);
                       }));
      return std::nullopt;
  }
  return std::nullopt;
}

// The value the knob has or would have now. Mu() held.
std::string Resolve(size_t i) {
  const KnobSpec& spec = Specs()[i];
  State& st = States()[i];
  if (st.in_effect) return st.value;
  if (st.set) return *st.set;
  if (!st.env_read) {
    st.env_read = true;
    const std::string var = KnobEnvName(spec.name);
    if (const char* env = std::getenv(var.c_str()); env != nullptr) {
      std::string why;
      st.env = Canonical(spec, env, &why);
      if (!st.env) {
        std::fprintf(stderr, "moeflow: %s='%s' %s; keeping the default (%s): %s\n", var.c_str(),
                     env, why.c_str(), spec.default_value[0] ? spec.default_value : "\"\"",
                     spec.help);
      }
    }
  }
  return st.env ? *st.env : std::string(spec.default_value);
}

std::string InEffect(Knob knob) {
  std::lock_guard<std::mutex> lock(Mu());
  const size_t i = static_cast<size_t>(knob);
  State& st = States()[i];
  if (!st.in_effect) {
    st.value = Resolve(i);
    st.in_effect = true;
  }
  return st.value;
}

}  // namespace

const std::vector<KnobSpec>& AllKnobs() { return Specs(); }

const KnobSpec& KnobInfo(Knob knob) { return Specs()[static_cast<size_t>(knob)]; }

bool KnobBool(Knob knob) { return InEffect(knob) == "1"; }

int64_t KnobInt(Knob knob) { return std::strtoll(InEffect(knob).c_str(), nullptr, 10); }

std::string KnobString(Knob knob) { return InEffect(knob); }

absl::Status SetKnobs(const std::map<std::string, std::string>& values) {
  std::lock_guard<std::mutex> lock(Mu());
  std::vector<std::pair<size_t, std::string>> todo;
  for (const auto& [name, value] : values) {
    size_t i = 0;
    while (i < Specs().size() && name != Specs()[i].name) ++i;
    if (i == Specs().size()) {
      std::vector<std::string> names;
      for (const KnobSpec& s : Specs()) names.push_back(s.name);
      return absl::InvalidArgumentError(
          absl::StrCat("knob '", name, "': unknown (knobs: ", absl::StrJoin(names, ", "), ")"));
    }
    std::string why;
    std::optional<std::string> canonical = Canonical(Specs()[i], value, &why);
    if (!canonical) {
      return absl::InvalidArgumentError(absl::StrCat("knob ", name, ": '", value, "' ", why));
    }
    const State& st = States()[i];
    if (st.in_effect && st.value != *canonical) {
      return absl::FailedPreconditionError(absl::StrCat(
          "knob ", name, ": this process already computes with ", name, "='", st.value, "', not '",
          *canonical, "' (it is read once; restart the process to change it)"));
    }
    todo.emplace_back(i, *canonical);
  }
  for (auto& [i, v] : todo) States()[i].set = std::move(v);
  return absl::OkStatus();
}

absl::Status SetKnobFromFlag(absl::string_view name_equals_value) {
  const size_t eq = name_equals_value.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--knob ", name_equals_value, ": expected NAME=VALUE"));
  }
  return SetKnobs({{std::string(name_equals_value.substr(0, eq)),
                    std::string(name_equals_value.substr(eq + 1))}});
}

std::map<std::string, std::string> KnobValues() {
  std::lock_guard<std::mutex> lock(Mu());
  std::map<std::string, std::string> out;
  for (size_t i = 0; i < Specs().size(); ++i) out[Specs()[i].name] = Resolve(i);
  return out;
}

std::string KnobsHelp() {
  std::string out =
      "run-time knobs (--knob NAME=VALUE or the environment variable; carried to every "
      "worker):\n";
  for (const KnobSpec& s : Specs()) {
    const char* type = s.type == KnobType::kBool  ? "bool"
                       : s.type == KnobType::kInt ? "int"
                                                  : "choice";
    absl::StrAppend(&out, "  ", s.name, " (", KnobEnvName(s.name), ", ", type, ", default ",
                    s.default_value[0] ? s.default_value : "\"\"", "): ", s.help, "\n");
  }
  return out;
}

std::string KnobEnvName(absl::string_view name) {
  return absl::StrCat("MOEFLOW_", absl::AsciiStrToUpper(name));
}

}  // namespace moeflow
