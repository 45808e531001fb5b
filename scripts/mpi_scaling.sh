#!/usr/bin/env bash
# The scaling model of data-parallel training (docs/performance.md, "Several machines"):
# the efficiency of N ranks, one per machine, linked at b Gb/s, from measured inputs.
# Usage: scripts/mpi_scaling.sh NAME PARAMETERS STEP_SECONDS BACKWARD_SECONDS HIDDEN_FRACTION
#   PARAMETERS        P, the gradient's float count
#   STEP_SECONDS      one rank's compute per step (forward + backward + optimizer)
#   BACKWARD_SECONDS  the part of it the gradient sum can run beside (the backward)
#   HIDDEN_FRACTION   the measured share of the sum the overlap hides, in [0, 1]
# Per step a rank moves 4P bytes up the chain and 4P bytes of the broadcast, as a ring
# all-reduce moves 2(N-1)/N x 4P; the chain adds a pipeline fill and drain of 2(N-2)
# pieces of P/(16N) floats within [16K, 1M] (include/bd3/mpi.hpp), each with 5 us of
# latency. Exposed time: what the overlap does not hide, and at least what outlasts the
# backward.
set -euo pipefail
[ $# -eq 5 ] || { sed -n 2,12p "$0" >&2; exit 2; }
awk -v name="$1" -v P="$2" -v step="$3" -v bwd="$4" -v f="$5" 'BEGIN {
  printf "| %s | N | 10 Gb/s | 25 Gb/s | 100 Gb/s |\n|---|---:|---:|---:|---:|\n", name
  for (n = 2; n <= 64; n *= 2) {
    line = sprintf("| | %d |", n)
    for (i = 1; i <= 3; i++) {
      gbps = (i == 1 ? 10 : (i == 2 ? 25 : 100))
      bytes_per_s = gbps * 1e9 / 8
      piece = P / (16 * n)
      if (piece < 16384) piece = 16384
      if (piece > 1048576) piece = 1048576
      comm = (8 * P + 2 * (n - 2) * 4 * piece) / bytes_per_s + 2 * (n - 2) * 5e-6
      exposed = (1 - f) * comm
      if (comm - bwd > exposed) exposed = comm - bwd
      eff = step / (step + exposed)
      line = line sprintf(" %.1f%%%s |", 100 * eff, eff < 0.9 ? " *" : "")
    }
    print line
  }
}'
