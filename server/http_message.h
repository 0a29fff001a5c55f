// HTTP/1.1 messages: an incremental-safe request parser and response
// serialization, with no I/O (http_server.h does the sockets).
//
// Role in the data flow: HttpServer appends the bytes it reads from a
// connection to a buffer and calls ParseHttpRequest() on it; a complete
// request is handed to the server's handler and its bytes are consumed, so
// pipelined requests are parsed one after the other from the same buffer.
// Bodies come with Content-Length or `Transfer-Encoding: chunked` (chunk
// extensions and trailers are accepted and ignored).
//
// Limits (HttpLimits): the request line plus headers, the number of headers
// and the (decoded) body size are bounded; a request past a limit is an error
// with the status to answer (431, 413) before the whole body is even read.
//
// Thread-safety: pure functions over values. Failure: ParseHttpRequest
// returns kError with the HTTP status and a message naming what is malformed.
#ifndef MOEFLOW_SERVER_HTTP_MESSAGE_H_
#define MOEFLOW_SERVER_HTTP_MESSAGE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace moeflow::server {

struct HttpLimits {
  // Request line + headers, bytes (nginx's large_client_header_buffers is 8 KiB
  // per line; 32 KiB covers long bearer tokens and cookies).
  int64_t max_header_bytes = 32 * 1024;
  int32_t max_headers = 100;
  // Decoded body, bytes.
  int64_t max_body_bytes = 4 * 1024 * 1024;
};

struct HttpRequest {
  std::string method;   // "GET"
  std::string target;   // "/v1/models?x=1"
  std::string path;     // "/v1/models" (target without the query)
  std::string version;  // "HTTP/1.1"
  // Names lower-cased, in arrival order.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The connection stays open after the response (HTTP/1.1 default, or
  // HTTP/1.0 with "Connection: keep-alive").
  bool keep_alive = true;
  // "Expect: 100-continue" was sent.
  bool expect_continue = false;

  // The first header with this (lower-case) name, or "" when absent.
  absl::string_view Header(absl::string_view lower_name) const;
  bool HasHeader(absl::string_view lower_name) const;
};

enum class ParseStatus {
  kIncomplete,  // need more bytes (headers_complete says whether the head is in)
  kComplete,
  kError,
};

struct ParseResult {
  ParseStatus status = ParseStatus::kIncomplete;
  // kComplete: bytes of the buffer this request used.
  size_t consumed = 0;
  // kIncomplete: the head has been parsed (the body is still arriving);
  // `request` then holds the head (method, target, headers, expect_continue).
  bool headers_complete = false;
  // kError: the status to answer (400, 413, 431, 501, 505) and why.
  int http_status = 0;
  std::string error;
};

// Parses the request at the start of `buffer` into *request.
ParseResult ParseHttpRequest(absl::string_view buffer, const HttpLimits& limits,
                             HttpRequest* request);

// "OK", "Not Found", ... ("Unknown" for codes not listed).
absl::string_view HttpReasonPhrase(int status);

// The head of a response: status line, the given headers, then
// Content-Length (body_length >= 0) or `Transfer-Encoding: chunked`
// (body_length < 0), Connection, and the blank line.
std::string SerializeResponseHead(int status,
                                  const std::vector<std::pair<std::string, std::string>>& headers,
                                  int64_t body_length, bool keep_alive);

// One chunk of a chunked body ("" for data gives the final "0\r\n\r\n").
std::string EncodeChunk(absl::string_view data);

// The JSON body of an error the HTTP layer answers itself (a malformed
// request, a handler that sent nothing): the OpenAI error shape of
// openai_api.h, so every client sees one format; code "http_STATUS".
std::string HttpErrorBody(int status, absl::string_view message);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_HTTP_MESSAGE_H_
