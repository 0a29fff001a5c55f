#include "base/read_line.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace moeflow {
namespace {

class Pipe {
 public:
  Pipe() { EXPECT_EQ(pipe2(fds_, O_CLOEXEC), 0); }
  ~Pipe() {
    CloseWrite();
    close(fds_[0]);
  }
  int read_fd() const { return fds_[0]; }
  void Write(const std::string& s) { ASSERT_EQ(write(fds_[1], s.data(), s.size()), ssize_t(s.size())); }
  void CloseWrite() {
    if (fds_[1] >= 0) close(fds_[1]);
    fds_[1] = -1;
  }

 private:
  int fds_[2] = {-1, -1};
};

TEST(ReadLineWithDeadlineTest, ReturnsFirstLineOnly) {
  Pipe p;
  p.Write("PORT 4242\nlater output\n");
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 1000), "PORT 4242\n");
}

TEST(ReadLineWithDeadlineTest, SkipsLinesBeforeThePrefix) {
  Pipe p;
  p.Write("[123] UCX WARN network device 'x' is not available\nCONTROL 127.0.0.1:5\nmore\n");
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 1000, "CONTROL "), "CONTROL 127.0.0.1:5\n");
}

TEST(ReadLineWithDeadlineTest, ReturnsAllTextWhenNoLineMatches) {
  Pipe p;
  p.Write("warning\npartial");
  p.CloseWrite();
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 1000, "PORT "), "warning\npartial");
}

TEST(ReadLineWithDeadlineTest, JoinsALineWrittenInPieces) {
  Pipe p;
  std::thread writer([&] {
    p.Write("CONTROL 127.0.0.1");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    p.Write(":50051\n");
  });
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 5000), "CONTROL 127.0.0.1:50051\n");
  writer.join();
}

TEST(ReadLineWithDeadlineTest, GivesUpAtTheDeadline) {
  Pipe p;
  p.Write("no newline");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 100), "no newline");
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(90));
}

TEST(ReadLineWithDeadlineTest, StopsAtEndOfFile) {
  Pipe p;
  p.Write("partial");
  p.CloseWrite();
  EXPECT_EQ(ReadLineWithDeadline(p.read_fd(), 10000), "partial");
}

}  // namespace
}  // namespace moeflow
