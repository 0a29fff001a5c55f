// Files of the model tests: paths under the test's temporary directory
// ($TEST_TMPDIR, else /tmp), whole-file reads, existence checks.
//
// Thread-safety: plain functions. Failure: ReadAll of an unreadable file
// returns no bytes; the test's own checks then fail.
#ifndef MOEFLOW_TESTS_MODEL_TEST_FILES_H_
#define MOEFLOW_TESTS_MODEL_TEST_FILES_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace moeflow::model_testing {

// `name` in the test's temporary directory.
inline std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

inline std::vector<uint8_t> ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline bool FileExists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

}  // namespace moeflow::model_testing

#endif  // MOEFLOW_TESTS_MODEL_TEST_FILES_H_
