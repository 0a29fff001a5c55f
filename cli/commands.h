// The subcommands of the `moeflow` binary and the flag parsing they share.
//
// Role in the data flow: moeflow_main.cc looks the command word up in
// AllCommands() and hands the rest of argv to ParseCommandFlags, which sets
// only the absl flags that command lists (so `moeflow inspect --seed 3` is an
// error, not a silently ignored flag), then calls the command's Run with the
// positional arguments. Each flag is declared once (ABSL_FLAG in the
// command's .cc, or in a shared file when two commands read it) with its
// unit-suffixed name, default and a one-line doc; `moeflow CMD --help`
// prints exactly those flags.
//
// Thread-safety: called once from main before any thread starts.
// Failure: exit codes are kExitOk, kExitFailure (the work failed: bad file,
// I/O) and kExitUsage (unknown command or flag, bad flag value; one line on
// stderr saying which).
#ifndef MOEFLOW_CLI_COMMANDS_H_
#define MOEFLOW_CLI_COMMANDS_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moeflow {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct Command {
  const char* name;                // "inspect"
  const char* summary;             // one line for `moeflow --help`
  const char* usage;               // "moeflow inspect [flags] FILE.gguf"
  const char* details;             // a few lines printed under the usage by --help (may be "")
  std::vector<const char*> flags;  // absl flag names the command reads
  int (*run)(const std::vector<std::string>& args);  // positional args; returns an exit code
};

// One per command, defined in <name>_command.cc.
Command InspectCommand();
Command MkmodelCommand();
Command LogitsCommand();
Command GenerateCommand();
Command ChatCommand();
Command BenchCommand();
Command ServeCommand();
Command LaunchCommand();

// Every command, in the order `moeflow --help` lists them.
const std::vector<Command>& AllCommands();

// Parses `args` (argv after the command word): --flag=value, --flag value,
// --flag / --noflag for booleans, "--" ends the flags; dashes and
// underscores in flag names are the same; a list flag (std::vector<std::string>)
// given twice gets both values. Sets *help when --help or -h is
// given. Returns the positional arguments, or InvalidArgument naming the
// flag: not one of the command's, missing or unparsable value.
absl::StatusOr<std::vector<std::string>> ParseCommandFlags(const Command& command,
                                                           const std::vector<std::string>& args,
                                                           bool* help);

// One-line errors on stderr, "moeflow COMMAND: message"; they return the exit
// code to use (kExitUsage for bad flags or arguments, kExitFailure when the
// work itself failed).
int ReportUsageError(const char* command, const std::string& message);
int ReportFailure(const char* command, const absl::Status& status);

// Prints the command's usage, details and flags (name, type, default, doc).
void PrintCommandHelp(const Command& command, FILE* out);

// "1.50 MiB", "2.82 GiB": binary units with 3 significant digits.
std::string HumanBytes(double bytes);

// Progress of a long step on stderr: a one-line bar redrawn with \r when
// stderr is a terminal, else a line at every 10 %.
//   "loading model [############..................]  40%  (12/30 layers)"
class StderrProgress {
 public:
  // `what`: "loading model"; `unit`: "layers".
  StderrProgress(std::string what, std::string unit);
  void Update(int64_t done, int64_t total);
  // Ends the bar's line (terminal only).
  void Finish();

 private:
  std::string what_, unit_;
  bool tty_;
  bool drawn_ = false;
  int last_decile_ = -1;
};

}  // namespace moeflow

#endif  // MOEFLOW_CLI_COMMANDS_H_
