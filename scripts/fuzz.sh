#!/usr/bin/env bash
# Builds the libFuzzer targets (CMake preset "fuzz": clang, ASan + UBSan) and runs each one
# (one after another, or --jobs at a time) on a copy of its seed corpus (fuzz/corpus/<target>) kept in
# out/fuzz/<target>/corpus (it grows from run to run). Logs: out/fuzz/<target>.log; one
# JSON line per target is appended to out/fuzz/summary.jsonl. Exits 1 when any target
# found something (crash, leak, timeout, out-of-memory, UBSan report), 2 for bad usage.
#
# Usage: scripts/fuzz.sh [--seconds S] [--runs N] [--jobs J] [target...]
#   --seconds S   run each target for S seconds (default 60)
#   --runs N      run each target for N executions instead (with --seconds: whichever
#                 comes first)
#   --jobs J      run J targets at once (default 1; one per core at most makes sense)
#   target        fuzz_safetensors, ... or just safetensors (default: every fuzz/fuzz_*.cpp)
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
seconds=60
seconds_given=""
runs=""
jobs=1
targets=()
while (($#)); do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a value}; seconds_given=1; shift 2 ;;
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) targets+=("fuzz_${1#fuzz_}"); shift ;;
  esac
done
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --seconds needs an integer" >&2; exit 2; }
[[ -z "$runs" || "$runs" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: --runs needs an integer" >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: --jobs needs a positive integer" >&2; exit 2; }

all=()
for f in fuzz/fuzz_*.cpp; do all+=("$(basename "$f" .cpp)"); done
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (have: ${all[*]})" >&2; exit 2; }
done

# clang 14 with libFuzzer (libclang-rt-14-dev) and its OpenMP runtime (libomp-dev).
scripts/deps.sh clang libclang-rt-14-dev libomp-dev
cmake --preset fuzz >/dev/null
cmake --build build/fuzz -j 2 --target "${targets[@]}"

# Largest input each target is given. Size-driven bugs come from the sizes, counts and
# offsets written in a file, not from its length, and shorter inputs run faster: 16 KB
# leaves the JSON targets room for nesting far past the depth limit (128) and for
# vocabularies of hundreds of tokens; encode/decode needs pieces above kSmallPiece (64).
max_len_of() {
  case "$1" in
    fuzz_token_cache | fuzz_gpt2_merges) echo 8192 ;;
    fuzz_encode_decode) echo 4096 ;;
    *) echo 16384 ;;
  esac
}

# run_target T: fuzzes T, appends its summary line; returns 1 on a finding.
run_target() {
  local t=$1 dir limit start end rc execs rss elapsed rate result
  local -a args
  dir=out/fuzz/$t
  mkdir -p "$dir/corpus"
  cp -n fuzz/corpus/"$t"/* "$dir/corpus/" 2>/dev/null || true
  args=("$dir/corpus" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len_of "$t")"
    -print_final_stats=1 -artifact_prefix="$dir/")
  [[ -f fuzz/$t.dict ]] && args+=(-dict="fuzz/$t.dict")
  if [[ -n "$runs" ]]; then
    args+=(-runs="$runs")
    limit="$runs runs"
    if [[ -n "$seconds_given" ]]; then
      args+=(-max_total_time="$seconds")
      limit+=" or $seconds s"
    fi
  else
    args+=(-max_total_time="$seconds")
    limit="$seconds s"
  fi
  echo "fuzz.sh: $t ($limit) -> $dir.log" >&2
  start=$(date +%s.%N)
  rc=0
  build/fuzz/"$t" "${args[@]}" >"$dir.log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  stat() { { grep -o "^stat::$1: *[0-9.]*" "$dir.log" || true; } | tail -1 | awk '{print $2}'; }
  execs=$(stat number_of_executed_units)
  rss=$(stat peak_rss_mb)
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b - a}')
  rate=$(awk -v n="${execs:-0}" -v s="$elapsed" 'BEGIN{printf "%.0f", (s > 0 ? n / s : 0)}')
  if ((rc == 0)); then
    result=ok
  else
    # (|| true: with pipefail an interrupted run, which writes no unit, must still be logged)
    result=$({ grep -o "Test unit written to [^ ]*" "$dir.log" || true; } | tail -1 | sed 's/Test unit written to //')
    result=${result:-"exit code $rc, see $dir.log"}
  fi
  printf '{"target": "%s", "executions": %s, "seconds": %s, "exec_per_s": %s, "peak_rss_mb": %s, "result": "%s", "date": "%s"}\n' \
    "$t" "${execs:-0}" "$elapsed" "$rate" "${rss:-0}" "$result" "$(date -u +%FT%TZ)" >>out/fuzz/summary.jsonl
  echo "fuzz.sh: $t: ${execs:-0} executions in $elapsed s ($rate/s), peak RSS ${rss:-0} MB: $result" >&2
  ((rc == 0))
}

mkdir -p out/fuzz
status=0
running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || status=1
    running=$((running - 1))
  fi
  run_target "$t" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
exit $status
