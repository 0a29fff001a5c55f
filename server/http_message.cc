#include "server/http_message.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moeflow::server {
namespace {

ParseResult Error(int status, std::string message) {
  ParseResult r;
  r.status = ParseStatus::kError;
  r.http_status = status;
  r.error = std::move(message);
  return r;
}

bool IsTokenChar(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTokenChar(c)) return false;
  }
  return true;
}

// Parses a chunked body starting at `pos`. Returns kIncomplete, kError, or
// kComplete with *end set to the byte after the trailers.
ParseResult ParseChunked(absl::string_view buffer, size_t pos, const HttpLimits& limits,
                         std::string* body, size_t* end) {
  body->clear();
  while (true) {
    const size_t line_end = buffer.find("\r\n", pos);
    if (line_end == absl::string_view::npos) {
      if (buffer.size() - pos > 1024) return Error(400, "chunk size line too long");
      return ParseResult{};
    }
    absl::string_view size_text = buffer.substr(pos, line_end - pos);
    const size_t semicolon = size_text.find(';');  // chunk extensions are ignored
    if (semicolon != absl::string_view::npos) size_text = size_text.substr(0, semicolon);
    size_text = absl::StripAsciiWhitespace(size_text);
    if (size_text.empty() || size_text.size() > 15) {
      return Error(400, absl::StrCat("bad chunk size \"", size_text, "\""));
    }
    uint64_t size = 0;
    for (char c : size_text) {
      const int digit = absl::ascii_isdigit(static_cast<unsigned char>(c)) ? c - '0'
                        : (c >= 'a' && c <= 'f')                           ? c - 'a' + 10
                        : (c >= 'A' && c <= 'F')                           ? c - 'A' + 10
                                                                           : -1;
      if (digit < 0) return Error(400, absl::StrCat("bad chunk size \"", size_text, "\""));
      size = size * 16 + static_cast<uint64_t>(digit);
    }
    if (static_cast<int64_t>(body->size() + size) > limits.max_body_bytes) {
      return Error(413, absl::StrCat("request body exceeds ", limits.max_body_bytes, " bytes"));
    }
    pos = line_end + 2;
    if (size == 0) {
      // Trailers, each "name: value\r\n", then "\r\n".
      while (true) {
        const size_t trailer_end = buffer.find("\r\n", pos);
        if (trailer_end == absl::string_view::npos) {
          if (buffer.size() - pos > static_cast<size_t>(limits.max_header_bytes)) {
            return Error(431, "trailers too large");
          }
          return ParseResult{};
        }
        if (trailer_end == pos) {
          *end = pos + 2;
          ParseResult r;
          r.status = ParseStatus::kComplete;
          return r;
        }
        pos = trailer_end + 2;
      }
    }
    if (buffer.size() < pos + size + 2) return ParseResult{};
    body->append(buffer.data() + pos, size);
    if (buffer.substr(pos + size, 2) != "\r\n")
      return Error(400, "chunk data not followed by CRLF");
    pos += size + 2;
  }
}

}  // namespace

absl::string_view HttpRequest::Header(absl::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return value;
  }
  return "";
}

bool HttpRequest::HasHeader(absl::string_view lower_name) const {
  for (const auto& header : headers) {
    if (header.first == lower_name) return true;
  }
  return false;
}

ParseResult ParseHttpRequest(absl::string_view buffer, const HttpLimits& limits,
                             HttpRequest* request) {
  // Tolerate empty lines before the request line (RFC 9112 §2.2).
  size_t start = 0;
  while (buffer.substr(start, 2) == "\r\n") start += 2;
  const size_t head_end = buffer.find("\r\n\r\n", start);
  if (head_end == absl::string_view::npos) {
    if (static_cast<int64_t>(buffer.size() - start) > limits.max_header_bytes) {
      return Error(431, absl::StrCat("request head exceeds ", limits.max_header_bytes, " bytes"));
    }
    return ParseResult{};
  }
  if (static_cast<int64_t>(head_end + 4 - start) > limits.max_header_bytes) {
    return Error(431, absl::StrCat("request head exceeds ", limits.max_header_bytes, " bytes"));
  }
  const absl::string_view head = buffer.substr(start, head_end - start);
  std::vector<absl::string_view> lines = absl::StrSplit(head, "\r\n");
  // Request line: METHOD SP TARGET SP VERSION.
  std::vector<absl::string_view> parts = absl::StrSplit(lines[0], ' ');
  if (parts.size() != 3 || !IsToken(parts[0]) || parts[1].empty()) {
    return Error(400, "malformed request line");
  }
  if (parts[2] != "HTTP/1.1" && parts[2] != "HTTP/1.0") {
    if (absl::StartsWith(parts[2], "HTTP/")) {
      return Error(505, absl::StrCat("HTTP version ", parts[2], " not supported"));
    }
    return Error(400, "malformed request line");
  }
  *request = HttpRequest();
  request->method = std::string(parts[0]);
  request->target = std::string(parts[1]);
  request->version = std::string(parts[2]);
  request->path = request->target.substr(0, request->target.find('?'));
  if (request->path.empty() || (request->path[0] != '/' && request->path != "*")) {
    return Error(400, "request target must be an absolute path");
  }
  if (static_cast<int32_t>(lines.size() - 1) > limits.max_headers) {
    return Error(431, absl::StrCat("more than ", limits.max_headers, " headers"));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const absl::string_view line = lines[i];
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || !IsToken(line.substr(0, colon))) {
      return Error(400, absl::StrCat("malformed header line ", i));
    }
    for (char c : line) {
      if (c == '\0' || c == '\r' || c == '\n') return Error(400, "control character in a header");
    }
    request->headers.emplace_back(absl::AsciiStrToLower(line.substr(0, colon)),
                                  std::string(absl::StripAsciiWhitespace(line.substr(colon + 1))));
  }
  const std::string connection = absl::AsciiStrToLower(request->Header("connection"));
  request->keep_alive = request->version == "HTTP/1.1"
                            ? !absl::StrContains(connection, "close")
                            : absl::StrContains(connection, "keep-alive");
  request->expect_continue = absl::EqualsIgnoreCase(request->Header("expect"), "100-continue");

  const size_t body_start = head_end + 4;
  ParseResult result;
  result.headers_complete = true;
  const std::string transfer_encoding = absl::AsciiStrToLower(request->Header("transfer-encoding"));
  if (!transfer_encoding.empty()) {
    if (transfer_encoding != "chunked") {
      return Error(501,
                   absl::StrCat("Transfer-Encoding \"", transfer_encoding, "\" not supported"));
    }
    if (request->HasHeader("content-length")) {
      // RFC 9112 §6.3: both is a smuggling vector; refuse.
      return Error(400, "both Transfer-Encoding and Content-Length");
    }
    size_t end = 0;
    ParseResult chunked = ParseChunked(buffer, body_start, limits, &request->body, &end);
    if (chunked.status == ParseStatus::kError) return chunked;
    if (chunked.status == ParseStatus::kIncomplete) return result;
    result.status = ParseStatus::kComplete;
    result.consumed = end;
    return result;
  }
  int64_t length = 0;
  if (request->HasHeader("content-length")) {
    const absl::string_view text = request->Header("content-length");
    int length_headers = 0;
    for (const auto& header : request->headers) length_headers += header.first == "content-length";
    if (length_headers > 1 || text.empty() || text.size() > 18 ||
        !std::all_of(text.begin(), text.end(),
                     [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); }) ||
        !absl::SimpleAtoi(text, &length)) {
      return Error(400, absl::StrCat("bad Content-Length \"", text, "\""));
    }
  }
  if (length > limits.max_body_bytes) {
    return Error(413, absl::StrCat("request body of ", length, " bytes exceeds the limit of ",
                                   limits.max_body_bytes));
  }
  if (static_cast<int64_t>(buffer.size() - body_start) < length) return result;
  request->body = std::string(buffer.substr(body_start, static_cast<size_t>(length)));
  result.status = ParseStatus::kComplete;
  result.consumed = body_start + static_cast<size_t>(length);
  return result;
}

absl::string_view HttpReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string SerializeResponseHead(int status,
                                  const std::vector<std::pair<std::string, std::string>>& headers,
                                  int64_t body_length, bool keep_alive) {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status), "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&out, name, ": ", value, "\r\n");
  if (body_length >= 0) {
    absl::StrAppend(&out, "Content-Length: ", body_length, "\r\n");
  } else {
    absl::StrAppend(&out, "Transfer-Encoding: chunked\r\n");
  }
  absl::StrAppend(&out, "Connection: ", keep_alive ? "keep-alive" : "close", "\r\n\r\n");
  return out;
}

std::string EncodeChunk(absl::string_view data) {
  if (data.empty()) return "0\r\n\r\n";
  return absl::StrCat(absl::Hex(data.size()), "\r\n", data, "\r\n");
}

std::string HttpErrorBody(int status, absl::string_view message) {
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    escaped += c;
  }
  return absl::StrCat("{\"error\":{\"message\":\"", escaped,
                      "\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"http_",
                      status, "\"}}");
}

}  // namespace moeflow::server
