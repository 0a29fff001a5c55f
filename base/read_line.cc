#include "base/read_line.h"

#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>

namespace moeflow {
namespace {

// The first complete line of text[from..] starting with prefix, or npos;
// *scanned becomes the start of the first incomplete line.
size_t FindLine(const std::string& text, size_t* scanned, std::string_view prefix) {
  size_t start = *scanned;
  while (true) {
    const size_t newline = text.find('\n', start);
    if (newline == std::string::npos) break;
    if (std::string_view(text).substr(start, prefix.size()) == prefix) return start;
    start = newline + 1;
  }
  *scanned = start;
  return std::string::npos;
}

}  // namespace

std::string ReadLineWithDeadline(int fd, int timeout_ms, std::string_view prefix) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string text;
  size_t scanned = 0;
  while (true) {
    const size_t line = FindLine(text, &scanned, prefix);
    if (line != std::string::npos) {
      return text.substr(line, text.find('\n', line) + 1 - line);
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;
    char buf[256];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

}  // namespace moeflow
