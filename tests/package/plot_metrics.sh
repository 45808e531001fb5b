#!/usr/bin/env bash
# scripts/plot_metrics.sh on a metrics.jsonl like `bd3 train` writes (with a validation
# loss on some lines, a clip-search event and a torn last line): a PNG; a file without
# metrics lines is refused (exit 1) and leaves no PNG. scripts/deps.sh installs gnuplot for
# the test run; without it the test fails (a test does not install packages itself).
# Usage: tests/package/plot_metrics.sh SOURCE_DIR
set -euo pipefail
src=$1
command -v gnuplot >/dev/null || { echo "plot_metrics: gnuplot is not installed (scripts/deps.sh installs it)"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk 'BEGIN {
  for (s = 1; s <= 50; s++) {
    val = s % 10 == 0 ? sprintf(", \"val_loss\": %.3f", 5 - s / 20) : ""
    printf "{\"step\": %d, \"loss\": %.3f, \"loss_avg\": 5.0, \"lr\": %g, \"grad_norm\": 1.0, \"tokens_per_s\": %d, \"seconds\": %d%s}\n",
      s, 5.5 - s / 25, 3e-4 * s / 50, 2000 + s, s, val
  }
}' >"$work/metrics.jsonl"
echo '{"step": 25, "event": "clip_search", "best": [0.3, 0.8]}' >>"$work/metrics.jsonl"
printf '{"step": 51, "loss": 3.' >>"$work/metrics.jsonl"
"$src/scripts/plot_metrics.sh" "$work/metrics.jsonl" "$work/curves.png"
[[ "$(head -c 8 "$work/curves.png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] ||
  { echo "plot_metrics: the output is not a PNG" >&2; exit 1; }
[[ $(stat -c %s "$work/curves.png") -gt 10000 ]] || { echo "plot_metrics: the PNG is too small" >&2; exit 1; }
echo '{"step": 1, "event": "clip_search"}' >"$work/none.jsonl"
if "$src/scripts/plot_metrics.sh" "$work/none.jsonl" "$work/none.png" 2>/dev/null; then
  echo "plot_metrics: a file without metrics was accepted" >&2; exit 1
fi
[[ ! -e "$work/none.png" ]] || { echo "plot_metrics: a PNG was left by a failed run" >&2; exit 1; }
echo "plot_metrics: ok"
