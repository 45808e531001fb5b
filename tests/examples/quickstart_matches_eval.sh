#!/usr/bin/env bash
# The ctest of examples/quickstart.cpp: its NELBO must equal the one `bd3 eval --split all`
# prints for the same model and text (same seed 0, batch 8, one sample: both call
# bd3::evaluate_nelbo's estimator with the random streams CounterRng(seed, {eval, s, b})).
# Usage: quickstart_matches_eval.sh QUICKSTART BD3 MODEL_DIR TEXT_FILE
set -euo pipefail
quickstart=$1 bd3=$2 model=$3 text=$4
eval_json=$("$bd3" eval --model "$model" --data "$text" --split all --quiet)
echo "bd3 eval: $eval_json"
out=$("$quickstart" "$model" "$text")
echo "$out"
eval_nelbo=$(sed -n 's/.*"nelbo":\([^,}]*\).*/\1/p' <<<"$eval_json")
quick_nelbo=$(sed -n 's/^NELBO \([^ ]*\) .*/\1/p' <<<"$out")
[ -n "$eval_nelbo" ] && [ -n "$quick_nelbo" ] || { echo "no NELBO in the outputs"; exit 1; }
# Compared as doubles (awk reads both with strtod), exactly: the same computation.
if awk -v a="$eval_nelbo" -v b="$quick_nelbo" 'BEGIN { exit !(a + 0 == b + 0) }'; then
  echo "quickstart's NELBO equals bd3 eval's ($quick_nelbo)"
else
  echo "quickstart's NELBO $quick_nelbo differs from bd3 eval's $eval_nelbo"
  exit 1
fi
