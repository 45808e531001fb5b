#!/usr/bin/env bash
# Plots a training run's curves from its metrics.jsonl (as `bd3 train` writes it) into a
# PNG with gnuplot: the loss (each step's and the logged window's mean, `loss_avg`), the
# validation loss when lines carry `val_loss`, the learning rate, and tokens/s, against the
# step. Lines without a "loss" (clip-search events) are skipped.
#
# Usage: scripts/plot_metrics.sh METRICS.jsonl OUT.png
# Installs gnuplot (Debian's gnuplot-nox) through scripts/deps.sh when it is missing.
set -euo pipefail
usage() { sed -n '2,8s/^# \{0,1\}//p' "$0"; }
if [[ $# -eq 1 && ( $1 == -h || $1 == --help ) ]]; then usage; exit 0; fi
[[ $# -eq 2 ]] || { echo "plot_metrics.sh: expected METRICS.jsonl OUT.png" >&2; usage >&2; exit 2; }
metrics=$1
out=$2
[[ -f $metrics ]] || { echo "plot_metrics.sh: $metrics: no such file" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)
command -v gnuplot >/dev/null || "$root/scripts/deps.sh" gnuplot-nox

work=$(mktemp -d)
# The PNG is written next to OUT and renamed over it: never a half-written OUT.
tmp_png="$out.tmp.$$"
trap 'rm -rf "$work" "$tmp_png"' EXIT
# JSON lines -> whitespace-separated columns gnuplot reads ("NaN" where a key is absent).
has_val=$(python3 - "$metrics" "$work/metrics.dat" <<'PY'
import json, math, sys
keys = ["step", "loss", "loss_avg", "val_loss", "lr", "tokens_per_s"]
rows, has_val = 0, False
with open(sys.argv[1], encoding="utf-8", errors="replace") as f, open(sys.argv[2], "w") as out:
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed run
        if not isinstance(j, dict) or "step" not in j:
            continue
        if "loss" not in j and "val_loss" not in j:
            continue  # an event line (clip search)
        vals = []
        for k in keys:
            v = j.get(k)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            vals.append(repr(float(v)) if ok else "NaN")
        has_val = has_val or vals[3] != "NaN"
        out.write(" ".join(vals) + "\n")
        rows += 1
if rows == 0:
    sys.exit("plot_metrics.sh: %s holds no metrics lines (step and loss)" % sys.argv[1])
print("1" if has_val else "0")
PY
)

title=$(basename "$(dirname "$(readlink -f "$metrics")")")/$(basename "$metrics")
val_plot=""
if [[ $has_val == 1 ]]; then
  val_plot=", '$work/metrics.dat' using 1:4 with linespoints pt 7 ps 0.6 lw 2 lc rgb '#d62728' title 'validation loss'"
fi
gnuplot <<GP
set terminal pngcairo size 1200,1000 font ",10"
set output '$tmp_png'
set datafile missing 'NaN'
set grid
set key top right
set multiplot layout 3,1 title "$title" noenhanced
set ylabel 'loss (nats/token)'
set xlabel ''
plot '$work/metrics.dat' using 1:2 with lines lw 1 lc rgb '#b0c4de' title 'loss', \
     '$work/metrics.dat' using 1:3 with lines lw 2 lc rgb '#1f77b4' title 'loss (window mean)'$val_plot
set ylabel 'learning rate'
set format y '%.1e'
plot '$work/metrics.dat' using 1:5 with lines lw 2 lc rgb '#2ca02c' title 'lr'
set format y '%g'
set ylabel 'tokens/s'
set xlabel 'step'
plot '$work/metrics.dat' using 1:6 with lines lw 1 lc rgb '#9467bd' title 'tokens/s'
unset multiplot
GP
mv -f "$tmp_png" "$out"
echo "$out"
