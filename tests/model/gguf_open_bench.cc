// Measures GgufFile::Open: maps the file and parses header, metadata and
// tensor infos, no tensor bytes. Prints a table, and one JSON object per file
// with --json.
//
//   bazel run -c opt //tests/model:gguf_open_bench -- [--iterations=N] [--json] FILE...
//
// The first open of a file that is not in the page cache pays for reading the
// header from disk; it is reported separately from the warm mean.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "model/gguf.h"

namespace {

double MillisecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

int main(int argc, char** argv) {
  int iterations = 20;
  bool json = false;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--iterations=", 0) == 0) {
      iterations = std::max(1, std::atoi(arg.c_str() + std::strlen("--iterations=")));
    } else if (arg == "--json") {
      json = true;
    } else if (arg == "--help" || arg == "-h") {
      std::printf("usage: %s [--iterations=N] [--json] FILE...\n", argv[0]);
      return 0;
    } else {
      paths.push_back(arg);
    }
  }
  if (paths.empty()) {
    std::fprintf(stderr, "usage: %s [--iterations=N] [--json] FILE...\n", argv[0]);
    return 2;
  }
  std::printf("%-50s %14s %8s %6s %10s %10s %10s\n", "file", "bytes", "tensors", "keys", "first_ms",
              "mean_ms", "min_ms");
  std::vector<std::string> json_lines;
  for (const std::string& path : paths) {
    double first_ms = 0, total_ms = 0, min_ms = 1e300;
    uint64_t bytes = 0;
    size_t tensors = 0, keys = 0;
    for (int i = 0; i <= iterations; ++i) {
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<std::unique_ptr<moeflow::GgufFile>> file = moeflow::GgufFile::Open(path);
      const double ms = MillisecondsSince(start);
      if (!file.ok()) {
        std::fprintf(stderr, "%s\n", file.status().ToString().c_str());
        return 1;
      }
      bytes = (*file)->file_size();
      tensors = (*file)->tensors().size();
      keys = (*file)->metadata().size();
      if (i == 0) {
        first_ms = ms;  // may include reading the header from disk
      } else {
        total_ms += ms;
        min_ms = std::min(min_ms, ms);
      }
    }
    const double mean_ms = total_ms / iterations;
    std::printf("%-50s %14llu %8zu %6zu %10.3f %10.3f %10.3f\n", path.c_str(),
                static_cast<unsigned long long>(bytes), tensors, keys, first_ms, mean_ms, min_ms);
    char line[1024];
    std::snprintf(line, sizeof(line),
                  "{\"file\": \"%s\", \"bytes\": %llu, \"tensors\": %zu, \"keys\": %zu, "
                  "\"iterations\": %d, \"first_ms\": %.3f, \"mean_ms\": %.3f, \"min_ms\": %.3f}",
                  path.c_str(), static_cast<unsigned long long>(bytes), tensors, keys, iterations,
                  first_ms, mean_ms, min_ms);
    json_lines.push_back(line);
  }
  if (json) {
    for (const std::string& line : json_lines) std::printf("%s\n", line.c_str());
  }
  return 0;
}
