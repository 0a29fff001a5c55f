#include "tests/model/deepseek2/llamacpp_fixture.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace moeflow::fixtures {

std::string FixturePath(const std::string& model, const std::string& file) {
  return absl::StrCat("tests/data/llamacpp/", model, "/", model, ".", file);
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<double> NumbersAfterKey(const std::string& text, const std::string& key) {
  std::vector<double> out;
  const std::string needle = absl::StrCat("\"", key, "\": ");
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) {
    out.push_back(std::strtod(text.c_str() + p + needle.size(), nullptr));
  }
  return out;
}

std::vector<int32_t> IntArrayAfterKey(const std::string& text, const std::string& key) {
  std::vector<int32_t> out;
  const std::string needle = absl::StrCat("\"", key, "\": [");
  size_t p = text.find(needle);
  if (p == std::string::npos) return out;
  const char* s = text.c_str() + p + needle.size();
  while (*s != ']' && *s != '\0') {
    char* end;
    const long v = std::strtol(s, &end, 10);
    if (end == s) {
      ++s;
      continue;
    }
    out.push_back(static_cast<int32_t>(v));
    s = end;
  }
  return out;
}

int64_t Argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (row[i] > row[best]) best = i;  // strict: lower id on ties
  }
  return best;
}

}  // namespace moeflow::fixtures
