#include "auth/bearer_auth.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moeflow::dataflow {

absl::Status ValidateToken(absl::string_view token, absl::string_view what) {
  if (token.size() < 8 || token.size() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a token must have 8 to 4096 characters (has ", token.size(), ")"));
  }
  for (char c : token) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a token may hold printable ASCII characters only, no spaces"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read the token file (",
                                            std::strerror(errno), ")"));
  }
  std::string line;
  std::getline(in, line);
  const std::string token(absl::StripAsciiWhitespace(line));
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": the token file is empty"));
  if (absl::Status s = ValidateToken(token, path); !s.ok()) return s;
  return token;
}

absl::StatusOr<std::string> NewRandomToken() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("getrandom: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char b : bytes) {
    token.push_back(kHex[b >> 4]);
    token.push_back(kHex[b & 15]);
  }
  return token;
}

bool IsLoopbackAddress(absl::string_view host_port) {
  absl::string_view host = host_port;
  if (absl::StartsWith(host, "[")) {
    const size_t close = host.find(']');
    host = close == absl::string_view::npos ? host.substr(1) : host.substr(1, close - 1);
  } else if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

grpc::Status CheckBearer(const grpc::ServerContext& context, const std::string& token,
                         absl::string_view hint) {
  if (token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  const std::string expected = "Bearer " + token;
  bool ok = it != metadata.end() && it->second.size() == expected.size();
  if (ok) {
    // Compared in full whatever the first difference (no early exit).
    unsigned char diff = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
      diff |= static_cast<unsigned char>(it->second.data()[i] ^ expected[i]);
    }
    ok = diff == 0;
  }
  if (!ok) {
    return grpc::Status(grpc::UNAUTHENTICATED,
                        absl::StrCat("this service requires 'authorization: Bearer TOKEN' (", hint,
                                     ")"));
  }
  return grpc::Status::OK;
}

}  // namespace moeflow::dataflow
