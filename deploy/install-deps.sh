#!/usr/bin/env bash
# Installs every Debian 12 package moeflow needs to build, test and run.
# Idempotent: packages already present are reported and skipped. Needs root
# (or sudo). Usage: deploy/install-deps.sh [--check]   (--check: only report)
set -euo pipefail

PACKAGES=(
  # Build: Bazel (Debian's bootstrap build, runs offline), compilers.
  bazel-bootstrap g++ clang libclang-rt-14-dev pkg-config
  # Control plane: gRPC + protobuf (libs and code generators).
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  # Data plane and topology: UCX, hwloc, libnuma.
  libucx-dev ucx-utils libhwloc-dev hwloc libnuma-dev
  # Abseil, GoogleTest/GoogleMock, JSON and YAML parsers.
  libabsl-dev libgtest-dev libgmock-dev nlohmann-json3-dev libyaml-cpp-dev
  # Test helpers: python3 (JSON checks in shell tests), Node.js + npm (tokenizer peer).
  python3 nodejs npm
)

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

missing=()
for p in "${PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    :
  else
    missing+=("$p")
  fi
done

# node and npm may come from outside Debian (e.g. a preinstalled Node.js): accept those.
filtered=()
for p in "${missing[@]}"; do
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 || filtered+=("$p") ;;
    npm) command -v npm >/dev/null 2>&1 || filtered+=("$p") ;;
    python3) command -v python3 >/dev/null 2>&1 || filtered+=("$p") ;;
    *) filtered+=("$p") ;;
  esac
done
missing=("${filtered[@]+"${filtered[@]}"}")

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi
echo "install-deps: missing ${#missing[@]} package(s): ${missing[*]}"
if [[ $check_only -eq 1 ]]; then exit 1; fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "install-deps: apt-get update"
$SUDO apt-get update -qq
echo "install-deps: apt-get install ${missing[*]}"
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
