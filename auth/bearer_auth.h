// Shared-secret ("authorization: Bearer TOKEN") authentication of moeflow's
// gRPC services: the coordinator's ControlService (moeflowctl --token) and
// the workers' WorkerService (the coordinator is their only client).
//
// Role in the data flow: control plane only. A worker learns its token from
// `--token_file=PATH` or, when the launcher starts it, from the environment
// variable MOEFLOW_WORKER_TOKEN (a fresh random token per launch, never on a
// command line where `ps` would show it); the coordinator sends it on every
// call (topology `worker_token_file:` for workers started by hand). A worker
// refuses to listen on a non-loopback address without a token.
//
// Thread-safety: free functions, no shared state. Failure: file and format
// errors as INVALID_ARGUMENT / NOT_FOUND naming the path; CheckBearer
// answers UNAUTHENTICATED with a hint naming the flag that supplies the
// token.
#ifndef MOEFLOW_AUTH_BEARER_AUTH_H_
#define MOEFLOW_AUTH_BEARER_AUTH_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow::dataflow {

inline constexpr char kWorkerTokenEnv[] = "MOEFLOW_WORKER_TOKEN";

// The token in `path`: its first line without surrounding whitespace; 8 to
// 4096 printable ASCII characters, no spaces.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// Checks a token's format (as ReadTokenFile), naming `what` in the error.
absl::Status ValidateToken(absl::string_view token, absl::string_view what);

// 32 hex digits from the kernel's random source.
absl::StatusOr<std::string> NewRandomToken();

// Whether HOST of "HOST:PORT" (or "[V6]:PORT") is a loopback name or
// address: localhost, 127.0.0.0/8, ::1.
bool IsLoopbackAddress(absl::string_view host_port);

// OK when `token` is empty (no authentication) or the call carries
// "authorization: Bearer <token>"; else UNAUTHENTICATED saying so, with
// `hint` (e.g. "moeflowctl --token").
grpc::Status CheckBearer(const grpc::ServerContext& context, const std::string& token,
                         absl::string_view hint);

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_AUTH_BEARER_AUTH_H_
