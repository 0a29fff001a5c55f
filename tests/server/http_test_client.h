// A blocking HTTP/1.1 client for tests: writes raw bytes to 127.0.0.1:port
// and reads responses (Content-Length or chunked bodies) until the server
// closes the connection. Every read times out after ReadTimeoutSeconds().
#ifndef MOEFLOW_TESTS_SERVER_HTTP_TEST_CLIENT_H_
#define MOEFLOW_TESTS_SERVER_HTTP_TEST_CLIENT_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moeflow::server::testing {

// Seconds a read may block (benchmarks with deep queues raise it).
inline int& ReadTimeoutSeconds() {
  static int seconds = 20;
  return seconds;
}

inline int ConnectLocal(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{ReadTimeoutSeconds(), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

inline std::string ReadToEof(int fd) {
  std::string out;
  char buffer[65536];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// Sends `raw` and returns everything the server sent until it closed.
inline std::string RawExchange(int port, const std::string& raw) {
  const int fd = ConnectLocal(port);
  if (fd < 0) return "";
  WriteAll(fd, raw);
  std::string out = ReadToEof(fd);
  close(fd);
  return out;
}

struct ParsedResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-case
  std::string body;                                          // de-chunked
  bool chunked = false;
  std::string Header(const std::string& name) const {
    for (const auto& h : headers) {
      if (h.first == name) return h.second;
    }
    return "";
  }
};

// Splits `raw` into responses (skipping 100 Continue).
inline std::vector<ParsedResponse> ParseResponses(const std::string& raw) {
  std::vector<ParsedResponse> out;
  size_t pos = 0;
  while (pos < raw.size()) {
    const size_t head_end = raw.find("\r\n\r\n", pos);
    if (head_end == std::string::npos) break;
    ParsedResponse r;
    const std::string head = raw.substr(pos, head_end - pos);
    size_t line_end = head.find("\r\n");
    const std::string status_line = head.substr(0, line_end);
    if (!absl::SimpleAtoi(status_line.substr(9, 3), &r.status)) break;
    while (line_end != std::string::npos) {
      const size_t next = head.find("\r\n", line_end + 2);
      const std::string line = head.substr(
          line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        r.headers.emplace_back(absl::AsciiStrToLower(line.substr(0, colon)),
                               std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
      }
      line_end = next;
    }
    pos = head_end + 4;
    if (r.status == 100) continue;
    if (absl::EqualsIgnoreCase(r.Header("transfer-encoding"), "chunked")) {
      r.chunked = true;
      while (true) {
        const size_t size_end = raw.find("\r\n", pos);
        if (size_end == std::string::npos) return out;
        const size_t size = std::strtoul(raw.substr(pos, size_end - pos).c_str(), nullptr, 16);
        pos = size_end + 2;
        if (size == 0) {
          pos += 2;
          break;
        }
        r.body += raw.substr(pos, size);
        pos += size + 2;
      }
    } else {
      size_t length = 0;
      (void)absl::SimpleAtoi(r.Header("content-length"), &length);
      r.body = raw.substr(pos, length);
      pos += length;
    }
    out.push_back(std::move(r));
  }
  return out;
}

inline std::string PostRequest(const std::string& path, const std::string& body,
                               const std::string& extra_headers = "") {
  return absl::StrCat("POST ", path,
                      " HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                      "application/json\r\nContent-Length: ",
                      body.size(), "\r\n", extra_headers, "Connection: close\r\n\r\n", body);
}

inline ParsedResponse Post(int port, const std::string& path, const std::string& body,
                           const std::string& extra_headers = "") {
  std::vector<ParsedResponse> r =
      ParseResponses(RawExchange(port, PostRequest(path, body, extra_headers)));
  return r.empty() ? ParsedResponse{} : r[0];
}

inline ParsedResponse Get(int port, const std::string& path, const std::string& extra = "") {
  std::vector<ParsedResponse> r =
      ParseResponses(RawExchange(port, absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: x\r\n", extra,
                                                    "Connection: close\r\n\r\n")));
  return r.empty() ? ParsedResponse{} : r[0];
}

}  // namespace moeflow::server::testing

#endif  // MOEFLOW_TESTS_SERVER_HTTP_TEST_CLIENT_H_
