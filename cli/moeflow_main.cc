// `moeflow <command> [flags] [args]`: the one binary for every tool.
//
// Dispatches to the commands of cli/commands.h. `moeflow`, `moeflow --help`
// and `moeflow help` list the commands; `moeflow help CMD` and
// `moeflow CMD --help` describe one. Unknown command: exit 2.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "base/knobs.h"
#include "cli/commands.h"

namespace moeflow {

const std::vector<Command>& AllCommands() {
  static const std::vector<Command>* commands = new std::vector<Command>{
      InspectCommand(), MkmodelCommand(), LogitsCommand(), GenerateCommand(),
      ChatCommand(),    BenchCommand(),   ServeCommand(),  LaunchCommand(),
  };
  return *commands;
}

namespace {

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "moeflow: runs DeepSeek-V2/V3-class MoE models (GGUF, llama.cpp's deepseek2)\n\n"
               "usage: moeflow <command> [flags] [args]\n\ncommands:\n");
  for (const Command& c : AllCommands()) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(out, "\n`moeflow <command> --help` lists a command's flags.\n\n%s",
               KnobsHelp().c_str());
}

const Command* FindCommand(absl::string_view name) {
  for (const Command& c : AllCommands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return kExitUsage;
  }
  const std::string word = argv[1];
  if (word == "--help" || word == "-h" || word == "help" || word == "-help") {
    if (word == "help" && argc > 2) {
      const Command* command = FindCommand(argv[2]);
      if (command != nullptr) {
        PrintCommandHelp(*command, stdout);
        return kExitOk;
      }
    }
    PrintUsage(stdout);
    return kExitOk;
  }
  const Command* command = FindCommand(word);
  if (command == nullptr) {
    std::fprintf(stderr, "moeflow: unknown command \"%s\"\n\n", word.c_str());
    PrintUsage(stderr);
    return kExitUsage;
  }
  bool help = false;
  auto args = ParseCommandFlags(*command, std::vector<std::string>(argv + 2, argv + argc), &help);
  if (help) {
    PrintCommandHelp(*command, stdout);
    return kExitOk;
  }
  if (!args.ok()) {
    std::fprintf(stderr, "moeflow %s: %s\n", command->name,
                 std::string(args.status().message()).c_str());
    return kExitUsage;
  }
  return command->run(*args);
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) { return moeflow::Main(argc, argv); }
