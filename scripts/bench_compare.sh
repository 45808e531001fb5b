#!/usr/bin/env bash
# Two bd3 binaries (e.g. a commit and its parent) on the passes of `bd3 bench`, interleaved
# in one sitting so both see the same machine state: for each round, for each command, the
# first binary then the second. One JSON line per run in OUT (docs/performance.md).
# Usage: scripts/bench_compare.sh OLD_BD3 NEW_BD3 [ROUNDS=3] [OUT=bench_compare.jsonl]
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} out=${4:-bench_compare.jsonl}
: >"$out"
cmds=("--preset small --what forward --seconds 3"
      "--preset small --what train --seconds 4"
      "--preset small --what decode --seconds 3"
      "--preset mid --what forward --seconds 2"
      "--preset mid --what decode --seconds 3")
for r in $(seq "$rounds"); do
  for c in "${cmds[@]}"; do
    for which in old new; do
      bin=$old
      [ "$which" = new ] && bin=$new
      # shellcheck disable=SC2086
      line=$("$bin" bench $c --threads 2 2>/dev/null | tail -1)
      echo "{\"round\": $r, \"binary\": \"$which\", \"cmd\": \"$c\", \"result\": $line}" >>"$out"
    done
  done
done
