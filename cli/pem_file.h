// Reads the PEM files (certificates, keys) named by command-line flags: the
// control service's TLS files for `moeflow launch` and the certificates
// `moeflowctl` trusts.
//
// Thread-safety: a pure function. Failure: NOT_FOUND when the file cannot be
// opened, INVALID_ARGUMENT when it has no "-----BEGIN " line; both messages
// name the flag and the path.
#ifndef MOEFLOW_CLI_PEM_FILE_H_
#define MOEFLOW_CLI_PEM_FILE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow {

// The whole text of the PEM file at `path`, given as --`flag`.
absl::StatusOr<std::string> ReadPemFile(absl::string_view flag, const std::string& path);

}  // namespace moeflow

#endif  // MOEFLOW_CLI_PEM_FILE_H_
