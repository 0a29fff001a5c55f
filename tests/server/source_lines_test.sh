#!/bin/bash
# "A file does one job: split past ~600 lines": fails naming every source
# file given (server/, sampling/) that has more than 600 lines.
# Usage: source_lines_test.sh FILE...
set -u
readonly LIMIT=600
status=0
for f in "$@"; do
  n="$(wc -l <"$f")"
  if (( n > LIMIT )); then
    echo "FAIL: $f has $n lines (more than $LIMIT: split it by job)" >&2
    status=1
  fi
done
(( status == 0 )) && echo "PASS: $# files of at most $LIMIT lines"
exit "$status"
