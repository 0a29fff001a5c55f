// Reads the line a child process writes to a pipe to announce itself, with a
// deadline: how the launcher learns a worker's gRPC port ("PORT <n>") and how
// tests learn the launcher's control address ("CONTROL host:port"). Lines
// before it (a library's warning on stdout, say) are skipped.
//
// Thread-safety: a plain function; the caller owns `fd`. Failure: never
// blocks past timeout_ms; on timeout, EOF or a read error without a matching
// line it returns everything read (possibly empty), so that the caller's
// parse fails and its message can show what the child wrote.
#ifndef MOEFLOW_BASE_READ_LINE_H_
#define MOEFLOW_BASE_READ_LINE_H_

#include <string>
#include <string_view>

namespace moeflow {

// Reads from `fd` until a complete line starting with `prefix` ("" = any
// line) has arrived, the peer closes it, or timeout_ms passes. Returns that
// line including its '\n' (what follows it in the pipe is dropped: callers
// close the pipe or stop reading it after the line).
std::string ReadLineWithDeadline(int fd, int timeout_ms, std::string_view prefix = "");

}  // namespace moeflow

#endif  // MOEFLOW_BASE_READ_LINE_H_
