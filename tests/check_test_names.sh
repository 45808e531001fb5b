#!/usr/bin/env bash
# ctest runs each Catch test case by name (catch_discover_tests), and CMake reads a ';' in a
# name as a list separator: such a case becomes two names that match nothing and "pass".
# A name that starts with '-' reads as a flag to the test program.
# Usage: tests/check_test_names.sh TEST_BINARY...
set -euo pipefail
bad=0
for t in "$@"; do
  while IFS= read -r name; do
    case "$name" in
      *';'*) echo "$(basename "$t"): a test name with ';': $name" >&2; bad=1 ;;
      -*) echo "$(basename "$t"): a test name that starts with '-': $name" >&2; bad=1 ;;
    esac
  done < <("$t" --list-test-names-only)
done
exit $bad
