#include "cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "base/knobs.h"

namespace moeflow {
namespace {

std::string Underscored(absl::string_view name) { return absl::StrReplaceAll(name, {{"-", "_"}}); }
std::string Dashed(absl::string_view name) { return absl::StrReplaceAll(name, {{"_", "-"}}); }

const char* TypeName(const absl::CommandLineFlag& flag) {
  if (flag.IsOfType<bool>()) return "bool";
  if (flag.IsOfType<int32_t>() || flag.IsOfType<int64_t>()) return "int";
  if (flag.IsOfType<uint32_t>() || flag.IsOfType<uint64_t>()) return "uint";
  if (flag.IsOfType<double>() || flag.IsOfType<float>()) return "float";
  return "string";
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseCommandFlags(const Command& command,
                                                           const std::vector<std::string>& args,
                                                           bool* help) {
  *help = false;
  std::vector<std::string> positional;
  std::vector<std::string> seen;  // list flags given so far: a repeat appends
  auto listed = [&](const std::string& name) {
    return std::any_of(command.flags.begin(), command.flags.end(),
                       [&](const char* f) { return name == f; });
  };
  auto unknown = [&](absl::string_view arg) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown flag ", arg, " (see moeflow ", command.name, " --help)"));
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      positional.insert(positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    const size_t dashes = arg[1] == '-' ? 2 : 1;
    const size_t eq = arg.find('=');
    std::string name =
        Underscored(arg.substr(dashes, eq == std::string::npos ? std::string::npos : eq - dashes));
    if (name == "help" || name == "h") {
      *help = true;
      continue;
    }
    if (name == "knob") {  // every command: a run-time knob (base/knobs.h)
      std::string value;
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      }
      if (absl::Status s = SetKnobFromFlag(value); !s.ok()) return s;
      continue;
    }
    bool negated = false;
    if (!listed(name) && name.rfind("no", 0) == 0 && listed(name.substr(2))) {
      name = name.substr(2);
      negated = true;
    }
    if (!listed(name)) return unknown(arg.substr(0, eq));
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) return unknown(arg.substr(0, eq));  // listed but not linked in
    const std::string shown = "--" + Dashed(name);
    std::string value;
    if (flag->IsOfType<bool>()) {
      if (negated) {
        if (eq != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat("--no", Dashed(name), " takes no value"));
        }
        value = "false";
      } else {
        value = eq == std::string::npos ? "true" : arg.substr(eq + 1);
      }
    } else if (negated) {
      return unknown(arg.substr(0, eq));
    } else if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(shown, " needs a value"));
    }
    if (flag->IsOfType<std::vector<std::string>>()) {
      if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
        value = flag->CurrentValue() + "," + value;
      }
      seen.push_back(name);
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat(shown, "=", value, ": not a valid ", TypeName(*flag), " value"));
    }
  }
  return positional;
}

int ReportUsageError(const char* command, const std::string& message) {
  std::fprintf(stderr, "moeflow %s: %s\n", command, message.c_str());
  return kExitUsage;
}

int ReportFailure(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "moeflow %s: %s\n", command, std::string(status.message()).c_str());
  return kExitFailure;
}

void PrintCommandHelp(const Command& command, FILE* out) {
  std::fprintf(out, "%s\n\nusage: %s\n", command.summary, command.usage);
  if (command.details != nullptr && command.details[0] != '\0') {
    std::fprintf(out, "\n%s\n", command.details);
  }
  if (command.flags.empty()) return;
  std::fprintf(out, "\nflags:\n");
  for (const char* name : command.flags) {
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    const std::string head =
        absl::StrFormat("  --%s (%s, default %s)", Dashed(name), TypeName(*flag),
                        flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue());
    std::fprintf(out, "%s\n      %s\n", head.c_str(), flag->Help().c_str());
  }
  std::fprintf(out, "  --knob NAME=VALUE (repeatable)\n      a run-time knob, below\n\n%s",
               KnobsHelp().c_str());
}

std::string HumanBytes(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int unit = 0;
  while (std::fabs(bytes) >= 1024 && unit < 5) {
    bytes /= 1024;
    ++unit;
  }
  if (unit == 0) return absl::StrFormat("%.0f B", bytes);
  return absl::StrFormat(bytes < 10    ? "%.2f %s"
                         : bytes < 100 ? "%.1f %s"
                                       : "%.0f %s",
                         bytes, kUnits[unit]);
}

StderrProgress::StderrProgress(std::string what, std::string unit)
    : what_(std::move(what)), unit_(std::move(unit)), tty_(isatty(STDERR_FILENO) != 0) {}

void StderrProgress::Update(int64_t done, int64_t total) {
  const double fraction = total <= 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / total);
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3d%%  (%lld/%lld %s) ", what_.c_str(),
                 std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
                 static_cast<int>(fraction * 100), static_cast<long long>(done),
                 static_cast<long long>(total), unit_.c_str());
    std::fflush(stderr);
    drawn_ = true;
    return;
  }
  const int decile = static_cast<int>(fraction * 10);
  if (decile <= last_decile_) return;
  last_decile_ = decile;
  std::fprintf(stderr, "%s: %3d%%  (%lld/%lld %s)\n", what_.c_str(), decile * 10,
               static_cast<long long>(done), static_cast<long long>(total), unit_.c_str());
}

void StderrProgress::Finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace moeflow
